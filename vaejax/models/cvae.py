"""Conditional VAE (Sohn et al. 2015): q(z|x, y), p(x|z, y), p(z) = N(0, I), y a class label.

A conditional model offers `given(y)`: the model with the labels fixed, which meets
the unconditional contract (`encode(x)`, `log_likelihood(z, x)`, `prior`,
`mean_image(z)`). The stock objectives, evaluation, importance sampling and figures
condition through it on the batch's labels (`objectives.conditioned`), so the test
ELBO is the conditional bound on log p(x|y) and `vaejax evaluate` estimates log p(x|y).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

import vaejax
from vaejax.models.vae import MLP


class Given(NamedTuple):
    """A conditional model with its labels y fixed: an unconditional model."""

    model: "ConditionalVAE"
    y: jax.Array

    def encode(self, x):
        return self.model.encode(x, self.y)

    def log_likelihood(self, z, x):
        return self.model.log_likelihood(z, x, self.y)

    @property
    def prior(self):
        return self.model.prior

    def mean_image(self, z):
        return self.model.mean_image(z, self.y)


class ConditionalVAE(nnx.Module):
    """Args:
      shape: image shape (H, W, C).
      hidden: dense widths of the encoder (the decoder mirrors them).
      latent_dim: d.
      num_classes: K; labels are integers in [0, K).
      activation: of the hidden layers.
      likelihood: "bernoulli" pixels, or "gaussian": a mean and a log σ (clipped to [−6, 2])
        per value of x.
      rngs: initialisation keys.
    """

    def __init__(self, shape, hidden=(400,), latent_dim=20, num_classes=10, activation="relu",
                 likelihood="bernoulli", *, rngs: nnx.Rngs):
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        self.shape, pixels = tuple(shape), math.prod(shape)
        self.likelihood = likelihood
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.encoder = MLP((pixels + num_classes, *hidden), activation, rngs=rngs)
        self.posterior_head = nnx.Linear(hidden[-1], 2 * latent_dim, rngs=rngs)
        self.decoder = MLP((latent_dim + num_classes, *hidden[::-1]), activation, rngs=rngs)
        outputs = 2 * pixels if likelihood == "gaussian" else pixels  # the Gaussian's μ and log σ
        self.to_logits = nnx.Linear(hidden[0], outputs, rngs=rngs)

    def given(self, y) -> Given:
        return Given(self, jnp.asarray(y))

    def _with_label(self, h, y):
        """[h, one_hot(y)], the labels broadcast over h's leading (sample) axes."""
        one_hot = jax.nn.one_hot(y, self.num_classes, dtype=h.dtype)
        return jnp.concatenate([h, jnp.broadcast_to(one_hot, (*h.shape[:-1], self.num_classes))],
                               axis=-1)

    def encode(self, x, y):
        """q(z|x, y), a DiagonalGaussian."""
        out = self.posterior_head(self.encoder(self._with_label(x.reshape(*x.shape[:-3], -1), y)))
        return vaejax.DiagonalGaussian(out[..., :self.latent_dim], out[..., self.latent_dim:])

    def logits(self, z, y):
        return self.to_logits(self.decoder(self._with_label(z, y)))

    def log_likelihood(self, z, x, y):
        """log p(x|z, y) summed over x; leading axes of z broadcast."""
        out, x = self.logits(z, y), x.reshape(*x.shape[:-3], -1)
        if self.likelihood == "gaussian":
            mean, log_scale = jnp.split(out, 2, axis=-1)
            # σ ≥ e⁻⁶: a value that barely varies (an inactive feature) cannot make p unbounded.
            return vaejax.gaussian_log_likelihood(mean, x, jnp.clip(log_scale, -6.0, 2.0))
        return vaejax.bernoulli_log_likelihood(out, x)

    def mean_image(self, z, y):
        """E[x|z, y], shaped as x."""
        out = self.logits(z, y)
        if self.likelihood == "gaussian":
            mean = out[..., :math.prod(self.shape)]
        else:
            mean = jax.nn.sigmoid(out)
        return mean.reshape(*z.shape[:-1], *self.shape)

    @property
    def prior(self):
        return vaejax.StandardNormal(self.latent_dim)
