"""train_and_evaluate: one run folder from a config — data, training, checkpoints, metrics,
figures — for the stock model or any model, objective and optimizer; `load_run` brings
the trained models back into Python.

The run folder holds config.json, data.json (image shape and split sizes, so a
run loads without its data), metrics.jsonl (one line per epoch per model),
summary.json, samples.png, reconstructions.png, curves.png, tensorboard/ (one folder
of TensorBoard events per model) and checkpoints/.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

import vaejax
from vaejax import distributed, input_pipeline, interrupts, models, objectives, streaming
from vaejax.checkpoints import Checkpointer, DamagedCheckpointError
from vaejax.config import ConfigError, TrainConfig, validate
from vaejax.objectives import Batch
from vaejax.summaries import TensorBoard
from vaejax.trainer import Trainer, TrainState


class RunError(ValueError):
    """The run folder cannot be used as asked (another run there, nothing to resume)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


_NO_SPACE = os.strerror(errno.ENOSPC)


class WriteError(RuntimeError):
    """A run file could not be written mid-run (a full disk); the last checkpoint is kept."""


@contextlib.contextmanager
def run_lock(workdir: Path):
    """Holds an exclusive lock on the run folder: one writer per run.

    The lock is the kernel's (flock on workdir/.lock), so it is released on any
    exit, a kill included; the file only names the last holder.

    Raises:
      RunError: another process holds it (named in the message).
    """
    path = Path(workdir) / ".lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunError(f"cannot write to {workdir}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = path.read_text().strip() or "another process"
        raise RunError(f"{workdir} is in use by {holder}; wait for it to end or choose "
                       "another --workdir") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)


def write_json(path: Path, data) -> None:
    """Writes JSON atomically: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunError(f"{path} cannot be read: {error}") from None


def read_config(workdir) -> TrainConfig:
    """The config stored in a run folder, validated."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise RunError(f"{workdir} holds no run (no config.json)")
    data = _read_json(path)
    try:
        return validate(TrainConfig.from_dict(data))
    except (AttributeError, KeyError, TypeError, ConfigError) as error:
        detail = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise RunError(f"{path} is not a valid run config: {detail}") from None


def read_data_info(workdir) -> dict:
    """data.json: image_shape, num_train, num_test and has_labels of the run's data."""
    path = Path(workdir) / "data.json"
    if not path.exists():
        raise RunError(f"{workdir} holds no data.json (a run written by an older vaejax)")
    info = _read_json(path)
    if not isinstance(info, dict) or not {"image_shape", "num_train"} <= set(info):
        raise RunError(f"{path} does not give image_shape and num_train")
    return info


