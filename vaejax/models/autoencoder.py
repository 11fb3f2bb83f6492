"""Autoencoders: a deterministic code h = f(x) and a decoder p(x|h), no prior.

Trained by the "ae", "sparse-ae", "contractive-ae" and "denoising-ae" objectives
and scored by `objectives.reconstruction_evaluation`. With no hidden layers both
maps are affine: trained with a Gaussian decoder (squared error) the decoder's
columns span the top principal subspace of the data (Baldi & Hornik 1989).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

import vaejax
from vaejax.models.vae import MLP


class PointCode(NamedTuple):
    """An autoencoder's "posterior": all mass on the code, so its mean and mode are h."""

    mean: jax.Array

    def mode(self) -> jax.Array:
        return self.mean


class Autoencoder(nnx.Module):
    """Args:
      shape: image shape (H, W, C).
      hidden: dense widths of the encoder (the decoder mirrors them); () for a linear AE.
      code_dim: d, the size of h (an affine function of the last hidden layer).
      activation: of the hidden layers.
      likelihood: "bernoulli" (logits) or "gaussian" (means, fixed scale).
      gaussian_scale: σ of the Gaussian decoder.
      rngs: initialisation keys.
    """

    def __init__(self, shape, hidden=(400,), code_dim=20, activation="relu",
                 likelihood="bernoulli", gaussian_scale=0.1, *, rngs: nnx.Rngs):
        self.shape, pixels = tuple(shape), math.prod(shape)
        self.likelihood, self.log_scale = likelihood, math.log(gaussian_scale)
        self.encoder = MLP((pixels, *hidden), activation, rngs=rngs)
        self.to_code = nnx.Linear((pixels, *hidden)[-1], code_dim, rngs=rngs)
        self.decoder = MLP((code_dim, *hidden[::-1]), activation, rngs=rngs)
        self.to_pixels = nnx.Linear((code_dim, *hidden[::-1])[-1], pixels, rngs=rngs)

    def code(self, x):
        """h, (..., d), of images (..., H, W, C)."""
        return self.to_code(self.encoder(x.reshape(*x.shape[:-3], -1)))

    def encode(self, x) -> PointCode:
        return PointCode(self.code(x))

    def decode(self, h):
        """Logits or means, flat: (..., H·W·C)."""
        return self.to_pixels(self.decoder(h))

    def log_likelihood(self, h, x):
        """log p(x|h) summed over the image."""
        x = x.reshape(*x.shape[:-3], -1)
        if self.likelihood == "bernoulli":
            return vaejax.bernoulli_log_likelihood(self.decode(h), x)
        return vaejax.gaussian_log_likelihood(self.decode(h), x, self.log_scale)

    def mean_image(self, h):
        out = self.decode(h)
        mean = jax.nn.sigmoid(out) if self.likelihood == "bernoulli" else jnp.clip(out, 0.0, 1.0)
        return mean.reshape(*h.shape[:-1], *self.shape)
