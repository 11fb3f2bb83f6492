"""Training throughput of one process against several (`jax.distributed`) on one machine.

Each row trains the same model on the same devices in total: one process with D devices,
then P processes with D/P devices each over loopback (gloo collectives on CPU). The figure
is `train_examples_per_second` of process 0's summary.json (median epoch, training only).
Scaling efficiency = P-process throughput / one-process throughput, on the same devices: on
one machine the processes share its cores and memory bus, and every step's gradient crosses
between them through gloo, so expect < 1 here; on a cluster each process has its own host.

  VAEJAX_MANUAL_DIR=../shared/data python benchmarks/processes.py \
      --out benchmarks/results/processes-cpu-DATE.json
"""

import argparse
import json
import os
from pathlib import Path

from common import emit, free_port, machine_info, print_table, train_summary


def throughput(flags: list[str], devices: int, processes: int) -> float:
    """train_examples_per_second of one run over `processes` processes sharing `devices`."""
    launch = [[]]
    if processes > 1:
        port = free_port()
        launch = [["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                   "--process-id", str(i)] for i in range(processes)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    summary = train_summary([*flags, "--devices", str(devices)], launch, env)
    return summary["train_examples_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="128,1024")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--devices", type=int, default=2, help="in total, over the processes")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--tiny", action="store_true", help="the digits, a small model")
    args = parser.parse_args()
    model = ["--dataset", "mnist", "--preset", "pytorch"]
    if args.tiny:
        model, args.epochs, args.batch_sizes = ["--hidden", "32", "--latent-dim", "4"], 2, "100"
    rows = []
    for batch in map(int, args.batch_sizes.split(",")):
        flags = [*model, "--batch-size", str(batch), "--epochs", str(args.epochs)]
        one = throughput(flags, args.devices, 1)
        several = throughput(flags, args.devices, args.processes)
        rows.append({"batch_size": batch, "one_process": one, "processes": several,
                     "scaling_efficiency": several / one,
                     "command": "vaejax train " + " ".join(flags)})
    result = {"devices": args.devices, "num_processes": args.processes, "epochs": args.epochs,
              "rows": rows, "machine": machine_info()}
    print_table(f"{args.devices} devices: 1 process vs {args.processes}",
                ["batch", "1 process ex/s", f"{args.processes} processes ex/s", "efficiency"],
                [[r["batch_size"], r["one_process"], r["processes"], r["scaling_efficiency"]]
                 for r in rows])
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n")
    emit(result)


if __name__ == "__main__":
    main()