def read_metrics(workdir) -> list[dict]:
    """metrics.jsonl's records; a torn last line (what a kill mid-write leaves) is dropped."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RunError(f"{path} cannot be read: {error}") from None
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                break
            record = None
        if not (isinstance(record, dict) and all(
                type(record.get(k)) is int and record[k] >= low for k, low in (("epoch", 1),
                                                                             ("model", 0)))):
            raise RunError(f"{path} line {i + 1} is not a metrics record (an object with integer "
                           "epoch and model): restore the file, or delete the line to continue "
                           "without that record") from None
        records.append(record)
    return records


def check_writable(workdir: Path, need_bytes: int = 16 << 20) -> None:
    """Refuses a run folder that cannot be made or written, or lacks `need_bytes` of space.

    Run before the data are loaded and before anything is written; the first
    folder of workdir's path that exists is tried with a temporary file.
    """
    try:
        str(workdir).encode()
    except UnicodeEncodeError:
        raise RunError(f"the run folder's path {str(workdir)!r} is not valid UTF-8") from None
    workdir = Path(os.path.abspath(workdir))
    there = next(p for p in (workdir, *workdir.parents) if p.exists())
    if not there.is_dir():
        raise RunError(f"cannot make the run folder {workdir}: {there} is a file")
    try:
        with tempfile.TemporaryFile(dir=there):
            pass
    except OSError as error:
        raise RunError(f"cannot write to {there}: {error.strerror}") from None
    free = shutil.disk_usage(there).free
    if free < need_bytes:
        raise RunError(f"only {free / 2**20:.1f} MiB are free on the file system of {there}; "
                       f"the run needs about {need_bytes / 2**20:.1f} MiB")


def _bytes_needed(config: TrainConfig, state) -> int:
    """Disk space of a run: two kept checkpoints and one being written, metrics, figures."""
    state_bytes = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(state))
    return 3 * state_bytes + config.epochs * config.num_models * 1024 + (16 << 20)


def _differences(a: TrainConfig, b: TrainConfig, ignore=()) -> list[str]:
    da, db = json.loads(a.to_json()), json.loads(b.to_json())
    return sorted(k for k in da if k not in ignore and da[k] != db.get(k))


def _check_workdir(workdir: Path, config: TrainConfig, resume: bool) -> None:
    if not (workdir / "config.json").exists():
        if resume:
            raise RunError(f"nothing to resume: {workdir} holds no run")
        return
    stored = read_config(workdir)
    if not resume:
        changed = _differences(stored, config)
        detail = f" with another config (differs in: {', '.join(changed)})" if changed else ""
        raise RunError(f"{workdir} already holds a run{detail}; pass --resume to continue it "
                       "or choose another --workdir")
    changed = _differences(stored, config, ignore=("epochs",))
    if changed:
        raise RunError(f"cannot resume {workdir} with another config (differs in: "
                       f"{', '.join(changed)}); only --epochs may change")
    if config.epochs != stored.epochs and config.lr_schedule == "cosine":
        # The decay is planned over the run's epochs: changing them would change
        # the learning rate of steps already taken in the unbroken run.
        raise RunError(f"cannot change the epochs of {workdir} on resume: its cosine learning-rate "
                       f"schedule decays over {stored.epochs} epochs; start a new run with "
                       "--init-from to train on")
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    done = checkpointer.latest_epoch()
    checkpointer.close()
    if done is not None and config.epochs < done:
        raise RunError(f"{workdir} has trained {done} epochs; --epochs {config.epochs} would "
                       "label the later model with an earlier epoch")


def recorded_config(config: TrainConfig, model_fn=None, objective=None, optimizer=None
                    ) -> TrainConfig:
    """The config as config.json records it: "custom" where a Python object replaced a default.

    A run trained with `model_fn` keeps a family the config names, but not the
    default "vae", which would rebuild the stock model; likewise for the objective.
    """
    changes = {}
    if model_fn is not None and config.model.family == "vae":
        changes["model"] = dataclasses.replace(config.model, family=models.CUSTOM)
    if objective is not None and config.objective == "elbo":
        changes["objective"] = objectives.CUSTOM
    if optimizer is not None:
        changes["optimizer"] = "custom"
    return dataclasses.replace(config, **changes)


class RunData(NamedTuple):
    """Images (N, H, W, C) in [0, 1] and labels (None where the data set has none); under
    streaming input `train` is a `vaejax.streaming.Stream` (with its labels), read per step."""

    train: np.ndarray | streaming.Stream
    test: np.ndarray
    train_labels: np.ndarray | None
    test_labels: np.ndarray | None

    def train_batch(self) -> Batch | streaming.Stream:
        if isinstance(self.train, streaming.Stream):
            return self.train._replace(labels=self.train_labels)
        return Batch(self.train, self.train_labels)

    def test_batch(self) -> Batch:
        return Batch(self.test, self.test_labels)


INPUTS = ("auto", "memory", "streaming")


def prepare_data(config: TrainConfig, data_dir=None, manual_dir=None, input="memory") -> RunData:
    """Loads the data set, binarized as the config says, and checks it against the config.

    input "streaming" leaves the training split in storage (ArrayRecord, read by Grain per
    step); "auto" chooses it when the split does not fit in memory (`fits_in_memory`).
    """
    if input not in INPUTS:
        raise ConfigError(f"input must be one of {', '.join(INPUTS)}, got {input!r}")
    name, binarization = config.dataset, config.binarization
    if input == "auto":
        shape = input_pipeline.split_shape(name, "train", data_dir=data_dir, manual_dir=manual_dir)
        input = "memory" if name == "digits" or fits_in_memory(shape, config) else "streaming"
    if input == "memory" or name == "digits":  # digits: Grain reads the in-memory arrays
        data = input_pipeline.load(name, binarization=binarization, data_dir=data_dir,
                                   manual_dir=manual_dir)
        train, train_labels = data.train.images, data.train.labels
        if input == "streaming":
            train = streaming.in_memory(Batch(train))
        test = data.test
    else:
        train = streaming.prepared(name, threshold=binarization == "static", data_dir=data_dir,
                                   manual_dir=manual_dir)
        train_labels = train.labels
        test = input_pipeline.treated(name, "test", binarization, input_pipeline.load_split(
            name, "test", data_dir=data_dir, manual_dir=manual_dir))
    if config.batch_size > train.shape[0]:
        raise ConfigError(f"batch size {config.batch_size} is larger than the "
                          f"{train.shape[0]} training examples of {name}")
    if config.labels is not None:
        train_labels = keep_labels(name, train_labels, config.labels, config.label_seed)
    return RunData(train, test.images, train_labels, test.labels)


def fits_in_memory(shape, config: TrainConfig) -> bool:
    """Whether a float32 training split of `shape` fits in half of the memory it would take:
    a host copy plus one per device (on CPU all in host memory), or a device's own."""
    need = 4 * math.prod(shape)
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    stats = jax.local_devices()[0].memory_stats() or {}
    if jax.default_backend() == "cpu" or "bytes_limit" not in stats:
        return need * (1 + min(config.devices, jax.local_device_count())) <= host / 2
    return need <= stats["bytes_limit"] / 2 and need <= host / 2


