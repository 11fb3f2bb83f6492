"""Gaussian posteriors q(z|x) as explicit pytrees.

The objectives take a posterior rather than loose arrays so one ELBO, IWAE and
importance-sampling implementation serves diagonal and full covariances. Each
method is a thin call of the pure functions in `gaussian`.

`sample_and_log_prob` gives a reparameterized draw with its log-density written
in terms of the noise ε (−½‖ε‖² − log|det L| − (d/2) log 2π) instead of
(z − μ) scaled by the inverse scale. The two are equal in exact arithmetic, but
the latter's gradient is a difference of two terms of size ε/σ that cancel only
approximately in float32 and overflows where σ is tiny next to μ, a regime
IWAE training can drive an encoder into.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from vaejax.core import gaussian


class DiagonalGaussian(NamedTuple):
    """N(mean, diag exp(log_var)); mean and log_var of shape (..., d)."""

    mean: jax.Array
    log_var: jax.Array

    def sample(self, key, num_samples=None):
        return gaussian.reparameterize(key, self.mean, self.log_var, num_samples)

    def log_prob(self, z):
        return gaussian.diag_normal_log_prob(z, self.mean, self.log_var)

    def sample_and_log_prob(self, key, num_samples=None):
        z = self.sample(key, num_samples)
        eps = jax.random.normal(key, z.shape, z.dtype)  # the draw behind z: same key, shape
        return z, gaussian.standard_normal_log_prob(eps) - 0.5 * jnp.sum(self.log_var, axis=-1)

    def kl_standard_normal(self):
        return gaussian.kl_standard_normal(self.mean, self.log_var)

    def entropy(self):
        return gaussian.diag_normal_entropy(self.log_var)


class CholeskyGaussian(NamedTuple):
    """N(mean, LLᵀ); mean (..., d) and lower-triangular scale_tril (..., d, d)."""

    mean: jax.Array
    scale_tril: jax.Array

    def sample(self, key, num_samples=None):
        return gaussian.reparameterize_tril(key, self.mean, self.scale_tril, num_samples)

    def log_prob(self, z):
        return gaussian.mvn_tril_log_prob(z, self.mean, self.scale_tril)

    def sample_and_log_prob(self, key, num_samples=None):
        z = self.sample(key, num_samples)
        eps = jax.random.normal(key, z.shape, z.dtype)
        return z, gaussian.standard_normal_log_prob(eps) - gaussian.log_det_tril(self.scale_tril)

    def kl_standard_normal(self):
        d = self.mean.shape[-1]
        eye = jnp.broadcast_to(jnp.eye(d, dtype=self.mean.dtype), self.scale_tril.shape)
        return gaussian.kl_mvn_tril(self.mean, self.scale_tril, jnp.zeros_like(self.mean), eye)

    def entropy(self):
        return gaussian.mvn_tril_entropy(self.scale_tril)
