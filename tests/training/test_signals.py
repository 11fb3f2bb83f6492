"""SIGINT and SIGTERM stop training at a safe point: whole files, a checkpoint, one line."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vaejax import train as train_module
from vaejax.checkpoints import Checkpointer
from vaejax.cli import main
from vaejax.interrupts import Interrupted
from vaejax.train import load_run, read_metrics, train_and_evaluate

from .conftest import at_epoch


def _signal_self(*signums):
    for signum in signums:
        os.kill(os.getpid(), signum)


def signalled_during_epoch(epoch_index, *signums):
    """Training inside the block receives `signums` while computing epoch `epoch_index`."""
    return at_epoch(epoch_index, lambda: _signal_self(*signums))


def _params(workdir):
    return jax.tree.leaves(load_run(workdir).state.params)


def test_a_signal_stops_after_the_epoch_in_flight_and_resume_is_bitwise(tmp_path, small_config):
    config = dataclasses.replace(small_config, epochs=5, checkpoint_every=4)
    with signalled_during_epoch(2, signal.SIGTERM), pytest.raises(Interrupted) as stopped:
        train_and_evaluate(config, tmp_path / "run", progress=False)
    assert (stopped.value.epoch, stopped.value.exit_code) == (3, 143)
    assert "after epoch 3; continue with --resume" in str(stopped.value)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]
    checkpoints = Checkpointer(str(tmp_path / "run" / "checkpoints"))
    assert checkpoints.epochs() == [3]  # saved on the way out, although checkpoint_every is 4
    checkpoints.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are restored

    train_and_evaluate(config, tmp_path / "run", resume=True, progress=False)
    train_and_evaluate(config, tmp_path / "whole", progress=False)
    for a, b in zip(_params(tmp_path / "run"), _params(tmp_path / "whole")):
        np.testing.assert_array_equal(a, b)


def test_a_second_signal_stops_at_once_at_the_last_checkpoint(tmp_path, small_config):
    with signalled_during_epoch(2, signal.SIGINT, signal.SIGINT), \
            pytest.raises(Interrupted) as stopped:
        train_and_evaluate(small_config, tmp_path / "run", progress=False)
    assert (stopped.value.epoch, stopped.value.exit_code) == (2, 130)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]
    assert load_run(tmp_path / "run").epoch == 2


def test_signals_during_a_checkpoint_wait_until_it_is_whole(tmp_path, small_config, monkeypatch):
    save = Checkpointer.save

    def interrupted_save(self, epoch, state):
        _signal_self(signal.SIGINT, signal.SIGINT)  # the second would stop at once elsewhere
        save(self, epoch, state)

    monkeypatch.setattr(Checkpointer, "save", interrupted_save)
    with pytest.raises(Interrupted) as stopped:
        train_and_evaluate(small_config, tmp_path / "run", progress=False)
    assert stopped.value.epoch == 2
    run = load_run(tmp_path / "run")  # verifies the checkpoint's digest
    assert run.epoch == 2 and [r["epoch"] for r in run.metrics] == [1, 2]


def test_a_signal_before_training_writes_nothing(tmp_path, small_config, monkeypatch, capsys):
    prepare = train_module.prepare_data

    def prepare_data(*args):
        _signal_self(signal.SIGTERM)
        return prepare(*args)

    monkeypatch.setattr(train_module, "prepare_data", prepare_data)
    workdir = tmp_path / "run"
    assert main(["train", "--workdir", str(workdir), "--epochs", "2", "--no-progress"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "vaejax train: interrupted (SIGTERM) before training began; nothing was written"
    assert not workdir.exists()


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_in_a_terminal_run(tmp_path, presses):
    """A real process: SIGINT mid-training exits 130 with one line (twice: at once, without
    unwinding JAX); the run stands at its last checkpoint and verifies."""
    workdir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from vaejax.cli import main; sys.exit(main())",
         "train", "--workdir", str(workdir), "--epochs", "100000", "--hidden", "32",
         "--latent-dim", "3", "--checkpoint-every", "3", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (workdir / "metrics.jsonl").exists() or len(
            (workdir / "metrics.jsonl").read_text().splitlines()) < 4:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    for _ in range(presses):
        process.send_signal(signal.SIGINT)
        time.sleep(0.01)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    epoch = load_run(workdir).epoch
    assert err.strip().splitlines()[-1] == (f"vaejax train: interrupted (SIGINT) after epoch "
                                            f"{epoch}; continue with --resume --workdir {workdir}")
    assert "Traceback" not in err and epoch >= 3
    assert len(read_metrics(workdir)) >= epoch