def keep_labels(dataset: str, labels, count: int, seed: int) -> np.ndarray:
    """`count` labels, an equal number per class drawn with `seed`; the rest set to −1."""
    if labels is None:
        raise ConfigError(f"{dataset} has no labels to keep")
    classes = np.unique(labels)
    per_class, rng = count // len(classes), np.random.default_rng(seed)
    kept = np.full_like(labels, -1)
    for c in classes:
        where = np.flatnonzero(labels == c)
        if len(where) < per_class:
            raise ConfigError(f"{dataset} has {len(where)} training examples of class {c}, "
                              f"fewer than the {per_class} per class that labels={count} keeps")
        chosen = rng.choice(where, per_class, replace=False)
        kept[chosen] = labels[chosen]
    return kept


def _check_devices(config: TrainConfig) -> None:
    available = len(jax.devices())
    if jax.process_count() > 1 and config.devices != available:
        # Each process feeds its own devices: a mesh without some of them leaves processes out.
        raise ConfigError(f"a run over {jax.process_count()} processes shards each batch over "
                          f"all their {available} devices: pass devices={available}, "
                          f"not {config.devices}")
    if config.devices > available:
        n = config.devices
        hint = (f"; for {n} CPU devices, call jax.config.update('jax_num_cpu_devices', {n}) before "
                f"JAX first computes, or set XLA_FLAGS=--xla_force_host_platform_device_count={n}"
                if jax.default_backend() == "cpu" else "")
        raise ConfigError(f"{config.devices} devices asked for, {available} available{hint}")
    if config.batch_size % config.devices:
        raise ConfigError(f"batch size {config.batch_size} must be divisible by "
                          f"the {config.devices} devices it is sharded over")


_BOOKKEEPING = ("epoch", "model", "seed", "beta", "beta_in_use", "examples_per_second",
                "epoch_seconds")


def test_keys(record: dict) -> list[str]:
    """The evaluation's values in a metrics record (`test_elbo`, `rate`, `distortion`, ...)."""
    return [k for k in record if k not in _BOOKKEEPING and not k.startswith("train_")]


def headline(record: dict) -> str:
    """The test value a run is judged by: the ELBO where there is one."""
    keys = test_keys(record)
    return "test_elbo" if "test_elbo" in keys else keys[0]


def _shown_first(key: str):
    """Records list the ELBO's values first, in this order, then the rest by name."""
    order = ("test_elbo", "rate", "distortion")
    return (order.index(key) if key in order else len(order), key)


def _epoch_records(trainer, epoch, train_metrics, test_metrics, examples_per_second, seconds):
    records = []
    for i, (seed, beta) in enumerate(trainer.replicas()):
        train = {k: float(np.mean(v[i])) for k, v in train_metrics.items()}
        records.append({
            "epoch": epoch, "model": i, "seed": seed, "beta": beta,
            "beta_in_use": train.pop("beta"), **{f"train_{k}": v for k, v in train.items()},
            **{k: float(test_metrics[k][i]) for k in sorted(test_metrics, key=_shown_first)},
            "examples_per_second": examples_per_second, "epoch_seconds": seconds,
        })
    return records


