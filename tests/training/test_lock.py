"""One writer per run folder: a second process is refused, naming the holder; a killed
holder's lock is gone."""

import os
import signal
import subprocess
import sys
import time

from vaejax.cli import main
from vaejax.train import run_lock

QUICK = ["--hidden", "32", "--latent-dim", "3", "--checkpoint-every", "1", "--no-progress"]


def _wait_for_epochs(workdir, n, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len((workdir / "metrics.jsonl").read_text().splitlines()) >= n:
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.2)
    raise AssertionError("training did not go on")


def test_second_writer_is_refused_and_a_killed_holder_releases(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), "--epochs", "2", *QUICK]) == 0
    holder = subprocess.Popen([sys.executable, "-m", "vaejax.cli", "train", "--workdir", str(run),
                               "--resume", "--epochs", "2000", "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_epochs(run, 4, holder)
        for argv in (["train", "--workdir", str(run), "--resume", "--epochs", "2000", "--no-progress"],
                     ["evaluate", "--workdir", str(run), "-k", "100", "--no-progress"]):
            capsys.readouterr()
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert f"is in use by process {holder.pid} on " in err and len(err.splitlines()) == 1, err
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with run_lock(run):  # the kernel dropped the dead holder's lock
        pass
    assert main(["evaluate", "--workdir", str(run), "-k", "100", "--no-progress"]) == 0
