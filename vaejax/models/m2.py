"""M2, the semi-supervised VAE of Kingma et al. 2014: y a partly observed class latent.

p(x, y, z) = p(x|y, z) p(y) p(z), p(y) uniform over K classes, p(z) = N(0, I);
q(y|x) a classifier, q(z|x, y) Gaussian. The conditional part is a `ConditionalVAE`
(`given(y)`); the "m2" objective sums its ELBO over y where y is missing, and
`m2_evaluation` scores the test set by the bound on log p(x) and the classifier's
error. It has no single `prior` (its latents are y and z): `vaejax evaluate` reports
the test values and the probe, not an importance-sampled log p(x). Kingma et al.'s
MNIST model: one hidden layer of 500 softplus units, d = 50.
"""

import math

import jax.numpy as jnp
from flax import nnx

import vaejax
from vaejax.models.cvae import ConditionalVAE
from vaejax.models.vae import MLP


class M2(nnx.Module):
    """Args:
      shape: image shape (H, W, C).
      hidden: dense widths of the classifier, the encoder and (mirrored) the decoder.
      latent_dim: d, the size of z.
      num_classes: K.
      activation: of the hidden layers.
      likelihood: of x given y and z, "bernoulli" or "gaussian" (`ConditionalVAE`).
      rngs: initialisation keys.
    """

    def __init__(self, shape, hidden=(500,), latent_dim=50, num_classes=10, activation="softplus",
                 likelihood="bernoulli", *, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.classifier = MLP((math.prod(shape), *hidden), activation, rngs=rngs)
        self.to_class_logits = nnx.Linear(hidden[-1], num_classes, rngs=rngs)
        self.cvae = ConditionalVAE(shape, hidden, latent_dim, num_classes, activation,
                                   likelihood, rngs=rngs)

    def classify(self, x) -> vaejax.Categorical:
        """q(y|x), batch shape x's, one variable of K categories: logits (..., 1, K)."""
        logits = self.to_class_logits(self.classifier(x.reshape(*x.shape[:-3], -1)))
        return vaejax.Categorical(logits[..., None, :])

    def given(self, y):
        return self.cvae.given(y)

    def bound_per_class(self, key, x):
        """ELBO of log p(x, y) for every y: log p(x|y, z) + log p(y) − KL(q(z|x,y) ‖ p(z)),
        one draw per (y, x); shape (K, *batch)."""
        classes = jnp.arange(self.num_classes).reshape(-1, *([1] * (x.ndim - 3)))
        y = jnp.broadcast_to(classes, (self.num_classes, *x.shape[:-3]))
        xs = jnp.broadcast_to(x, (self.num_classes, *x.shape))
        given = self.given(y)
        terms = vaejax.elbo(key, xs, given.encode(xs), given.log_likelihood, prior=given.prior)
        return terms.elbo - jnp.log(float(self.num_classes))
