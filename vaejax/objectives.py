"""Training objectives: pure functions `(model, batch, key, hyper) -> (loss, metrics)`.

`batch` is a `Batch` (images, and labels where the data set has them); `hyper`
holds this step's schedule values (`"beta"`, `"temperature"`); `loss` is the
scalar to minimise (a mean over the batch) and `metrics` a dict of scalars.
The trainer records every metric; by convention `elbo`, `rate` and
`distortion` are batch means in nats, and KL ≤ δ dual ascent reads `rate`.

Objectives are registered by name with a factory `factory(config) -> objective`,
so a run folder's config.json rebuilds them, and with the TrainConfig settings they
read (`SETTINGS`): a run that sets another one is refused, not silently ignored.

An evaluation `(model, batch, key) -> {record name: per-example values}` scores the
test set each epoch; the trainer records the test-set mean of each value under
its name. `elbo_evaluation` serves latent-variable models, `reconstruction_evaluation`
autoencoders.
"""

from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp

import vaejax
from vaejax.core.autoencoders import contractive_penalty, corrupt, sparse_penalty
from vaejax.core.divergences import kl_from_draws

Metrics = dict[str, jax.Array]


class Batch(NamedTuple):
    """Images (B, H, W, C) in [0, 1] and labels (B,), None where the data set has none
    (−1 for an unlabelled example); `labelled`, a second Batch of labelled examples, where
    the objective asks for one."""

    x: jax.Array
    y: jax.Array | None = None
    labelled: "Batch | None" = None


def as_batch(data) -> Batch:
    """A Batch from a Batch or an image array."""
    return data if isinstance(data, Batch) else Batch(data)


def conditioned(model, y):
    """The model given labels y where it is conditional (has `given(y)`), else the model."""
    if not hasattr(model, "given"):
        return model
    if y is None:
        raise ValueError("a conditional model (one with given(y)) needs labels in the batch")
    return model.given(y)


class Objective(Protocol):
    """An objective may also set `labelled_batch_size` (an int): the trainer then gives each
    step `batch.labelled`, that many examples drawn uniformly, with replacement, from those
    whose label is known (`m2`)."""

    def __call__(self, model: Any, batch: Batch, key: jax.Array,
                 hyper: dict[str, jax.Array]) -> tuple[jax.Array, Metrics]: ...


def elbo(num_samples: int = 1, free_bits: float = 0.0,
         estimator: str = "gumbel_softmax") -> Objective:
    """The β-VAE loss −E_q[log p(x|z)] + β·KL, as a mean over the batch.

    Reparameterized posteriors use `num_samples` pathwise draws. A categorical
    posterior trains by `estimator`: "gumbel_softmax" (relaxed draws at
    hyper["temperature"]) or "score_function" (exact one-hot draws, REINFORCE
    with a leave-one-out baseline when num_samples > 1). With free bits λ each
    latent dimension's batch-mean KL below λ costs λ (Kingma et al. 2016).

    Metrics: `elbo` (of the discrete model for categorical latents: for
    Gumbel-softmax, from the exact one-hot draw that the same Gumbel noise
    gives), `rate`, `distortion`, and for Gumbel-softmax `relaxed_objective`
    (E log p(x | relaxed z) − KL, which is no bound on log p(x)) and `temperature`.
    """
    def objective(model, batch, key, hyper):
        model = conditioned(model, batch.y)
        q = model.encode(batch.x)
        if isinstance(q, vaejax.Categorical):
            return _categorical(model, q, batch.x, key, hyper)
        terms = vaejax.elbo(key, batch.x, q, model.log_likelihood, prior=model.prior,
                            num_samples=num_samples)
        kl = terms.kl
        if free_bits > 0:
            if not isinstance(q, vaejax.DiagonalGaussian) or not isinstance(
                    model.prior, vaejax.StandardNormal):
                raise ValueError("free bits need a DiagonalGaussian posterior and a "
                                 "StandardNormal prior (they act per latent dimension)")
            per_dim = vaejax.kl_standard_normal(q.mean[..., None], q.log_var[..., None])
            kl = jnp.sum(jnp.maximum(free_bits, jnp.mean(per_dim, axis=0)))
        loss = -jnp.mean(terms.log_likelihood) + hyper["beta"] * jnp.mean(kl)
        return loss, {"elbo": jnp.mean(terms.elbo), "rate": jnp.mean(terms.kl),
                      "distortion": jnp.mean(terms.distortion)}

    def _categorical(model, q, x, key, hyper):
        kl = vaejax.kl_divergence(q, model.prior)
        if estimator == "gumbel_softmax":
            logits = jnp.broadcast_to(q.logits, (num_samples, *q.logits.shape))
            relaxed = vaejax.gumbel_softmax(key, logits, hyper["temperature"])
            objective = model.log_likelihood(relaxed, x)
            # The argmax of the perturbed logits is an exact draw from q.
            one_hot = jax.lax.stop_gradient(jax.nn.one_hot(jnp.argmax(relaxed, -1), q.logits.shape[-1]))
            log_lik = model.log_likelihood(one_hot, x)
            extra = {"relaxed_objective": jnp.mean(objective) - jnp.mean(kl),
                     "temperature": hyper["temperature"]}
        else:
            one_hot = q.sample(key, num_samples)
            log_lik = model.log_likelihood(one_hot, x)
            baseline = vaejax.leave_one_out_baseline(log_lik) if num_samples > 1 else 0.0
            objective = vaejax.score_function_surrogate(q.log_prob(one_hot), log_lik, baseline)
            extra = {}
        loss = -jnp.mean(objective) + hyper["beta"] * jnp.mean(kl)
        log_lik = jnp.mean(log_lik)
        return loss, {"elbo": log_lik - jnp.mean(kl), "rate": jnp.mean(kl), "distortion": -log_lik,
                      **extra}

    return objective


