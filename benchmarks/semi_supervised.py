"""M2 and M1+M2 with few labels (Kingma et al. 2014, Table 1): test error over label draws.

Each label seed keeps a different `--labels` subset (an equal number per class) of the
MNIST training split, trains `vaejax train --model m2` (784-500-50 softplus, dynamically
binarized MNIST, the rest unlabelled) and reads the classifier's error on the whole test
split from summary.json. With `--features-from RUN_DIR` (a trained VAE, M1) the model is
`m1m2`: the same M2 over M1's posterior means. Prints a table and one JSON line with
mean ± std over the draws.

  python benchmarks/semi_supervised.py --labels 100 --label-seeds 0,1,2 --epochs 10 \
      --classifier-weight 10 --out benchmarks/results/m2-mnist-100-stream.json
"""

import argparse
import json
import statistics
from pathlib import Path

from common import emit, machine_info, print_table
from vaejax.cli import main as vaejax_main

# Kingma et al. 2014, Table 1: test error % (± std) with 100 labels.
PUBLISHED = {("m2", 100): (11.97, 1.71), ("m1m2", 100): (3.33, 0.14)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--label-seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--classifier-weight", type=float, default=0.1,
                        help="α on the labelled stream's mean −log q(y|x)")
    parser.add_argument("--features-from", help="M1's run folder: train M1+M2 on its features")
    parser.add_argument("--workdir", default="runs/m2")
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--tiny", action="store_true", help="the digits, a small model")
    args = parser.parse_args()
    data, model = ["--dataset", "mnist"], ["--hidden", "500", "--latent-dim", "50"]
    if args.tiny:
        data, model, args.epochs = ["--dataset", "digits"], ["--hidden", "32", "--latent-dim", "4"], 2
    family = "m1m2" if args.features_from else "m2"
    bound = "test_feature_elbo" if args.features_from else "test_elbo"  # U(f) of M1's features
    if args.features_from:
        model += ["--features-from", args.features_from]
    rows = []
    for seed in args.label_seeds.split(","):
        workdir = Path(args.workdir) / f"labels{args.labels}-seed{seed}"
        train = [*data, "--binarization", "dynamic", "--model", family, "--objective", "m2",
                 *model, "--activation", "softplus", "--labels", str(args.labels),
                 "--label-seed", seed, "--epochs", str(args.epochs), "--batch-size", "100",
                 "--learning-rate", str(args.learning_rate), "--lr-schedule", "cosine",
                 "--classifier-weight", str(args.classifier_weight),
                 "--checkpoint-every", "25", "--workdir", str(workdir), "--no-progress"]
        if (workdir / "config.json").exists():
            train.append("--resume")
        if vaejax_main(["train", *train]):
            raise SystemExit(f"label seed {seed} failed")
        summary = json.loads((workdir / "summary.json").read_text())
        rows.append({"label_seed": int(seed), "test_error_percent": 100 * summary["test_error"],
                     bound: summary[bound], "epochs": summary["epochs"],
                     "train_wall_seconds": summary["wall_seconds"],
                     "command": "vaejax train " + " ".join(train)})
    errors = [r["test_error_percent"] for r in rows]
    published = PUBLISHED.get((family, args.labels))
    result = {"model": family, "features_from": args.features_from, "labels": args.labels,
              "classifier_weight": args.classifier_weight, "rows": rows,
              "test_error_percent_mean": statistics.mean(errors),
              "test_error_percent_std": statistics.stdev(errors) if len(errors) > 1 else None,
              "published_percent": published and {"mean": published[0], "std": published[1],
                                                  "source": f"Kingma et al. 2014, Table 1, {family}"},
              "machine": machine_info()}
    print_table(f"{family}, {args.labels} labels", ["label seed", "test error %", bound, "epochs",
                                                    "train min"],
                [[r["label_seed"], r["test_error_percent"], r[bound], r["epochs"],
                  r["train_wall_seconds"] / 60] for r in rows])
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n")
    emit(result)


if __name__ == "__main__":
    main()
