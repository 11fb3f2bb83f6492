"""Normalizing-flow posteriors: a diagonal Gaussian pushed through invertible steps.

Each step maps z (..., d) to (z', log|det ∂z'/∂z|) and takes its parameters
as a pytree, so K steps stack along a leading axis and run in one `lax.scan`.
log q(z_K) = log q_0(z_0) − Σ_k log|det J_k| (change of variables), computed
from the base draw: a flow posterior has `sample_and_log_prob`, but no
`log_prob` of an arbitrary z (planar and IAF steps have no closed-form inverse).
"""

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from vaejax.core.posteriors import DiagonalGaussian

FlowStep = Callable[[jax.Array, Any, Any], tuple[jax.Array, jax.Array]]


class Planar(NamedTuple):
    """Parameters of a planar step: u, w of shape (..., d) and b of shape (...,)."""

    u: jax.Array
    w: jax.Array
    b: jax.Array


def planar_step(z, params: Planar, context=None):
    """z' = z + û·tanh(wᵀz + b) and its log|det| = log(1 + (1 − tanh²(wᵀz + b))·wᵀû).

    û = u + (m(wᵀu) − wᵀu)·w/‖w‖² with m(a) = softplus(a) − 1 makes wᵀû > −1,
    so the map is invertible and the determinant positive.

    Args:
      z: points, shape (..., d).
      params: u, w and b, broadcasting against z.
      context: unused (the step signature of `FlowPosterior`).

    Returns:
      (z', log|det|) of shapes (..., d) and (...,).

    References:
      Rezende & Mohamed, Variational Inference with Normalizing Flows, ICML 2015.
    """
    del context
    u, w, b = params
    wu = jnp.sum(w * u, axis=-1, keepdims=True)
    ww = jnp.sum(w * w, axis=-1, keepdims=True)
    # w = 0 needs no correction (the step is a shift); a safe divisor keeps its gradient finite.
    safe = jnp.where(ww > 0, ww, 1.0)
    u_hat = u + jnp.where(ww > 0, (jax.nn.softplus(wu) - 1 - wu) / safe, 0.0) * w
    h = jnp.tanh(jnp.sum(w * z, axis=-1) + b)
    log_det = jnp.log1p((1 - h**2) * jnp.sum(w * u_hat, axis=-1))
    return z + u_hat * h[..., None], log_det


class MADE(NamedTuple):
    """Weights of a one-hidden-layer masked autoencoder (d → hidden → 2·d), unmasked.

    `w_in` (d, hidden), `b_in` (hidden,), `w_shift`/`w_scale` (hidden, d),
    `b_shift`/`b_scale` (d,); the masks follow from the shapes.
    """

    w_in: jax.Array
    b_in: jax.Array
    w_shift: jax.Array
    b_shift: jax.Array
    w_scale: jax.Array
    b_scale: jax.Array


def autoregressive_masks(d: int, hidden: int) -> tuple[jax.Array, jax.Array]:
    """MADE masks (d, hidden) and (hidden, d): output i depends on inputs j < i only."""
    degree_in = jnp.arange(1, d + 1)
    degree_hidden = jnp.arange(hidden) % max(d - 1, 1) + 1
    return ((degree_hidden[None, :] >= degree_in[:, None]).astype(jnp.float32),
            (degree_in[None, :] > degree_hidden[:, None]).astype(jnp.float32))


def iaf_step(z, params: MADE, context=None):
    """z' = σ ⊙ z + (1 − σ) ⊙ m, with [m, s] = MADE(z) autoregressive, σ = sigmoid(s).

    ∂z'/∂z is lower triangular with diagonal σ, so log|det| = Σ log σ.

    Args:
      z: points, shape (..., d).
      params: the autoregressive network's weights.
      context: an optional (..., hidden) input added to the hidden layer (the
        encoder's summary h of x, as in Kingma et al.).

    Returns:
      (z', log|det|) of shapes (..., d) and (...,).

    References:
      Kingma et al., Improved Variational Inference with Inverse Autoregressive
      Flow, NeurIPS 2016 (eq. 14, the numerically stable update).
    """
    mask_in, mask_out = autoregressive_masks(*jnp.shape(params.w_in))
    pre = z @ (params.w_in * mask_in) + params.b_in
    h = jnp.tanh(pre if context is None else pre + context)
    shift = h @ (params.w_shift * mask_out) + params.b_shift
    s = h @ (params.w_scale * mask_out) + params.b_scale
    sigma = jax.nn.sigmoid(s)
    return sigma * z + (1 - sigma) * shift, jnp.sum(jax.nn.log_sigmoid(s), axis=-1)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["base", "params", "context"],
                   meta_fields=["step", "reverse"])
@dataclasses.dataclass(frozen=True)
class FlowPosterior:
    """q(z|x): `base` pushed through K steps of `step`; `params` leaves lead with K.

    Attributes:
      base: the diagonal Gaussian q_0(z_0|x).
      params: the steps' parameters, each leaf of shape (K, ...).
      step: `(z, params_k, context) -> (z', log|det|)`: `planar_step` (params a
        `Planar`) or `iaf_step` (params a `MADE`).
      context: passed to every step (None for planar flows).
      reverse: reverse the coordinates after each step (so every coordinate of
        an autoregressive flow comes to depend on every other).
    """

    base: DiagonalGaussian
    params: Any
    step: FlowStep = planar_step
    context: Any = None
    reverse: bool = False

    def push(self, z0):
        """(z_K, Σ_k log|det J_k|) for base points z0."""
        def one(z, p):
            z, log_det = self.step(z, p, self.context)
            return (z[..., ::-1] if self.reverse else z), log_det

        z, log_dets = jax.lax.scan(one, z0, self.params)
        return z, jnp.sum(log_dets, axis=0)

    def sample_and_log_prob(self, key, num_samples=None):
        z0, log_q0 = self.base.sample_and_log_prob(key, num_samples)
        z, log_det = self.push(z0)
        return z, log_q0 - log_det

    def sample(self, key, num_samples=None):
        return self.sample_and_log_prob(key, num_samples)[0]

    def log_prob(self, z):
        raise NotImplementedError("a flow posterior gives log q only for its own draws: use "
                                  "sample_and_log_prob")

    @property
    def mean(self):
        """The base mean pushed through the flow: a point code standing in for E_q[z]."""
        return self.push(self.base.mean)[0]

    def mode(self):
        return self.mean
