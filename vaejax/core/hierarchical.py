"""The ELBO of a model with stochastic layers z_1, …, z_L.

p(x, z) = p(x|z_1) ∏_{l<L} p(z_l|z_{l+1}) p(z_L) and, inferred bottom-up as in
Burda et al. (2016), q(z|x) = q(z_1|x) ∏_{l>1} q(z_l|z_{l−1}). One draw of every
layer per sample; the per-draw log-weights serve the IWAE bound too.
"""

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vaejax.core.divergences import closed_form_kl
from vaejax.core.posteriors import Posterior
from vaejax.core.priors import Prior, StandardNormal


class HierarchicalTerms(NamedTuple):
    """Per-example terms, in nats.

    Attributes:
      elbo: E_q[log p(x, z) − log q(z|x)].
      log_likelihood: E_q[log p(x|z_1)].
      kls: one rate per layer, bottom first: E_q[log q(z_l|z_{l−1}) − log p(z_l|z_{l+1})];
        the top one is KL(q(z_L|z_{L−1}) ‖ p(z_L)), in closed form where one is registered.
        They sum to log-likelihood − ELBO.
      log_weights: log p(x, z_s) − log q(z_s|x) of each draw s, shape (num_samples, *batch)
        (`vaejax.iwae_bound` of them is the IWAE bound).
    """

    elbo: jax.Array
    log_likelihood: jax.Array
    kls: tuple[jax.Array, ...]
    log_weights: jax.Array


def hierarchical_elbo(key: jax.Array, x: ArrayLike, encoders: Sequence[Callable[..., Posterior]],
                      decoders: Sequence[Callable], log_likelihood_fn: Callable, *,
                      prior: Prior | None = None, num_samples: int = 1) -> HierarchicalTerms:
    """ELBO(x) with L stochastic layers, from reparameterized draws of every layer.

    Args:
      key: a PRNG key.
      x: the batch, shape (*batch, *event).
      encoders: L callables: x ↦ q(z_1|x), then z_{l−1} ↦ q(z_l|z_{l−1}).
      decoders: L − 1 callables: z_{l+1} ↦ p(z_l|z_{l+1}) (anything with `log_prob`), bottom first.
      log_likelihood_fn: (z_1, x) ↦ log p(x|z_1), z_1 of shape (num_samples, *batch, d_1).
      prior: p(z_L); N(0, I) by default.
      num_samples: draws of the whole hierarchy per example.

    Returns:
      HierarchicalTerms of shape `batch` (log_weights with the sample axis first).

    References:
      Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders, ICLR 2016.
    """
    if len(encoders) != len(decoders) + 1:
        raise ValueError(f"{len(encoders)} encoders need {len(encoders) - 1} decoders (one per "
                         f"layer below the top), got {len(decoders)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    x = jnp.asarray(x)
    keys = jax.random.split(key, len(encoders))
    q = encoders[0](x)
    z, log_q = q.sample_and_log_prob(keys[0], num_samples)
    layers = [(q, z, log_q)]
    for encoder, k in zip(encoders[1:], keys[1:]):
        q = encoder(z)
        z, log_q = q.sample_and_log_prob(k)
        layers.append((q, z, log_q))
    q_top, z_top, log_q_top = layers[-1]
    prior = StandardNormal(jnp.shape(z_top)[-1]) if prior is None else prior
    log_p_top = prior.log_prob(z_top)
    exact = closed_form_kl(q_top, prior)
    top = (jnp.broadcast_to(exact(q_top, prior), jnp.shape(log_q_top)) if exact is not None
           else log_q_top - log_p_top)
    per_draw = [lq - decoder(z_above).log_prob(z_l) for (_, z_l, lq), decoder, (_, z_above, _)
                in zip(layers[:-1], decoders, layers[1:])] + [top]
    log_lik = log_likelihood_fn(layers[0][1], x)
    log_weights = log_lik - sum(per_draw[:-1]) - log_q_top + log_p_top
    kls = tuple(jnp.mean(k, axis=0) for k in per_draw)
    log_lik = jnp.mean(log_lik, axis=0)
    return HierarchicalTerms(log_lik - sum(kls), log_lik, kls, log_weights)