BITS_PER_DIM_CONVENTION = (
    "−log p(x)/(D ln 2), D values per image; dequantised data y = (k + u)/L add D·log L to "
    "−log p(y), an upper bound on the bits/dim of the discrete levels")


def is_grey_level(config: TrainConfig) -> bool:
    """Whether the run models grey levels ("none" or "dequantize" data that are not binary);
    binary data are reported in nats only."""
    return (config.binarization in ("none", "dequantize")
            and input_pipeline.LEVELS.get(config.dataset, 256) > 2)


def bits_per_dim_of(config: TrainConfig, image_shape, log_likelihood: float) -> float:
    """bits/dim of a grey-level run's log-likelihood (see `is_grey_level`)."""
    dequantized = (input_pipeline.LEVELS.get(config.dataset, 256)
                   if config.binarization == "dequantize" else None)
    return float(vaejax.bits_per_dim(log_likelihood, math.prod(image_shape), dequantized))


def _summary(config, trainer, records, epochs_done):
    last = records[-trainer.config.num_models:]
    first_model = [r for r in records if r["model"] == 0]
    # Training and test evaluation of every epoch, summed over resumed sessions too.
    wall_seconds = sum(r["epoch_seconds"] for r in first_model)
    # A median: the epochs that include compilation (the first of each process) barely move it.
    speeds = [r["examples_per_second"] for r in first_model]
    keys = tuple(test_keys(last[0])) if last else ()
    per_model = [{k: r[k] for k in ("model", "seed", "beta", "beta_in_use", *keys, "train_elbo")
                  if k in r} for r in last]
    summary = {
        "dataset": config.dataset, "epochs": epochs_done, "num_models": len(per_model),
        "wall_seconds": wall_seconds, "models": per_model,
        "train_examples_per_second": statistics.median(speeds[1:] or speeds) if speeds else None,
    }
    if is_grey_level(config) and "test_elbo" in keys:
        for m in per_model:
            m["test_elbo_bits_per_dim"] = bits_per_dim_of(config, trainer.image_shape,
                                                          m["test_elbo"])
        summary["bits_per_dim_convention"] = BITS_PER_DIM_CONVENTION
        keys += ("test_elbo_bits_per_dim",)
    _lift(summary, keys)
    return summary


def _lift(summary: dict, keys) -> None:
    """Copies per-model values to the top level: a number for one model, else a list."""
    for key in keys:
        values = [m[key] for m in summary["models"]]
        summary[key] = values[0] if len(values) == 1 else values


def read_summary(workdir) -> dict:
    """The summary.json of a finished run."""
    path = Path(workdir) / "summary.json"
    if not path.exists():
        raise RunError(f"{workdir} holds no finished run (no summary.json)")
    summary = _read_json(path)
    if not isinstance(summary, dict) or not isinstance(summary.get("models"), list) or not (
            summary["models"] and isinstance(summary.get("epochs"), int)):
        raise RunError(f"{path} is not a run summary (needs models and epochs)")
    return summary


def update_summary(workdir, per_model: dict[str, list], extra: dict) -> dict:
    """Adds per-model results (key → one value per model) and run-level values to summary.json."""
    summary = read_summary(workdir)
    for key, values in per_model.items():
        for model, value in zip(summary["models"], values):
            model[key] = value
    _lift(summary, per_model)
    summary.update(extra)
    write_json(Path(workdir) / "summary.json", summary)
    return summary


