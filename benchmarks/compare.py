"""Training throughput of two checkouts of vaejax in one run: is a change slower?

Runs `benchmarks/throughput.py --implementations vaejax` of the baseline checkout
and of this one alternately, `--rounds` times each (so drift of the machine hits
both alike), each a fresh process on the same synthetic MNIST-shaped data (the
timings do not depend on the pixel values). Reports, per batch size, the median
over rounds of each run's median epoch time, every run's value, and the ratio
current / baseline of examples/s.

    git worktree add /tmp/vaejax-before REV
    .venv/bin/python benchmarks/compare.py --baseline /tmp/vaejax-before
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import common

HERE = Path(__file__).resolve().parents[1]


def run_throughput(checkout: Path, batch_sizes, repeats: int, tiny: bool) -> dict:
    """examples/s per batch size of one throughput.py run of `checkout`."""
    cmd = [sys.executable, str(checkout / "benchmarks" / "throughput.py"), "--implementations",
           "vaejax", "--data", "synthetic", "--repeats", str(repeats), "--batch-sizes",
           *map(str, batch_sizes)] + (["--tiny"] if tiny else [])
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {str(b): result["results"][str(b)]["vaejax"]["examples_per_second"] for b in batch_sizes}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    runs = {"baseline": [], "current": []}
    for _ in range(args.rounds):
        for name, checkout in (("baseline", args.baseline.resolve()), ("current", HERE)):
            runs[name].append(run_throughput(checkout, args.batch_sizes, args.repeats, args.tiny))
    rows = {}
    for b in map(str, args.batch_sizes):
        per = {name: [r[b] for r in values] for name, values in runs.items()}
        medians = {name: statistics.median(v) for name, v in per.items()}
        rows[b] = {"examples_per_second": per, "median": medians,
                   "current_over_baseline": medians["current"] / medians["baseline"]}
    lines = [f"{'batch':>6}{'baseline ex/s':>16}{'current ex/s':>15}{'ratio':>8}"]
    lines += [f"{b:>6}{r['median']['baseline']:16,.0f}{r['median']['current']:15,.0f}"
              f"{r['current_over_baseline']:8.3f}" for b, r in rows.items()]
    result = {"benchmark": "compare", "machine": common.machine_info(), "rounds": args.rounds,
              "repeats": args.repeats, "baseline": str(args.baseline), "tiny": args.tiny,
              "results": rows}
    print("\n".join(lines))
    common.emit(result)
    return result


if __name__ == "__main__":
    main()
