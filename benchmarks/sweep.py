"""A sweep in one program: K models trained by one vmapped epoch vs K runs one after another.

Every model is the PyTorch-examples VAE (vaejax preset "pytorch", 784-400-20,
ReLU, Bernoulli decoder, Adam 1e-3) trained on MNIST-shaped binary images with
batch size 128. Three programs, each `Trainer.train_epoch` (one lax.scan per
epoch over the data set held on the device):

* one vmapped program training K models (seeds 0..K-1) side by side;
* a single-model program, run once per seed, K times in a row (the compiled
  program is shared, so the sequential time has no repeated compilation; a
  user starting K separate processes would also pay K compilations);
* one vmapped program training 16 models that differ only in β.

Each program first runs one untimed epoch (compilation, reported as the first
epoch's time); then, `--repeats` times, each trains `--epochs` more epochs,
awaited with block_until_ready. Wall times are medians over the repeats.
Reported: the K-model time vs the sum of the K single-model times (the speed-up
of the sweep), and the 16-β time over one single-model run.
"""

import argparse
import statistics
import sys

import jax
import numpy as np

import common
from vaejax.config import PRESETS, TrainConfig, validate
from vaejax.trainer import Trainer

BATCH = 128
LEARNING_RATE = 1e-3


def make_trainer(train: np.ndarray, seeds, betas) -> Trainer:
    config = validate(TrainConfig(dataset="mnist", model=PRESETS["pytorch"], binarization="static",
                                  batch_size=BATCH, learning_rate=LEARNING_RATE,
                                  seeds=tuple(seeds), betas=tuple(betas)))
    return Trainer(config, train.shape[1:], train.shape[0])


class Program:
    """A trainer's compiled epoch and the states it advances, one per run it stands for."""

    def __init__(self, trainer: Trainer, states: list, data):
        self.trainer, self.states, self.data = trainer, states, data
        self.epoch = 0
        self.finite = True

    def run(self, index: int, epochs: int):
        state = self.states[index]
        for e in range(epochs):
            state, metrics = self.trainer.train_epoch(state, self.data, self.epoch + e)
            self.finite &= bool(np.all(np.isfinite(jax.device_get(metrics["loss"]))))
        self.states[index] = state
        return state

    def timed(self, index: int, epochs: int) -> float:
        return common.timed(lambda: self.run(index, epochs))

    def advance(self, epochs: int) -> None:
        self.epoch += epochs


def single_model_states(train: np.ndarray, seeds) -> list:
    """Fresh one-model states, one per seed, for the shared single-model program."""
    return [make_trainer(train, (seed,), (1.0,)).init() for seed in seeds]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_flags(parser)
    parser.add_argument("--num-models", type=int, default=None, help="K (default 8; --tiny 3)")
    parser.add_argument("--num-betas", type=int, default=None,
                        help="models of the β program (default 16; --tiny 4)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per repeat, after compilation")
    parser.add_argument("--num-train", type=int, default=None,
                        help=f"training examples (default {common.MNIST_TRAIN}; --tiny 512)")
    args = parser.parse_args(argv)
    args.num_models = args.num_models or (3 if args.tiny else 8)
    args.num_betas = args.num_betas or (4 if args.tiny else 16)
    args.num_train = args.num_train or (512 if args.tiny else common.MNIST_TRAIN)
    common.apply_common_defaults(args, repeats=3)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = common.machine_info()
    train, _, data_info = common.mnist_shaped(args.data, args.num_train, 1)
    seeds = list(range(args.num_models))
    betas = np.geomspace(0.1, 10.0, args.num_betas).tolist()

    vmapped, beta_sweep = make_trainer(train, seeds, (1.0,)), make_trainer(train, (0,), betas)
    data = vmapped.place(train)
    programs = {
        "vmapped": Program(vmapped, [vmapped.init()], data),
        "single": Program(make_trainer(train, (0,), (1.0,)), single_model_states(train, seeds), data),
        "betas": Program(beta_sweep, [beta_sweep.init()], data),
    }

    first = {"vmapped": programs["vmapped"].timed(0, 1),
             "single": programs["single"].timed(0, 1),
             "betas": programs["betas"].timed(0, 1)}
    for index in range(1, len(seeds)):
        programs["single"].run(index, 1)  # the other seeds catch up, so all runs do the same epochs
    for program in programs.values():
        program.advance(1)

    times = {"vmapped": [], "sequential": [], "single_run": [], "betas": []}
    for _ in range(args.repeats):
        times["vmapped"].append(programs["vmapped"].timed(0, args.epochs))
        runs = [programs["single"].timed(i, args.epochs) for i in range(len(seeds))]
        times["sequential"].append(sum(runs))
        times["single_run"] += runs
        times["betas"].append(programs["betas"].timed(0, args.epochs))
        for program in programs.values():
            program.advance(args.epochs)

    result = summarize(args, machine, data_info, vmapped.steps_per_epoch, first, times,
                       all(p.finite for p in programs.values()))
    report(result)
    return result


