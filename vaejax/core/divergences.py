"""KL(q‖p) dispatched on the pair of types, with a Monte Carlo fallback.

Closed forms are registered per (posterior type, prior type), as distrax and
TFP do; a subclass finds its parent's entry. Where no closed form is
registered, `kl_divergence` with a key estimates the KL from draws of q.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from vaejax.core import discrete, gaussian, priors
from vaejax.core.posteriors import CholeskyGaussian, DiagonalGaussian

_REGISTRY: dict[tuple[type, type], Callable] = {}


def register_kl(type_q: type, type_p: type):
    """Decorator registering `fn(q, p) -> KL per example` for the pair of types.

    Example:
      >>> import jax.numpy as jnp, vaejax
      >>> q = vaejax.DiagonalGaussian(jnp.zeros(2), jnp.zeros(2))
      >>> float(vaejax.kl_divergence(q, vaejax.StandardNormal(2)))
      0.0
    """
    def decorate(fn):
        _REGISTRY[type_q, type_p] = fn
        return fn
    return decorate


def closed_form_kl(q, p) -> Callable | None:
    """The registered closed form for (type(q), type(p)), searching both MROs; else None."""
    for a in type(q).__mro__:
        for b in type(p).__mro__:
            if (a, b) in _REGISTRY:
                return _REGISTRY[a, b]
    return None


def kl_from_draws(q, p, z: jax.Array, log_q: jax.Array) -> jax.Array:
    """KL(q‖p) per example: the registered closed form, else mean_s [log q(z_s) − log p(z_s)]
    over draws z (leading sample axis) with their log q."""
    exact = closed_form_kl(q, p)
    return exact(q, p) if exact is not None else jnp.mean(log_q - p.log_prob(z), axis=0)


def kl_divergence(q, p, *, key: jax.Array | None = None, num_samples: int = 1) -> jax.Array:
    """KL(q‖p) per example: the registered closed form, else a Monte Carlo estimate.

    Args:
      q: a posterior (see `vaejax.Posterior`).
      p: a prior or posterior with `log_prob`.
      key: PRNG key for the Monte Carlo estimate; needed only without a closed form.
      num_samples: draws of the Monte Carlo estimate, mean_s [log q(z_s) − log p(z_s)].

    Returns:
      KL in nats, q's batch shape.

    Raises:
      ValueError: no closed form is registered and no key is given.
    """
    exact = closed_form_kl(q, p)
    if exact is not None:
        return exact(q, p)
    if key is None:
        raise ValueError(f"no closed-form KL is registered for ({type(q).__name__}, "
                         f"{type(p).__name__}); pass a key for a Monte Carlo estimate")
    z, log_q = q.sample_and_log_prob(key, num_samples)
    return jnp.mean(log_q - p.log_prob(z), axis=0)


@register_kl(DiagonalGaussian, priors.StandardNormal)
def _diag_standard(q, p):
    return q.kl_standard_normal()


@register_kl(CholeskyGaussian, priors.StandardNormal)
def _tril_standard(q, p):
    return q.kl_standard_normal()


@register_kl(DiagonalGaussian, DiagonalGaussian)
def _diag_diag(q, p):
    shape = jnp.shape(q.mean)  # a prior without batch axes broadcasts against q
    return gaussian.kl_diag_normals(q.mean, q.log_var, jnp.broadcast_to(p.mean, shape),
                                    jnp.broadcast_to(p.log_var, shape))


@register_kl(CholeskyGaussian, CholeskyGaussian)
def _tril_tril(q, p):
    return gaussian.kl_mvn_tril(q.mean, q.scale_tril, jnp.broadcast_to(p.mean, jnp.shape(q.mean)),
                                jnp.broadcast_to(p.scale_tril, jnp.shape(q.scale_tril)))


@register_kl(discrete.Categorical, priors.UniformCategorical)
def _categorical_uniform(q, p):
    return q.kl_uniform()


@register_kl(discrete.Categorical, discrete.Categorical)
def _categorical_categorical(q, p):
    logits_p = jnp.broadcast_to(p.logits, jnp.shape(q.logits))
    return jnp.sum(discrete.kl_categorical(q.logits, logits_p), axis=-1)
