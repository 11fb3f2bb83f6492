"""VampPrior (Tomczak & Welling 2018): p(z) = (1/K) Σ_k q(z | u_k) at K learned pseudo-inputs.

The prior is the encoder's own posterior at the pseudo-inputs, a
`vaejax.MixtureOfGaussians`, so the stock objectives train it unchanged (its KL
by Monte Carlo from the posterior's draws). Layers are gated dense layers as in
the paper: h = (W₁x + b₁) ⊙ σ(W₂x + b₂).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

import vaejax


class GatedDense(nnx.Module):
    def __init__(self, n_in: int, n_out: int, *, rngs: nnx.Rngs):
        self.value = nnx.Linear(n_in, n_out, rngs=rngs)
        self.gate = nnx.Linear(n_in, n_out, rngs=rngs)

    def __call__(self, x):
        return self.value(x) * jax.nn.sigmoid(self.gate(x))


def gated_mlp(sizes, rngs):
    return nnx.Sequential(*(GatedDense(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])))


class VampVAE(nnx.Module):
    """Gated-dense encoder and decoder (Bernoulli pixels) with a VampPrior.

    Args:
      shape: image shape (H, W, C).
      hidden: widths of the gated layers (the paper: 300, 300); the decoder reverses them.
      latent_dim: size of z (the paper: 40).
      num_pseudo_inputs: K (the paper: 500).
      rngs: initialisation keys.
    """

    def __init__(self, shape, hidden=(300, 300), latent_dim: int = 40,
                 num_pseudo_inputs: int = 500, *, rngs: nnx.Rngs):
        self.shape = tuple(shape)
        pixels = math.prod(shape)
        self.encoder = gated_mlp((pixels, *hidden), rngs)
        self.mean_head = nnx.Linear(hidden[-1], latent_dim, rngs=rngs)
        self.log_var_head = nnx.Linear(hidden[-1], latent_dim, rngs=rngs)
        self.decoder = gated_mlp((latent_dim, *hidden[::-1]), rngs)
        self.logits = nnx.Linear(hidden[0], pixels, rngs=rngs)
        # Pseudo-inputs start as faint noise images (the paper's N(0.05, 0.01²)).
        self.pseudo_inputs = nnx.Param(
            0.05 + 0.01 * jax.random.normal(rngs.params(), (num_pseudo_inputs, *shape)))

    def encode(self, x):
        h = self.encoder(x.reshape(*x.shape[:-3], -1))
        # log σ² clipped to [−6, 2] as in the paper: keeps the mixture's components sane.
        return vaejax.DiagonalGaussian(self.mean_head(h), jnp.clip(self.log_var_head(h), -6.0, 2.0))

    def decode(self, z):
        return self.logits(self.decoder(z))

    def log_likelihood(self, z, x):
        return vaejax.bernoulli_log_likelihood(self.decode(z), x.reshape(*x.shape[:-3], -1))

    def mean_image(self, z):
        return jax.nn.sigmoid(self.decode(z)).reshape(*z.shape[:-1], *self.shape)

    @property
    def prior(self) -> vaejax.MixtureOfGaussians:
        q = self.encode(jnp.clip(self.pseudo_inputs[...], 0.0, 1.0))
        return vaejax.MixtureOfGaussians(jnp.zeros(q.mean.shape[0]), q.mean, q.log_var)
