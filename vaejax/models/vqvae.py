"""VQ-VAE (van den Oord et al. 2017): an MLP encoder to n vectors, each replaced by the
nearest of K codes, an MLP decoder, Bernoulli pixels.

The codebook is an exponential moving average (`vaejax.EmaCodebook`) held as
non-parameter state: the "vq" objective updates it in place each step, and the
trainer carries and checkpoints it with the parameters. As a latent-variable
model, q(z|x) is the one-hot categorical of the nearest codes and p(z) uniform
over the K^n codes, so the stock evaluation scores the model's ELBO,
log p(x|z_q) − n·log K, and its importance-sampled likelihood (a point mass q
makes the two equal).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

import vaejax
from vaejax.models.vae import MLP


class CodebookState(nnx.Variable):
    """The EMA codebook's counts and sums: model state the optimiser does not touch."""


class VQVAE(nnx.Module):
    """Args:
      shape: image shape (H, W, C).
      hidden: dense widths of the encoder (the decoder mirrors them).
      num_latents: n, the code vectors per image.
      code_dim: d, the size of each code vector.
      num_codes: K, the codebook size.
      rngs: initialisation keys.
    """

    def __init__(self, shape, hidden=(400,), num_latents=8, code_dim=16, num_codes=64, *,
                 rngs: nnx.Rngs):
        self.shape, pixels = tuple(shape), math.prod(shape)
        self.num_latents, self.code_dim, self.num_codes = num_latents, code_dim, num_codes
        self.encoder = MLP((pixels, *hidden), "relu", rngs=rngs)
        self.to_vectors = nnx.Linear(hidden[-1], num_latents * code_dim, rngs=rngs)
        self.decoder = MLP((num_latents * code_dim, *hidden[::-1]), "relu", rngs=rngs)
        self.to_logits = nnx.Linear(hidden[0], pixels, rngs=rngs)
        start = vaejax.EmaCodebook.create(jax.random.normal(rngs.params(), (num_codes, code_dim)))
        self.counts, self.sums = CodebookState(start.counts), CodebookState(start.sums)

    @property
    def ema(self) -> vaejax.EmaCodebook:
        return vaejax.EmaCodebook(self.counts[...], self.sums[...])

    def codebook(self) -> jax.Array:
        """The K codes, (K, d)."""
        return self.ema.codebook()

    def vectors(self, x):
        """The encoder's outputs z_e, (..., n, d)."""
        h = self.encoder(x.reshape(*x.shape[:-3], -1))
        return self.to_vectors(h).reshape(*x.shape[:-3], self.num_latents, self.code_dim)

    def update_codebook(self, vectors, indices, decay: float) -> None:
        """One EMA step of the codebook towards the batch's vectors (in place)."""
        new = vaejax.ema_codebook_update(self.ema, vectors, indices, decay)
        self.counts[...], self.sums[...] = new.counts, new.sums

    def encode(self, x):
        """q(z|x): one-hot at each vector's nearest code (logits 0 there, −∞ elsewhere)."""
        indices = vaejax.vector_quantize(self.vectors(x), self.codebook()).indices
        one_hot = jax.nn.one_hot(indices, self.num_codes, dtype=bool)
        return vaejax.Categorical(jnp.where(one_hot, 0.0, -jnp.inf))

    def logits_from_vectors(self, vectors):
        """Pixel logits from code vectors (..., n, d), (..., H·W·C)."""
        return self.to_logits(self.decoder(vectors.reshape(*vectors.shape[:-2], -1)))

    def log_likelihood(self, z, x):
        """log p(x|z) for one-hot codes z (..., n, K)."""
        logits = self.logits_from_vectors(z @ self.codebook())
        return vaejax.bernoulli_log_likelihood(logits, x.reshape(*x.shape[:-3], -1))

    def mean_image(self, z):
        logits = self.logits_from_vectors(z @ self.codebook())
        return jax.nn.sigmoid(logits).reshape(*z.shape[:-2], *self.shape)

    @property
    def prior(self):
        return vaejax.UniformCategorical(self.num_latents, self.num_codes)
