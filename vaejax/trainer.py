"""Compiled training of any model: pure step, whole-epoch `lax.scan`, vmap over models, sharding.

All functions act on a `TrainState` whose leaves carry a leading model axis
(one entry per seed × β), so K models train in one XLA program. The data set
lives on the device; each epoch draws its permutation there and scans over the
batches, so no Python runs per step and no batch crosses from the host.

The model, objective, optimizer and schedules are arguments (see
`vaejax.models.Model`, `vaejax.objectives.Objective`, `vaejax.schedules`); by
default they are built from the config.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vaejax import models, objectives, schedules as schedules_lib, streaming
from vaejax.config import TrainConfig
from vaejax.input_pipeline import LEVELS, binarize_batch
from vaejax.objectives import Batch, as_batch


CHUNK = 8  # most steps per compiled call of the stepwise and streamed epochs
CHUNK_BYTES = 4 << 20  # and at most this much input (a larger chunk left the cache: slower)


class TrainState(NamedTuple):
    """One model's training state; stacked along a leading axis for K models."""

    params: nnx.State
    rest: nnx.State  # the model's other state (batch statistics, codebooks), not trained by grad
    opt_state: Any
    hyper: dict  # carried schedule values: {"beta": β, or the multiplier under KL ≤ δ}
    step: jax.Array
    key: jax.Array  # the seed's PRNG key; `streams` derives init, training and evaluation keys


def streams(key: jax.Array):
    """(init, train, eval): the seed key's children 0, 1, 2.

    Models are built with `nnx.Rngs(init)`, which draws fold_in(init, i), so init
    keys descend from child 0 only; epochs fold their index into child 1 or 2.
    (Built with `nnx.Rngs(seed)`, whose draws are the seed key's children, a
    model's second init key was the training stream.)
    """
    return tuple(jax.random.split(key, 3))


