"""Models: the contract every trainable model meets, and the registry of families.

A model is any `nnx.Module` with

| member | meaning |
|---|---|
| `encode(x)` | q(z\\|x), a `vaejax.Posterior` with x's batch shape |
| `log_likelihood(z, x)` | log p(x\\|z) summed over the image; leading axes of z broadcast |
| `prior` | p(z), a `vaejax.Prior` (a property when it is learned) |
| `mean_image(z)` | E[x\\|z] in [0, 1], for pictures |

A model without `prior` (an autoencoder, whose `encode` gives a point code with
`mean` and `mode()`) trains with its own objective and evaluation: it draws no
samples and gets no importance-sampled log p(x). A conditional model offers
`given(y)`, the model with labels y fixed, which meets the contract above; the stock
objectives, evaluation and figures condition it on the batch's labels.

Its state may hold more than `nnx.Param` (batch statistics, an EMA codebook):
the trainer carries the rest beside the parameters and checkpoints it. A
family is registered by name, so a run folder's config.json rebuilds it.
"""

from typing import Callable, Protocol, runtime_checkable

import jax
from flax import nnx

from vaejax.config import ConfigError, ModelConfig

ImageShape = tuple[int, int, int]
ModelFn = Callable[[ImageShape, nnx.Rngs], nnx.Module]
CUSTOM = "custom"  # the family of a run trained with a model_fn given in Python


@runtime_checkable
class Model(Protocol):
    """What the trainer, evaluation and figures use of a model."""

    def encode(self, x: jax.Array): ...

    def log_likelihood(self, z: jax.Array, x: jax.Array) -> jax.Array: ...

    @property
    def prior(self): ...

    def mean_image(self, z: jax.Array) -> jax.Array: ...


_FAMILIES: dict[str, Callable[[ModelConfig], ModelFn]] = {}
_OWN_OBJECTIVES: dict[str, tuple[str, ...]] = {}  # family → the only objectives it trains with
_EVALUATIONS: dict[str, Callable] = {}  # family → its evaluation, where not the ELBO's


def register(name: str, model_fn: ModelFn) -> ModelFn:
    """Registers a model by name: `model_fn(image_shape, rngs) -> model`.

    A run whose `ModelConfig.family` is `name` is then built, resumed, evaluated
    and loaded without passing `model_fn` again.
    """
    register_family(name, lambda config: model_fn)
    return model_fn


def register_family(name: str, family: Callable[[ModelConfig], ModelFn],
                    objective: str | tuple[str, ...] | None = None, evaluation=None):
    """Registers a family sized by the ModelConfig: `family(config) -> model_fn`.

    `objective` names the objectives the family trains with (and that train it
    only), where the stock ones do not apply; `check_objective` enforces it.
    `evaluation` (a `vaejax.objectives.Evaluation`) scores its test set in place
    of the ELBO.
    """
    if name == CUSTOM:
        raise ValueError(f"{CUSTOM!r} names runs trained with a model_fn; choose another name")
    _FAMILIES[name] = family
    if objective is not None:
        _OWN_OBJECTIVES[name] = (objective,) if isinstance(objective, str) else tuple(objective)
    if evaluation is not None:
        _EVALUATIONS[name] = evaluation
    return family


def evaluation(family: str):
    """The family's registered evaluation, or None for the ELBO's."""
    return _EVALUATIONS.get(family)


def check_objective(family: str, objective: str) -> None:
    """Raises ConfigError for a registered family and objective that do not train each other."""
    own = _OWN_OBJECTIVES.get(family)
    if own is not None and objective not in own:
        raise ConfigError(f"the {family} family trains with objective "
                          f"{' or '.join(map(repr, own))}, not {objective!r}")
    users = [f for f, o in _OWN_OBJECTIVES.items() if objective in o]
    if users and family not in users:
        raise ConfigError(f"the {objective} objective is for the {', '.join(users)} family, "
                          f"not {family!r}")


def families() -> tuple[str, ...]:
    """The registered family names."""
    return tuple(sorted(_FAMILIES))


ENTRY_POINTS = "vaejax.models"  # installed packages offer families here: name = "module:model_fn"


def _from_entry_point(name: str) -> None:
    from importlib.metadata import entry_points
    for entry in entry_points(group=ENTRY_POINTS, name=name):
        register(name, entry.load())