def iwae(num_samples: int) -> Objective:
    """−L_k, the importance-weighted bound of k = num_samples draws (Burda et al. 2016).

    Metrics: `iwae_bound`, and `elbo`, `rate`, `distortion` from the same draws
    (rate in closed form where one is registered).
    """
    def objective(model, batch, key, hyper):
        model = conditioned(model, batch.y)
        x, q, prior = batch.x, model.encode(batch.x), model.prior
        z, log_q = q.sample_and_log_prob(key, num_samples)
        log_lik = model.log_likelihood(z, x)
        log_w = log_lik + prior.log_prob(z) - log_q
        bound = jnp.mean(vaejax.iwae_bound(log_w))
        return -bound, {"iwae_bound": bound, "elbo": jnp.mean(log_w),
                        "rate": jnp.mean(kl_from_draws(q, prior, z, log_q)),
                        "distortion": -jnp.mean(log_lik)}

    return objective


def iwae_dreg(num_samples: int) -> Objective:
    """−L_k with doubly reparameterized gradients (Tucker et al. 2019): the encoder's
    gradient without its score term, the decoder's and prior's as IWAE's.

    The loss is DReG's surrogate (its value is not the bound). Metrics: `iwae_bound`,
    and `elbo`, the mean log-weight of the same draws.
    """
    def objective(model, batch, key, hyper):
        from flax import nnx
        graphdef, state = nnx.split(model)
        # q with every parameter stopped, those of networks it calls inside included.
        stopped = conditioned(nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state)),
                              batch.y)
        model = conditioned(model, batch.y)
        terms = vaejax.iwae_dreg(key, batch.x, model.encode(batch.x), model.log_likelihood,
                                 num_samples, prior=model.prior, stopped=stopped.encode(batch.x))
        return -jnp.mean(terms.surrogate), {"iwae_bound": jnp.mean(terms.bound),
                                            "elbo": jnp.mean(terms.log_weights)}

    return objective


def vq(commitment: float = 0.25, decay: float = 0.99) -> Objective:
    """The VQ-VAE loss −log p(x|z_q) + commitment·‖z_e − sg(e)‖² (van den Oord et al. 2017),
    for models with `vectors`, `codebook`, `update_codebook` and `logits_from_vectors`
    (`vaejax.models.VQVAE`); the codebook follows the encoder by EMA (decay γ), in place.

    Metrics: `elbo` = log p(x|z_q) − n·log K (uniform prior, one-hot q), `rate` = n·log K,
    `distortion`, `commitment` and `perplexity` of the batch's codes.
    """
    def objective(model, batch, key, hyper):
        vectors = model.vectors(batch.x)
        out = vaejax.vector_quantize(vectors, jax.lax.stop_gradient(model.codebook()))
        log_lik = vaejax.bernoulli_log_likelihood(model.logits_from_vectors(out.codes),
                                                  batch.x.reshape(*batch.x.shape[:-3], -1))
        commit = jnp.mean(jnp.sum(out.commitment_loss, axis=-1))
        model.update_codebook(vectors, out.indices, decay)
        rate = model.num_latents * jnp.log(float(model.num_codes))
        return -jnp.mean(log_lik) + commitment * commit, {
            "elbo": jnp.mean(log_lik) - rate, "rate": rate, "distortion": -jnp.mean(log_lik),
            "commitment": commit,
            "perplexity": vaejax.codebook_perplexity(out.indices, model.num_codes)}

    return objective


