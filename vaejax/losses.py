"""Model-level objectives: the training loss for each config, and the test ELBO.

Each returns a scalar loss (mean over the batch) and per-batch metrics. The
β here is the effective β of this step (after warm-up or dual ascent).
"""

import jax.numpy as jnp

import vaejax
from vaejax.config import TrainConfig
from vaejax.models import VAE


def _gaussian_loss(model: VAE, x, key, config: TrainConfig, beta):
    posterior = model.encode(x)
    if config.objective == "iwae":
        log_w = vaejax.log_importance_weights(key, x, posterior, model.log_likelihood,
                                              config.num_samples)
        kl = posterior.kl_standard_normal()
        elbo = jnp.mean(log_w, axis=0)
        loss = -jnp.mean(vaejax.iwae_bound(log_w))
        return loss, {"elbo": jnp.mean(elbo), "rate": jnp.mean(kl), "distortion": jnp.mean(kl - elbo)}
    terms = vaejax.elbo(key, x, posterior, model.log_likelihood, num_samples=config.num_samples)
    kl = terms.kl
    if config.free_bits > 0:
        # Free bits (Kingma et al. 2016): each latent dimension's batch-mean KL
        # below λ costs λ, so the optimiser gains nothing by collapsing it.
        per_dim = vaejax.kl_standard_normal(posterior.mean[..., None], posterior.log_var[..., None])
        kl = jnp.sum(jnp.maximum(config.free_bits, jnp.mean(per_dim, axis=0)))
    loss = -jnp.mean(terms.log_likelihood) + beta * jnp.mean(kl)
    return loss, {"elbo": jnp.mean(terms.elbo), "rate": jnp.mean(terms.kl),
                  "distortion": jnp.mean(terms.distortion)}


def _categorical_loss(model: VAE, x, key, config: TrainConfig, beta, temperature):
    posterior = model.encode(x)
    kl = posterior.kl_uniform()
    if config.estimator == "gumbel_softmax":
        shape = (config.num_samples, *posterior.logits.shape)
        z = vaejax.gumbel_softmax(key, jnp.broadcast_to(posterior.logits, shape), temperature)
        log_lik = model.log_likelihood(z, x)
        objective = log_lik
    else:
        one_hot = posterior.sample(key, config.num_samples)
        log_lik = model.log_likelihood(one_hot, x)
        baseline = vaejax.leave_one_out_baseline(log_lik) if config.num_samples > 1 else 0.0
        objective = vaejax.score_function_surrogate(posterior.log_prob(one_hot), log_lik, baseline)
    loss = -jnp.mean(objective) + beta * jnp.mean(kl)
    log_lik = jnp.mean(log_lik)
    return loss, {"elbo": log_lik - jnp.mean(kl), "rate": jnp.mean(kl), "distortion": -log_lik}


def train_loss(model: VAE, x, key, config: TrainConfig, beta, temperature):
    """The scalar loss to minimise and its metrics (elbo, rate, distortion: batch means).

    For Gumbel-softmax training the reported ELBO is that of the relaxed model.
    """
    if config.model.posterior == "categorical":
        return _categorical_loss(model, x, key, config, beta, temperature)
    return _gaussian_loss(model, x, key, config, beta)


def eval_terms(model: VAE, x, key):
    """Per-example test ELBO, rate and distortion (β = 1, analytic KL, one draw).

    Categorical latents are drawn exactly (one-hot), so this is the discrete
    model's ELBO, not the relaxed one.
    """
    posterior = model.encode(x)
    if model.config.posterior != "categorical":
        terms = vaejax.elbo(key, x, posterior, model.log_likelihood)
        return terms.elbo, terms.kl, terms.distortion
    kl = posterior.kl_uniform()
    log_lik = model.log_likelihood(posterior.sample(key), x)
    return log_lik - kl, kl, -log_lik
