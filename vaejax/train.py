"""train_and_evaluate: one run folder from a config — data, training, checkpoints, metrics, figures.

The run folder holds config.json, metrics.jsonl (one line per epoch per model),
summary.json, samples.png, reconstructions.png, curves.png and checkpoints/.
"""

import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from vaejax import input_pipeline
from vaejax.checkpoints import Checkpointer
from vaejax.config import ConfigError, TrainConfig, validate
from vaejax.trainer import Trainer

# A fixed key binarizes the test set once, so every dynamic-binarization run
# is scored on the same binary test images.
_TEST_BINARIZATION_SEED = 20140101


class RunError(ValueError):
    """The run folder cannot be used as asked (another run there, nothing to resume)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def write_json(path: Path, data) -> None:
    """Writes JSON atomically: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_config(workdir) -> TrainConfig:
    """The config stored in a run folder."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise RunError(f"{workdir} holds no run (no config.json)")
    return TrainConfig.from_dict(json.loads(path.read_text()))


def read_metrics(workdir) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


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


class RunData(NamedTuple):
    """Images (N, H, W, C) in [0, 1] and labels (None where the data set has none)."""

    train: np.ndarray
    test: np.ndarray
    train_labels: np.ndarray | None
    test_labels: np.ndarray | None


def prepare_data(config: TrainConfig, data_dir=None, manual_dir=None) -> RunData:
    """Loads the data set and checks it against the config."""
    binarization = "static" if config.binarization == "static" else "none"
    data = input_pipeline.load(config.dataset, binarization=binarization,
                               data_dir=data_dir, manual_dir=manual_dir)
    train, test = data.train.images, data.test.images
    if config.batch_size > train.shape[0]:
        raise ConfigError(f"batch size {config.batch_size} is larger than the "
                          f"{train.shape[0]} training examples of {config.dataset}")
    if config.binarization == "dynamic":
        key = jax.random.PRNGKey(_TEST_BINARIZATION_SEED)
        test = np.asarray(jax.random.bernoulli(key, test), np.float32)
    return RunData(train, test, data.train.labels, data.test.labels)


def _check_devices(config: TrainConfig) -> None:
    available = len(jax.devices())
    if config.devices > available:
        raise ConfigError(f"{config.devices} devices asked for, {available} available")
    if config.batch_size % config.devices:
        raise ConfigError(f"batch size {config.batch_size} must be divisible by "
                          f"the {config.devices} devices it is sharded over")


def _epoch_records(trainer, epoch, train_metrics, test_metrics, examples_per_second, seconds):
    records = []
    for i, (seed, beta) in enumerate(trainer.replicas()):
        train = {k: float(np.mean(v[i])) for k, v in train_metrics.items()}
        records.append({
            "epoch": epoch, "model": i, "seed": seed, "beta": beta,
            "beta_in_use": train["beta"], "train_elbo": train["elbo"], "train_loss": train["loss"],
            "train_rate": train["rate"], "train_distortion": train["distortion"],
            "test_elbo": float(test_metrics["elbo"][i]), "rate": float(test_metrics["rate"][i]),
            "distortion": float(test_metrics["distortion"][i]),
            "examples_per_second": examples_per_second, "epoch_seconds": seconds,
        })
    return records


def _summary(config, trainer, records, epochs_done):
    last = records[-trainer.config.num_models:]
    first_model = [r for r in records if r["model"] == 0]
    # Training and test evaluation of every epoch, summed over resumed sessions too.
    wall_seconds = sum(r["epoch_seconds"] for r in first_model)
    # A median: the epochs that include compilation (the first of each process) barely move it.
    speeds = [r["examples_per_second"] for r in first_model]
    models = [{k: r[k] for k in ("model", "seed", "beta", "beta_in_use", "test_elbo", "rate",
                                 "distortion", "train_elbo")} for r in last]
    summary = {
        "dataset": config.dataset, "epochs": epochs_done, "num_models": len(models),
        "wall_seconds": wall_seconds, "models": models,
        "train_examples_per_second": statistics.median(speeds[1:] or speeds) if speeds else None,
    }
    _lift(summary, ("test_elbo", "rate", "distortion"))
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
    return json.loads(path.read_text())


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


def train_and_evaluate(config: TrainConfig, workdir, *, resume: bool = False, data_dir=None,
                       manual_dir=None, progress: bool = True, stepwise: bool = False) -> dict:
    """Trains the config's models, writes the run folder, returns the summary.

    Every check (config, data, devices, run folder) runs before anything is
    written. Checkpoints are written every `checkpoint_every` epochs and at the
    end; with resume=True the run continues from its latest checkpoint.

    Args:
      config: the run's TrainConfig.
      workdir: the run folder.
      resume: continue the run in workdir (only `epochs` may differ).
      data_dir: TFDS's prepared-data cache.
      manual_dir: folder holding the TFDS download files, one sub-folder per data set.
      progress: show a progress bar.
      stepwise: train with one jitted step per host batch instead of whole-epoch scans.

    Returns:
      the contents of summary.json.
    """
    validate(config)
    workdir = Path(workdir)
    _check_devices(config)
    _check_workdir(workdir, config, resume)
    train, test, _, _ = prepare_data(config, data_dir, manual_dir)
    trainer = Trainer(config, train.shape[1:], train.shape[0])
    state, start = trainer.init(), 0
    if config.init_from is not None:
        state = state._replace(params=trainer.place(initial_params(config, trainer)))

    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", json.loads(config.to_json()))
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    records = []
    if resume and checkpointer.latest_epoch() is not None:
        start = checkpointer.latest_epoch()
        state = trainer.place(checkpointer.restore(start, state))
        records = [r for r in read_metrics(workdir) if r["epoch"] <= start]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    train_device, test_device = trainer.place(train), trainer.place(test)
    bar = _progress(range(start, config.epochs), progress)
    examples = config.num_models * trainer.steps_per_epoch * config.batch_size
    with open(workdir / "metrics.jsonl", "a") as metrics_file:
        for epoch in bar:
            tic = time.perf_counter()
            if stepwise:
                new_state, metrics = trainer.train_epoch_stepwise(state, train, epoch)
            else:
                new_state, metrics = trainer.train_epoch(state, train_device, epoch)
            metrics = jax.device_get(metrics)
            seconds = time.perf_counter() - tic
            if not np.all(np.isfinite(metrics["loss"])):
                _stop_non_finite(checkpointer, workdir, epoch + 1, metrics["loss"])
            state = new_state
            test_metrics = jax.device_get(trainer.evaluate(state, test_device, epoch))
            epoch_records = _epoch_records(trainer, epoch + 1, metrics, test_metrics,
                                           examples / seconds, time.perf_counter() - tic)
            records += epoch_records
            metrics_file.write("".join(json.dumps(r) + "\n" for r in epoch_records))
            metrics_file.flush()
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                checkpointer.save(epoch + 1, state)
            if progress:
                bar.set_postfix(elbo=f"{epoch_records[0]['test_elbo']:.2f}",
                                ex_per_s=f"{examples / seconds:,.0f}")
    checkpointer.close()
    summary = _summary(config, trainer, records, config.epochs)
    write_json(workdir / "summary.json", summary)
    from vaejax import plots  # matplotlib only when figures are drawn
    plots.write_run_figures(workdir, trainer, state, test, records)
    return summary


def initial_params(config: TrainConfig, trainer: Trainer):
    """The latest parameters of the run in `config.init_from`, one copy per model of `config`.

    A source run with one model starts every model of a sweep; otherwise the
    numbers of models must agree. Only parameters are taken: the optimiser,
    step count and schedules start afresh.
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
    epoch = checkpointer.latest_epoch()
    if epoch is None:
        checkpointer.close()
        raise RunError(f"cannot start from {source}: it holds no checkpoint")
    like = Trainer(dataclasses.replace(source_config, devices=1), trainer.image_shape,
                   source_config.batch_size).init()
    try:
        params = checkpointer.restore(epoch, like).params
    except ValueError as error:
        raise RunError(f"cannot start from {source}: {error} (trained on other images?)") from None
    finally:
        checkpointer.close()
    return jax.tree.map(lambda p: np.broadcast_to(p, (k, *p.shape[1:])), params)


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


def load_run(workdir, data_dir=None, manual_dir=None):
    """(config, trainer, state, RunData) of a run folder, at its latest checkpoint."""
    config = read_config(workdir)
    data = prepare_data(config, data_dir, manual_dir)
    trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
    checkpointer = Checkpointer(str(Path(workdir) / "checkpoints"))
    epoch = checkpointer.latest_epoch()
    if epoch is None:
        raise RunError(f"{workdir} holds no checkpoint")
    state = trainer.place(checkpointer.restore(epoch, trainer.init()))
    checkpointer.close()
    return config, trainer, state, data
