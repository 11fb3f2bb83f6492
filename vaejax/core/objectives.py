"""The ELBO in its equivalent forms, the IWAE bound and importance-sampled log p(x).

The prior is N(0, I) unless a `prior` (or, for the importance weights, a
`log_prior_fn`) is given. `log_likelihood_fn(z, x)`
is the decoder's log p(x|z): z has shape (num_samples, *batch, *latent) and the
result (num_samples, *batch).
"""

from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vaejax.core import _checks, gaussian
from vaejax.core.divergences import kl_from_draws
from vaejax.core.posteriors import Posterior
from vaejax.core.priors import Prior, StandardNormal

LogLikelihoodFn = Callable[[jax.Array, jax.Array], jax.Array]
LogPriorFn = Callable[[jax.Array], jax.Array]


class ElboTerms(NamedTuple):
    """Per-example terms of the (β-weighted) ELBO, in nats.

    Attributes:
      elbo: E_q[log p(x|z)] − KL(q‖p), the evidence lower bound (β plays no part).
      loss: −E_q[log p(x|z)] + β·KL, the β-VAE objective to minimise.
      log_likelihood: E_q[log p(x|z)], the expected reconstruction log-likelihood.
      kl: KL(q(z|x)‖p(z)), analytic or its Monte Carlo estimate.
    """

    elbo: jax.Array
    loss: jax.Array
    log_likelihood: jax.Array
    kl: jax.Array

    @property
    def rate(self) -> jax.Array:
        """The rate R = KL(q‖p) of the rate–distortion view."""
        return self.kl

    @property
    def distortion(self) -> jax.Array:
        """The distortion D = −E_q[log p(x|z)]."""
        return -self.log_likelihood


def elbo(key: jax.Array, x: ArrayLike, posterior: Posterior,
         log_likelihood_fn: LogLikelihoodFn, *, prior: Prior | None = None,
         num_samples: int = 1, beta: float | jax.Array = 1.0,
         form: Literal["analytic", "monte_carlo", "entropy"] = "analytic") -> ElboTerms:
    """ELBO(x) = E_q[log p(x|z)] − KL(q(z|x)‖p(z)) with z = reparameterized draws.

    Three estimators of the same quantity, unbiased for it:
      "analytic":    mean_s log p(x|z_s) − KL, the KL registered for the pair
                     (posterior, prior) (`vaejax.register_kl`); where none is,
                     its Monte Carlo estimate on the same draws;
      "monte_carlo": mean_s [log p(x|z_s) + log p(z_s) − log q(z_s|x)];
      "entropy":     mean_s [log p(x|z_s) + log p(z_s)] + H[q] (closed-form entropy).

    Args:
      key: a PRNG key for the draws z_s ~ q(z|x).
      x: the batch, shape (*batch, *event).
      posterior: q(z|x) with batch shape `batch` (see `vaejax.Posterior`).
      log_likelihood_fn: (z, x) ↦ log p(x|z), see the module docstring.
      prior: p(z); N(0, I) by default.
      num_samples: draws per example.
      beta: weight of the KL in `loss` (β-VAE); β = 1 is the negative ELBO.
      form: which estimator of the KL part.

    Returns:
      ElboTerms, each of shape `batch`.

    References:
      Kingma & Welling, Auto-Encoding Variational Bayes, 2014.
      Higgins et al., β-VAE, ICLR 2017.
    """
    _checks.in_range(beta, "beta", 0.0)
    _checks.at_least(num_samples, 1)
    if form not in ("analytic", "monte_carlo", "entropy"):
        raise ValueError(f"form must be 'analytic', 'monte_carlo' or 'entropy', got {form!r}")
    prior = StandardNormal(jnp.shape(posterior.mean)[-1]) if prior is None else prior
    z, log_q = posterior.sample_and_log_prob(key, num_samples)
    log_lik = jnp.mean(log_likelihood_fn(z, jnp.asarray(x)), axis=0)
    if form == "analytic":
        kl = kl_from_draws(posterior, prior, z, log_q)
    elif form == "entropy":
        kl = -jnp.mean(prior.log_prob(z), axis=0) - posterior.entropy()
    else:
        kl = jnp.mean(log_q - prior.log_prob(z), axis=0)
    return ElboTerms(elbo=log_lik - kl, loss=-log_lik + beta * kl, log_likelihood=log_lik, kl=kl)


