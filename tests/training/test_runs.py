"""Run folders: contents, exact resume, the non-finite stop, and many devices."""

import dataclasses
import json
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

from vaejax import objectives
from vaejax.checkpoints import Checkpointer
from vaejax.config import ConfigError, TrainConfig
from vaejax.train import (NonFiniteLossError, RunError, initial_params, read_metrics,
                          train_and_evaluate)
from vaejax.trainer import Trainer

from .conftest import SMALL, interrupted_at, run_on_host_devices


def _final_leaves(workdir, config):
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    epoch = checkpointer.latest_epoch()
    trainer = Trainer(config, (8, 8, 1), 1497)
    state = checkpointer.restore(epoch, trainer.init())
    checkpointer.close()
    return epoch, [np.asarray(x) for x in jax.tree.leaves(state)]


def test_run_folder_is_complete(tmp_path, small_config):
    """A run writes config, metrics per epoch per model, summary, figures and checkpoints."""
    config = dataclasses.replace(small_config, betas=(0.5, 1.0))
    summary = train_and_evaluate(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json", "samples.png",
                 "reconstructions.png", "curves.png", "checkpoints"):
        assert (run / name).exists(), name
    assert TrainConfig.from_dict(json.loads((run / "config.json").read_text())) == config
    records = read_metrics(run)
    assert [(r["epoch"], r["model"]) for r in records] == [(e, m) for e in (1, 2, 3) for m in (0, 1)]
    for key in ("dataset", "test_elbo", "rate", "distortion", "train_examples_per_second",
                "epochs", "wall_seconds"):
        assert key in summary
    assert len(summary["models"]) == 2 and len(summary["test_elbo"]) == 2
    assert summary["test_elbo"][1] == records[-1]["test_elbo"]
    assert np.isclose(records[-1]["test_elbo"], -(records[-1]["rate"] + records[-1]["distortion"]),
                      rtol=1e-5)
    assert json.loads((run / "summary.json").read_text()) == summary


def _assert_tensorboard_repeats_metrics(run, monkeypatch):
    """Each model's folder under tensorboard/ holds every numeric field of metrics.jsonl per
    epoch, once, with its value, and the final image grids."""
    # TensorBoard's reader as without TensorFlow installed: importing TensorFlow takes seconds.
    monkeypatch.setitem(sys.modules, "tensorboard.compat.notf", types.ModuleType("notf"))
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    records = read_metrics(run)
    for model in sorted({r["model"] for r in records}):
        events = accumulator.EventAccumulator(str(run / "tensorboard" / f"model_{model}"),
                                              size_guidance={"scalars": 0}).Reload()
        mine = [r for r in records if r["model"] == model]
        scalars = sorted(k for k in mine[0] if k not in ("epoch", "model", "seed", "beta"))
        assert {"train_elbo", "test_elbo", "rate", "examples_per_second"} <= set(scalars)
        assert sorted(events.Tags()["scalars"]) == scalars
        for key in scalars:
            logged = [(e.step, e.value) for e in events.Scalars(key)]
            assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in mine], key
        assert sorted(events.Tags()["images"]) == ["reconstructions", "samples"]
        assert [e.step for e in events.Images("samples")] == [mine[-1]["epoch"]]


def test_interrupted_and_resumed_run_is_bitwise_equal(tmp_path, small_config, monkeypatch):
    """Stopping in epoch 6 (checkpoint every 2, so epoch 5 is trained again) and resuming ends
    bitwise where an unbroken run does; TensorBoard shows each epoch once."""
    config = dataclasses.replace(small_config, epochs=6, betas=(0.5, 1.0))
    train_and_evaluate(config, tmp_path / "whole", progress=False)

    with interrupted_at(5):
        train_and_evaluate(config, tmp_path / "broken", progress=False)
    assert _final_leaves(tmp_path / "broken", config)[0] == 4
    train_and_evaluate(config, tmp_path / "broken", resume=True, progress=False)

    epoch_a, whole = _final_leaves(tmp_path / "whole", config)
    epoch_b, resumed = _final_leaves(tmp_path / "broken", config)
    assert epoch_a == epoch_b == 6
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a, b)
    assert [r["epoch"] for r in read_metrics(tmp_path / "broken")] == [e for e in range(1, 7)
                                                                        for _ in (0, 1)]
    _assert_tensorboard_repeats_metrics(tmp_path / "broken", monkeypatch)


def test_resume_extends_a_finished_run(tmp_path, small_config):
    """Resuming with more epochs continues from the last checkpoint; other changes are refused."""
    first = train_and_evaluate(small_config, tmp_path / "run", progress=False)
    again = train_and_evaluate(small_config, tmp_path / "run", resume=True, progress=False)
    assert again == first  # nothing left to train: the same summary, derived from the records
    longer = dataclasses.replace(small_config, epochs=5)
    summary = train_and_evaluate(longer, tmp_path / "run", resume=True, progress=False)
    assert summary["epochs"] == 5
    with pytest.raises(RunError, match="learning_rate"):
        train_and_evaluate(dataclasses.replace(longer, learning_rate=0.1), tmp_path / "run",
                           resume=True, progress=False)


