"""Streaming input: Grain reads the same batches as the in-memory epoch, resumes within an
epoch bitwise, and holds only a few batches of a data set larger than it may keep."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from vaejax import input_pipeline, streaming, trainer as trainer_lib
from vaejax.config import validate
from vaejax.interrupts import Interrupted
from vaejax.train import IN_EPOCH, load_run, read_metrics, train_and_evaluate
from vaejax.trainer import Trainer


def _digit_levels():
    """The digits training split as stored levels 0..16 (uint8) and its labels."""
    split = input_pipeline.load_split("digits", "train")
    return np.round(split.images * 16).astype(np.uint8), split.labels


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    levels, labels = _digit_levels()
    path = tmp_path_factory.mktemp("streams") / "digits.array_record"
    streaming.write_split(path, [(levels[:700], labels[:700]), (levels[700:], labels[700:])],
                          levels.shape[1:], divisor=16.0)
    return path


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state))]


def test_a_written_split_reads_back_exactly(digits_file):
    stream = streaming.open_split(digits_file)
    split = input_pipeline.load_split("digits", "train")
    assert stream.shape == split.images.shape
    rows = np.array([[5, 0, 1496], [3, 3, 7]])
    x, y, _ = stream.read(rows)
    assert x.shape == (2, 3, 8, 8, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x, split.images[rows])
    np.testing.assert_array_equal(y, split.labels[rows])
    binary = streaming.open_split(digits_file, threshold=True).read(rows).x
    np.testing.assert_array_equal(binary, (split.images[rows] > 0.5).astype(np.float32))


def test_a_split_cut_short_is_not_read(tmp_path):
    def broken():
        yield np.zeros((3, 2, 2, 1), np.uint8), None
        raise OSError("disk gone")

    with pytest.raises(OSError):
        streaming.write_split(tmp_path / "x.array_record", broken(), (2, 2, 1))
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(FileNotFoundError):
        streaming.open_split(tmp_path / "x.array_record")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    bad = {"shape": (np.zeros((1, 3, 3, 1), np.uint8), None),
           "uint8": (np.zeros((1, 2, 2, 1), np.float32), None),
           "labels for": (np.zeros((2, 2, 2, 1), np.uint8), np.zeros(3, np.int32))}
    for message, batch in bad.items():
        with pytest.raises(ValueError, match=message):
            streaming.write_split(tmp_path / "y.array_record", [batch], (2, 2, 1))
    with pytest.raises(ValueError, match="every batch or with none"):
        streaming.write_split(tmp_path / "y.array_record", [(np.zeros((1, 2, 2, 1), np.uint8),
                                                             [0]), (np.zeros((1, 2, 2, 1),
                                                                             np.uint8), None)],
                              (2, 2, 1))
    assert list(tmp_path.iterdir()) == []


def test_a_streamed_epoch_equals_the_in_memory_epochs(digits_file, small_config):
    """Two seeds: streamed from ArrayRecord = stepwise from host arrays, bitwise; = the
    whole-epoch scan to float round-off."""
    config = validate(dataclasses.replace(small_config, seeds=(0, 1)))
    split = input_pipeline.load_split("digits", "train")
    stream = streaming.open_split(digits_file)
    trainer = Trainer(config, split.images.shape[1:], split.images.shape[0])
    states = {}
    for name, data in (("streamed", stream), ("stepwise", split.images),
                       ("scanned", trainer.place(split.images))):
        state, history = trainer.init(), []
        for epoch in range(2):
            epoch_fn = trainer.train_epoch if name == "scanned" else trainer.train_epoch_stepwise
            state, metrics = epoch_fn(state, data, epoch)
            history.append(jax.device_get(metrics))
        states[name] = (_leaves(state), history)
    for a, b in zip(states["streamed"][0], states["stepwise"][0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(states["streamed"][1], states["stepwise"][1]):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    for a, b in zip(states["streamed"][0], states["scanned"][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threshold", [False, True])
def test_levels_decoded_on_the_device_train_as_the_host_decodes_them(tmp_path, small_config,
                                                                     threshold):
    """256 levels / 255, where XLA's division rounds otherwise than numpy's: the device's
    table of levels gives the host's values, so the streamed epoch is bitwise the stepwise one."""
    levels = np.round(input_pipeline.load_split("digits", "train").images * 255).astype(np.uint8)
    streaming.write_split(tmp_path / "x.array_record", [(levels, None)], levels.shape[1:])
    stream = streaming.open_split(tmp_path / "x.array_record", threshold=threshold)
    host = stream.read(np.arange(len(levels))).x
    trainer = Trainer(small_config, levels.shape[1:], len(levels))
    (a, ma), (b, mb) = (trainer.train_epoch_stepwise(trainer.init(), data, 0)
                        for data in (stream, host))
    for x, y in zip(_leaves(a) + jax.tree.leaves(ma), _leaves(b) + jax.tree.leaves(mb)):
        np.testing.assert_array_equal(x, y)