def log_importance_weights(key: jax.Array, x: ArrayLike, posterior: Posterior,
                           log_likelihood_fn: LogLikelihoodFn, num_samples: int,
                           log_prior_fn: LogPriorFn = gaussian.standard_normal_log_prob
                           ) -> jax.Array:
    """log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x), z_k ~ q(z|x).

    Args:
      key: a PRNG key.
      x: the batch, shape (*batch, *event).
      posterior: q(z|x) with batch shape `batch` (Gaussian draws are reparameterized).
      log_likelihood_fn: (z, x) ↦ log p(x|z).
      num_samples: K.
      log_prior_fn: z ↦ log p(z); N(0, I) by default.

    Returns:
      log-weights, shape (K, *batch).
    """
    z, log_q = posterior.sample_and_log_prob(key, num_samples)
    return log_likelihood_fn(z, jnp.asarray(x)) + log_prior_fn(z) - log_q


def iwae_bound(log_weights: ArrayLike, axis: int = 0) -> jax.Array:
    """L_K = log (1/K) Σ_k w_k = logsumexp(log w) − log K.

    A lower bound on log p(x) that rises with K (K = 1 is the ELBO).

    Args:
      log_weights: log importance weights with K along `axis`.
      axis: the sample axis.

    Returns:
      the bound, log_weights without `axis`.

    References:
      Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016.
    """
    k = _checks.sample_axis(log_weights, axis)
    # Integer log-weights are promoted: log K must not be rounded to an integer.
    log_weights = jnp.asarray(log_weights, jnp.result_type(log_weights, 0.0))
    return jax.nn.logsumexp(log_weights, axis=axis) - jnp.log(k).astype(log_weights.dtype)


def importance_log_likelihood(key: jax.Array, x: ArrayLike, posterior: Posterior,
                              log_likelihood_fn: LogLikelihoodFn, num_samples: int = 5000,
                              chunk_size: int = 100,
                              log_prior_fn: LogPriorFn = gaussian.standard_normal_log_prob
                              ) -> jax.Array:
    """Estimates log p(x) ≈ log (1/K) Σ_k p(x, z_k)/q(z_k|x) with K draws from q.

    The K draws are taken `chunk_size` at a time inside one `lax.map`, so memory
    grows with the chunk, not with K; the chunks are combined by logsumexp. A
    chunk decodes chunk_size × batch latents: on a CPU, keeping that near 10⁴
    keeps the decoder's output in cache (measured in benchmarks/is_nll.py).

    Args:
      key: a PRNG key.
      x: the batch, shape (*batch, *event).
      posterior: q(z|x), the proposal.
      log_likelihood_fn: (z, x) ↦ log p(x|z).
      num_samples: K; must be a multiple of chunk_size (or smaller than it).
      chunk_size: draws per chunk.
      log_prior_fn: z ↦ log p(z); N(0, I) by default.

    Returns:
      estimates of log p(x), shape `batch`.

    References:
      Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016.
    """
    chunk_size = min(chunk_size, num_samples)
    if num_samples < 1 or chunk_size < 1 or num_samples % chunk_size:
        raise ValueError(
            f"num_samples={num_samples} must be a positive multiple of chunk_size={chunk_size}")

    def chunk(k):
        log_w = log_importance_weights(k, x, posterior, log_likelihood_fn, chunk_size, log_prior_fn)
        return jax.nn.logsumexp(log_w, axis=0)

    per_chunk = jax.lax.map(chunk, jax.random.split(key, num_samples // chunk_size))
    return jax.nn.logsumexp(per_chunk, axis=0) - jnp.log(num_samples).astype(per_chunk.dtype)