def train_and_evaluate(config: TrainConfig, workdir, *, model_fn=None, objective=None,
                       optimizer=None, schedules=None, evaluation=None, resume: bool = False,
                       data_dir=None,
                       manual_dir=None, progress: bool = True, stepwise: bool = False,
                       input: str = "auto") -> dict:
    """Trains the config's models, writes the run folder, returns the summary.

    Every check (config, data, devices, run folder) runs before anything is
    written. Checkpoints are written every `checkpoint_every` epochs and at the
    end; with resume=True the run continues from its latest checkpoint.

    Args:
      config: the run's TrainConfig.
      workdir: the run folder.
      model_fn: `(image_shape, rngs) -> model` (see `vaejax.models.Model`); default:
        the family config.model names. config.json records family "custom" unless
        the config names a registered family.
      objective: `(model, batch, key, hyper) -> (loss, metrics)`; default: the
        objective config.objective names (recorded as "custom" otherwise).
      optimizer: an optax.GradientTransformation in place of Adam at
        config.learning_rate and lr_schedule (recorded as optimizer "custom").
      schedules: `vaejax.schedules` in place of those the config asks for.
      evaluation: `(model, batch, key) -> {name: per-example values}`, the test metrics
        recorded each epoch (see `vaejax.objectives.Evaluation`); default: the
        family's, else the ELBO's `test_elbo`, `rate`, `distortion`.
      resume: continue the run in workdir (only `epochs` may differ); pass the
        same model_fn, objective, optimizer, schedules and evaluation again.
      data_dir: TFDS's prepared-data cache.
      manual_dir: folder holding the TFDS download files, one sub-folder per data set.
      progress: show a progress bar.
      stepwise: train with one jitted step per host batch instead of whole-epoch scans.
      input: "memory" holds the data set in memory; "streaming" reads the training split
        from storage with Grain as each step needs it (stepwise, the same batches in the same
        order); "auto" streams only a split that does not fit. summary.json says which.

    Returns:
      the contents of summary.json.
    """
    config = validate(recorded_config(config, model_fn, objective, optimizer))
    if objective is None:
        objectives.check_settings(config)
    workdir = Path(workdir)
    _check_devices(config)
    check_writable(workdir)
    locked = workdir.is_dir()
    primary = distributed.is_primary()  # the process that writes; the others read
    with contextlib.ExitStack() as stack:
        stops = stack.enter_context(interrupts.catch())
        if locked:  # the checks read the folder: no other writer meanwhile
            _all_begin(workdir, lambda: stack.enter_context(run_lock(workdir)) if primary else None)
        _check_workdir(workdir, config, resume)
        data = prepare_data(config, data_dir, manual_dir, input)
        stops.check()
        trainer = Trainer(config, data.train.shape[1:], data.train.shape[0], model_fn=model_fn,
                          objective=objective, optimizer=optimizer, schedules=schedules,
                          evaluation=evaluation)
        if trainer.conditional and data.train_labels is None:
            raise ConfigError(f"the {config.model.family} model is conditioned on labels, and "
                              f"{config.dataset} has none")
        if trainer.labelled and (data.train_labels is None or not np.any(data.train_labels >= 0)):
            raise ConfigError(f"the {config.objective} objective draws a labelled batch every "
                              f"step, and the {config.dataset} training split has no labelled "
                              "example")
        state = trainer.init()
        if resume and (workdir / "metrics.jsonl").exists():
            _check_test_keys(workdir, trainer, state, data, read_metrics(workdir))
        if config.init_from is not None:
            state = state._replace(params=trainer.place(initial_params(config, trainer)))
        check_writable(workdir, _bytes_needed(config, state))
        stops.check()  # the last point at which nothing has been written
        if not locked:  # a new folder, made only now that every check has passed

            def begin():
                if primary:
                    workdir.mkdir(parents=True, exist_ok=True)
                    stack.enter_context(run_lock(workdir))
                    _check_workdir(workdir, config, resume)  # another run may have begun here

            _all_begin(workdir, begin)
        stops.workdir = workdir
        try:
            return _train(config, workdir, data, trainer, state, resume, progress, stepwise,
                          stops)
        except Exception as error:  # orbax and tensorstore wrap the OSError in their own kinds
            if getattr(error, "errno", None) != errno.ENOSPC and _NO_SPACE not in str(error):
                raise
            raise WriteError(f"{_NO_SPACE}: a file of {workdir} could not be written; "
                             f"{_kept(workdir)}. Free some space and continue with --resume"
                             ) from None


def _all_begin(workdir, begin) -> None:
    """Calls `begin()` (process 0's lock and folder); over several processes, all go on or all
    stop, so that none waits for one that refused."""
    refused = None
    try:
        begin()
    except RunError as error:
        refused = error
    if not all(distributed.gather(refused is None)):
        raise refused or RunError(f"process 0 could not begin the run in {workdir}: "
                                  "its output says why")


def _kept(workdir) -> str:
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    kept = checkpointer.latest_epoch()
    checkpointer.close()
    return f"the checkpoint of epoch {kept} is kept" if kept else "no checkpoint was written"