def model_fn(config: ModelConfig) -> ModelFn:
    """The model_fn of the config's family: registered, or offered by an installed package
    under the `vaejax.models` entry-point group (so the CLI rebuilds it too)."""
    if config.family == CUSTOM:
        raise ConfigError("this run's model was given as a model_fn: pass the same model_fn "
                          "again (or register it and name it in ModelConfig.family)")
    if config.family not in _FAMILIES:
        _from_entry_point(config.family)
    if config.family not in _FAMILIES:
        raise ConfigError(f"unknown model family {config.family!r}; registered: "
                          f"{', '.join(families())}")
    return _FAMILIES[config.family](config)


from vaejax import objectives  # noqa: E402
from vaejax.models.autoencoder import Autoencoder, PointCode  # noqa: E402
from vaejax.models.conv import Conv, ConvTranspose  # noqa: E402
from vaejax.models.cvae import ConditionalVAE  # noqa: E402
from vaejax.models.flows import FlowVAE  # noqa: E402
from vaejax.models.m1m2 import M1M2, Frozen  # noqa: E402
from vaejax.models.m2 import M2  # noqa: E402
from vaejax.models.precision import with_precision  # noqa: E402
from vaejax.models.priors import GaussianMixturePrior  # noqa: E402
from vaejax.models.two_layer import TwoLayerVAE  # noqa: E402
from vaejax.models.vae import MLP, VAE  # noqa: E402
from vaejax.models.vampprior import VampVAE  # noqa: E402
from vaejax.models.vqvae import VQVAE  # noqa: E402

# What the stock VAE reads of a ModelConfig and the other families build in themselves.
_STOCK_ONLY = ("architecture", "conv_channels", "activation", "posterior", "num_categories",
               "likelihood", "gaussian_scale", "levels", "mixture_components")
_FAMILY_ONLY = ("features_from",)  # read by the families that name them, refused by the rest


def _unread(family: str, config: ModelConfig, fields, reads) -> None:
    default = ModelConfig()
    ignored = [f for f in fields if f not in reads and getattr(config, f) != getattr(default, f)]
    if ignored:
        raise ConfigError(f"the {family} family builds its own architecture: it does not use "
                          f"{', '.join(ignored)}")


def _hidden_layers(family: str, config: ModelConfig) -> None:
    if not config.hidden or (config.architecture == "conv" and not config.conv_channels):
        raise ConfigError(f"the {family} family needs at least one hidden layer "
                          f"{'and one convolution ' if config.architecture == 'conv' else ''}"
                          "(--hidden '' is for the autoencoder family)")


def _own_architecture(family: str, config: ModelConfig, reads=(), linear=False) -> None:
    """Refuses settings that `family` would ignore (any differing from ModelConfig's default):
    the stock VAE's, but those in `reads`; and no hidden layers unless `linear`."""
    if not linear:
        _hidden_layers(family, config)
    _unread(family, config, _STOCK_ONLY + _FAMILY_ONLY, reads)


def _vampprior(config: ModelConfig) -> ModelFn:
    _own_architecture("vampprior", config)
    return lambda shape, rngs: VampVAE(shape, config.hidden, config.latent_dim, 500, rngs=rngs)


def _two_layer(name: str, pseudo_inputs: int):
    """Burda et al.'s sizes, fixed: hidden and latent_dim are not read."""
    def family(config: ModelConfig) -> ModelFn:
        _own_architecture(name, config)
        return lambda shape, rngs: TwoLayerVAE(shape, vamp_pseudo_inputs=pseudo_inputs, rngs=rngs)
    return family


def _vqvae(config: ModelConfig) -> ModelFn:
    """ModelConfig's hidden widths and latent_dim (= n code vectors); K = 64 codes of size 16."""
    _own_architecture("vqvae", config)
    return lambda shape, rngs: VQVAE(shape, config.hidden, config.latent_dim, rngs=rngs)


def _stock(name: str, build):
    """A family built from every ModelConfig field: `build(shape, config, rngs)`."""
    def family(config: ModelConfig) -> ModelFn:
        _hidden_layers(name, config)
        _unread(name, config, _FAMILY_ONLY, ())
        return lambda shape, rngs: build(shape, config, rngs)
    return family