def test_streaming_input_trains_as_memory_does_and_says_so(tmp_path, small_config):
    streamed = train_and_evaluate(small_config, tmp_path / "s", input="streaming", progress=False)
    stepped = train_and_evaluate(small_config, tmp_path / "m", stepwise=True, progress=False)
    auto = train_and_evaluate(small_config, tmp_path / "a", progress=False)
    assert (streamed["input"], streamed["stepwise"]) == ("streaming", True)
    assert (stepped["input"], stepped["stepwise"]) == ("memory", True)
    assert (auto["input"], auto["stepwise"]) == ("memory", False)  # digits fit
    assert streamed["test_elbo"] == stepped["test_elbo"]
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["input"] == "streaming"
    for a, b in zip(jax.tree.leaves(load_run(tmp_path / "s").state.params),
                    jax.tree.leaves(load_run(tmp_path / "m").state.params)):
        np.testing.assert_array_equal(a, b)


def test_an_unknown_input_is_refused(tmp_path, small_config):
    with pytest.raises(ValueError, match="input must be one of auto, memory, streaming"):
        train_and_evaluate(small_config, tmp_path / "run", input="disk", progress=False)
    assert not (tmp_path / "run").exists()


def _signal_at_chunk(monkeypatch, chunk):
    """The run's compiled chunk of steps sends SIGTERM to this process on its `chunk`-th call
    (from 1)."""
    original, calls = Trainer.__init__, []

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        chunk_fn = self._train_chunk

        def train_chunk(*a):
            calls.append(1)
            if len(calls) == chunk:
                os.kill(os.getpid(), signal.SIGTERM)
            return chunk_fn(*a)

        self._train_chunk = train_chunk

    monkeypatch.setattr(Trainer, "__init__", init)


def test_a_signal_within_a_streamed_epoch_resumes_from_that_step_bitwise(
        tmp_path, small_config, monkeypatch):
    # 14 steps an epoch: chunks of 8 and 6 steps.
    config = dataclasses.replace(small_config, epochs=3, checkpoint_every=3)
    assert trainer_lib.CHUNK == 8
    with monkeypatch.context() as patch:
        _signal_at_chunk(patch, 2 + 1)
        with pytest.raises(Interrupted) as stopped:
            train_and_evaluate(config, tmp_path / "run", input="streaming", progress=False)
    assert "after step 8 of epoch 2; continue with --resume" in str(stopped.value)
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1]
    assert not (tmp_path / "run" / "checkpoints").is_dir() or not any(
        p.name.isdigit() for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert (tmp_path / "run" / IN_EPOCH / "2").is_dir()

    # Chunks of 3 from here: the epoch stopped within continues in its chunks of 8.
    monkeypatch.setattr(trainer_lib, "CHUNK", 3)
    train_and_evaluate(config, tmp_path / "run", input="streaming", resume=True, progress=False)
    assert not (tmp_path / "run" / IN_EPOCH).exists()
    train_and_evaluate(config, tmp_path / "whole", input="streaming", progress=False)
    for a, b in zip(jax.tree.leaves(load_run(tmp_path / "run").state),
                    jax.tree.leaves(load_run(tmp_path / "whole").state)):
        np.testing.assert_array_equal(jax.random.key_data(a) if a.dtype == jax.dtypes.prng_key
                                      else a, jax.random.key_data(b)
                                      if b.dtype == jax.dtypes.prng_key else b)
    timing = {"examples_per_second", "epoch_seconds"}
    resumed, whole = read_metrics(tmp_path / "run"), read_metrics(tmp_path / "whole")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in timing} for r in whole]


_BOUNDED = """
import resource, sys
import jax, numpy as np
from vaejax import streaming
from vaejax.config import TrainConfig, validate, ModelConfig
from vaejax.trainer import Trainer
stream = streaming.open_split(sys.argv[1])
config = validate(TrainConfig(model=ModelConfig(hidden=(16,), latent_dim=2), dataset="mnist",
                              batch_size=500, epochs=1))
trainer = Trainer(config, stream.shape[1:], stream.shape[0])
state, _ = trainer.train_epoch_stepwise(trainer.init(), stream, 0)  # compiles the step
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
state, metrics = trainer.train_epoch_stepwise(state, stream, 1)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, int(state.step[0]), bool(np.isfinite(jax.device_get(metrics["loss"])).all()))
"""


def test_streaming_holds_a_few_batches_of_a_split_larger_than_allowed(tmp_path):
    """120,000 28×28 images: 94 MB stored, 376 MB as float32; an epoch streamed adds < 40 MB
    to the peak resident memory (kB from getrusage)."""
    count, shape, rng = 120_000, (28, 28, 1), np.random.default_rng(0)
    batches = ((rng.integers(0, 256, (10_000, *shape), dtype=np.uint8), None)
               for _ in range(count // 10_000))
    streaming.write_split(tmp_path / "big.array_record", batches, shape)
    out = subprocess.run([sys.executable, "-c", _BOUNDED, str(tmp_path / "big.array_record")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, steps, finite = out.stdout.split()
    assert (int(steps), finite) == (2 * count // 500, "True")
    assert int(after) - int(before) < 40_000, (before, after)
