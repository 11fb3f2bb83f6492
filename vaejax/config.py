"""Run configuration: the model and training settings, presets and validation.

A config is a frozen dataclass that round-trips through JSON, so a run folder's
config.json is the whole recipe of the run.
"""

import dataclasses
import json
import math
import types
import typing
from typing import Literal

from vaejax.input_pipeline import BINARIZATIONS, LEVELS

ACTIVATIONS = ("relu", "tanh", "gelu", "softplus", "elu", "leaky_relu", "silu")
POSTERIORS = ("diagonal", "full", "categorical")
LIKELIHOODS = ("bernoulli", "gaussian", "continuous_bernoulli", "logistic", "logistic_mixture")
# The data treatments under which each likelihood is a distribution of what the model sees;
# the first is the CLI's default. "none" under a Bernoulli only where the data set is binary.
LIKELIHOOD_DATA = {
    "bernoulli": ("dynamic", "static", "none"),
    "gaussian": ("dequantize",),
    "continuous_bernoulli": ("dequantize",),
    "logistic": ("none",),
    "logistic_mixture": ("none",),
}
# Settings read by some likelihoods only: a differing value under another would be ignored.
LIKELIHOOD_SETTINGS = {"gaussian_scale": ("gaussian",), "levels": ("logistic", "logistic_mixture"),
                       "mixture_components": ("logistic_mixture",)}
ESTIMATORS = ("gumbel_softmax", "score_function")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("float32", "bf16")  # of the model's matmuls and convolutions
OPTIMIZERS = ("adam", "custom")  # "custom": an optax transformation given in Python
CORRUPTIONS = ("masking", "gaussian", "salt_and_pepper")  # the noises of vaejax.corrupt


class ConfigError(ValueError):
    """An invalid setting; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Encoder + decoder + prior N(0, I) (uniform for categorical) + likelihood.

    `family` names the registered model family (`vaejax.models.register`); the
    stock "vae" is built from the other fields. The decoder mirrors the encoder:
    its hidden sizes are the encoder's reversed. For "conv", `conv_channels` are
    the stride-2 convolution widths and `hidden` the dense layers after them.
    The discretised logistic likelihoods spread over `levels` grey levels (the
    data set's), the mixture over `mixture_components` logistics per value.
    `features_from` is the run folder of the trained model whose posterior means the
    m1m2 family models.
    """

    family: str = "vae"
    architecture: Literal["mlp", "conv"] = "mlp"
    hidden: tuple[int, ...] = (200,)
    conv_channels: tuple[int, ...] = (32, 64)
    activation: str = "relu"
    latent_dim: int = 8
    posterior: str = "diagonal"
    num_categories: int = 10
    likelihood: str = "bernoulli"
    gaussian_scale: float | None = 0.1
    levels: int = 256
    mixture_components: int = 5
    features_from: str | None = None

    @property
    def learned_scale(self) -> bool:
        """A Gaussian decoder with gaussian_scale=None learns one σ per pixel."""
        return self.likelihood == "gaussian" and self.gaussian_scale is None


