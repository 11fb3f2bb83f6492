"""A rate–distortion curve from one vmapped β sweep: every β is one model of one program.

Trains `--betas` on static binarized MNIST (TFDS `binarized_mnist`, from
VAEJAX_MANUAL_DIR) with the given preset, then plots the test rate KL(q‖p)
against the test distortion −E log p(x|z) for each β, with the lines
R + D = const (equal ELBO) for reference. Prints a table and one JSON line.

  python benchmarks/rate_distortion.py --epochs 30 --out benchmarks/results
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from vaejax.config import PRESETS, TrainConfig
from vaejax.train import train_and_evaluate


def plot(path: Path, models: list[dict], title: str) -> None:
    from vaejax import plots
    fig, axes = plots.subplots(figsize=(5.2, 4.2))
    ax = axes[0, 0]
    rates = np.array([m["rate"] for m in models])
    distortions = np.array([m["distortion"] for m in models])
    ax.plot(rates, distortions, "o-")
    for m in models:
        ax.annotate(f"β={m['beta']:g}", (m["rate"], m["distortion"]), fontsize=8,
                    xytext=(4, 2), textcoords="offset points")
    # Points on one dashed line share an ELBO: −ELBO = R + D.
    span = np.linspace(0, rates.max() * 1.05, 2)
    for total in np.percentile(rates + distortions, [0, 50, 100]):
        ax.plot(span, total - span, "--", lw=0.7, color="grey")
    ax.set_xlim(0, rates.max() * 1.05)
    ax.set_ylim(distortions.min() * 0.9, distortions.max() * 1.05)
    ax.set_xlabel("rate  KL(q(z|x) ‖ p(z))  (nats)")
    ax.set_ylabel("distortion  −E log p(x|z)  (nats)")
    ax.set_title(title, fontsize=10)
    fig.set_layout_engine("tight")
    plots.save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="binarized_mnist")
    parser.add_argument("--preset", default="pytorch")
    parser.add_argument("--betas", default="0.1,0.25,0.5,1,2,4,8")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    betas = tuple(float(b) for b in args.betas.split(","))
    config = TrainConfig(dataset=args.dataset, model=PRESETS[args.preset], betas=betas,
                         binarization="static", epochs=args.epochs, batch_size=args.batch_size,
                         checkpoint_every=args.epochs)
    workdir = Path(tempfile.mkdtemp()) / "sweep"
    try:
        summary = train_and_evaluate(config, workdir, progress=False)
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / f"rate_distortion_{args.dataset}.png"
    plot(figure, summary["models"], f"{args.dataset}, {args.preset} preset, {len(betas)} β in one "
         f"program, {args.epochs} epochs")
    print(f"{'beta':>6}{'rate':>9}{'distortion':>12}{'test ELBO':>11}")
    for m in summary["models"]:
        print(f"{m['beta']:>6g}{m['rate']:>9.2f}{m['distortion']:>12.2f}{m['test_elbo']:>11.2f}")
    result = {"dataset": args.dataset, "preset": args.preset, "epochs": args.epochs,
              "batch_size": args.batch_size, "wall_seconds": summary["wall_seconds"],
              "train_examples_per_second": summary["train_examples_per_second"],
              "figure": str(figure), "config": json.loads(config.to_json()),
              "models": [{k: m[k] for k in ("beta", "rate", "distortion", "test_elbo")}
                         for m in summary["models"]]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
