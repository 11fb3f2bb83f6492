"""Faults a run survives: kill -9, Ctrl-C (once, twice), SIGTERM and a full disk, at random times.

Each trial starts `vaejax train` on the embedded digits data in a fresh process,
strikes once the run folder exists (after a random delay), resumes the run and
compares its final parameters, leaf by leaf, with an unbroken run of the same
config. A trial passes when the struck process exits as documented (130 for
SIGINT, 143 for SIGTERM, 1 for a full disk; -9 for kill -9) with a last line
saying why (no traceback after a signal; a full disk also lets orbax's threads
log the failed write above it, counted as `lines_above`) and the resumed run is
bitwise equal to the unbroken one.

The full-disk trial mounts a small tmpfs (needs root; skipped otherwise) and
fills it while the run trains.

    .venv/bin/python benchmarks/faults.py --trials 5
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import jax
import numpy as np

CONFIG = ["--epochs", "300", "--checkpoint-every", "3", "--hidden", "64", "--latent-dim", "4",
          "--no-progress"]
EXPECTED = {"kill9": -9, "sigint": 130, "sigint_twice": 130, "sigterm": 143, "disk_full": 1}


def _train(workdir, *extra):
    return subprocess.Popen([sys.executable, "-m", "vaejax.cli", "train", "--workdir", str(workdir),
                             *CONFIG, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _params(workdir):
    from vaejax.train import load_run
    return [np.asarray(p) for p in jax.tree.leaves(load_run(workdir).state.params)]


def _strike(kind, process, workdir, rng, tmpfs):
    deadline = time.monotonic() + 300
    while not (workdir / "metrics.jsonl").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            return
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 6.0))
    if kind == "disk_full":
        with open(tmpfs / "filler", "wb") as f:  # every byte the file system has left
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
            except OSError:
                pass
        return
    signum = {"kill9": signal.SIGKILL, "sigterm": signal.SIGTERM}.get(kind, signal.SIGINT)
    for _ in range(2 if kind == "sigint_twice" else 1):
        process.send_signal(signum)
        time.sleep(rng.uniform(0.01, 0.3))


def trial(kind, root, reference, rng, tmpfs=None) -> dict:
    workdir = (tmpfs or root) / f"{kind}-run"
    shutil.rmtree(workdir, ignore_errors=True)
    process = _train(workdir)
    _strike(kind, process, workdir, rng, tmpfs)
    _, err = process.communicate(timeout=600)
    lines = err.strip().splitlines()
    problems = []
    if process.returncode == 0:
        problems.append("the run finished before the fault struck")
    elif process.returncode != EXPECTED[kind]:
        problems.append(f"exit {process.returncode}, expected {EXPECTED[kind]}")
    if kind != "kill9" and not (lines and lines[-1].startswith("vaejax train: ")):
        problems.append(f"stderr ends: {lines[-1:]}")
    if kind.startswith("sig") and "Traceback" in err:
        problems.append("a traceback")
    if tmpfs is not None:
        (tmpfs / "filler").unlink(missing_ok=True)
    resumed = subprocess.run([sys.executable, "-m", "vaejax.cli", "train", "--workdir",
                              str(workdir), "--resume", *CONFIG], capture_output=True, text=True)
    if resumed.returncode:
        problems.append(f"resume exit {resumed.returncode}: {resumed.stderr.strip()[-300:]}")
    elif not all(np.array_equal(a, b) for a, b in zip(_params(workdir), reference)):
        problems.append("resumed parameters differ from the unbroken run")
    shutil.rmtree(workdir, ignore_errors=True)
    return {"kind": kind, "exit_code": process.returncode, "last_line": lines[-1] if lines else "",
            "lines_above": max(len(lines) - 1, 0), "passed": not problems, "problems": problems}


def _mount_tmpfs(path: Path, megabytes: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per kind of fault")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="vaejax-faults-"))
    unbroken = subprocess.run([sys.executable, "-m", "vaejax.cli", "train", "--workdir",
                               str(root / "unbroken"), *CONFIG], capture_output=True, text=True)
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    reference = _params(root / "unbroken")
    tmpfs = root / "tmpfs"
    kinds = [k for k in EXPECTED if k != "disk_full" or _mount_tmpfs(tmpfs, 40)]
    trials = [trial(kind, root, reference, rng, tmpfs if kind == "disk_full" else None)
              for _ in range(args.trials) for kind in kinds]
    if "disk_full" in kinds:
        subprocess.run(["umount", str(tmpfs)], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
    summary = {k: {"tried": sum(t["kind"] == k for t in trials),
                   "passed": sum(t["kind"] == k and t["passed"] for t in trials)} for k in kinds}
    lines = [f"{'fault':<14}{'tried':>7}{'passed':>8}"]
    lines += [f"{k:<14}{v['tried']:>7}{v['passed']:>8}" for k, v in summary.items()]
    lines += [f"  {t['kind']}: {'; '.join(t['problems'])}" for t in trials if not t["passed"]]
    result = {"benchmark": "faults", "machine": common.machine_info(), "config": CONFIG,
              "seed": args.seed, "summary": summary, "trials": trials,
              "skipped": [k for k in EXPECTED if k not in kinds]}
    print("\n".join(lines))
    common.emit(result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