def _train(config, workdir, data, trainer, state, resume, progress, stepwise, stops) -> dict:
    train, test, start = data.train, data.test, 0
    primary = distributed.is_primary()
    if primary:
        write_json(workdir / "config.json", json.loads(config.to_json()))
        write_json(workdir / "data.json", {"image_shape": list(train.shape[1:]),
                                           "num_train": train.shape[0], "num_test": test.shape[0],
                                           "has_labels": data.train_labels is not None})
    train_batch, test_device = data.train_batch(), trainer.place(data.test_batch())
    streamed = isinstance(train_batch, streaming.Stream)
    stepwise = stepwise or streamed
    checkpointer = Checkpointer(str(workdir / "checkpoints"), writer=True)
    records, in_epoch = [], None
    if resume and checkpointer.epochs():
        start, state = _restore_latest(checkpointer, workdir, state, discard_damaged=True)
        state = trainer.place(state)
    if resume and stepwise and (workdir / IN_EPOCH).is_dir():
        in_epoch = _restore_in_epoch(workdir, trainer, state, start)
        if in_epoch is not None:
            start, state = in_epoch[0] - 1, in_epoch[1]
    if resume:
        records = [r for r in read_metrics(workdir) if r["epoch"] <= start]
        if primary:
            _report_gaps(workdir, records, config.num_models, start)
    stops.epoch = start
    metrics_path = workdir / "metrics.jsonl" if primary else Path(os.devnull)
    if primary:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))

    train_device = None if stepwise else trainer.place(train_batch)
    progress = progress and primary
    bar = _progress(range(start, config.epochs), progress)
    examples = config.num_models * trainer.steps_per_epoch * config.batch_size
    done = start  # the last epoch committed to metrics.jsonl
    with open(metrics_path, "a") as metrics_file, \
            TensorBoard(workdir, config.num_models, purge_step=start + 1) as board:
        for epoch in bar:
            if distributed.agreed_stop(stops):
                break
            tic = time.perf_counter()
            if stepwise:
                new_state, metrics, position = _stepwise_epoch(
                    trainer, state, train_batch, epoch, in_epoch if epoch == start else None,
                    stops)
                if position is not None:  # stopped within the epoch: keep the steps taken
                    with stops.writing_files():
                        _save_in_epoch(workdir, epoch + 1, new_state, metrics, position)
                        checkpointer.close()
                        stops.epoch, stops.steps = epoch + 1, len(jax.tree.leaves(metrics)[0][0])
                    stops.check()
            else:
                new_state, metrics = trainer.train_epoch(state, train_device, epoch)
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - tic
            if not np.all(np.isfinite(metrics["loss"])):
                _stop_non_finite(checkpointer, workdir, epoch + 1, metrics["loss"])
            test_metrics = jax.device_get(trainer.evaluate(new_state, test_device, epoch))
            epoch_records = _epoch_records(trainer, epoch + 1, metrics, test_metrics,
                                           examples / seconds, time.perf_counter() - tic)
            with stops.writing_files():  # the epoch is committed whole or not at all
                state, done = new_state, epoch + 1
                records += epoch_records
                metrics_file.write("".join(json.dumps(r) + "\n" for r in epoch_records))
                metrics_file.flush()
                board.scalars(epoch_records)
                if done % config.checkpoint_every == 0 or done == config.epochs:
                    checkpointer.save(done, state)
                    stops.epoch = done
                if primary and (workdir / IN_EPOCH).exists():  # the epoch it was within is done
                    shutil.rmtree(workdir / IN_EPOCH)
            if progress:
                key = headline(epoch_records[0])
                bar.set_postfix({key: f"{epoch_records[0][key]:.2f}"},
                                ex_per_s=f"{examples / seconds:,.0f}")
        if distributed.agreed_stop(stops):  # the epochs since the last checkpoint are kept too
            with stops.writing_files():
                if stops.epoch != done:
                    checkpointer.save(done, state)
                    stops.epoch = done
                checkpointer.close()
            stops.check()
    checkpointer.close()
    summary = _summary(config, trainer, records, config.epochs)
    summary.update(input="streaming" if streamed else "memory", stepwise=stepwise)
    if not primary:
        return summary
    write_json(workdir / "summary.json", summary)
    from vaejax import plots  # matplotlib only when figures are drawn
    # On this process's devices alone: the others do not take part.
    grids = plots.write_run_figures(workdir, trainer, jax.device_get(state), test, records,
                                    test_labels=data.test_labels)
    with TensorBoard(workdir, config.num_models) as board:
        board.images(grids, config.epochs)
    stops.check()  # a signal during the figures: the run is whole, but the caller asked to stop
    return summary


