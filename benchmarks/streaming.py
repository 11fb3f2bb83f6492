"""Training throughput of streaming input (Grain over ArrayRecord) against the in-memory scan.

Each row trains the same model on the same data three ways: `--input memory` (the whole
epoch one compiled scan over the on-device split), `--input memory --stepwise` (compiled
chunks of up to 8 steps, batches gathered from host memory), and `--input streaming` (the
same chunks, Grain reading their records from the ArrayRecord copy of the split while the
steps run). The figure is `train_examples_per_second` of each run's summary.json: the median
epoch after the first, training only. Cost of streaming = 1 − streaming / scan.

  VAEJAX_MANUAL_DIR=../shared/data python benchmarks/streaming.py \
      --out benchmarks/results/streaming-cpu-DATE.json
"""

import argparse
import json
from pathlib import Path

from common import emit, machine_info, print_table, train_summary

MODES = {"scan": ["--input", "memory"], "stepwise": ["--input", "memory", "--stepwise"],
         "streaming": ["--input", "streaming"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--tiny", action="store_true", help="the digits, a small model")
    args = parser.parse_args()
    model = ["--dataset", "mnist", "--preset", "pytorch", "--binarization", "static"]
    if args.tiny:
        model, args.epochs, args.batch_sizes = ["--hidden", "32", "--latent-dim", "4"], 3, "100"
    rows = []
    for batch in map(int, args.batch_sizes.split(",")):
        flags = [*model, "--batch-size", str(batch), "--epochs", str(args.epochs)]
        speed = {mode: train_summary([*flags, *extra])["train_examples_per_second"]
                 for mode, extra in MODES.items()}
        rows.append({"batch_size": batch, **speed,
                     "streaming_cost": 1 - speed["streaming"] / speed["scan"],
                     "command": "vaejax train " + " ".join(flags)})
    result = {"epochs": args.epochs, "rows": rows, "machine": machine_info()}
    print_table("training examples/s by input (median epoch after the first)",
                ["batch", "scan", "stepwise", "streaming", "streaming cost"],
                [[r["batch_size"], r["scan"], r["stepwise"], r["streaming"], r["streaming_cost"]]
                 for r in rows])
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n")
    emit(result)


if __name__ == "__main__":
    main()