def _m2_terms(model, x, key):
    """L(x, y) for every y and log q(y|x), each (B, K), and U(x) = Σ_y q(y|x)(L − log q), (B,)."""
    bound = model.bound_per_class(key, x).T
    log_q = jax.nn.log_softmax(model.classify(x).logits[..., 0, :], axis=-1)
    return bound, log_q, jnp.sum(jnp.exp(log_q) * (bound - log_q), axis=-1)


def m2(classifier_weight: float = 0.1, labelled_batch_size: int = 100) -> Objective:
    """Kingma et al.'s semi-supervised loss −J^α/N, for models with `classify(x)` → q(y|x)
    and `bound_per_class(key, x)` → L(x, y) for every y (`vaejax.models.M2`).

    J^α/N = mean over the data of L(x, y) (y known, ≥ 0) or U(x) (y = −1), U(x) =
    Σ_y q(y|x) L(x, y) + H[q(y|x)], plus α·E_labelled[log q(y|x)]. The batch estimates the
    mean; `batch.labelled` (`labelled_batch_size` labelled examples each step) the
    expectation, so the classifier learns from labels every step. α = classifier_weight:
    the paper's α = 0.1·N is 0.1 here.

    Metrics: `elbo` (mean U(x), the bound on log p(x)), `classifier_cross_entropy` (mean
    −log q(y|x) over `batch.labelled`) and `labelled_fraction` (of the batch).
    """
    def objective(model, batch, key, hyper):
        if batch.y is None or batch.labelled is None:
            raise ValueError("the m2 objective needs labels in the batch (-1 where missing) "
                             "and batch.labelled, a batch of labelled examples")
        bound, log_q, marginal = _m2_terms(model, batch.x, key)
        labelled = batch.y >= 0
        y = jnp.maximum(batch.y, 0)[:, None]
        per_example = jnp.where(labelled, jnp.take_along_axis(bound, y, axis=-1)[:, 0], marginal)
        logits = model.classify(batch.labelled.x).logits[..., 0, :]
        cross_entropy = -jnp.mean(jnp.take_along_axis(
            jax.nn.log_softmax(logits, axis=-1), batch.labelled.y[:, None], axis=-1))
        return -jnp.mean(per_example) + classifier_weight * cross_entropy, {
            "elbo": jnp.mean(marginal), "classifier_cross_entropy": cross_entropy,
            "labelled_fraction": jnp.mean(labelled)}

    objective.labelled_batch_size = labelled_batch_size
    return objective


def autoencoder(penalty: str | None = None, corruption: tuple[str, float] | None = None
                ) -> Objective:
    """An autoencoder's loss −log p(x|h) + β·penalty(h), h = model.code(x̃), for models
    with `code(x)` and `log_likelihood(h, x)` (`vaejax.models.Autoencoder`).

    penalty: None; "sparse", the L1 norm Σ|h| (`sparse_penalty`); or "contractive",
    ‖∂h/∂x‖²_F (`contractive_penalty`). β is hyper["beta"]. corruption: (noise,
    level) of `corrupt`, applied to the input only (a denoising autoencoder: x̃ is
    corrupted, the clean x reconstructed); None: x̃ = x.

    Metrics: `distortion` (batch mean of −log p(x|h), nats) and `penalty`.
    """
    def objective(model, batch, key, hyper):
        x = batch.x if corruption is None else corrupt(key, batch.x, corruption[1], corruption[0])
        h = model.code(x)
        distortion = -jnp.mean(model.log_likelihood(h, batch.x))
        if penalty == "sparse":
            cost = jnp.mean(sparse_penalty(h))
        elif penalty == "contractive":
            cost = jnp.mean(contractive_penalty(model.code, x, event_ndims=3))
        else:
            cost = jnp.zeros(())
        return distortion + hyper["beta"] * cost, {"distortion": distortion, "penalty": cost}

    return objective


class Evaluation(Protocol):
    def __call__(self, model: Any, batch: Batch, key: jax.Array) -> Metrics: ...


def elbo_evaluation(model, batch, key) -> Metrics:
    """`test_elbo`, `rate` and `distortion` of each image (`eval_terms`); of log p(x|y) for
    a conditional model."""
    batch = as_batch(batch)
    terms = eval_terms(conditioned(model, batch.y), batch.x, key)
    return {"test_elbo": terms.elbo, "rate": terms.kl, "distortion": terms.distortion}


