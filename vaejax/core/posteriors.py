"""Gaussian posteriors q(z|x) as explicit pytrees, and the contract every posterior meets.

The objectives take a posterior rather than loose arrays so one ELBO, IWAE and
importance-sampling implementation serves every family. Each method is a thin
call of the pure functions in `gaussian`.

`sample_and_log_prob` draws the noise ε once and gives both the reparameterized
draw z = μ + Lε and its log-density written in terms of ε
(−½‖ε‖² − log|det L| − (d/2) log 2π) instead of (z − μ) scaled by the inverse
scale. The two are equal in exact arithmetic, but the latter's gradient is a
difference of two terms of size ε/σ that cancel only approximately in float32
and overflows where σ is tiny next to μ, a regime IWAE training can drive an
encoder into.
"""

from typing import NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from vaejax.core import _checks, gaussian


@runtime_checkable
class Posterior(Protocol):
    """q(z|x) with batch shape `batch` and draws of shape (*batch, *event).

    `sample` and `sample_and_log_prob` add a leading axis when `num_samples` is
    given; `sample_and_log_prob` uses one noise draw for both results. `mean` is
    E_q[z]; `mode()` is a point code (the mean, or the most likely category).
    Closed-form KLs against priors are registered per pair of types with
    `vaejax.register_kl`.
    """

    def sample(self, key: jax.Array, num_samples: int | None = None) -> jax.Array: ...

    def log_prob(self, z: jax.Array) -> jax.Array: ...

    def sample_and_log_prob(self, key: jax.Array, num_samples: int | None = None
                            ) -> tuple[jax.Array, jax.Array]: ...

    def mode(self) -> jax.Array: ...


def _noise(key, mean, num_samples):
    return jax.random.normal(key, _checks.sample_shape(mean, num_samples), jnp.result_type(mean))


class DiagonalGaussian(NamedTuple):
    """N(mean, diag exp(log_var)); mean and log_var of shape (..., d)."""

    mean: jax.Array
    log_var: jax.Array

    def sample(self, key, num_samples=None):
        return self.sample_and_log_prob(key, num_samples)[0]

    def log_prob(self, z):
        return gaussian.diag_normal_log_prob(z, self.mean, self.log_var)

    def sample_and_log_prob(self, key, num_samples=None):
        _checks.same_shape(mean=self.mean, log_var=self.log_var)
        eps = _noise(key, self.mean, num_samples)
        z = self.mean + jnp.exp(0.5 * jnp.asarray(self.log_var)) * eps
        return z, gaussian.standard_normal_log_prob(eps) - 0.5 * jnp.sum(self.log_var, axis=-1)

    def mode(self):
        return self.mean

    def kl_standard_normal(self):
        return gaussian.kl_standard_normal(self.mean, self.log_var)

    def entropy(self):
        return gaussian.diag_normal_entropy(self.log_var)


class CholeskyGaussian(NamedTuple):
    """N(mean, LLᵀ); mean (..., d) and lower-triangular scale_tril (..., d, d)."""

    mean: jax.Array
    scale_tril: jax.Array

    def sample(self, key, num_samples=None):
        return self.sample_and_log_prob(key, num_samples)[0]

    def log_prob(self, z):
        return gaussian.mvn_tril_log_prob(z, self.mean, self.scale_tril)

    def sample_and_log_prob(self, key, num_samples=None):
        _checks.tril_pair(self.mean, self.scale_tril)
        eps = _noise(key, self.mean, num_samples)
        z = self.mean + jnp.einsum("...ij,...j->...i", jnp.tril(self.scale_tril), eps)
        return z, gaussian.standard_normal_log_prob(eps) - gaussian.log_det_tril(self.scale_tril)

    def mode(self):
        return self.mean

    def kl_standard_normal(self):
        d = self.mean.shape[-1]
        eye = jnp.broadcast_to(jnp.eye(d, dtype=self.mean.dtype), self.scale_tril.shape)
        return gaussian.kl_mvn_tril(self.mean, self.scale_tril, jnp.zeros_like(self.mean), eye)

    def entropy(self):
        return gaussian.mvn_tril_entropy(self.scale_tril)
