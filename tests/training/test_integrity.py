"""Damaged checkpoints are detected: the newest one that verifies is used, or none."""

import json
import shutil

import jax
import numpy as np
import pytest

from vaejax.cli import main
from vaejax.train import RunError, load_run, read_config, train_and_evaluate

QUICK = ["--epochs", "4", "--checkpoint-every", "2", "--hidden", "32", "--latent-dim", "3",
         "--no-progress"]


def _largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _xor(path, offset_fraction=0.5):
    data = bytearray(path.read_bytes())
    i = int(len(data) * offset_fraction)
    for j in range(i, i + 4):
        data[j] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def run(tmp_path):
    workdir = tmp_path / "run"
    assert main(["train", "--workdir", str(workdir), *QUICK]) == 0
    return workdir


@pytest.mark.parametrize("damage", [
    lambda step: _xor(_largest_file(step)),
    lambda step: _largest_file(step).write_bytes(_largest_file(step).read_bytes()[:100]),
    lambda step: (step / "default" / "_METADATA").unlink(),
    lambda step: (step / "default" / "manifest.ocdbt").unlink(),
    lambda step: [p.unlink() for p in step.rglob("*") if p.is_file()],
], ids=["xor-4-bytes", "truncated", "no-metadata", "no-manifest", "empty-folder"])
def test_evaluate_falls_back_to_the_newest_checkpoint_that_verifies(run, capsys, damage):
    damage(run / "checkpoints" / "4")
    capsys.readouterr()
    assert main(["evaluate", "--workdir", str(run), "-k", "100", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "checkpoint of epoch 4" in captured.err and "using the checkpoint of epoch 2" in captured.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluated_epoch"] == 2
    records = {r["epoch"]: r["test_elbo"] for r in map(json.loads, (run / "metrics.jsonl").open())}
    assert summary["test_elbo"] == pytest.approx(records[2], rel=1e-4)


def test_resume_after_damage_trains_from_the_older_checkpoint_bitwise(run, tmp_path, capsys):
    _xor(_largest_file(run / "checkpoints" / "4"))
    assert main(["train", "--workdir", str(run), "--resume", "--epochs", "6", "--no-progress"]) == 0
    assert "using the checkpoint of epoch 2" in capsys.readouterr().err
    whole = tmp_path / "whole"
    assert main(["train", "--workdir", str(whole), *QUICK, "--epochs", "6"]) == 0
    a, b = load_run(run), load_run(whole)
    assert a.epoch == b.epoch == 6
    for x, y in zip(jax.tree.leaves(jax.device_get(a.state)), jax.tree.leaves(jax.device_get(b.state))):
        np.testing.assert_array_equal(x, y)
    assert [r["epoch"] for r in a.metrics] == [1, 2, 3, 4, 5, 6]


def test_no_checkpoint_verifies_is_one_error_and_nothing_written(run, capsys):
    for step in ("2", "4"):
        _xor(_largest_file(run / "checkpoints" / step))
    before = (run / "summary.json").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", "--workdir", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vaejax evaluate: error: no checkpoint of") and "differs" in err[-1]
    assert (run / "summary.json").read_bytes() == before
    with pytest.raises(RunError, match="no checkpoint of"):
        train_and_evaluate(read_config(run), run, resume=True, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["2", "4"]


def test_evaluate_refuses_a_checkpoint_that_is_not_the_trained_model(run, tmp_path, capsys):
    """Intact checkpoint files of another run (another seed) in this run's folder."""
    other = tmp_path / "other"
    assert main(["train", "--workdir", str(other), *QUICK, "--seeds", "5"]) == 0
    shutil.rmtree(run / "checkpoints")
    shutil.copytree(other / "checkpoints", run / "checkpoints")
    before = (run / "summary.json").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", "--workdir", str(run), "--no-progress"]) == 2
    assert "is not the model that was trained" in capsys.readouterr().err
    assert (run / "summary.json").read_bytes() == before