def summarize(args, machine, data_info, steps, first, times, finite) -> dict:
    med = {name: statistics.median(values) for name, values in times.items()}
    examples = steps * BATCH * args.epochs
    beta_ratio = med["betas"] / med["single_run"]
    return {
        "benchmark": "sweep", "tiny": args.tiny, "machine": machine, **data_info,
        "num_train": args.num_train, "batch_size": BATCH, "epochs": args.epochs, "repeats": args.repeats,
        "steps_per_epoch": steps, "num_models": args.num_models, "num_betas": args.num_betas,
        "first_epoch_seconds": first,
        "vmapped_seconds": med["vmapped"], "sequential_seconds": med["sequential"],
        "single_run_seconds": med["single_run"], "betas_seconds": med["betas"],
        "all_seconds": times,
        "speedup": med["sequential"] / med["vmapped"],
        "examples_per_second": {
            "vmapped": args.num_models * examples / med["vmapped"],
            "sequential": args.num_models * examples / med["sequential"],
            "single_run": examples / med["single_run"],
            "betas": args.num_betas * examples / med["betas"],
        },
        "betas_over_single_run": beta_ratio,
        "losses_finite": finite,
        "peak_rss_mb": common.peak_rss_mb(),
        "targets": [common.target(f"gpu_{args.num_betas}_betas_over_single_run", beta_ratio, "<=", 2.0,
                                  machine["platform"] == "gpu" and args.num_betas == 16)],
    }


def report(result: dict) -> None:
    m = result["machine"]
    print(f"{m['cpu_model']} × {m['cpu_count']} CPUs, {m['platform']} ({m['device_kind']}), "
          f"jax {m['jax_version']}; data: {result['data']}, {result['num_train']} examples, batch "
          f"{result['batch_size']}, {result['epochs']} epoch(s) per repeat, median of {result['repeats']}")
    k, nb, eps = result["num_models"], result["num_betas"], result["examples_per_second"]
    rows = [
        [f"{k} models, one vmapped program", result["vmapped_seconds"], eps["vmapped"],
         result["first_epoch_seconds"]["vmapped"]],
        [f"{k} single-model runs in a row", result["sequential_seconds"], eps["sequential"], None],
        ["one single-model run", result["single_run_seconds"], eps["single_run"],
         result["first_epoch_seconds"]["single"]],
        [f"{nb} β, one vmapped program", result["betas_seconds"], eps["betas"],
         result["first_epoch_seconds"]["betas"]],
    ]
    common.print_table("Sweep wall times", ["program", "seconds", "examples/s (all models)",
                                            "first epoch s (compile)"], rows)
    print(f"\nspeed-up of the vmapped sweep: {result['speedup']:.2f}×; "
          f"{nb} β take {result['betas_over_single_run']:.2f}× one run's time")
    for t in result["targets"]:
        print(f"target {t['name']} {t['requirement']}: {t['value']:.2f}, "
              f"{('met' if t['met'] else 'not met') if t['evaluated'] else 'not evaluated on this platform'}")


if __name__ == "__main__":
    common.emit(main(sys.argv[1:]))
