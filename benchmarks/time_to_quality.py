"""Time to quality: the Burda static-MNIST VAE's test NLL against minutes of training.

Trains a recipe of `vaejax.config.RECIPES` (default `burda-20min`: 784-200-200-50 tanh, static
binarized MNIST, batch 100, Adam 1e-3 decayed to 0 by a cosine over 760 epochs), the epochs
compiled as `vaejax train` compiles them (`Trainer.train_epoch`). The clock counts training only: each
epoch is awaited, the first one's compilation included; nothing is evaluated between epochs.
Off the clock, the test ELBO every `--elbo-every` epochs and, at each of `--nll-at`, the test
NLL by K = `--num-samples` importance samples on all 10,000 test images. Goal: within 0.5 nats
of Burda et al.'s 88.71 (Table 3) in under 20 minutes.

  VAEJAX_MANUAL_DIR=../shared/data python benchmarks/time_to_quality.py \
      --out benchmarks/results/time-to-quality-cpu-DATE.json \
      --figure benchmarks/results/time-to-quality-cpu-DATE.png
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from common import emit, machine_info, print_table
from vaejax.config import RECIPES, TrainConfig, validate
from vaejax.evaluation import importance_log_likelihood
from vaejax.train import prepare_data
from vaejax.trainer import Trainer

PUBLISHED, GOAL_GAP, GOAL_MINUTES = 88.71, 0.5, 20.0


def _figure(rows, elbos, path) -> None:
    from matplotlib.figure import Figure
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    axes.plot([m for m, _ in elbos], [-e for _, e in elbos], color="0.6", label="−test ELBO")
    axes.plot([r["train_minutes"] for r in rows], [r["test_nll"] for r in rows], "o-",
              label="test NLL, K = 5000" if rows and rows[0]["num_samples"] == 5000 else "test NLL")
    axes.axhline(PUBLISHED, color="k", lw=0.8, label=f"Burda et al. {PUBLISHED}")
    axes.axhline(PUBLISHED + GOAL_GAP, color="k", lw=0.8, ls="--", label="goal (+0.5 nats)")
    axes.axvline(GOAL_MINUTES, color="k", lw=0.8, ls=":")
    nlls = [r["test_nll"] for r in rows]
    axes.set_ylim(min(nlls + [PUBLISHED]) - 1, max(nlls + [PUBLISHED]) + 6)
    axes.set_xlabel("training minutes (2 CPU cores)" if jax.default_backend() == "cpu"
                    else "training minutes")
    axes.set_ylabel("nats")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="burda-20min")
    parser.add_argument("--epochs", type=int, help="instead of the recipe's")
    parser.add_argument("--batch-size", type=int, help="instead of the recipe's")
    parser.add_argument("--learning-rate", type=float, help="instead of the recipe's")
    parser.add_argument("--nll-at", default="190,380,570,760", help="epochs, comma-separated")
    parser.add_argument("--elbo-every", type=int, default=25)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--figure", help="write the NLL-against-minutes figure here (PNG)")
    parser.add_argument("--tiny", action="store_true", help="the digits, a few epochs, K = 10")
    args = parser.parse_args()
    given = {k: v for k, v in vars(args).items()
             if k in ("epochs", "batch_size", "learning_rate") and v is not None}
    config = dataclasses.replace(RECIPES[args.recipe], **given)
    if args.tiny and given:
        parser.error("--tiny trains its own digits run: it takes no --epochs, --batch-size or "
                     "--learning-rate")
    if args.tiny:
        config = TrainConfig(dataset="digits", epochs=4, batch_size=100, lr_schedule="cosine")
        args.nll_at, args.elbo_every, args.num_samples = "2,4", 1, 10
    nll_at = sorted({int(e) for e in args.nll_at.split(",")})
    if not nll_at or nll_at[0] < 1 or nll_at[-1] > config.epochs:
        parser.error(f"--nll-at must name epochs within 1..{config.epochs}")
    data = prepare_data(validate(config))
    trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
    train, test = trainer.place(data.train), trainer.place(data.test)
    state, seconds, rows, elbos, epoch_seconds = trainer.init(), 0.0, [], [], []
    for epoch in range(config.epochs):
        tic = time.perf_counter()
        state, _ = trainer.train_epoch(state, train, epoch)
        jax.block_until_ready(state)
        epoch_seconds.append(time.perf_counter() - tic)
        seconds += epoch_seconds[-1]
        done = epoch + 1
        if done % args.elbo_every == 0 or done in nll_at:
            elbo = float(trainer.evaluate(state, test, epoch)["test_elbo"][0])
            elbos.append((seconds / 60, elbo))
        if done in nll_at:
            tic = time.perf_counter()
            nll = -float(np.mean(importance_log_likelihood(
                trainer, state, data.test, num_samples=args.num_samples, progress=False)[0]))
            rows.append({"epoch": done, "train_minutes": seconds / 60, "test_nll": nll,
                         "test_elbo": elbo, "num_samples": args.num_samples,
                         "num_test": int(data.test.shape[0]),
                         "eval_seconds": time.perf_counter() - tic})
            print(f"epoch {done}: {seconds / 60:.1f} min, test NLL {nll:.2f}", flush=True)
    goal = PUBLISHED + GOAL_GAP
    reached = [r for r in rows if r["test_nll"] <= goal]
    result = {
        "recipe": {"name": args.recipe, **json.loads(config.to_json()),
                   "command": f"vaejax train --recipe {args.recipe} " + " ".join(
                       f"--{k.replace('_', '-')} {v}" for k, v in given.items())},
        "published": PUBLISHED, "goal_nll": goal, "goal_minutes": GOAL_MINUTES,
        "rows": rows, "test_elbo_curve": [{"train_minutes": m, "test_elbo": e} for m, e in elbos],
        "first_epoch_seconds": epoch_seconds[0],
        "median_epoch_seconds": float(np.median(epoch_seconds[1:] or epoch_seconds)),
        "minutes_to_goal": reached[0]["train_minutes"] if reached else None,
        "tiny": args.tiny, "machine": machine_info(),
    }
    print_table(f"test NLL against training time (goal {goal:.2f} in {GOAL_MINUTES:.0f} min)",
                ["epoch", "train min", "test NLL", "test ELBO"],
                [[r["epoch"], r["train_minutes"], r["test_nll"], r["test_elbo"]] for r in rows])
    if args.figure:
        _figure(rows, elbos, args.figure)
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n")
    emit(result)


if __name__ == "__main__":
    main()
