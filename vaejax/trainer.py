"""Compiled training: pure step, whole-epoch `lax.scan`, vmap over models, sharding.

All functions act on a `TrainState` whose leaves carry a leading model axis
(one entry per seed × β), so K models train in one XLA program. The data set
lives on the device; each epoch draws its permutation there and scans over the
batches, so no Python runs per step and no batch crosses from the host.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vaejax import losses
from vaejax.config import TrainConfig
from vaejax.models import VAE

# Fold-in tags that give the init, training and evaluation streams of a seed.
_TRAIN_STREAM, _EVAL_STREAM = 1, 2


class TrainState(NamedTuple):
    """One model's training state; stacked along a leading axis for K models."""

    params: nnx.State
    opt_state: Any
    beta: jax.Array  # β in use: fixed, or the Lagrange multiplier when kl_target is set
    step: jax.Array
    key: jax.Array  # the seed's raw PRNG key; epochs fold their index into it


class Trainer:
    """The compiled functions of one config, for images of one shape.

    Args:
      config: a validated TrainConfig.
      image_shape: (H, W, C).
      num_train: training-set size; epochs use its first ⌊N/B⌋·B permuted examples.
    """

    def __init__(self, config: TrainConfig, image_shape, num_train: int):
        self.config = config
        self.image_shape = tuple(image_shape)
        self.steps_per_epoch = num_train // config.batch_size
        abstract = nnx.eval_shape(lambda: VAE(self.image_shape, config.model, rngs=nnx.Rngs(0)))
        self.graphdef = nnx.split(abstract)[0]
        learning_rate = config.learning_rate
        if config.lr_schedule == "cosine":  # decays to 0 over the run's epochs
            learning_rate = optax.cosine_decay_schedule(
                config.learning_rate, config.epochs * self.steps_per_epoch)
        self.tx = optax.adam(learning_rate)
        self.mesh = None
        if config.devices > 1:
            self.mesh = jax.sharding.Mesh(np.array(jax.devices()[:config.devices]), ("data",))
        self.train_epoch = jax.jit(self.per_model(self._epoch, (0, None, None)), donate_argnums=0)
        self.train_step = jax.jit(self.per_model(self._step, (0, 0, 0)), donate_argnums=0)
        self.evaluate = jax.jit(self.per_model(self._evaluate, (0, None, None)))

    def per_model(self, fn, in_axes):
        """fn mapped over the model axis of the arguments whose entry in in_axes is 0."""
        if self.config.num_models > 1:
            return jax.vmap(fn, in_axes=in_axes)

        # One model: drop the axis instead of vmapping over it. A vmap of size one
        # turns every dot into a batched dot, which XLA's CPU backend pays for in copies.
        def single(*args):
            args = [a if axis is None else jax.tree.map(lambda t: t[0], a)
                    for a, axis in zip(args, in_axes)]
            return jax.tree.map(lambda t: t[None], fn(*args))

        return single

    def replicas(self) -> list[tuple[int, float]]:
        """(seed, β) of each model, in the order of the model axis."""
        return [(seed, beta) for seed in self.config.seeds for beta in self.config.betas]

    def init(self) -> TrainState:
        """Fresh states for all models, stacked along the model axis."""
        states = []
        for seed, beta in self.replicas():
            model = VAE(self.image_shape, self.config.model, rngs=nnx.Rngs(seed))
            params = nnx.state(model, nnx.Param)
            states.append(TrainState(params, self.tx.init(params), jnp.float32(beta),
                                     jnp.int32(0), jax.random.PRNGKey(seed)))
        return self.place(jax.tree.map(lambda *xs: jnp.stack(xs), *states))

    def place(self, tree):
        """Puts arrays on the device(s): replicated over the mesh when there is one."""
        if self.mesh is None:
            return jax.device_put(tree)
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def model(self, params) -> VAE:
        return nnx.merge(self.graphdef, params)

    def _schedules(self, state: TrainState):
        c = self.config
        beta = state.beta
        if c.kl_warmup_epochs:
            warmup_steps = c.kl_warmup_epochs * self.steps_per_epoch
            beta = beta * jnp.minimum(1.0, (state.step + 1) / warmup_steps)
        temperature = jnp.maximum(c.min_temperature,
                                  c.temperature * jnp.exp(-c.temperature_decay * state.step))
        return beta, temperature

    def _step(self, state: TrainState, x, key):
        """One optimiser step of one model on batch x (B, H, W, C)."""
        c = self.config
        if self.mesh is not None:
            x = jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec("data")))
        binarize_key, loss_key = jax.random.split(key)
        if c.binarization == "dynamic":
            x = jax.random.bernoulli(binarize_key, x).astype(x.dtype)
        beta, temperature = self._schedules(state)

        def loss_fn(params):
            return losses.train_loss(self.model(params), x, loss_key, c, beta, temperature)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_beta = state.beta
        if c.kl_target is not None:
            # Dual ascent on the Lagrangian of max E[log p(x|z)] s.t. KL ≤ δ.
            new_beta = jnp.maximum(0.0, state.beta + c.dual_learning_rate * (metrics["rate"] - c.kl_target))
        metrics = dict(metrics, loss=loss, beta=beta)
        return TrainState(params, opt_state, new_beta, state.step + 1, state.key), metrics

    def batch_plan(self, key, num_examples: int, epoch):
        """An epoch's batches as index rows (steps, B) and one PRNG key per step."""
        perm_key, step_key = jax.random.split(
            jax.random.fold_in(jax.random.fold_in(key, _TRAIN_STREAM), epoch))
        n, b = self.steps_per_epoch, self.config.batch_size
        rows = jax.random.permutation(perm_key, num_examples)[:n * b].reshape(n, b)
        return rows, jax.random.split(step_key, n)

    def _epoch(self, state: TrainState, data, epoch):
        """A whole epoch of one model as one scan over on-device batches."""
        def body(state, plan):
            rows, key = plan
            return self._step(state, data[rows], key)

        return jax.lax.scan(body, state, self.batch_plan(state.key, data.shape[0], epoch))

    def train_epoch_stepwise(self, state: TrainState, images: np.ndarray, epoch: int):
        """The same epoch as `train_epoch`, one jitted step per host batch.

        For data too large for the device: each batch is copied from host memory.
        """
        plan = jax.vmap(self.batch_plan, in_axes=(0, None, None))
        order, keys = plan(state.key, images.shape[0], epoch)
        order = np.asarray(order)
        history = []
        for i in range(self.steps_per_epoch):
            state, metrics = self.train_step(state, self.place(images[order[:, i]]), keys[:, i])
            history.append(metrics)
        return state, jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *history)

    def _evaluate(self, state: TrainState, data, epoch):
        """Test-set means of ELBO, rate, distortion for one model (padded batches, masked)."""
        size = self.config.eval_batch_size
        n = data.shape[0]
        batches = -(-n // size)
        padded = jnp.concatenate([data, jnp.zeros((batches * size - n, *data.shape[1:]), data.dtype)])
        mask = (jnp.arange(batches * size) < n).reshape(batches, size)
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(state.key, _EVAL_STREAM), epoch),
                                batches)
        model = self.model(state.params)

        def batch_terms(args):
            x, key, m = args
            return jax.tree.map(lambda t: jnp.sum(t * m), losses.eval_terms(model, x, key))

        sums = jax.lax.map(batch_terms, (padded.reshape(batches, size, *data.shape[1:]), keys, mask))
        elbo, rate, distortion = (jnp.sum(s) / n for s in sums)
        return {"elbo": elbo, "rate": rate, "distortion": distortion}
