"""Two stochastic layers (Burda et al. 2016, Table 1): x → z₁ → z₂ and z₂ → z₁ → x.

q(z₁, z₂|x) = q(z₁|x) q(z₂|z₁) and p(z₁, z₂) = p(z₂) p(z₁|z₂) are exposed as one
posterior and one prior over the concatenated code z = [z₁, z₂], so the stock
ELBO and IWAE objectives, importance sampling and evaluation train and score
the model unchanged (the KL by Monte Carlo; `vaejax.core.hierarchical`
gives the per-layer terms). With `vamp_pseudo_inputs`, p(z₂) is a VampPrior at
pseudo-inputs pushed through q(z₁|u) and q(z₂|z₁) (the hierarchical VampPrior
of Tomczak & Welling 2018, with its top layer's mean code).
"""

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

import vaejax
from vaejax.models.vae import MLP


@functools.partial(jax.tree_util.register_dataclass, data_fields=["bottom"],
                   meta_fields=["upper"])
@dataclasses.dataclass(frozen=True)
class StackedPosterior:
    """q(z₁|x) q(z₂|z₁) over z = [z₁, z₂]; `upper(z₁)` gives q(z₂|z₁)."""

    bottom: Any
    upper: Callable

    def sample_and_log_prob(self, key, num_samples=None):
        k1, k2 = jax.random.split(key)
        z1, log_q1 = self.bottom.sample_and_log_prob(k1, num_samples)
        z2, log_q2 = self.upper(z1).sample_and_log_prob(k2)
        return jnp.concatenate([z1, z2], axis=-1), log_q1 + log_q2

    def sample(self, key, num_samples=None):
        return self.sample_and_log_prob(key, num_samples)[0]

    def log_prob(self, z):
        z1, z2 = jnp.split(z, [self.bottom.mean.shape[-1]], axis=-1)
        return self.bottom.log_prob(z1) + self.upper(z1).log_prob(z2)

    @property
    def mean(self):
        """[E z₁, E[z₂ | z₁ = E z₁]]: a point code standing in for E_q[z]."""
        z1 = self.bottom.mean
        return jnp.concatenate([z1, self.upper(z1).mean], axis=-1)

    def mode(self):
        return self.mean


@functools.partial(jax.tree_util.register_dataclass, data_fields=["top"],
                   meta_fields=["lower", "bottom_dim"])
@dataclasses.dataclass(frozen=True)
class StackedPrior:
    """p(z₂) p(z₁|z₂) over z = [z₁, z₂]; `lower(z₂)` gives p(z₁|z₂)."""

    top: Any
    lower: Callable
    bottom_dim: int

    def log_prob(self, z):
        z1, z2 = jnp.split(z, [self.bottom_dim], axis=-1)
        return self.top.log_prob(z2) + self.lower(z2).log_prob(z1)

    def sample(self, key, num_samples):
        k1, k2 = jax.random.split(key)
        z2 = self.top.sample(k1, num_samples)
        return jnp.concatenate([self.lower(z2).sample(k2), z2], axis=-1)


class _Gaussian(nnx.Module):
    """An MLP with a diagonal-Gaussian head: input ↦ N(μ, diag σ²)."""

    def __init__(self, sizes, latent_dim, *, rngs):
        self.trunk = MLP(sizes, "tanh", rngs=rngs)
        self.head = nnx.Linear(sizes[-1], 2 * latent_dim, rngs=rngs)

    def __call__(self, h):
        out = self.head(self.trunk(h))
        mean, log_var = jnp.split(out, 2, axis=-1)
        return vaejax.DiagonalGaussian(mean, log_var)


class TwoLayerVAE(nnx.Module):
    """Burda et al.'s two-layer model: 784–200–200–z₁(100)–100–100–z₂(50), tanh, Bernoulli x.

    Args:
      shape: image shape (H, W, C).
      hidden: the deterministic widths below and above z₁ (Burda: 200, 100).
      latent_dims: (d₁, d₂) (Burda: 100, 50).
      vamp_pseudo_inputs: K > 0 gives p(z₂) a VampPrior at K pseudo-inputs.
      rngs: initialisation keys.
    """

    def __init__(self, shape, hidden=(200, 100), latent_dims=(100, 50),
                 vamp_pseudo_inputs: int = 0, *, rngs: nnx.Rngs):
        self.shape = tuple(shape)
        (h1, h2), (d1, d2) = hidden, latent_dims
        pixels = math.prod(shape)
        self.q1 = _Gaussian((pixels, h1, h1), d1, rngs=rngs)
        self.q2 = _Gaussian((d1, h2, h2), d2, rngs=rngs)
        self.p1 = _Gaussian((d2, h2, h2), d1, rngs=rngs)
        self.decoder = MLP((d1, h1, h1), "tanh", rngs=rngs)
        self.logits = nnx.Linear(h1, pixels, rngs=rngs)
        self.d1, self.d2 = d1, d2
        self.pseudo_inputs = (nnx.Param(0.05 + 0.01 * jax.random.normal(
            rngs.params(), (vamp_pseudo_inputs, *shape))) if vamp_pseudo_inputs else None)

    def encode(self, x):
        return StackedPosterior(self.q1(x.reshape(*x.shape[:-3], -1)), self.q2)

    def _logits(self, z):
        return self.logits(self.decoder(z[..., :self.d1]))

    def log_likelihood(self, z, x):
        return vaejax.bernoulli_log_likelihood(self._logits(z), x.reshape(*x.shape[:-3], -1))

    def mean_image(self, z):
        return jax.nn.sigmoid(self._logits(z)).reshape(*z.shape[:-1], *self.shape)

    @property
    def prior(self) -> StackedPrior:
        if self.pseudo_inputs is None:
            top = vaejax.StandardNormal(self.d2)
        else:
            u = jnp.clip(self.pseudo_inputs[...], 0.0, 1.0)
            q2 = self.q2(self.q1(u.reshape(u.shape[0], -1)).mean)
            top = vaejax.MixtureOfGaussians(jnp.zeros(u.shape[0]), q2.mean, q2.log_var)
        return StackedPrior(top, self.p1, self.d1)