class Trainer:
    """The compiled functions of one run, for images of one shape.

    Args:
      config: a validated TrainConfig.
      image_shape: (H, W, C).
      num_train: training-set size; epochs use its first ⌊N/B⌋·B permuted examples.
      model_fn: `(image_shape, rngs) -> model`; default: the config's family.
      objective: `(model, batch, key, hyper) -> (loss, metrics)`; default: config.objective.
      optimizer: an optax.GradientTransformation; default: Adam at the config's
        learning rate and schedule.
      schedules: the `vaejax.schedules` to apply; default: those the config asks for.
      evaluation: `(model, batch, key) -> {record name: per-example values}`; default: the
        family's registered one, else `objectives.elbo_evaluation`.
    """

    def __init__(self, config: TrainConfig, image_shape, num_train: int, *, model_fn=None,
                 objective=None, optimizer=None, schedules=None, evaluation=None):
        self.config = config
        self.image_shape = tuple(image_shape)
        self.steps_per_epoch = num_train // config.batch_size
        if model_fn is None and objective is None:
            models.check_objective(config.model.family, config.objective)
        built = model_fn or models.model_fn(config.model)
        self.model_fn = lambda shape, rngs: models.with_precision(built(shape, rngs),
                                                                  config.precision)
        self.objective = objective or objectives.from_config(config)
        # Examples of a second stream, drawn from the labelled ones each step (`batch.labelled`).
        self.labelled = getattr(self.objective, "labelled_batch_size", 0)
        self.batch_width = config.batch_size + self.labelled  # columns of every batch plan row
        # The family's (as load_run and resume rebuild it), also under a model_fn of that family.
        self.evaluation = (evaluation or models.evaluation(config.model.family)
                           or objectives.elbo_evaluation)
        self.schedules = (schedules_lib.from_config(config, self.steps_per_epoch)
                          if schedules is None else list(schedules))
        self.tx = optax.adam(self._learning_rate()) if optimizer is None else optimizer
        abstract = nnx.eval_shape(lambda: self.model_fn(self.image_shape, nnx.Rngs(0)))
        self.graphdef = nnx.split(abstract, nnx.Param, ...)[0]
        self.conditional = hasattr(abstract, "given")  # conditioned on the batch's labels
        abstract.eval()  # batch norm on its running statistics, no dropout
        self.eval_graphdef = nnx.split(abstract, nnx.Param, ...)[0]
        self.mesh, replicated = None, None
        if config.devices > 1:  # every process's devices, where several processes train
            self.mesh = jax.sharding.Mesh(np.array(jax.devices()[:config.devices]), ("data",))
            replicated = NamedSharding(self.mesh, PartitionSpec())  # every process reads results
        self.train_epoch = jax.jit(self.per_model(self._epoch, (0, None, None)), donate_argnums=0,
                                   out_shardings=replicated)
        self.train_step = jax.jit(self.per_model(self._step, (0, 0, 0)), donate_argnums=0,
                                  out_shardings=replicated)
        self.evaluate = jax.jit(self.per_model(self._evaluate, (0, None, None)),
                                out_shardings=replicated)
        self._train_chunk = jax.jit(self.per_model(self._chunk, (0, 0, 0, None)),
                                    donate_argnums=0, out_shardings=replicated)
        self._plans = jax.jit(jax.vmap(self.batch_plan, in_axes=(0, None, None, None)),
                              static_argnums=1)

    def _learning_rate(self):
        c = self.config
        if c.lr_schedule == "cosine":  # decays to 0 over the run's epochs
            return optax.cosine_decay_schedule(c.learning_rate, c.epochs * self.steps_per_epoch)
        return c.learning_rate

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
            key = jax.random.PRNGKey(seed)
            model = self.model_fn(self.image_shape, nnx.Rngs(streams(key)[0]))
            _, params, rest = nnx.split(model, nnx.Param, ...)
            states.append(TrainState(params, rest, self.tx.init(params), {"beta": jnp.float32(beta)},
                                     jnp.int32(0), key))
        return self.place(jax.tree.map(lambda *xs: jnp.stack(xs), *states))

    def place(self, tree):
        """Puts arrays on the device(s): replicated over the mesh when there is one."""
        if self.mesh is None:
            return jax.device_put(tree)
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def model(self, params, rest):
        """One model in evaluation mode from its (unstacked) parameters and other state."""
        return nnx.merge(self.eval_graphdef, params, rest)

    def models(self, state: TrainState) -> list:
        """Every model of a stacked state, in evaluation mode, as Python objects."""
        return [self.model(*jax.tree.map(lambda t: t[i], (state.params, state.rest)))
                for i in range(self.config.num_models)]

    def _hyper(self, state: TrainState):
        hyper = state.hyper
        for schedule in self.schedules:
            hyper = schedule(hyper, state.step)
        return hyper

    def _step(self, state: TrainState, data, key):
        """One optimiser step of one model on a batch (B, H, W, C) or Batch."""
        batch = as_batch(data)
        if self.mesh is not None:
            batch = jax.tree.map(lambda t: jax.lax.with_sharding_constraint(
                t, NamedSharding(self.mesh, PartitionSpec("data"))), batch)
        binarize_key, loss_key = jax.random.split(key)

        def binarize(key, x):
            return binarize_batch(key, x, self.config.binarization,
                                  LEVELS.get(self.config.dataset, 256))

        batch = batch._replace(x=binarize(binarize_key, batch.x))
        if batch.labelled is not None:
            batch = batch._replace(labelled=batch.labelled._replace(
                x=binarize(jax.random.fold_in(binarize_key, 1), batch.labelled.x)))
        hyper = self._hyper(state)

        def loss_fn(params):
            # copy: fresh Variables in this trace, so the model may update its own state.
            model = nnx.merge(self.graphdef, params, state.rest, copy=True)
            loss, metrics = self.objective(model, batch, loss_key, hyper)
            return loss, (metrics, nnx.split(model, nnx.Param, ...)[2])

        (loss, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        carried = state.hyper
        for schedule in self.schedules:
            carried = schedule.update(carried, state.step, metrics)
        metrics = dict(metrics, loss=loss, beta=hyper["beta"])
        return TrainState(params, rest, opt_state, carried, state.step + 1, state.key), metrics

    def _chunk(self, state: TrainState, stored, keys, values):
        """`_step` over a chunk of batches (G, B, ...) as stored, one key each, as one scan;
        uint8 levels are decoded by the table `values` (256,) (None: stored as floats)."""
        def body(state, plan):
            batch, key = plan
            if values is not None:
                batch = batch._replace(x=values[batch.x.astype(jnp.int32)])
            return self._step(state, self._split(batch), key)

        return jax.lax.scan(body, state, (stored, keys))

    def _split(self, batch: Batch) -> Batch:
        """A batch of one plan row: its labelled stream's columns become `batch.labelled`."""
        if not self.labelled:
            return batch
        b = self.config.batch_size
        return Batch(batch.x[:b], batch.y[:b], Batch(batch.x[b:], batch.y[b:]))

    def batch_plan(self, key, num_examples: int, epoch, labels=None):
        """An epoch's batches as index rows (steps, B) and one PRNG key per step.

        Where the objective asks for a labelled stream, each row goes on with that many
        indices drawn uniformly, with replacement, from the examples whose label (of
        `labels`, (N,), −1 where missing) is known: rows (steps, B + labelled_batch_size).
        """
        perm_key, step_key = jax.random.split(jax.random.fold_in(streams(key)[1], epoch))
        n, b = self.steps_per_epoch, self.config.batch_size
        rows = jax.random.permutation(perm_key, num_examples)[:n * b].reshape(n, b)
        if self.labelled:
            known = (labels >= 0).astype(jnp.float32)
            drawn = jax.random.choice(jax.random.fold_in(perm_key, 1), num_examples,
                                      (n, self.labelled), p=known / jnp.sum(known))
            rows = jnp.concatenate([rows, drawn.astype(rows.dtype)], axis=1)
        return rows, jax.random.split(step_key, n)

    def _epoch(self, state: TrainState, data, epoch):
        """A whole epoch of one model as one scan over on-device batches."""
        data = as_batch(data)

        def body(state, plan):
            rows, key = plan
            return self._step(state, self._split(jax.tree.map(lambda t: t[rows], data)), key)

        return jax.lax.scan(body, state, self.batch_plan(state.key, data.x.shape[0], epoch,
                                                         data.y))

    def local_columns(self) -> np.ndarray:
        """The columns of every batch that this process's devices hold (all, in one process)."""
        b = self.batch_width
        if self.mesh is None:
            return np.arange(b)
        per = b // self.config.devices
        return np.concatenate([np.arange(i * per, (i + 1) * per)
                               for i, d in enumerate(self.mesh.devices.flat)
                               if d.process_index == jax.process_index()])

    def device_batch(self, local: Batch) -> Batch:
        """Host batches of this process's columns (K, G, b, ...) on the devices; over a mesh,
        the global (K, G, B, ...) array that every process contributes its columns to."""
        if self.mesh is None:
            return jax.device_put(local)
        sharding = NamedSharding(self.mesh, PartitionSpec(None, None, "data"))
        return jax.tree.map(lambda t: jax.make_array_from_process_local_data(
            sharding, t, (*t.shape[:2], self.batch_width, *t.shape[3:])), local)

    def steps(self, state: TrainState, data, epoch: int, position: dict | None = None):
        """The steps of `train_epoch` in chunks (`chunk_steps`), each one compiled scan over
        the batches that Grain read for it: yields (steps done in the epoch, state, metrics
        (K, G) of the chunk's G steps, position after it) for each chunk; the position
        (Grain's iterator state and the chunk size) continues the epoch when passed back.

        `data`: host arrays (a Batch), or a `vaejax.streaming.Stream` read from storage as
        the steps need it; each process reads only its own columns of every batch.
        """
        stream = data if isinstance(data, streaming.Stream) else streaming.in_memory(as_batch(data))
        labels = None if not self.labelled else self.place(stream.labels)
        order, keys = jax.device_get(self._plans(state.key, stream.shape[0], epoch, labels))
        # A resumed epoch keeps the chunks it began with: Grain's position counts them.
        chunk = self.chunk_steps(stream) if position is None else position["chunk"]
        batches = streaming.batches(stream, order[..., self.local_columns()], chunk)
        if position is not None:
            batches.set_state({k: v for k, v in position.items() if k != "chunk"})
        values = stream.values()  # uint8 crosses to the device, a quarter of float32's bytes
        values = None if values is None else self.place(values)
        for i in range(streaming.next_index_of(batches.get_state()) * chunk,
                       self.steps_per_epoch, chunk):
            state, metrics = self._train_chunk(state, self.device_batch(next(batches)),
                                               self.place(keys[:, i:i + chunk]), values)
            yield (min(i + chunk, self.steps_per_epoch), state, metrics,
                   dict(batches.get_state(), chunk=chunk))

    def chunk_steps(self, stream: streaming.Stream) -> int:
        """Steps per compiled call: CHUNK, fewer where their input would pass CHUNK_BYTES."""
        per_step = (self.config.num_models * self.batch_width
                    * math.prod(stream.shape[1:]) * stream.images.dtype.itemsize)
        return max(1, min(CHUNK, CHUNK_BYTES // per_step))

    def train_epoch_stepwise(self, state: TrainState, data, epoch: int):
        """The same epoch as `train_epoch`, in compiled chunks of steps (see `steps`)."""
        history = []
        for _, state, metrics, _ in self.steps(state, data, epoch):
            history.append(metrics)
        return state, jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *history)

    def _evaluate(self, state: TrainState, data, epoch):
        """Test-set means of the evaluation's values for one model (padded batches, masked)."""
        data = as_batch(data)
        size = self.config.eval_batch_size
        n = data.x.shape[0]
        batches = -(-n // size)

        def padded(t):
            t = jnp.concatenate([t, jnp.zeros((batches * size - n, *t.shape[1:]), t.dtype)])
            return t.reshape(batches, size, *t.shape[1:])

        mask = (jnp.arange(batches * size) < n).reshape(batches, size)
        keys = jax.random.split(jax.random.fold_in(streams(state.key)[2], epoch), batches)
        model = self.model(state.params, state.rest)

        def batch_sums(args):
            batch, key, m = args
            return jax.tree.map(lambda t: jnp.sum(t * m), self.evaluation(model, batch, key))

        sums = jax.lax.map(batch_sums, (jax.tree.map(padded, data), keys, mask))
        return jax.tree.map(lambda s: jnp.sum(s) / n, sums)