IN_EPOCH = "checkpoints_in_epoch"  # a stepwise epoch stopped by a signal, to continue within it


def _stepwise_epoch(trainer, state, train, epoch, resumed, stops):
    """(state, metrics, position) of an epoch in compiled chunks of steps, continued from
    `resumed` (epoch, state, steps' metrics, position) where given. A signal to any process
    stops it after the chunk in flight; position is then Grain's iterator state (None when the
    epoch is done)."""
    history, position = [], None
    if resumed is not None:
        _, state, taken, position = resumed
        history = [taken]
    for done, state, metrics, position in trainer.steps(state, train, epoch, position):
        history.append(metrics)
        if done < trainer.steps_per_epoch and distributed.agreed_stop(stops):
            break
    else:
        position = None
    history = jax.device_get(history)
    return state, jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *history), position


def _save_in_epoch(workdir, epoch, state, metrics, position) -> None:
    """Checkpoints a stepwise epoch stopped within: the state, the steps' metrics, and Grain's
    iterator state (orbax step = the epoch it is within)."""
    checkpointer = Checkpointer(str(workdir / IN_EPOCH), max_to_keep=1, writer=True)
    checkpointer.save(epoch, {"state": state, "metrics": metrics,
                              "position": {k: np.int64(v) for k, v in position.items()}})
    checkpointer.close()


def _restore_in_epoch(workdir, trainer, like, start):
    """(epoch, state, steps' metrics, position) of the checkpoint within an epoch after `start`;
    None if there is none (or it is damaged: the epoch is then trained again from its start)."""
    checkpointer = Checkpointer(str(workdir / IN_EPOCH))
    try:
        epoch = checkpointer.latest_epoch()
        if epoch is None or epoch <= start:
            return None
        try:
            return (epoch, trainer.place(checkpointer.restore(epoch, like, part="state")),
                    checkpointer.arrays(epoch, "metrics"),
                    {k: int(v) for k, v in checkpointer.arrays(epoch, "position").items()})
        except (DamagedCheckpointError, ValueError) as error:
            print(f"vaejax: {error}; epoch {epoch} is trained again from its start",
                  file=sys.stderr)
            return None
    finally:
        checkpointer.close()


def _check_test_keys(workdir, trainer, state, data, records) -> None:
    """Refuses to resume with an evaluation whose values are not those recorded so far."""
    keys = set(jax.eval_shape(trainer.evaluate, state, data.test_batch(), 0))
    if records and keys != set(test_keys(records[-1])):
        raise RunError(f"{workdir} records the test values {', '.join(test_keys(records[-1]))}; "
                       f"this evaluation gives {', '.join(sorted(keys))}: pass the evaluation "
                       "the run was trained with")


def _report_gaps(workdir, records, num_models, epoch) -> None:
    """Says, in one line, which epochs up to `epoch` metrics.jsonl lacks."""
    have = {(r["model"], r["epoch"]) for r in records}
    missing = sorted({e for e in range(1, epoch + 1) for m in range(num_models)
                      if (m, e) not in have})
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        print(f"vaejax: {workdir / 'metrics.jsonl'} lacks {len(missing)} of the {epoch} epochs "
              f"trained (epochs {shown}); summary.json and curves.png cover the epochs recorded",
              file=sys.stderr)


def initial_params(config: TrainConfig, trainer: Trainer):
    """The latest parameters of the run in `config.init_from`, one copy per model of `config`.

    A source run with one model starts every model of a sweep; otherwise the
    numbers of models must agree. Only parameters are taken, matched by name:
    the optimiser, step count, schedules and other model state start afresh.
    """
    source = Path(config.init_from)
    source_config = read_config(source)
    ours, theirs = dataclasses.asdict(config.model), dataclasses.asdict(source_config.model)
    changed = sorted(k for k in ours if ours[k] != theirs[k])
    if changed:
        raise RunError(f"cannot start from {source}: its model differs in {', '.join(changed)}")
    k_source, k = source_config.num_models, config.num_models
    if k_source not in (1, k):
        raise RunError(f"cannot start {k} models from {source}, which holds {k_source}")
    checkpointer = Checkpointer(str(source / "checkpoints"))
    like = jax.tree.map(lambda p: np.zeros((k_source, *p.shape[1:]), p.dtype), trainer.init().params)
    try:
        _, params = _restore_latest(checkpointer, source, like, part="params")
    except RunError:
        raise
    except ValueError as error:
        raise RunError(f"cannot start from {source}: {error} (trained on other images?)") from None
    finally:
        checkpointer.close()
    return jax.tree.map(lambda p: np.broadcast_to(p, (k, *p.shape[1:])), params)


