"""Reproduce the papers' test log-likelihoods: train one row's model, then evaluate it.

Each row is a `vaejax train` command and the published number it is compared with.
The script trains into --workdir, runs `vaejax evaluate` with K importance samples,
and prints a table and one JSON line: reached NLL, epochs and wall time beside the
paper's figure. Data come from the TFDS manual folder (VAEJAX_MANUAL_DIR).
With --init-from the model starts from a finished run of the same architecture
(e.g. IWAE from the trained VAE); that run's epochs and wall time, and those of
any run it started from in turn, are reported with this one's, and the total is
what the schedule costs.

  python benchmarks/quality.py --row burda-vae --epochs 1500 --workdir runs/burda-vae
  python benchmarks/quality.py --row burda-iwae50 --epochs 100 --init-from runs/burda-vae \
      --workdir runs/burda-iwae50
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

from vaejax.cli import main as vaejax_main

STATIC = ["--dataset", "binarized_mnist", "--binarization", "static"]
DYNAMIC = ["--dataset", "mnist", "--binarization", "dynamic"]
ROWS = {
    # name: (train flags, published test NLL in nats, source)
    "burda-vae": (STATIC + ["--preset", "burda"], 88.71, "Burda et al. 2016, Table 3"),
    "burda-iwae50": (STATIC + ["--preset", "burda", "--objective", "iwae", "-k", "50"], 87.10,
                     "Burda et al. 2016, Table 3"),
    "burda-vae-dynamic": (DYNAMIC + ["--preset", "burda"], 86.76, "Burda et al. 2016, Table 1"),
    "burda-iwae50-dynamic": (DYNAMIC + ["--preset", "burda", "--objective", "iwae", "-k", "50"],
                             84.78, "Burda et al. 2016, Table 1"),
    "pythae-vae": (STATIC + ["--preset", "pythae"], 89.78, "Pythae reproduction"),
    # Rows of the richer families; their published numbers are still to be checked in the
    # papers' own text.
    "vampprior": (STATIC + ["--model", "vampprior", "--hidden", "300,300", "--latent-dim", "40",
                            "--kl-warmup-epochs", "100"], 85.57, "Tomczak & Welling 2018, Table 2"),
    "hvampprior": (STATIC + ["--model", "two-layer-vampprior", "--kl-warmup-epochs", "100"], 83.19,
                   "Tomczak & Welling 2018, Table 2"),
    "two-layer-vae-dynamic": (DYNAMIC + ["--model", "two-layer"], 85.33,
                              "Burda et al. 2016, Table 1"),
    "two-layer-iwae50-dynamic": (DYNAMIC + ["--model", "two-layer", "--objective", "iwae", "-k",
                                            "50"], 82.90, "Burda et al. 2016, Table 1"),
    "two-layer-iwae50-dreg-dynamic": (DYNAMIC + ["--model", "two-layer", "--objective",
                                                 "iwae-dreg", "-k", "50"], 82.90,
                                      "Burda et al. 2016, Table 1 (IWAE, trained here with DReG)"),
    # Flow posteriors on the Burda architecture: no paper row; compared with burda-vae.
    "burda-vae-planar": (STATIC + ["--preset", "burda", "--model", "vae-planar"], None,
                         "no published row: the gain over burda-vae (diagonal), same schedule"),
    "burda-vae-iaf": (STATIC + ["--preset", "burda", "--model", "vae-iaf"], None,
                      "no published row: the gain over burda-vae (diagonal), same schedule"),
    # VQ-VAE: q is one-hot, so K = 1 importance sampling is its ELBO log p(x|z_q) − n·log K.
    "vqvae-mnist": (DYNAMIC + ["--model", "vqvae", "--objective", "vq", "--hidden", "400",
                               "--latent-dim", "8"], None,
                    "no published MNIST row (van den Oord et al. 2017 report CIFAR-10 and "
                    "ImageNet): distortion, code perplexity and unused codes of K = 64"),
    # The conditional VAE bounds log p(x|y); its unconditional twin is the same architecture.
    "cvae-mnist": (DYNAMIC + ["--preset", "pytorch", "--model", "cvae"], None,
                   "no published row: −log p(x|y), beside pytorch-vae-dynamic's −log p(x)"),
    "pytorch-vae-dynamic": (DYNAMIC + ["--preset", "pytorch"], None,
                            "no published row: the unconditional twin of cvae-mnist"),
}
# Jang et al. report the negative ELBO, not an importance-sampled NLL.
ELBO_ROWS = {
    "jang-gumbel": (DYNAMIC + ["--preset", "jang", "--estimator", "gumbel_softmax",
                               "--temperature-decay", "3e-5"], 101.5, "Jang et al. 2017, Table 1"),
    "jang-score-function": (DYNAMIC + ["--preset", "jang", "--estimator", "score_function",
                                       "-k", "2"], 110.6, "Jang et al. 2017, Table 1"),
}


def run(row: str, epochs: int, workdir: str, num_samples: int, batch_size: int,
        learning_rate: float, schedule: str, init_from: str | None = None) -> dict:
    flags, published, source = {**ROWS, **ELBO_ROWS}[row]
    tic = time.perf_counter()
    train = [*flags, "--epochs", str(epochs), "--batch-size", str(batch_size),
             "--learning-rate", str(learning_rate), "--lr-schedule", schedule,
             "--workdir", workdir, "--checkpoint-every", "50", "--no-progress"]
    if init_from:
        train += ["--init-from", init_from]
    if (Path(workdir) / "config.json").exists():
        train.append("--resume")
    if vaejax_main(["train", *train]) != 0:
        raise SystemExit(f"training {row} failed")
    train_seconds = time.perf_counter() - tic
    summary = json.loads((Path(workdir) / "summary.json").read_text())
    result = {"row": row, "published": published, "source": source, "epochs": summary["epochs"],
              "train_wall_seconds": summary["wall_seconds"], "process_train_seconds": train_seconds,
              "test_elbo": summary["test_elbo"], "command": "vaejax train " + " ".join(train),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    result["total_train_wall_seconds"] = result["train_wall_seconds"]
    # Follow the chain of runs this one started from: the schedule's cost is all of them.
    result["init_from"] = []
    while init_from:
        origin = json.loads((Path(init_from) / "summary.json").read_text())
        result["init_from"].append({"workdir": init_from, "epochs": origin["epochs"],
                                    "train_wall_seconds": origin["wall_seconds"]})
        result["total_train_wall_seconds"] += origin["wall_seconds"]
        init_from = json.loads((Path(init_from) / "config.json").read_text()).get("init_from")
    if row in ROWS:
        if vaejax_main(["evaluate", "--workdir", workdir, "-k", str(num_samples), "--no-progress"]):
            raise SystemExit(f"evaluating {row} failed")
        summary = json.loads((Path(workdir) / "summary.json").read_text())
        result.update(test_nll=-summary["test_log_likelihood"], num_samples=num_samples,
                      eval_seconds=summary["log_likelihood_seconds"],
                      active_units=summary["active_units"], rate=summary["rate"],
                      distortion=summary["distortion"],
                      linear_probe_accuracy=summary.get("linear_probe_accuracy"),  # needs labels
                      **{k: summary[k] for k in ("code_perplexity", "unused_codes") if k in summary})
        result["gap_to_published"] = None if published is None else result["test_nll"] - published
    else:
        result["negative_test_elbo"] = -summary["test_elbo"]
        result["gap_to_published"] = result["negative_test_elbo"] - published
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", choices=sorted({**ROWS, **ELBO_ROWS}), required=True)
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lr-schedule", default="cosine")
    parser.add_argument("--init-from", help="a finished run of the same architecture to start from")
    parser.add_argument("--out", help="also write the JSON result to this file")
    args = parser.parse_args()
    result = run(args.row, args.epochs, args.workdir, args.num_samples, args.batch_size,
                 args.learning_rate, args.lr_schedule, args.init_from)
    reached = result.get("test_nll", result.get("negative_test_elbo"))
    print(f"{'row':<24}{'published':>10}{'reached':>10}{'gap':>8}{'epochs':>8}{'train min':>10}")
    published, gap = result["published"], result["gap_to_published"]
    print(f"{result['row']:<24}{'—' if published is None else f'{published:.2f}':>10}"
          f"{reached:>10.2f}{'—' if gap is None else f'{gap:.2f}':>8}{result['epochs']:>8}"
          f"{result['total_train_wall_seconds'] / 60:>10.1f}")
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
