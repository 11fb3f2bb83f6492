"""Schedules: hyperparameters that change during training, carried in the training state.

The state carries `hyper`, a dict of arrays (`{"beta": β}` to start). Before
each step every schedule maps it to the values the step uses (`__call__`);
after the step it may update what is carried (`update`, e.g. a Lagrange
multiplier). The step itself never branches on them.
"""

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp

Hyper = dict[str, jax.Array]


class Schedule(Protocol):
    def __call__(self, hyper: Hyper, step: jax.Array) -> Hyper: ...

    def update(self, hyper: Hyper, step: jax.Array, metrics: dict) -> Hyper: ...


class _Fixed:
    def update(self, hyper, step, metrics):
        return hyper


class KLWarmup(_Fixed, NamedTuple("KLWarmup", [("steps", int)])):
    """β rises linearly from β/steps at the first step to β at step `steps` (then stays)."""

    def __call__(self, hyper, step):
        return dict(hyper, beta=hyper["beta"] * jnp.minimum(1.0, (step + 1) / self.steps))


class TemperatureDecay(_Fixed, NamedTuple("TemperatureDecay", [
        ("initial", float), ("minimum", float), ("rate", float)])):
    """τ = max(minimum, initial · exp(−rate · step)), the Gumbel-softmax temperature."""

    def __call__(self, hyper, step):
        return dict(hyper, temperature=jnp.maximum(self.minimum,
                                                   self.initial * jnp.exp(-self.rate * step)))


class DualAscent(NamedTuple):
    """max E[log p(x|z)] s.t. KL ≤ target: β is the multiplier, raised while the rate exceeds it."""

    target: float
    learning_rate: float

    def __call__(self, hyper, step):
        return hyper

    def update(self, hyper, step, metrics):
        if "rate" not in metrics:
            raise ValueError("KL ≤ δ dual ascent needs an objective that reports a 'rate' metric")
        beta = hyper["beta"] + self.learning_rate * (metrics["rate"] - self.target)
        return dict(hyper, beta=jnp.maximum(0.0, beta))


def from_config(config, steps_per_epoch: int) -> list[Schedule]:
    """The schedules a TrainConfig asks for."""
    schedules = [TemperatureDecay(config.temperature, config.min_temperature,
                                  config.temperature_decay)]
    if config.kl_warmup_epochs:
        schedules.append(KLWarmup(config.kl_warmup_epochs * steps_per_epoch))
    if config.kl_target is not None:
        schedules.append(DualAscent(config.kl_target, config.dual_learning_rate))
    return schedules