def _restore_latest(checkpointer, workdir, like, **options):
    """(epoch, state) of the newest checkpoint of workdir that verifies; RunError if none does."""
    if not checkpointer.epochs():
        raise RunError(f"{workdir} holds no checkpoint")
    report = lambda line: print(f"vaejax: {line}", file=sys.stderr)  # noqa: E731
    try:
        return checkpointer.restore_latest(like, report=report, **options)
    except DamagedCheckpointError as error:
        raise RunError(f"no checkpoint of {workdir} can be used: {error}") from None


def _stop_non_finite(checkpointer, workdir, epoch, losses):
    bad = sorted({int(i) for i in np.nonzero(~np.isfinite(losses))[0]})
    kept = checkpointer.latest_epoch()
    checkpointer.close()
    where = (f"the last good checkpoint (epoch {kept}) is kept in {workdir / 'checkpoints'}"
             if kept is not None else "no checkpoint had been written yet")
    raise NonFiniteLossError(f"the training loss became non-finite in epoch {epoch} "
                             f"(model {', '.join(map(str, bad))}); training stopped and {where}. "
                             "Try a lower learning rate.")


def _progress(epochs, enabled):
    if not enabled:
        return epochs
    from tqdm.auto import tqdm
    return tqdm(epochs, desc="epochs", unit="epoch")


class Run(NamedTuple):
    """A trained run brought back into Python.

    Attributes:
      config: the run's TrainConfig.
      models: one model per seed × β (`config.seeds` outer, `config.betas` inner),
        in evaluation mode: `encode`, `log_likelihood`, `mean_image`, `prior.sample`, ...
      metrics: the metrics.jsonl records.
      summary: summary.json, or None for a run that has not finished.
      epoch: the epoch of the restored checkpoint.
      trainer: the run's Trainer (its compiled functions, `replicas()`).
      state: the stacked TrainState at that epoch.
    """

    config: TrainConfig
    models: list
    metrics: list[dict]
    summary: dict | None
    epoch: int
    trainer: Trainer
    state: TrainState

    @property
    def model(self):
        """The first model (the only one of a one-model run)."""
        return self.models[0]


def _needs_objective(*args):
    raise ValueError("this run's objective was given in Python: pass objective= to load_run "
                     "to train it further")


def load_run(workdir, model_fn=None, *, objective=None, optimizer=None,
             evaluation=None) -> Run:
    """The trained models of a run folder at its latest checkpoint, without its data.

    A built-in (or registered) family is rebuilt from config.json; a run trained
    with a `model_fn` needs it again (and its `evaluation`, if one was given).
    `objective` and `optimizer` matter only to train on with `run.trainer`: a run
    trained with a custom optimizer that is not passed again comes back with
    `state.opt_state` None.
    """
    workdir = Path(workdir)
    config = read_config(workdir)
    info = read_data_info(workdir)
    if config.model.family == models.CUSTOM and model_fn is None:
        raise RunError(f"{workdir} was trained with a model_fn given in Python: pass it to "
                       "load_run (or register it with vaejax.models.register)")
    if config.objective == objectives.CUSTOM and objective is None:
        objective = _needs_objective
    trainer = Trainer(dataclasses.replace(config, devices=1), info["image_shape"],
                      info["num_train"], model_fn=model_fn, objective=objective, optimizer=optimizer,
                      evaluation=evaluation)
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    like = trainer.init()
    skip = ("opt_state",) if config.optimizer == "custom" and optimizer is None else ()
    if skip:
        like = like._replace(opt_state=None)
    try:
        epoch, state = _restore_latest(checkpointer, workdir, like, skip=skip)
    except RunError:
        raise
    except ValueError as error:
        raise RunError(f"cannot load {workdir}: {error}") from None
    finally:
        checkpointer.close()
    state = trainer.place(state)
    summary = read_summary(workdir) if (workdir / "summary.json").exists() else None
    return Run(config, trainer.models(state), read_metrics(workdir), summary, epoch, trainer, state)
