"""Doubly reparameterized gradients of the IWAE bound (Tucker et al. 2019).

The IWAE gradient of the encoder holds a score term, ∇_φ log q_φ(z) at fixed z,
whose variance grows with K. DReG replaces it: with the posterior's parameters
stopped inside log q and normalised weights w̃_k,

  ∇_φ L_K = E[Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ],   ∇_θ L_K = E[Σ_k w̃_k ∇_θ log w_k].

A first, undifferentiated pass gives the weights; in the second each draw
enters as z'_k = z_k in value with its gradient scaled by w̃_k, so the gradient
of one surrogate, Σ_k w̃_k log w_k(z'_k), is DReG's for φ and IWAE's for θ.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vaejax.core.posteriors import Posterior
from vaejax.core.priors import Prior, StandardNormal


def scale_gradient(x: ArrayLike, scale: ArrayLike) -> jax.Array:
    """x in value; `scale` × the gradient that reaches x (scale itself receives none)."""
    x, scale = jnp.asarray(x), jax.lax.stop_gradient(scale)
    stopped = jax.lax.stop_gradient(x)
    return stopped + scale * (x - stopped)


class DregTerms(NamedTuple):
    """bound: L_K; surrogate: whose gradient is the DReG estimator (per example);
    log_weights: log w_k of the draws, (K, *batch)."""

    bound: jax.Array
    surrogate: jax.Array
    log_weights: jax.Array


def iwae_dreg(key: jax.Array, x: ArrayLike, posterior: Posterior, log_likelihood_fn,
              num_samples: int, *, prior: Prior | None = None,
              stopped: Posterior | None = None) -> DregTerms:
    """The IWAE bound of K draws and the DReG surrogate of its gradient.

    Args:
      key: a PRNG key.
      x: the batch, shape (*batch, *event).
      posterior: q(z|x), reparameterized, with `log_prob`.
      log_likelihood_fn: (z, x) ↦ log p(x|z).
      num_samples: K.
      prior: p(z); N(0, I) by default. Its own parameters get the IWAE gradient.
      stopped: q with every parameter stopped (default: `stop_gradient` of the
        posterior's leaves; pass it when q reads parameters that are not leaves,
        such as a network called inside it).

    Returns:
      DregTerms of shape `batch`.

    References:
      Tucker, Lawson, Gu & Maddison, Doubly Reparameterized Gradient Estimators
      for Monte Carlo Objectives, ICLR 2019.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    x = jnp.asarray(x)
    prior = StandardNormal(jnp.shape(posterior.mean)[-1]) if prior is None else prior
    stopped = jax.tree.map(jax.lax.stop_gradient, posterior) if stopped is None else stopped
    z = posterior.sample(key, num_samples)

    def log_weights(z):
        return log_likelihood_fn(z, x) + prior.log_prob(z) - stopped.log_prob(z)

    weights = jax.nn.softmax(jax.lax.stop_gradient(log_weights(z)), axis=0)
    log_w = log_weights(scale_gradient(z, weights[..., None]))
    bound = jax.nn.logsumexp(log_w, axis=0) - jnp.log(num_samples).astype(log_w.dtype)
    return DregTerms(bound, jnp.sum(weights * log_w, axis=0), log_w)
