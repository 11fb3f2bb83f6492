"""Discrete latents: the score-function (REINFORCE) estimator, Gumbel-softmax,
and categorical log-probabilities and KL."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vaejax.core import _checks


def score_function_surrogate(log_prob: ArrayLike, value: ArrayLike,
                             baseline: ArrayLike = 0.0) -> jax.Array:
    """A surrogate whose value is f(z) and whose gradient is the REINFORCE estimator.

    ∇ surrogate = ∇f(z) + (f(z) − b)·∇ log q(z), an unbiased estimate of
    ∇ E_q[f(z)] for z ~ q drawn *without* a gradient path (stop it, or draw a
    discrete z). The baseline b must not depend on z; it lowers the variance
    without bias.

    Args:
      log_prob: log q(z), differentiable in q's parameters, shape (...).
      value: f(z), shape (...); its direct dependence on parameters (e.g. a
        decoder's) contributes the pathwise term ∇f.
      baseline: b, broadcastable to value; it receives no gradient here.

    Returns:
      the surrogate, shape (...), equal to `value` in the forward pass.

    References:
      Williams, Simple statistical gradient-following algorithms for
      connectionist reinforcement learning, 1992.
    """
    _checks.broadcastable(log_prob=log_prob, value=value, baseline=baseline)
    log_prob, value = jnp.asarray(log_prob), jnp.asarray(value)
    advantage = jax.lax.stop_gradient(value - baseline)
    return value + advantage * (log_prob - jax.lax.stop_gradient(log_prob))


def leave_one_out_baseline(values: ArrayLike, axis: int = 0) -> jax.Array:
    """For K draws, the baseline of draw k is the mean of the other K − 1 values.

    It is independent of draw k, so the estimator stays unbiased.

    Args:
      values: f(z_k) with K ≥ 2 along `axis`.
      axis: the sample axis.

    Returns:
      baselines, same shape as values, without gradient.
    """
    k = _checks.sample_axis(values, axis, 2, "values")
    values = jax.lax.stop_gradient(jnp.asarray(values))
    return (jnp.sum(values, axis=axis, keepdims=True) - values) / (k - 1)


def gumbel_softmax(key: jax.Array, logits: ArrayLike, temperature: float | jax.Array,
                   hard: bool = False) -> jax.Array:
    """y = softmax((logits + g)/τ), g ~ Gumbel(0, 1): a relaxed categorical draw.

    With hard=True the forward value is the one-hot argmax (the exact categorical
    draw) and the gradient is that of the relaxed y (straight-through).

    Args:
      key: a PRNG key.
      logits: unnormalised log-probabilities, shape (..., categories).
      temperature: τ > 0; as τ → 0 the draws approach one-hot.
      hard: return one-hot values with straight-through gradients.

    Returns:
      points on the simplex, same shape as logits.

    References:
      Jang, Gu & Poole, Categorical Reparameterization with Gumbel-Softmax, ICLR 2017.
      Maddison, Mnih & Teh, The Concrete Distribution, ICLR 2017.
    """
    _checks.in_range(temperature, "temperature", 0.0, open_low=True)
    logits = jnp.asarray(logits)
    # At least float32 inside: 1/τ² of the gradient overflows half precision for small τ.
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    perturbed = logits.astype(dtype) + jax.random.gumbel(key, logits.shape, logits.dtype)
    # Shifted to a maximum of 0 (softmax is unchanged, so the shift carries no gradient)
    # and floored where exp underflows anyway, so that neither a small τ nor a −∞
    # logit overflows the quotient (0·∞ = NaN in the gradient).
    perturbed = perturbed - jax.lax.stop_gradient(jnp.max(perturbed, axis=-1, keepdims=True))
    floor = 2.0 * math.log(jnp.finfo(dtype).tiny) * temperature
    y = jax.nn.softmax(jnp.maximum(perturbed, floor) / temperature, axis=-1).astype(logits.dtype)
    if not hard:
        return y
    one_hot = jax.nn.one_hot(jnp.argmax(y, axis=-1), logits.shape[-1], dtype=y.dtype)
    return y + jax.lax.stop_gradient(one_hot - y)


def categorical_log_prob(logits: ArrayLike, one_hot: ArrayLike) -> jax.Array:
    """log Cat(z; softmax(logits)) = Σ z·log_softmax(logits) for one-hot z.

    A category of logit −∞ has log-probability −∞; where z is 0 it adds 0 (0·log 0 = 0).

    Args:
      logits: shape (..., categories); leading sample axes broadcast.
      one_hot: draws, shape (..., categories).

    Returns:
      log-probabilities, shape (...).
    """
    _checks.broadcastable(logits=logits, one_hot=one_hot)
    one_hot = jnp.asarray(one_hot)
    return jnp.sum(_xlog(one_hot, jax.nn.log_softmax(jnp.asarray(logits), axis=-1)), axis=-1)


def _xlog(x, log_y):
    """x·log y, 0 where x = 0 even for log y = −∞; the inner `where` keeps gradients finite."""
    zero = x == 0
    return jnp.where(zero, 0.0, x * jnp.where(zero, 0.0, log_y))


def kl_categorical(logits_q: ArrayLike, logits_p: ArrayLike) -> jax.Array:
    """KL(Cat(softmax(logits_q)) ‖ Cat(softmax(logits_p))) = Σ q (log q − log p).

    Categories with q = 0 (logit −∞) add 0; q > 0 where p = 0 makes the KL +∞.

    Args:
      logits_q: shape (..., categories).
      logits_p: same shape (a uniform prior is zeros).

    Returns:
      KL divergences in nats, shape (...).
    """
    _checks.same_shape(logits_q=logits_q, logits_p=logits_p)
    log_q = jax.nn.log_softmax(jnp.asarray(logits_q), axis=-1)
    log_p = jax.nn.log_softmax(jnp.asarray(logits_p), axis=-1)
    return jnp.sum(_xlog(jnp.exp(log_q), log_q) - _xlog(jnp.exp(log_q), log_p), axis=-1)


def uniform_categorical_log_prob(one_hot: ArrayLike) -> jax.Array:
    """log p(z) = −d·log K under the uniform prior over d variables of K categories.

    Args:
      one_hot: draws, shape (..., d, K).

    Returns:
      log-probabilities, shape (...).
    """
    one_hot = jnp.asarray(one_hot)
    d, k = one_hot.shape[-2:]
    return jnp.full(one_hot.shape[:-2], -d * math.log(k), one_hot.dtype)


class Categorical(NamedTuple):
    """q(z|x) over d independent categorical variables; logits of shape (..., d, K).

    Draws are one-hot and carry no gradient: train through them with
    `gumbel_softmax` or `score_function_surrogate`.
    """

    logits: jax.Array

    def sample(self, key, num_samples=None):
        shape = _checks.sample_shape(self.logits, num_samples)
        draws = jax.random.categorical(key, jnp.broadcast_to(self.logits, shape))
        return jax.nn.one_hot(draws, self.logits.shape[-1], dtype=self.logits.dtype)

    def log_prob(self, one_hot):
        return jnp.sum(categorical_log_prob(self.logits, one_hot), axis=-1)

    def sample_and_log_prob(self, key, num_samples=None):
        one_hot = self.sample(key, num_samples)
        return one_hot, self.log_prob(one_hot)

    @property
    def mean(self):
        """E_q[z]: the category probabilities, shape (..., d, K)."""
        return jax.nn.softmax(self.logits, axis=-1)

    def mode(self):
        """The most likely category of each variable, one-hot."""
        return jax.nn.one_hot(jnp.argmax(self.logits, axis=-1), self.logits.shape[-1],
                              dtype=self.logits.dtype)

    def entropy(self):
        log_q = jax.nn.log_softmax(self.logits, axis=-1)
        return -jnp.sum(_xlog(jnp.exp(log_q), log_q), axis=(-2, -1))

    def kl_uniform(self):
        # KL(q ‖ uniform) = d·log K − H[q], without a log-softmax of constant logits (which
        # XLA constant-folds slowly for large d·K).
        d, k = self.logits.shape[-2:]
        return (d * math.log(k) - self.entropy()).astype(self.logits.dtype)
