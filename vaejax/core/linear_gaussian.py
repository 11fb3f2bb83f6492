"""The linear-Gaussian latent model, whose evidence and posterior are exact.

p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I) gives p(x) = N(b, WWᵀ + σ²I) and
p(z|x) = N(ΣWᵀ(x − b)/σ², Σ) with Σ = (I + WᵀW/σ²)⁻¹ (probabilistic PCA).
It is the oracle against which the ELBO and log p(x) estimators are checked.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import cho_solve

from vaejax.core import gaussian, likelihoods
from vaejax.core.posteriors import CholeskyGaussian


class LinearGaussian(NamedTuple):
    """weight W (D, d), bias b (D,), log_scale log σ (scalar)."""

    weight: jax.Array
    bias: jax.Array
    log_scale: jax.Array

    def log_likelihood(self, z: jax.Array, x: jax.Array) -> jax.Array:
        """log p(x|z) for z (..., d) and x (..., D) broadcasting; shape (...)."""
        return likelihoods.gaussian_log_likelihood(z @ self.weight.T + self.bias, x, self.log_scale)

    def _marginal_scale_tril(self):
        d_x = self.weight.shape[0]
        cov = self.weight @ self.weight.T + jnp.exp(2.0 * self.log_scale) * jnp.eye(d_x)
        return jnp.linalg.cholesky(cov)

    def log_marginal(self, x: jax.Array) -> jax.Array:
        """Exact log p(x) = log N(x; b, WWᵀ + σ²I); x (..., D) → (...)."""
        scale_tril = self._marginal_scale_tril()
        x = jnp.asarray(x)
        scale_tril = jnp.broadcast_to(scale_tril, x.shape + x.shape[-1:])
        return gaussian.mvn_tril_log_prob(x, jnp.broadcast_to(self.bias, x.shape), scale_tril)

    def posterior(self, x: jax.Array) -> CholeskyGaussian:
        """The exact posterior p(z|x) as a CholeskyGaussian with x's batch shape."""
        x = jnp.asarray(x)
        d = self.weight.shape[1]
        inv_var = jnp.exp(-2.0 * self.log_scale)
        precision_chol = jnp.linalg.cholesky(jnp.eye(d) + inv_var * self.weight.T @ self.weight)
        cov = cho_solve((precision_chol, True), jnp.eye(d))
        mean = inv_var * (x - self.bias) @ self.weight @ cov
        scale_tril = jnp.broadcast_to(jnp.linalg.cholesky(cov), mean.shape + (d,))
        return CholeskyGaussian(mean, scale_tril)

    def sample(self, key: jax.Array, num_samples: int) -> jax.Array:
        """Draws x ~ p(x), shape (num_samples, D)."""
        z_key, x_key = jax.random.split(key)
        z = jax.random.normal(z_key, (num_samples, self.weight.shape[1]))
        noise = jnp.exp(self.log_scale) * jax.random.normal(x_key, (num_samples, self.weight.shape[0]))
        return z @ self.weight.T + self.bias + noise
