"""Throughput of the importance-sampled test log-likelihood, log p(x) with K draws from q(z|x).

The estimator is vaejax.evaluation.importance_log_likelihood, as `vaejax
evaluate` calls it: the test images go 100 at a time through one compiled
function that draws the K samples `--chunk-size` at a time on the device. The
model is the pytorch preset (784-400-20, Bernoulli decoder), untrained unless
`--train-epochs` asks for some training first; the cost does not depend on the
weights. The images are the 10,000 static-binarized MNIST test images, or
synthetic images of the same shape, or their first `--num-images`.

The estimator is compiled once per process, by the first call:
* `first_call_seconds`: that first call, on one batch, compilation included;
* `one_batch_seconds`: the median of later calls on one batch;
* `seconds`: the median of calls on all the images asked for, K = `--num-samples`.
`compile_seconds_estimate` is first_call_seconds − one_batch_seconds. The time
for all 10,000 test images is `seconds` scaled by the number of batches,
reported as extrapolated whenever fewer were processed. Throughput is
importance samples per second = images × K / seconds.

Achieved FLOP/s counts the matmuls (the encoder once per image, the decoder once per draw)
and is reported as a fraction of the machine's 2048×2048 float32 matmul rate, measured in
the same run.

`chunk_sweep` times one batch for each of `--chunk-sweep` chunk sizes (each
compiled once, untimed, first): a chunk decodes chunk × batch latents at once,
and how many fit the cache sets the speed on a CPU.
"""

import argparse
import math
import sys

import jax
import numpy as np

import common
from vaejax.config import PRESETS, TrainConfig, validate
from vaejax.evaluation import importance_log_likelihood
from vaejax.trainer import Trainer

FULL_TEST_SET = common.MNIST_TEST
HIDDEN, LATENT, PIXELS = 400, 20, 784
TRAIN_BATCH = 128


def make_trainer(num_train: int) -> Trainer:
    config = validate(TrainConfig(dataset="mnist", model=PRESETS["pytorch"], binarization="static",
                                  batch_size=TRAIN_BATCH, learning_rate=1e-3))
    return Trainer(config, common.IMAGE_SHAPE, num_train)


def trained_state(trainer: Trainer, train: np.ndarray, epochs: int):
    state, data = trainer.init(), trainer.place(train)
    for epoch in range(epochs):
        state, _ = trainer.train_epoch(state, data, epoch)
    return jax.block_until_ready(state)


def analytic_flops(num_images: int, num_samples: int) -> float:
    """Matmul FLOPs: the encoder once per image, the decoder once per draw."""
    encoder = 2.0 * (PIXELS * HIDDEN + HIDDEN * 2 * LATENT)
    decoder = 2.0 * (LATENT * HIDDEN + HIDDEN * PIXELS)
    return num_images * (encoder + num_samples * decoder)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_flags(parser)
    parser.add_argument("--num-samples", "-k", type=int, default=None,
                        help="K (default 5000; --tiny 100)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="draws per chunk (default 100; --tiny 50)")
    parser.add_argument("--num-images", type=int, default=None,
                        help=f"test images to process (default {FULL_TEST_SET}; --tiny 200)")
    parser.add_argument("--batch-size", type=int, default=100, help="images per compiled call")
    parser.add_argument("--train-epochs", type=int, default=0, help="training epochs before evaluating")
    parser.add_argument("--chunk-sweep", type=int, nargs="*", default=None,
                        help="chunk sizes to time on one batch (default 25 50 100 250 500; "
                             "--tiny 25 50)")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="n of the n×n matmul (default 2048; --tiny 512)")
    args = parser.parse_args(argv)
    args.matmul_size = args.matmul_size or (512 if args.tiny else 2048)
    args.num_samples = args.num_samples or (100 if args.tiny else 5000)
    args.chunk_size = args.chunk_size or (50 if args.tiny else 100)
    args.num_images = args.num_images or (200 if args.tiny else FULL_TEST_SET)
    if args.chunk_sweep is None:
        args.chunk_sweep = [25, 50] if args.tiny else [25, 50, 100, 250, 500]
    common.apply_common_defaults(args, repeats=3)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = common.machine_info()
    num_train = (512 if args.tiny else common.MNIST_TRAIN) if args.train_epochs else TRAIN_BATCH
    train, test, data_info = common.mnist_shaped(args.data, num_train, args.num_images)
    trainer = make_trainer(num_train)
    state = trained_state(trainer, train, args.train_epochs)
    square = common.square_matmul_rate(args.matmul_size, 5 * args.repeats)

    def evaluate(images, chunk_size=args.chunk_size):
        return importance_log_likelihood(trainer, state, images, num_samples=args.num_samples,
                                         chunk_size=chunk_size, batch_size=args.batch_size,
                                         progress=False)

    last = {}

    def evaluate_all():
        last["estimates"] = evaluate(test)
        return last["estimates"]

    first_call_seconds = common.timed(lambda: evaluate(test[:args.batch_size]))
    one_batch_seconds, one_batch_all = common.median_seconds(lambda: evaluate(test[:args.batch_size]),
                                                             args.repeats, warmup=0)
    seconds, all_seconds = common.median_seconds(evaluate_all, args.repeats, warmup=0)
    result = summarize(args, machine, data_info, seconds, all_seconds, first_call_seconds,
                       one_batch_seconds, one_batch_all, last["estimates"], square)
    result["chunk_sweep"] = chunk_sweep(args, lambda chunk: evaluate(test[:args.batch_size], chunk))
    report(result)
    return result