def test_too_few_devices_says_how_to_get_host_devices(tmp_path, small_config):
    """More devices than there are: the error names both ways to get N CPU devices."""
    n = len(jax.devices()) + 1
    with pytest.raises(ConfigError, match=rf"jax.config.update\('jax_num_cpu_devices', {n}\).*"
                       rf"XLA_FLAGS=--xla_force_host_platform_device_count={n}"):
        train_and_evaluate(dataclasses.replace(small_config, devices=n), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, small_config):
    """A NaN loss stops training with a clear error; the last good checkpoint stays intact."""
    config = dataclasses.replace(small_config, epochs=4, checkpoint_every=2)
    train_and_evaluate(config, tmp_path / "run", progress=False)
    epoch, before = _final_leaves(tmp_path / "run", config)

    elbo = objectives.elbo()

    def nan_loss(model, batch, key, hyper):
        loss, metrics = elbo(model, batch, key, hyper)
        return loss * np.nan, metrics

    # A run given an objective function records objective "custom"; write the
    # stored config that way so the resume is accepted.
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    (tmp_path / "run" / "config.json").write_text(json.dumps(dict(stored, objective="custom")))
    with pytest.raises(NonFiniteLossError, match=r"non-finite in epoch 5.*checkpoint \(epoch 4\)"):
        train_and_evaluate(dataclasses.replace(config, epochs=6), tmp_path / "run", resume=True,
                           progress=False, objective=nan_loss)
    epoch_after, after = _final_leaves(tmp_path / "run", config)
    assert epoch_after == epoch == 4
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_eight_devices_equal_one(tmp_path):
    """The batch sharded over 8 host devices gives the 1-device parameters."""
    script = textwrap.dedent("""
        import dataclasses, jax, numpy as np
        from tests.training.conftest import SMALL
        from vaejax.train import prepare_data
        from vaejax.trainer import Trainer
        assert len(jax.devices()) == 8
        results = []
        for devices in (1, 8):
            config = dataclasses.replace(SMALL, devices=devices, batch_size=64, betas=(1.0, 2.0))
            data = prepare_data(config)
            trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
            state, train = trainer.init(), trainer.place(data.train)
            for epoch in range(2):
                state, _ = trainer.train_epoch(state, train, epoch)
            leaf = jax.tree.leaves(state.params)[0]
            assert len(leaf.sharding.device_set) == devices
            results.append([np.asarray(x) for x in jax.tree.leaves(state.params)])
        for a, b in zip(*results):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
        print("sharded run matches")
    """)
    assert "sharded run matches" in run_on_host_devices(script)


def test_init_from_starts_every_model_at_the_source_parameters(tmp_path, small_config):
    """--init-from copies the source's latest parameters into each model; the optimiser restarts."""
    source = tmp_path / "source"
    source_summary = train_and_evaluate(small_config, source, progress=False)
    _, source_leaves = _final_leaves(source, small_config)
    config = dataclasses.replace(small_config, seeds=(0, 1), epochs=1, init_from=str(source),
                                 objective="iwae", num_samples=5)
    trainer = Trainer(config, (8, 8, 1), 1497)
    params = initial_params(config, trainer)
    source_params = jax.tree.leaves(Trainer(small_config, (8, 8, 1), 1497).init().params)
    count = len(source_params)  # the params lead the state's leaves
    for ours, theirs in zip(jax.tree.leaves(params), source_leaves[:count]):
        assert ours.shape == (2, *theirs.shape[1:])
        np.testing.assert_array_equal(ours, np.broadcast_to(theirs, ours.shape))

    warm = train_and_evaluate(config, tmp_path / "warm", progress=False)
    cold = train_and_evaluate(dataclasses.replace(config, init_from=None), tmp_path / "cold",
                              progress=False)
    # One epoch from the trained model stays near it; one epoch from scratch does not.
    assert min(warm["test_elbo"]) > source_summary["test_elbo"] - 1.0
    assert max(cold["test_elbo"]) < source_summary["test_elbo"] - 3.0


@pytest.mark.parametrize("change, message", [
    (dict(model=dataclasses.replace(SMALL.model, latent_dim=5)), "model differs in latent_dim"),
    (dict(seeds=(0, 1, 2)), "cannot start 3 models"),
    (dict(init_from="nowhere"), "holds no run"),
])
def test_init_from_refuses_a_source_it_cannot_use(tmp_path, small_config, change, message):
    source = tmp_path / "source"
    train_and_evaluate(dataclasses.replace(small_config, seeds=(0, 1), epochs=2), source,
                       progress=False)
    config = dataclasses.replace(small_config, **{"init_from": str(source), **change})
    with pytest.raises(RunError, match=message):
        train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_restore_refuses_a_checkpoint_of_another_model(tmp_path, small_config):
    train_and_evaluate(small_config, tmp_path / "run", progress=False)
    other = dataclasses.replace(small_config, model=dataclasses.replace(SMALL.model, hidden=(32,)))
    checkpointer = Checkpointer(str(tmp_path / "run" / "checkpoints"))
    with pytest.raises(ValueError, match="other shapes"):
        checkpointer.restore(3, Trainer(other, (8, 8, 1), 1497).init())
    checkpointer.close()
