"""Learned priors as NNX modules: calling one gives the core prior pytree."""

import jax
import jax.numpy as jnp
from flax import nnx

import vaejax


class GaussianMixturePrior(nnx.Module):
    """p(z) = Σ_c π_c N(μ_c, diag σ_c²) with learned π, μ, σ over `dim` latents.

    Means start spread as N(0, I) draws, variances at 1 and weights uniform, so
    at initialisation the prior is close to a broad unit Gaussian.
    """

    def __init__(self, num_components: int, dim: int, *, rngs: nnx.Rngs):
        self.logits = nnx.Param(jnp.zeros(num_components))
        self.means = nnx.Param(jax.random.normal(rngs.params(), (num_components, dim)))
        self.log_vars = nnx.Param(jnp.zeros((num_components, dim)))

    def __call__(self) -> vaejax.MixtureOfGaussians:
        return vaejax.MixtureOfGaussians(self.logits[...], self.means[...], self.log_vars[...])
