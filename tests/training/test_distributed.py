"""One run as two processes × two CPU devices, on loopback with gloo collectives, against one
process with four devices; a dead process; a kill and a resume; bad launches."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vaejax.train import load_run, run_lock

SMALL = ["--hidden", "64", "--latent-dim", "4", "--batch-size", "100", "--devices", "4",
         "--no-progress"]
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(*flags, **popen):
    return subprocess.Popen([sys.executable, "-m", "vaejax", "train", *SMALL, *flags], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _processes(workdir, *flags, timeout=20, counts=(2, 2)):
    port = _port()
    return [_train("--workdir", str(workdir), "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", str(n), "--process-id", str(i),
                   "--process-timeout", str(timeout), *flags) for i, n in enumerate(counts)]


def _finish(processes, limit=300):
    outs = [p.communicate(timeout=limit) for p in processes]
    return [p.returncode for p in processes], outs


def _params(workdir):
    return [np.asarray(p) for p in jax.tree.leaves(load_run(workdir).state.params)]


def _largest_difference(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(_params(a), _params(b)))


def _written(path, process):
    """`path` once `process` has written something there (it must not end first)."""
    deadline = time.monotonic() + 120
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()[1]
        time.sleep(0.02)
    return path


def test_two_processes_train_as_one_process_with_four_devices(tmp_path):
    flags = ["--epochs", "2", "--seeds", "0,1"]  # two models on the vmapped model axis
    one = _train("--workdir", str(tmp_path / "one"), *flags)
    two = _processes(tmp_path / "two", *flags)
    codes, outs = _finish([one, *two])
    assert codes == [0, 0, 0], [o[1][-2000:] for o in outs]
    # Only process 0 reports and writes; the run folder is complete.
    assert "test ELBO" in outs[1][0] and "test ELBO" not in outs[2][0]
    assert {"summary.json", "samples.png", "metrics.jsonl"} <= set(os.listdir(tmp_path / "two"))
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    assert [(r["epoch"], r["model"]) for r in records] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    # The same program over the same four devices; gloo's all-reduce adds the devices' partial
    # gradients in another order than XLA's in-process one, so they agree to float round-off.
    assert _largest_difference(tmp_path / "one", tmp_path / "two") < 1e-5


def test_a_dead_process_stops_the_other_and_both_resume(tmp_path):
    run = tmp_path / "run"
    first, second = _processes(run, "--epochs", "200", "--checkpoint-every", "1", timeout=10)
    integrity = _written(run / "checkpoints" / "integrity.json", first)
    second.kill()
    tic = time.monotonic()
    _, err = first.communicate(timeout=120)
    # JAX's coordination service ends the survivor once the heartbeats stop.
    assert first.returncode != 0 and "another task died" in err
    assert time.monotonic() - tic < 60
    done = max(map(int, json.loads(integrity.read_text())))
    assert done < 198
    epochs = str(done + 2)
    reference = _train("--workdir", str(tmp_path / "one"), "--epochs", epochs)
    # Resumed streaming: Grain in each process reads only its own columns of every batch.
    resumed = _processes(run, "--resume", "--epochs", epochs, "--input", "streaming")
    codes, outs = _finish([reference, *resumed])
    assert codes == [0, 0, 0], [o[1][-2000:] for o in outs]
    assert _largest_difference(tmp_path / "one", run) < 1e-5


def test_a_signal_to_one_process_stops_both_after_the_same_epoch(tmp_path):
    run = tmp_path / "run"
    first, second = _processes(run, "--epochs", "200", "--checkpoint-every", "50")
    _written(run / "metrics.jsonl", first)
    second.send_signal(signal.SIGTERM)
    codes, outs = _finish([first, second], limit=120)
    assert codes == [143, 143], [o[1][-2000:] for o in outs]
    lines = [err.strip().splitlines()[-1] for _, err in outs]
    assert lines[0] == lines[1] and "interrupted (SIGTERM) after epoch" in lines[0]
    done = int(lines[0].split("after epoch ")[1].split(";")[0])
    assert done < 200 and max(map(int, json.loads(
        (run / "checkpoints" / "integrity.json").read_text()))) == done


def test_a_signal_within_a_streamed_epoch_stops_both_after_the_same_step_and_resumes(tmp_path):
    # 359 steps an epoch, no checkpoint at its end: the signal lands within an epoch.
    run, flags = tmp_path / "run", ["--input", "streaming", "--batch-size", "4"]
    first, second = _processes(run, *flags, "--epochs", "200", "--checkpoint-every", "100")
    _written(run / "metrics.jsonl", first)
    time.sleep(0.5)  # past the end of epoch 1, where the processes agree on stopping as well
    second.send_signal(signal.SIGTERM)
    codes, outs = _finish([first, second], limit=120)
    assert codes == [143, 143], [o[1][-2000:] for o in outs]
    lines = [err.strip().splitlines()[-1] for _, err in outs]
    assert lines[0] == lines[1] and "interrupted (SIGTERM) after step" in lines[0], lines
    step, epoch = map(int, lines[0].split("after step ")[1].split(";")[0].split(" of epoch "))
    assert step % 8 == 0 and (run / "checkpoints_in_epoch" / str(epoch)).is_dir()
    epochs = str(epoch + 1)
    reference = _train("--workdir", str(tmp_path / "one"), *flags, "--epochs", epochs)
    resumed = _processes(run, "--resume", *flags, "--epochs", epochs)
    codes, outs = _finish([reference, *resumed])
    assert codes == [0, 0, 0], [o[1][-2000:] for o in outs]
    assert _largest_difference(tmp_path / "one", run) < 1e-5
    assert not (run / "checkpoints_in_epoch").exists()


def test_bad_launches_fail_in_one_line(tmp_path):
    port = _port()  # nothing listens there
    alone = _train("--workdir", str(tmp_path / "a"), "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", "2", "--process-id", "1", "--process-timeout", "1")
    (tmp_path / "c").mkdir()
    with run_lock(tmp_path / "c"):  # another run holds the folder: process 0 cannot lock it
        codes, outs = _finish([alone, *_processes(tmp_path / "b", "--devices", "6",
                                                       counts=(2, 3), timeout=20),
                               *_processes(tmp_path / "c")])
    assert codes == [2] * 5, [o[1][-2000:] for o in outs]
    assert "is in use by process" in outs[3][1]
    assert outs[4][1].strip().splitlines()[-1] == (
        f"vaejax train: error: process 0 could not begin the run in {tmp_path / 'c'}: its "
        "output says why")
    outs = outs[:3]
    assert outs[0][1].strip().splitlines()[-1] == (
        f"vaejax train: error: no coordinator answers at 127.0.0.1:{port} within 1 s: start "
        "process 0 with the same --coordinator")
    for _, err in outs[1:]:
        assert err.strip().splitlines()[-1] == (
            "vaejax train: error: the processes were given different --num-processes (2, 3); "
            "the coordinator runs 2")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert os.listdir(tmp_path / "c") == [".lock"]


@pytest.mark.parametrize("flags, message", [
    (["--num-processes", "2"], "--coordinator, --num-processes and --process-id go together"),
    (["--coordinator", "here", "--num-processes", "2", "--process-id", "0"], "is not HOST:PORT"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "is not in 0..1"),
    (["--coordinator", "h:1", "--num-processes", "3", "--process-id", "0"],
     "--devices 4 is not a multiple of the 3 processes"),
])
def test_incomplete_flags_are_refused(tmp_path, capsys, flags, message):
    from vaejax.cli import main
    assert main(["train", *SMALL, "--workdir", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_slurm_job_is_detected(monkeypatch):
    from vaejax.distributed import detected_processes
    assert detected_processes() == 1
    for name, value in [("SLURM_JOB_ID", "7"), ("SLURM_STEP_NODELIST", "node[1-3]"),
                        ("SLURM_NTASKS", "3"), ("SLURM_PROCID", "1"), ("SLURM_LOCALID", "0")]:
        monkeypatch.setenv(name, value)
    assert detected_processes() == 3