def chunk_sweep(args, evaluate_batch) -> list[dict]:
    """One batch's median time for each chunk size of --chunk-sweep that divides K."""
    rows, images = [], min(args.batch_size, args.num_images)
    for chunk in args.chunk_sweep:
        if args.num_samples % chunk:
            continue
        seconds, _ = common.median_seconds(lambda: evaluate_batch(chunk), args.repeats)
        rows.append({"chunk_size": chunk, "latents_per_chunk": chunk * images, "seconds": seconds,
                     "importance_samples_per_second": images * args.num_samples / seconds})
    return rows


def full_test_set_seconds(seconds, batches, batch_size, num_images):
    """Seconds for all 10,000 test images, and how they were obtained."""
    if num_images >= FULL_TEST_SET:
        return seconds, "measured"
    full_batches = math.ceil(FULL_TEST_SET / batch_size)
    return seconds * full_batches / batches, "extrapolated: seconds per batch × batches"


def summarize(args, machine, data_info, seconds, all_seconds, first_call_seconds,
              one_batch_seconds, one_batch_all, estimates, square) -> dict:
    n, k = args.num_images, args.num_samples
    batches = math.ceil(n / args.batch_size)
    full, how = full_test_set_seconds(seconds, batches, args.batch_size, n)
    return {
        "benchmark": "is_nll", "tiny": args.tiny, "machine": machine, **data_info,
        "num_images": n, "num_samples": k, "chunk_size": args.chunk_size, "batch_size": args.batch_size,
        "train_epochs": args.train_epochs, "repeats": args.repeats,
        "seconds": seconds, "all_seconds": all_seconds,
        "one_batch_seconds": one_batch_seconds, "one_batch_all_seconds": one_batch_all,
        "first_call_seconds": first_call_seconds,
        "compile_seconds_estimate": max(first_call_seconds - one_batch_seconds, 0.0),
        "importance_samples_per_second": n * k / seconds,
        "achieved_flops_per_second": analytic_flops(n, k) / seconds,
        "square_matmul": square,
        "fraction_of_square_matmul_rate": analytic_flops(n, k) / seconds / square["flops_per_second"],
        "full_test_set_seconds": full, "full_test_set_is": how, "full_test_set_images": FULL_TEST_SET,
        "mean_log_likelihood": float(np.mean(estimates)),
        "estimates_finite": bool(np.all(np.isfinite(estimates))),
        "peak_rss_mb": common.peak_rss_mb(),
        "targets": [common.target("gpu_k5000_full_test_set_seconds", full, "<=", 60.0,
                                  machine["platform"] == "gpu" and k == 5000),
                    common.target("cpu_fraction_of_square_matmul_rate",
                                  analytic_flops(n, k) / seconds / square["flops_per_second"],
                                  ">=", 0.7, machine["platform"] == "cpu")],
    }


def report(result: dict) -> None:
    m = result["machine"]
    print(f"{m['cpu_model']} × {m['cpu_count']} CPUs, {m['platform']} ({m['device_kind']}), "
          f"jax {m['jax_version']}; data: {result['data']}; K={result['num_samples']}, chunk "
          f"{result['chunk_size']}, {result['batch_size']} images per call, median of {result['repeats']}")
    one_batch = min(result["num_images"], result["batch_size"])
    rows = [
        [f"{result['num_images']} images (measured)", result["seconds"],
         result["importance_samples_per_second"]],
        [f"{one_batch} images, one batch (measured)", result["one_batch_seconds"],
         one_batch * result["num_samples"] / result["one_batch_seconds"]],
        [f"{result['full_test_set_images']} images, K={result['num_samples']} ({result['full_test_set_is']})",
         result["full_test_set_seconds"], None],
    ]
    common.print_table("Importance-sampled log p(x)", ["images", "seconds", "importance samples/s"], rows)
    rows = [[r["chunk_size"], r["latents_per_chunk"], r["seconds"], r["importance_samples_per_second"]]
            for r in result["chunk_sweep"]]
    common.print_table(f"Chunk size, one batch of {one_batch} images",
                       ["chunk", "latents per chunk", "seconds", "importance samples/s"], rows)
    print(f"\ncompile ≈ {result['compile_seconds_estimate']:.3g} s (first call only); "
          f"{result['achieved_flops_per_second'] / 1e9:.1f} GFLOP/s in matmuls "
          f"({result['fraction_of_square_matmul_rate']:.2f} of the "
          f"{result['square_matmul']['n']}² product's rate); "
          f"mean log p(x) {result['mean_log_likelihood']:.2f} nats")
    for t in result["targets"]:
        print(f"target {t['name']} {t['requirement']}: {t['value']:.3g}, "
              f"{('met' if t['met'] else 'not met') if t['evaluated'] else 'not evaluated on this platform'}")


if __name__ == "__main__":
    common.emit(main(sys.argv[1:]))