def reconstruction_evaluation(model, batch, key) -> Metrics:
    """An autoencoder's `distortion` −log p(x|h(x)) (nats) and `squared_error` Σ(x − E[x|h])²
    of each image, h = model.code(x) of the clean image."""
    x = as_batch(batch).x
    h = model.code(x)
    flat = x.reshape(*x.shape[:-3], -1)
    mean = model.mean_image(h).reshape(flat.shape)
    return {"distortion": -model.log_likelihood(h, x),
            "squared_error": jnp.sum((flat - mean)**2, axis=-1)}


def m2_evaluation(model, batch, key) -> Metrics:
    """M2's `test_elbo` U(x), the bound on log p(x) summed over y, and `test_error`,
    whether the classifier's most probable class misses the label."""
    batch = as_batch(batch)
    _, log_q, marginal = _m2_terms(model, batch.x, key)
    return {"test_elbo": marginal,
            "test_error": (jnp.argmax(log_q, axis=-1) != batch.y).astype(jnp.float32)}


def m1m2_evaluation(model, batch, key) -> Metrics:
    """M1+M2's `test_error` and `test_feature_elbo`: U(f), the bound on log p(f) of M1's
    features f (not on log p(x))."""
    metrics = m2_evaluation(model, batch, key)
    return {"test_feature_elbo": metrics.pop("test_elbo"), **metrics}


def eval_terms(model, x, key) -> vaejax.ElboTerms:
    """Per-example test ELBO terms: β = 1, one draw, the registered closed-form KL.

    Categorical latents are drawn exactly (one-hot), so this is the discrete
    model's ELBO, not a relaxed one.
    """
    return vaejax.elbo(key, x, model.encode(x), model.log_likelihood, prior=model.prior)


# The TrainConfig settings that act through the objective or its schedules.
SETTINGS = ("num_samples", "betas", "kl_warmup_epochs", "free_bits", "kl_target",
            "dual_learning_rate", "estimator", "temperature", "min_temperature",
            "temperature_decay", "corruption", "labels", "label_seed", "classifier_weight")
_ELBO_SETTINGS = SETTINGS[:SETTINGS.index("corruption")]


def _corruption(config) -> tuple[str, float]:
    from vaejax.config import ConfigError, parse_corruption
    if config.corruption is None:
        raise ConfigError("the denoising-ae objective needs a corruption NOISE:LEVEL, "
                          "e.g. masking:0.25")
    return parse_corruption(config.corruption)


_REGISTRY: dict[str, Callable[[Any], Objective]] = {}
_READS: dict[str, tuple[str, ...]] = {}
CUSTOM = "custom"  # the objective of a run given an objective function in Python


def register(name: str, factory: Callable[[Any], Objective], reads=SETTINGS) -> None:
    """Registers `factory(config: TrainConfig) -> objective` under `name` (config.objective).

    `reads`: the members of `SETTINGS` the objective honours; `check_settings` refuses
    a config that gives any other one a value other than its default.
    """
    if name == CUSTOM:
        raise ValueError(f"{CUSTOM!r} names runs trained with an objective function")
    _REGISTRY[name], _READS[name] = factory, tuple(reads)


register("elbo", lambda c: elbo(c.num_samples, c.free_bits, c.estimator), reads=_ELBO_SETTINGS)
register("iwae", lambda c: iwae(c.num_samples), reads=("num_samples",))
register("iwae-dreg", lambda c: iwae_dreg(c.num_samples), reads=("num_samples",))
register("vq", lambda c: vq(), reads=())
register("ae", lambda c: autoencoder(), reads=())
register("sparse-ae", lambda c: autoencoder("sparse"), reads=("betas",))
register("contractive-ae", lambda c: autoencoder("contractive"), reads=("betas",))
register("denoising-ae", lambda c: autoencoder(corruption=_corruption(c)), reads=("corruption",))
register("m2", lambda c: m2(0.1 if c.classifier_weight is None else c.classifier_weight,
                           c.batch_size), reads=("labels", "label_seed", "classifier_weight"))


def check_settings(config) -> None:
    """Raises ConfigError where config sets a member of SETTINGS its objective does not read."""
    from vaejax.config import ConfigError, TrainConfig
    reads = _READS.get(config.objective, SETTINGS)
    for name in SETTINGS:
        value = getattr(config, name)
        if name not in reads and value != getattr(TrainConfig, name):
            raise ConfigError(f"the {config.objective} objective does not read {name} "
                              f"(got {value!r})")


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def from_config(config) -> Objective:
    """The objective that `config.objective` names."""
    from vaejax.config import ConfigError
    if config.objective == CUSTOM:
        raise ConfigError("this run's objective was given as a function: pass it again")
    if config.objective not in _REGISTRY:
        raise ConfigError(f"unknown objective {config.objective!r}; registered: {', '.join(names())}")
    return _REGISTRY[config.objective](config)
