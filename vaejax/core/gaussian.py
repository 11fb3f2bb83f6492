"""Gaussian sampling, log-densities and KL divergences.

Batch axes lead and the event axis is the last one: every function returns one
value per batch element and leaves the reduction over the batch to the caller.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular
from jax.typing import ArrayLike

from vaejax.core import _checks

_LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(key: jax.Array, mean: ArrayLike, log_var: ArrayLike,
                   num_samples: int | None = None) -> jax.Array:
    """Draws z = μ + σ·ε with ε ~ N(0, I) and σ = exp(log_var / 2).

    The draw is a differentiable function of (μ, log σ²), so gradients of a
    Monte Carlo objective flow through it (the pathwise estimator).

    Args:
      key: a PRNG key.
      mean: μ, shape (..., d).
      log_var: log σ², same shape as mean.
      num_samples: if given, a leading axis of that many independent draws.

    Returns:
      z with shape mean.shape, or (num_samples, *mean.shape).

    References:
      Kingma & Welling, Auto-Encoding Variational Bayes, 2014.
    """
    _checks.same_shape(mean=mean, log_var=log_var)
    mean, log_var = jnp.asarray(mean), jnp.asarray(log_var)
    eps = jax.random.normal(key, _checks.sample_shape(mean, num_samples), mean.dtype)
    return mean + jnp.exp(0.5 * log_var) * eps


def reparameterize_tril(key: jax.Array, mean: ArrayLike, scale_tril: ArrayLike,
                        num_samples: int | None = None) -> jax.Array:
    """Draws z = μ + Lε with ε ~ N(0, I): a sample of N(μ, LLᵀ).

    Args:
      key: a PRNG key.
      mean: μ, shape (..., d).
      scale_tril: L, lower-triangular Cholesky factor, shape (..., d, d).
      num_samples: if given, a leading axis of that many independent draws.

    Returns:
      z with shape mean.shape, or (num_samples, *mean.shape).
    """
    _checks.tril_pair(mean, scale_tril)
    mean, scale_tril = jnp.asarray(mean), jnp.asarray(scale_tril)
    eps = jax.random.normal(key, _checks.sample_shape(mean, num_samples), mean.dtype)
    return mean + jnp.einsum("...ij,...j->...i", jnp.tril(scale_tril), eps)


def standard_normal_log_prob(z: ArrayLike) -> jax.Array:
    """log N(z; 0, I) = −½Σ(z² + log 2π), summed over the last axis.

    Args:
      z: points, shape (..., d).

    Returns:
      log-densities, shape (...).
    """
    z = jnp.asarray(z)
    return -0.5 * jnp.sum(z**2 + _LOG_2PI, axis=-1)


def diag_normal_log_prob(z: ArrayLike, mean: ArrayLike, log_var: ArrayLike) -> jax.Array:
    """log N(z; μ, diag σ²) = −½Σ((z−μ)²/σ² + log σ² + log 2π).

    Args:
      z: points, shape (..., d); leading sample axes broadcast against mean.
      mean: μ, shape (..., d).
      log_var: log σ², same shape as mean.

    Returns:
      log-densities, shape of z without its last axis.
    """
    _checks.same_shape(mean=mean, log_var=log_var)
    _checks.broadcastable(z=z, mean=mean)
    z, mean, log_var = map(jnp.asarray, (z, mean, log_var))
    return -0.5 * jnp.sum(standardized_square(z - mean, log_var) + log_var + _LOG_2PI, axis=-1)


def standardized_square(diff, log_var):
    """diff²/σ², scaled before squaring (diff² alone may overflow), and 0 where diff = 0
    however small σ (0·∞ would be NaN, in the value and the gradient)."""
    safe_log_var = jnp.where(diff == 0, 0.0, log_var)
    return (diff * jnp.exp(-0.5 * safe_log_var))**2


def _tril_solve(scale_tril, b):
    """Solves L y = b for y, b of shape (..., d, k); batch axes broadcast."""
    shape = jnp.broadcast_shapes(scale_tril.shape[:-2], b.shape[:-2])
    return solve_triangular(jnp.broadcast_to(scale_tril, shape + scale_tril.shape[-2:]),
                            jnp.broadcast_to(b, shape + b.shape[-2:]), lower=True)


def log_det_tril(scale_tril):
    """log |det L| = Σ log |L_ii|, i.e. half of log det LLᵀ."""
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(scale_tril, axis1=-2, axis2=-1))), axis=-1)


def mvn_tril_log_prob(z: ArrayLike, mean: ArrayLike, scale_tril: ArrayLike) -> jax.Array:
    """log N(z; μ, LLᵀ) = −½‖L⁻¹(z−μ)‖² − Σ log|L_ii| − (d/2) log 2π.

    Computed with a triangular solve; no matrix is inverted.

    Args:
      z: points, shape (..., d); leading sample axes broadcast against mean.
      mean: μ, shape (..., d).
      scale_tril: L, lower-triangular, shape (..., d, d).

    Returns:
      log-densities, shape of z without its last axis.
    """
    _checks.tril_pair(mean, scale_tril)
    _checks.broadcastable(z=z, mean=mean)
    z, mean, scale_tril = map(jnp.asarray, (z, mean, scale_tril))
    scale_tril = jnp.tril(scale_tril)
    diff = z - mean
    # Leading sample axes become right-hand-side columns: one solve per factor,
    # no copy of L per sample. (The count is explicit: -1 is ambiguous for an empty batch.)
    extra = diff.ndim - mean.ndim
    count = math.prod(diff.shape[:extra])
    columns = jnp.moveaxis(diff.reshape(count, *diff.shape[extra:]), 0, -1)
    white = jnp.moveaxis(_tril_solve(scale_tril, columns), -1, 0).reshape(diff.shape)
    d = mean.shape[-1]
    return -0.5 * jnp.sum(white**2, axis=-1) - log_det_tril(scale_tril) - 0.5 * d * _LOG_2PI


def kl_standard_normal(mean: ArrayLike, log_var: ArrayLike) -> jax.Array:
    """KL(N(μ, diag σ²) ‖ N(0, I)) = ½Σ(μ² + σ² − log σ² − 1).

    Args:
      mean: μ, shape (..., d).
      log_var: log σ², same shape as mean.

    Returns:
      KL divergences in nats, shape (...).

    References:
      Kingma & Welling, Auto-Encoding Variational Bayes, 2014, Appendix B.
    """
    _checks.same_shape(mean=mean, log_var=log_var)
    mean, log_var = jnp.asarray(mean), jnp.asarray(log_var)
    return 0.5 * jnp.sum(mean**2 + jnp.exp(log_var) - log_var - 1.0, axis=-1)


def kl_diag_normals(mean_q: ArrayLike, log_var_q: ArrayLike,
                    mean_p: ArrayLike, log_var_p: ArrayLike) -> jax.Array:
    """KL(N(μq, diag σq²) ‖ N(μp, diag σp²)).

    = ½Σ(log σp² − log σq² + (σq² + (μq − μp)²)/σp² − 1).

    Args:
      mean_q: μq, shape (..., d).
      log_var_q: log σq², same shape.
      mean_p: μp, same shape.
      log_var_p: log σp², same shape.

    Returns:
      KL divergences in nats, shape (...).
    """
    _checks.same_shape(mean_q=mean_q, log_var_q=log_var_q, mean_p=mean_p, log_var_p=log_var_p)
    mean_q, log_var_q, mean_p, log_var_p = map(jnp.asarray, (mean_q, log_var_q, mean_p, log_var_p))
    var_ratio = jnp.exp(log_var_q - log_var_p)
    mahalanobis = standardized_square(mean_q - mean_p, log_var_p)
    return 0.5 * jnp.sum(var_ratio + mahalanobis - 1.0 - (log_var_q - log_var_p), axis=-1)


def kl_mvn_tril(mean_q: ArrayLike, scale_tril_q: ArrayLike,
                mean_p: ArrayLike, scale_tril_p: ArrayLike) -> jax.Array:
    """KL(N(μq, Σq) ‖ N(μp, Σp)) for Σ = LLᵀ.

    = ½[tr(Σp⁻¹Σq) + (μp−μq)ᵀΣp⁻¹(μp−μq) − d + log det Σp − log det Σq],
    with tr(Σp⁻¹Σq) = ‖Lp⁻¹Lq‖²_F and the quadratic form = ‖Lp⁻¹(μp−μq)‖²,
    both from one triangular solve.

    Args:
      mean_q: μq, shape (..., d).
      scale_tril_q: Lq, lower-triangular, shape (..., d, d).
      mean_p: μp, shape (..., d).
      scale_tril_p: Lp, lower-triangular, shape (..., d, d).

    Returns:
      KL divergences in nats, shape (...).
    """
    _checks.same_shape(mean_q=mean_q, mean_p=mean_p)
    _checks.tril_pair(mean_q, scale_tril_q, "scale_tril_q")
    _checks.tril_pair(mean_p, scale_tril_p, "scale_tril_p")
    mean_q, mean_p = jnp.asarray(mean_q), jnp.asarray(mean_p)
    lq, lp = jnp.tril(jnp.asarray(scale_tril_q)), jnp.tril(jnp.asarray(scale_tril_p))
    rhs = jnp.concatenate([lq, (mean_p - mean_q)[..., None]], axis=-1)
    solved = _tril_solve(lp, rhs)
    trace = jnp.sum(solved[..., :-1]**2, axis=(-2, -1))
    mahalanobis = jnp.sum(solved[..., -1]**2, axis=-1)
    d = mean_q.shape[-1]
    return 0.5 * (trace + mahalanobis - d) + log_det_tril(lp) - log_det_tril(lq)


def diag_normal_entropy(log_var: ArrayLike) -> jax.Array:
    """H[N(μ, diag σ²)] = ½Σ(1 + log 2π + log σ²).

    Args:
      log_var: log σ², shape (..., d).

    Returns:
      entropies in nats, shape (...).
    """
    return 0.5 * jnp.sum(1.0 + _LOG_2PI + jnp.asarray(log_var), axis=-1)


def mvn_tril_entropy(scale_tril: ArrayLike) -> jax.Array:
    """H[N(μ, LLᵀ)] = (d/2)(1 + log 2π) + Σ log|L_ii|.

    Args:
      scale_tril: L, lower-triangular, shape (..., d, d).

    Returns:
      entropies in nats, shape (...).
    """
    _checks.square(scale_tril)
    scale_tril = jnp.asarray(scale_tril)
    d = scale_tril.shape[-1]
    return 0.5 * d * (1.0 + _LOG_2PI) + log_det_tril(scale_tril)
