"""M1+M2 (Kingma et al. 2014): M2 over the posterior means of a trained model, M1.

x ↦ f = E_q₁[z₁|x] by M1's frozen encoder, then an `M2` whose likelihood p(f|y, z) is
Gaussian (a mean and log σ per feature). M1's weights are model state, not
parameters: no optimizer touches them, and the run's checkpoints keep them. The
m2 objective's bound is on log p(f), not log p(x), so the family's evaluation names
it `test_feature_elbo`. Samples and reconstructions return to pixels through M1's
decoder (`mean_image` of f). Kingma et al.: M1 600–600 softplus with 50 latents, M2
on its features 500 softplus with 50 latents.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vaejax.models.m2 import M2


class Frozen(nnx.Variable):
    """State that training carries and checkpoints but never updates."""


class _Given(NamedTuple):
    """M1+M2 with its labels fixed: an unconditional model of x."""

    model: "M1M2"
    y: jax.Array

    def encode(self, x):
        return self.model.m2.given(self.y).encode(self.model.features(x))

    def log_likelihood(self, z, x):
        return self.model.m2.given(self.y).log_likelihood(z, self.model.features(x))

    @property
    def prior(self):
        return self.model.m2.given(self.y).prior

    def mean_image(self, z):
        f = self.model.m2.given(self.y).mean_image(z)
        return self.model.m1().mean_image(f.reshape(*f.shape[:-3], -1))


class M1M2(nnx.Module):
    """Args:
      m1: a trained unconditional model (any meeting the model contract) of images `shape`.
      shape: image shape (H, W, C).
      hidden, latent_dim, num_classes, activation: M2's, as in `M2`.
      rngs: initialisation keys.
    """

    def __init__(self, m1, shape, hidden=(500,), latent_dim=50, num_classes=10,
                 activation="softplus", *, rngs: nnx.Rngs):
        if hasattr(m1, "given"):
            raise ValueError("M1 must be an unconditional model: its features cannot need y")
        graphdef, state = nnx.split(m1)
        self.m1_graphdef = graphdef
        self.m1_state = Frozen(nnx.to_pure_dict(state))
        features = nnx.eval_shape(lambda: m1.encode(jnp.zeros((1, *shape))).mean).shape[-1]
        self.num_classes = num_classes
        self.m2 = M2((1, 1, features), hidden, latent_dim, num_classes, activation, "gaussian",
                     rngs=rngs)

    def m1(self):
        return nnx.merge(self.m1_graphdef, self.m1_state.get_value())

    def features(self, x):
        """f = E_q₁[z₁|x], shaped (..., 1, 1, F) as M2's "images"; no gradient reaches M1."""
        f = jax.lax.stop_gradient(self.m1().encode(x).mean)
        return f[..., None, None, :]

    def classify(self, x):
        return self.m2.classify(self.features(x))

    def given(self, y):
        return _Given(self, jnp.asarray(y))

    def bound_per_class(self, key, x):
        return self.m2.bound_per_class(key, self.features(x))
