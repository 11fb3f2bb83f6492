"""Regularised autoencoders: sparse, denoising and contractive penalties."""

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vaejax.core import _checks


def sparse_penalty(code: ArrayLike) -> jax.Array:
    """Σ|h|, the L1 norm of the code, summed over the last axis.

    Args:
      code: h, shape (..., d).

    Returns:
      penalties, shape (...).
    """
    return jnp.sum(jnp.abs(jnp.asarray(code)), axis=-1)


def corrupt(key: jax.Array, x: ArrayLike, level: float,
            noise: Literal["masking", "gaussian", "salt_and_pepper"] = "masking") -> jax.Array:
    """Corrupts x for a denoising autoencoder, which then reconstructs the clean x.

    "masking" zeroes each entry with probability `level`; "gaussian" adds
    N(0, level²) noise; "salt_and_pepper" sets each entry with probability
    `level` to 0 or 1 with equal chance.

    Args:
      key: a PRNG key.
      x: data, any shape.
      level: drop probability in [0, 1], or the noise standard deviation (>= 0).
      noise: the corruption.

    Returns:
      corrupted x, same shape and dtype.

    References:
      Vincent et al., Extracting and composing robust features with denoising
      autoencoders, ICML 2008.
    """
    _checks.in_range(level, "level", 0.0, math.inf if noise == "gaussian" else 1.0)
    x = jnp.asarray(x)
    if noise == "masking":
        return jnp.where(jax.random.bernoulli(key, level, x.shape), 0, x).astype(x.dtype)
    if noise == "gaussian":
        return x + level * jax.random.normal(key, x.shape, x.dtype)
    if noise == "salt_and_pepper":
        hit_key, salt_key = jax.random.split(key)
        hit = jax.random.bernoulli(hit_key, level, x.shape)
        salt = jax.random.bernoulli(salt_key, 0.5, x.shape).astype(x.dtype)
        return jnp.where(hit, salt, x)
    raise ValueError(f"noise must be 'masking', 'gaussian' or 'salt_and_pepper', got {noise!r}")


def contractive_penalty(encode_fn: Callable[[jax.Array], jax.Array], x: ArrayLike,
                        event_ndims: int = 1) -> jax.Array:
    """‖∂h/∂x‖²_F, the squared Frobenius norm of the encoder Jacobian, per example.

    The Jacobian is exact (forward- or reverse-mode, whichever needs fewer
    passes for the input and code sizes), never a finite difference.

    Args:
      encode_fn: h = f(x) for ONE example, mapping shape event → (d,).
      x: a batch, shape (*batch, *event).
      event_ndims: how many trailing axes of x form one example.

    Returns:
      penalties, shape `batch`.

    References:
      Rifai et al., Contractive auto-encoders, ICML 2011.
    """
    _checks.event_ndims(x, event_ndims)
    x = jnp.asarray(x)
    event_shape = x.shape[x.ndim - event_ndims:]
    flat = x.reshape(-1, *event_shape)
    in_size = math.prod(event_shape)
    # From the event's shape, not flat[0], which an empty batch does not have.
    out_size = jax.eval_shape(encode_fn, jax.ShapeDtypeStruct(event_shape, x.dtype)).size
    jacobian = jax.jacfwd(encode_fn) if in_size <= out_size else jax.jacrev(encode_fn)
    norms = jax.vmap(lambda xi: jnp.sum(jacobian(xi)**2))(flat)
    return norms.reshape(x.shape[:x.ndim - event_ndims])
