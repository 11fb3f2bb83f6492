"""Reconstruction log-likelihoods log p(x|z), summed over the event axes.

`event_ndims` trailing axes are summed (1 for vectors, 3 for H×W×C images);
the leading axes, samples and batch, stay.
"""

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vaejax.core import _checks, gaussian

_LOG_2PI = math.log(2.0 * math.pi)


@jax.custom_jvp
def _softplus(logits: jax.Array) -> jax.Array:
    # As stable as jax.nn.softplus (logaddexp with 0), about four times cheaper on CPU,
    # where it runs on every pixel of every training step.
    return jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits)))


@_softplus.defjvp
def _softplus_jvp(primals, tangents):
    # The derivative is exact at 0 too, where max and |·| have kinks.
    (logits,), (tangent,) = primals, tangents
    return _softplus(logits), jax.nn.sigmoid(logits) * tangent


def bernoulli_log_likelihood(logits: ArrayLike, x: ArrayLike, event_ndims: int = 1) -> jax.Array:
    """log Bern(x; sigmoid(logits)) = Σ[x·logits − softplus(logits)].

    Equals minus the summed binary cross-entropy. Written with softplus it is
    finite, with finite gradients, for every finite logit; x may be any value
    in [0, 1] (then it is the cross-entropy, not a normalised density).

    Args:
      logits: decoder logits, shape (..., *event); leading sample axes broadcast.
      x: targets in [0, 1], shape broadcastable to logits.
      event_ndims: how many trailing axes form one example.

    Returns:
      log-likelihoods, shape logits.shape[:-event_ndims].
    """
    _checks.event_ndims(logits, event_ndims, "logits")
    _checks.broadcastable(logits=logits, x=x)
    logits, x = jnp.asarray(logits), jnp.asarray(x)
    return _checks.sum_event(x * logits - _softplus(logits), event_ndims)


def gaussian_log_likelihood(mean: ArrayLike, x: ArrayLike, log_scale: ArrayLike = 0.0,
                            event_ndims: int = 1) -> jax.Array:
    """log N(x; mean, σ²I) = −Σ(x−mean)²/2σ² − D·log(σ√2π), σ = exp(log_scale).

    Args:
      mean: decoder means, shape (..., *event).
      x: data, shape broadcastable to mean.
      log_scale: log σ, a scalar or broadcastable to mean (per-pixel σ).
      event_ndims: how many trailing axes form one example.

    Returns:
      log-likelihoods, shape mean.shape[:-event_ndims].
    """
    _checks.event_ndims(mean, event_ndims, "mean")
    _checks.broadcastable(mean=mean, x=x, log_scale=log_scale)
    mean, x, log_scale = map(jnp.asarray, (mean, x, log_scale))
    per_dim = (-0.5 * gaussian.standardized_square(x - mean, 2.0 * log_scale)
               - log_scale - 0.5 * _LOG_2PI)
    per_dim = jnp.broadcast_to(per_dim, jnp.broadcast_shapes(mean.shape, x.shape))
    return _checks.sum_event(per_dim, event_ndims)


def _continuous_bernoulli_log_norm(logits):
    """log C(λ) for λ = sigmoid(η): C = η / tanh(η/2), an even function with C(0) = 2.

    Near η = 0 the quotient loses precision, so the series of u·coth u (u = |η|/2)
    takes over; the inner `where`s give each branch only inputs where it is finite,
    so the unused branch cannot put a NaN in the gradient (u² overflows for large η).
    """
    u = 0.5 * jnp.abs(logits)
    small = u < 0.25
    u_safe = jnp.where(small, 1.0, u)
    exact = (jnp.log(2.0 * u_safe) - jnp.log1p(-jnp.exp(-2.0 * u_safe))
             + jnp.log1p(jnp.exp(-2.0 * u_safe)))
    u2 = jnp.where(small, u, 0.0)**2
    series = math.log(2.0) + jnp.log1p(u2 * (1.0 / 3.0 - u2 * (1.0 / 45.0 - u2 * 2.0 / 945.0)))
    return jnp.where(small, series, exact)


def continuous_bernoulli_log_likelihood(logits: ArrayLike, x: ArrayLike,
                                        event_ndims: int = 1) -> jax.Array:
    """log CB(x; λ) = Σ[x·logits − softplus(logits) + log C(λ)], λ = sigmoid(logits).

    The continuous Bernoulli is a normalised density on [0, 1], the proper
    likelihood for grey-level pixels that the Bernoulli cross-entropy is not.

    Args:
      logits: decoder logits, shape (..., *event).
      x: data in [0, 1], shape broadcastable to logits.
      event_ndims: how many trailing axes form one example.

    Returns:
      log-densities, shape logits.shape[:-event_ndims].

    References:
      Loaiza-Ganem & Cunningham, The continuous Bernoulli: fixing a pervasive
      error in variational autoencoders, NeurIPS 2019.
    """
    _checks.event_ndims(logits, event_ndims, "logits")
    _checks.broadcastable(logits=logits, x=x)
    logits, x = jnp.asarray(logits), jnp.asarray(x)
    per_dim = x * logits - _softplus(logits) + _continuous_bernoulli_log_norm(logits)
    return _checks.sum_event(per_dim, event_ndims)


def continuous_bernoulli_mean(logits: ArrayLike) -> jax.Array:
    """E[x] of the continuous Bernoulli: λ/(2λ−1) + 1/(2 atanh(1−2λ)), ½ at λ = ½.

    With η = logits this is 1/(1 − e^(−η)) − 1/η, written with t = e^(−|η|) ≤ 1 as
    (1 or −t)/(1 − t) − 1/η so that no exponential overflows, in the value or the
    gradient; the series takes over near 0.

    Args:
      logits: η, any shape.

    Returns:
      means in [0, 1], same shape as logits.
    """
    logits = jnp.asarray(logits)
    small = jnp.abs(logits) < 0.5
    safe = jnp.where(small, 1.0, logits)
    a = jnp.abs(safe)
    exact = jnp.where(safe > 0, 1.0, -jnp.exp(-a)) / -jnp.expm1(-a) - 1.0 / safe
    near = jnp.where(small, logits, 0.0)  # η² would overflow, and its gradient NaN, for large η
    e2 = near**2
    series = 0.5 + near * (1.0 / 12.0 - e2 * (1.0 / 720.0 - e2 / 30240.0))
    return jnp.where(small, series, exact)
