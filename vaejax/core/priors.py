"""Priors p(z) as pytrees: `log_prob(z)` and `sample(key, num_samples)`.

A learned prior is one of these built from parameters inside a model (the
mixture's weights, means and variances are then trained with the rest). Shapes
that sampling needs are static fields, so a prior passes through `jit` and
`vmap` like any pytree.
"""

import dataclasses
import math
from typing import NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from vaejax.core import gaussian


@runtime_checkable
class Prior(Protocol):
    """p(z) over events of a fixed shape."""

    def log_prob(self, z: jax.Array) -> jax.Array: ...

    def sample(self, key: jax.Array, num_samples: int) -> jax.Array: ...


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class StandardNormal:
    """N(0, I) over vectors of size `dim`."""

    dim: int

    def log_prob(self, z):
        return gaussian.standard_normal_log_prob(z)

    def sample(self, key, num_samples):
        return jax.random.normal(key, (num_samples, self.dim))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class UniformCategorical:
    """`num_variables` independent uniform categoricals of `num_categories`; one-hot draws."""

    num_variables: int
    num_categories: int

    def log_prob(self, one_hot):
        one_hot = jnp.asarray(one_hot)
        value = -self.num_variables * math.log(self.num_categories)
        return jnp.full(one_hot.shape[:-2], value, one_hot.dtype)

    def sample(self, key, num_samples):
        shape = (num_samples, self.num_variables)
        k = self.num_categories
        return jax.nn.one_hot(jax.random.randint(key, shape, 0, k), k)


class MixtureOfGaussians(NamedTuple):
    """Σ_c π_c N(μ_c, diag σ_c²): logits (C,), means (C, d), log_vars (C, d).

    The KL from a Gaussian posterior has no closed form: objectives estimate it
    by Monte Carlo (`vaejax.kl_divergence` with a key).
    """

    logits: jax.Array
    means: jax.Array
    log_vars: jax.Array

    def log_prob(self, z):
        z = jnp.asarray(z)[..., None, :]  # against every component
        per_component = gaussian.diag_normal_log_prob(
            z, *jnp.broadcast_arrays(self.means, self.log_vars))
        return jax.nn.logsumexp(per_component + jax.nn.log_softmax(self.logits), axis=-1)

    def sample(self, key, num_samples):
        pick_key, noise_key = jax.random.split(key)
        c = jax.random.categorical(pick_key, self.logits, shape=(num_samples,))
        eps = jax.random.normal(noise_key, (num_samples, self.means.shape[-1]), self.means.dtype)
        return self.means[c] + jnp.exp(0.5 * self.log_vars[c]) * eps