# Architectures from the literature; "digits" is the small default for 8×8 data.
PRESETS: dict[str, ModelConfig] = {
    "digits": ModelConfig(hidden=(128,), latent_dim=8, activation="relu"),
    "flax": ModelConfig(hidden=(500,), latent_dim=20, activation="relu"),
    "pytorch": ModelConfig(hidden=(400,), latent_dim=20, activation="relu"),
    "burda": ModelConfig(hidden=(200, 200), latent_dim=50, activation="tanh"),
    "pythae": ModelConfig(hidden=(400,), latent_dim=40, activation="relu"),
    "jang": ModelConfig(hidden=(512, 256), latent_dim=20, num_categories=10,
                        posterior="categorical", activation="relu"),
    "conv": ModelConfig(architecture="conv", hidden=(256,), conv_channels=(32, 64),
                        latent_dim=16, activation="relu"),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data files."""

    dataset: str = "digits"
    model: ModelConfig = PRESETS["digits"]
    binarization: str = "dynamic"
    objective: str = "elbo"
    num_samples: int = 1
    betas: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0,)
    kl_warmup_epochs: int = 0
    free_bits: float = 0.0
    kl_target: float | None = None
    dual_learning_rate: float = 0.01
    estimator: str = "gumbel_softmax"
    temperature: float = 1.0
    min_temperature: float = 0.5
    temperature_decay: float = 0.0
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    optimizer: str = "adam"
    precision: str = "float32"  # bf16: bfloat16 products, float32 parameters and loss
    eval_batch_size: int = 1000
    devices: int = 1
    checkpoint_every: int = 10
    init_from: str | None = None  # a run folder whose latest parameters start every model
    corruption: str | None = None  # "NOISE:LEVEL" of a denoising autoencoder's inputs
    labels: int | None = None  # training labels kept, an equal number per class; None: all
    label_seed: int = 0  # which labels are kept
    classifier_weight: float | None = None  # m2's α on E_labelled[−log q(y|x)]; None: 0.1

    @property
    def num_models(self) -> int:
        """Models trained side by side: every seed × every β."""
        return len(self.seeds) * len(self.betas)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        model = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in data.pop("model").items()})
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(model=model, **data)


# Whole training runs whose outcome benchmarks/ measured (benchmarks/README.md).
RECIPES: dict[str, TrainConfig] = {
    # Test NLL 88.72 (Burda et al.: 88.71) after 18.3 minutes of training on 2 CPU cores.
    "burda-20min": TrainConfig(dataset="binarized_mnist", model=PRESETS["burda"],
                               binarization="static", epochs=760, batch_size=100,
                               lr_schedule="cosine"),
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(name: str, value, allowed) -> None:
    _require(value in allowed, f"{name} must be one of {', '.join(allowed)}; got {value!r}")


_MAX_INT = 2**31 - 1  # beyond this, shapes, step counters and seeds overflow


def _fits(value, kind) -> bool:
    """Whether value is of the annotated kind (finite numbers, ints within _MAX_INT)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal or kind is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, tuple) and all(_fits(v, args[0]) for v in value)
    if kind is type(None):
        return value is None
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int) and abs(value) <= _MAX_INT
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _describe(kind) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        return f"a list, each {_describe(args[0])}"
    return {int: f"an integer of magnitude at most {_MAX_INT}", float: "a finite number",
            str: "a string"}.get(kind, "a string" if origin is Literal else kind.__name__)


def _check_types(settings) -> None:
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if not _fits(value, field.type):
            raise ConfigError(f"{field.name} must be {_describe(field.type)}; got {value!r}")


def _check_data_treatment(config: TrainConfig) -> None:
    """The likelihood must be a distribution of the data as the model sees it."""
    likelihood, treatment = config.model.likelihood, config.binarization
    levels = LEVELS.get(config.dataset)
    if levels is None:  # an unknown data set: loading it says so
        return
    allowed = LIKELIHOOD_DATA[likelihood]
    if likelihood == "bernoulli" and treatment == "none":
        _require(levels == 2, f"{config.dataset} has {levels} grey levels: under a Bernoulli "
                 "likelihood they give a cross-entropy, not a likelihood; binarize them "
                 "(binarization 'dynamic' or 'static') or choose a grey-level likelihood")
        return
    _require(treatment in allowed, f"the {likelihood} likelihood needs binarization "
             f"{' or '.join(repr(a) for a in allowed if a != 'none' or len(allowed) == 1)}, "
             f"got {treatment!r}" + {
                 "dequantize": " (a density on pixels that sit exactly on a grey level is "
                               "unbounded: dequantise them)",
                 "none": " (it is a distribution over the stored grey levels)",
             }.get(allowed[0], ""))
    if likelihood.startswith("logistic"):
        _require(config.model.levels == levels, f"{config.dataset} has {levels} grey levels: "
                 f"set levels={levels} (got {config.model.levels})")


def parse_corruption(text: str) -> tuple[str, float]:
    """("masking", 0.25) from "masking:0.25"; ConfigError if it is no corruption of `corrupt`."""
    noise, _, level = text.partition(":")
    try:
        level = float(level)
    except ValueError:
        raise ConfigError(f"corruption must be NOISE:LEVEL, e.g. masking:0.25; got {text!r}")
    _choice("the corruption's noise", noise, CORRUPTIONS)
    top = math.inf if noise == "gaussian" else 1.0
    _require(0 <= level <= top, f"the {noise} corruption's level must be in [0, {top:g}]; "
             f"got {level:g}")
    return noise, level