def _autoencoder(config: ModelConfig) -> ModelFn:
    """ModelConfig's hidden widths (() for linear), latent_dim (= code size), activation and
    a Bernoulli or fixed-scale Gaussian likelihood."""
    _own_architecture("autoencoder", config, ("activation", "likelihood", "gaussian_scale"),
                      linear=True)
    if config.likelihood not in ("bernoulli", "gaussian") or config.gaussian_scale is None:
        raise ConfigError("the autoencoder family reconstructs with a bernoulli likelihood or a "
                          "gaussian one of fixed scale")
    return lambda shape, rngs: Autoencoder(shape, config.hidden, config.latent_dim,
                                           config.activation, config.likelihood,
                                           config.gaussian_scale, rngs=rngs)


def _cvae(config: ModelConfig) -> ModelFn:
    """ModelConfig's hidden widths, latent_dim and activation; Bernoulli pixels, 10 classes."""
    _own_architecture("cvae", config, ("activation",))
    return lambda shape, rngs: ConditionalVAE(shape, config.hidden, config.latent_dim, 10,
                                              config.activation, rngs=rngs)


def _m2(config: ModelConfig) -> ModelFn:
    """ModelConfig's hidden widths, latent_dim and activation (paper: 500, 50, softplus)."""
    _own_architecture("m2", config, ("activation",))
    return lambda shape, rngs: M2(shape, config.hidden, config.latent_dim, 10, config.activation,
                                  rngs=rngs)


def _trained_model(family: str, workdir: str | None):
    """The one model of a trained run folder and its image shape."""
    if workdir is None:
        raise ConfigError(f"the {family} family models the features of a trained model: give "
                          "features_from, its run folder (--features-from RUN_DIR)")
    from vaejax.train import RunError, load_run
    try:
        run = load_run(workdir)
    except RunError as error:
        raise ConfigError(f"features_from: {error}") from None
    if run.config.num_models != 1:
        raise ConfigError(f"features_from: {workdir} trained {run.config.num_models} models; "
                          "give a run of one")
    return run.model, tuple(run.trainer.image_shape)


def _m1m2(config: ModelConfig) -> ModelFn:
    """M2's hidden widths, latent_dim and activation over the posterior means of the model
    trained in features_from (its image shape must be the data's)."""
    _own_architecture("m1m2", config, ("activation", "features_from"))
    m1, m1_shape = _trained_model("m1m2", config.features_from)

    def build(shape, rngs):
        if tuple(shape) != m1_shape:
            raise ConfigError(f"features_from: {config.features_from} was trained on images of "
                              f"shape {m1_shape}, these are {tuple(shape)}")
        return M1M2(m1, shape, config.hidden, config.latent_dim, 10, config.activation, rngs=rngs)
    return build


# name → model built from the ModelConfig; the fixed sizes follow each family's paper.
register_family("vae", _stock("vae", lambda shape, c, rngs: VAE(shape, c, rngs=rngs)))
register_family("vae-planar", _stock("vae-planar", lambda shape, c, rngs: FlowVAE(
    shape, c, "planar", 10, rngs=rngs)))
register_family("vae-iaf", _stock("vae-iaf", lambda shape, c, rngs: FlowVAE(shape, c, "iaf", 2,
                                                                           rngs=rngs)))
register_family("vampprior", _vampprior)
register_family("two-layer", _two_layer("two-layer", 0))
register_family("two-layer-vampprior", _two_layer("two-layer-vampprior", 500))
register_family("vqvae", _vqvae, objective="vq")
register_family("cvae", _cvae)
register_family("m2", _m2, objective="m2", evaluation=objectives.m2_evaluation)
register_family("m1m2", _m1m2, objective="m2", evaluation=objectives.m1m2_evaluation)
register_family("autoencoder", _autoencoder,
                objective=("ae", "sparse-ae", "contractive-ae", "denoising-ae"),
                evaluation=objectives.reconstruction_evaluation)

__all__ = ["Autoencoder", "CUSTOM", "ConditionalVAE", "Conv", "ConvTranspose", "FlowVAE",
           "Frozen", "GaussianMixturePrior", "M1M2", "M2", "MLP", "Model", "ModelFn", "PointCode",
           "TwoLayerVAE", "VAE", "VQVAE", "VampVAE", "check_objective", "evaluation", "families",
           "model_fn", "register", "register_family", "with_precision"]
