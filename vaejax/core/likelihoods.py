"""Reconstruction log-likelihoods log p(x|z), summed over the event axes, and bits/dim.

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


MIN_LOG_SCALE = -14.0


def _log_sigmoid(a):
    return -_softplus(-a)


def discretized_logistic_log_likelihood(mean: ArrayLike, log_scale: ArrayLike, x: ArrayLike,
                                        levels: int = 256, event_ndims: int = 1) -> jax.Array:
    """log P(x) of a logistic(mean, s) discretised to `levels` grey levels, s = exp(log_scale).

    Level k sits at x = k/(L−1) and gets the logistic's mass over its bin,
    [x − h, x + h] with h = 1/(2(L−1)); the end bins reach to ∓∞, so the L
    masses sum to 1 (Salimans et al. 2017). For the inner bins the mass
    σ(a) − σ(b) is written σ(a)σ(−b)(1 − e^(b−a)), exact in log space however far
    x is from the mean. log_scale is floored at MIN_LOG_SCALE (s ≈ 8·10⁻⁷, a bin
    thousands of scales wide: the nearest level's mass is 1 in every float type);
    below it the gradient is 0.

    Args:
      mean: decoder means on the [0, 1] scale of x, shape (..., *event).
      log_scale: log s, broadcastable to mean.
      x: grey levels k/(L−1), k ∈ {0, ..., L−1} (rounded to the nearest level),
        broadcastable to mean.
      levels: L, the number of grey levels (256 for 8-bit images), ≥ 2.
      event_ndims: how many trailing axes form one example.

    Returns:
      log-probabilities, shape mean.shape[:-event_ndims].

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.arange(256.0) / 255
      >>> p = jnp.exp(discretized_logistic_log_likelihood(0.3, -3.0, x, event_ndims=0))
      >>> round(float(p.sum()), 5)
      1.0
    """
    _checks.event_ndims(mean, event_ndims, "mean")
    _checks.broadcastable(mean=mean, log_scale=log_scale, x=x)
    _checks.at_least(levels, 2, "levels")
    dtype = jnp.result_type(mean, log_scale, x)
    # Half precision overflows e^(−log s) for sharp logistics: computed in float32 at least.
    mean, log_scale, x = (jnp.asarray(a, jnp.promote_types(dtype, jnp.float32))
                          for a in (mean, log_scale, x))
    top = levels - 1
    k = jnp.clip(jnp.round(x * top), 0, top)
    inv_scale = jnp.exp(-jnp.maximum(log_scale, MIN_LOG_SCALE))
    upper = inv_scale * (k + 0.5 - top * mean) / top  # standardised bin edges
    lower = inv_scale * (k - 0.5 - top * mean) / top
    inner = (k > 0) & (k < top)
    # upper − lower without cancellation; 1 at the end bins, whose unused log(0) would put a
    # NaN in the gradient.
    width = jnp.where(inner, inv_scale / top, 1.0)
    per_dim = (jnp.where(k < top, _log_sigmoid(upper), 0.0)
               + jnp.where(k > 0, _log_sigmoid(-lower), 0.0)
               + jnp.where(inner, jnp.log(-jnp.expm1(-width)), 0.0))
    per_dim = jnp.broadcast_to(per_dim, jnp.broadcast_shapes(mean.shape, log_scale.shape, x.shape))
    return _checks.sum_event(per_dim, event_ndims).astype(dtype)


def discretized_logistic_mixture_log_likelihood(logits: ArrayLike, mean: ArrayLike,
                                                log_scale: ArrayLike, x: ArrayLike,
                                                levels: int = 256,
                                                event_ndims: int = 1) -> jax.Array:
    """log Σ_m π_m P_m(x): a mixture of discretised logistics per value, π = softmax(logits).

    The components share the bins of `discretized_logistic_log_likelihood`;
    each value of x (pixel and channel) has its own mixture, so channels are
    independent given z (PixelCNN++ couples RGB channels; this does not).

    Args:
      logits: mixture logits, shape (..., *event, M).
      mean: component means, shape (..., *event, M).
      log_scale: component log-scales, shape (..., *event, M).
      x: grey levels k/(L−1), shape (..., *event), broadcastable.
      levels: L, the number of grey levels, ≥ 2.
      event_ndims: how many trailing axes of x form one example.

    Returns:
      log-probabilities, shape of the leading axes.
    """
    _checks.broadcastable(logits=logits, mean=mean, log_scale=log_scale)
    dtype = jnp.result_type(logits, mean, log_scale, x)
    logits, x = (jnp.asarray(a, jnp.promote_types(dtype, jnp.float32)) for a in (logits, x))
    _checks.event_ndims(x, event_ndims, "x")
    per_component = discretized_logistic_log_likelihood(mean, log_scale, x[..., None], levels,
                                                        event_ndims=0).astype(logits.dtype)
    per_dim = jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1) + per_component, axis=-1)
    return _checks.sum_event(per_dim, event_ndims).astype(dtype)


def bits_per_dim(log_likelihood: ArrayLike, num_dims: int,
                 dequantized_levels: int | None = None) -> jax.Array:
    """−log p(x) / (D·ln 2): a log-likelihood in nats as bits per pixel and channel.

    With `dequantized_levels` = L, log_likelihood is a density of uniformly
    dequantised data y = (k + u)/L, u ~ U[0, 1)^D, and D·log L is added:
    log P(k) ≥ E_u log p(y) − D log L, so the result bounds the bits/dim of the
    discrete model P from above.

    Args:
      log_likelihood: log p(x) (or a bound on it) in nats, any shape.
      num_dims: D, the values per example (H·W·C).
      dequantized_levels: L when log_likelihood is of dequantised data; None
        when it is already a log-probability of discrete x.

    Returns:
      bits per dimension, the shape of log_likelihood.
    """
    _checks.at_least(num_dims, 1, "num_dims")
    nats = -jnp.asarray(log_likelihood)
    if dequantized_levels is not None:
        _checks.at_least(dequantized_levels, 2, "dequantized_levels")
        nats = nats + num_dims * math.log(dequantized_levels)
    return nats / (num_dims * math.log(2.0))