def validate(config: TrainConfig) -> TrainConfig:
    """Checks every setting; raises ConfigError with one clear message."""
    _check_types(config)
    _check_types(config.model)
    m = config.model
    _choice("architecture", m.architecture, ("mlp", "conv"))
    _choice("activation", m.activation, ACTIVATIONS)
    _choice("posterior", m.posterior, POSTERIORS)
    _choice("likelihood", m.likelihood, LIKELIHOODS)
    _choice("binarization", config.binarization, BINARIZATIONS)
    _choice("estimator", config.estimator, ESTIMATORS)
    _choice("lr_schedule", config.lr_schedule, LR_SCHEDULES)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("precision", config.precision, PRECISIONS)
    _require(m.latent_dim >= 1, f"latent size must be >= 1; got {m.latent_dim}")
    _require(all(h >= 1 for h in m.hidden + m.conv_channels), "layer widths must be >= 1")
    _require(m.posterior != "categorical" or m.num_categories >= 2,
             "a categorical latent needs >= 2 categories")
    _require(m.gaussian_scale is None or m.gaussian_scale > 0, "gaussian_scale must be > 0")
    _require(m.levels >= 2, f"levels must be >= 2; got {m.levels}")
    _require(m.mixture_components >= 1,
             f"mixture_components must be >= 1; got {m.mixture_components}")
    if m.family != "custom":  # a model_fn's own likelihood is its author's to match
        _check_data_treatment(config)
        for name, readers in LIKELIHOOD_SETTINGS.items():
            _require(m.likelihood in readers or getattr(m, name) == getattr(ModelConfig(), name),
                     f"{name} is read by the {' and '.join(readers)} likelihood only; "
                     f"the {m.likelihood} likelihood would ignore it")
    _require(len(config.betas) >= 1, "give at least one beta")
    for beta in config.betas:
        _require(math.isfinite(beta) and beta >= 0, f"beta must be >= 0; got {beta}")
    _require(len(config.seeds) >= 1, "give at least one seed")
    _require(len(set(config.seeds)) == len(config.seeds), "seeds must be distinct")
    _require(all(seed >= 0 for seed in config.seeds), "seeds must be >= 0")
    _require(config.num_samples >= 1, f"num_samples must be >= 1; got {config.num_samples}")
    _require(config.epochs >= 1, f"epochs must be >= 1; got {config.epochs}")
    _require(config.batch_size >= 1, f"batch size must be >= 1; got {config.batch_size}")
    _require(config.learning_rate > 0, "learning rate must be > 0")
    _require(config.devices >= 1, "devices must be >= 1")
    _require(config.checkpoint_every >= 1, "checkpoint_every must be >= 1")
    _require(config.kl_warmup_epochs >= 0, "kl_warmup_epochs must be >= 0")
    _require(config.free_bits >= 0, "free_bits must be >= 0")
    _require(config.free_bits == 0 or m.posterior == "diagonal",
             "free bits need a diagonal posterior (they act per latent dimension)")
    _require(config.kl_target is None or config.kl_target >= 0, "kl_target must be >= 0")
    _require(config.temperature > 0 and config.min_temperature > 0, "temperatures must be > 0")
    _require(config.temperature_decay >= 0, "temperature_decay must be >= 0")
    _require(config.dual_learning_rate > 0, "dual_learning_rate must be > 0")
    _require(config.eval_batch_size >= 1, "eval_batch_size must be >= 1")
    if config.corruption is not None:
        parse_corruption(config.corruption)
    _require(config.labels is None or (config.labels >= 10 and config.labels % 10 == 0),
             f"labels must be a positive multiple of the 10 classes; got {config.labels}")
    _require(config.label_seed >= 0, "label_seed must be >= 0")
    _require(config.label_seed == 0 or config.labels is not None,
             "label_seed chooses which labels --labels keeps: give labels too")
    _require(config.classifier_weight is None or config.classifier_weight > 0,
             "classifier_weight must be > 0")
    # (Settings an objective does not read are refused by `objectives.check_settings`.)
    _require(config.objective not in ("iwae", "iwae-dreg") or m.posterior != "categorical",
             "the IWAE objective needs a Gaussian posterior")
    _require(m.posterior == "categorical" or config.estimator == "gumbel_softmax",
             "the score-function estimator is for categorical latents")
    return config
