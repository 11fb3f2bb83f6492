"""Pieces shared by the benchmark scripts: machine description, timing, data, output.

Every script prints a human-readable table and then, as its last stdout line,
one JSON object; `emit` does both.
"""

import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

IMAGE_SHAPE = (28, 28, 1)
MNIST_TRAIN, MNIST_TEST = 60000, 10000
# Mean pixel of static-binarized MNIST, so synthetic images have MNIST's density of ones.
_MNIST_ONES = 0.13


def add_common_flags(parser) -> None:
    parser.add_argument("--tiny", action="store_true",
                        help="shrink everything so the script finishes in seconds (for tests)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats after the warm-up; the median is reported")
    parser.add_argument("--data", choices=("auto", "mnist", "synthetic"), default=None,
                        help="auto: MNIST if TFDS can prepare it, else synthetic "
                             "(default; --tiny defaults to synthetic)")


def apply_common_defaults(args, repeats: int) -> None:
    """Fills --repeats and --data left unset: fewer repeats and synthetic data with --tiny."""
    args.repeats = args.repeats or (2 if args.tiny else repeats)
    args.data = args.data or ("synthetic" if args.tiny else "auto")


def machine_info() -> dict:
    device = jax.devices()[0]
    uname = platform.uname()
    return {
        "processor": platform.processor() or _cpu_model(),
        "cpu_model": _cpu_model(),
        "uname": f"{uname.system} {uname.release} {uname.machine}",
        "hostname": uname.node,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def timed(fn) -> float:
    """Seconds for fn(), which must return its outputs so they can be awaited."""
    tic = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - tic


def median_seconds(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median and all wall times of `repeats` calls of fn after `warmup` untimed calls."""
    for _ in range(warmup):
        timed(fn)
    times = [timed(fn) for _ in range(repeats)]
    return statistics.median(times), times


def flops_of_compiled(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (its cost analysis), None if unavailable."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # some backends have no cost model
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def square_matmul_rate(n: int, repeats: int) -> dict:
    """FLOP/s of jnp.dot of two n×n float32 matrices (2n³ FLOPs per product)."""
    keys = jax.random.split(jax.random.PRNGKey(0))
    a, b = (jax.random.normal(k, (n, n), jax.numpy.float32) for k in keys)
    dot = jax.jit(jax.numpy.dot)
    seconds, _ = median_seconds(lambda: dot(a, b), repeats)
    return {"n": n, "seconds": seconds, "flops": 2.0 * n**3, "flops_per_second": 2.0 * n**3 / seconds}


def step_matmul_flops(batch: int, layers: list[tuple[int, int, int]]) -> float:
    """The matmul FLOPs one training step must spend on layers (rows, in, out) — rows
    products of (in)·(in×out) per example: 1 for a dense layer, the output positions of a
    convolution in im2col form. Forward x·W and weight gradient xᵀ·dy for every layer,
    input gradient dy·Wᵀ for all but the first (the data need none)."""
    forward = [2.0 * batch * r * i * o for r, i, o in layers]
    return 3 * sum(forward) - forward[0]


def layer_matmul_rate(batch: int, layers: list[tuple[int, int, int]], repeats: int) -> dict:
    """FLOP/s of the matmuls of one training step of layers (rows, in, out) at this batch.

    One compiled program computes exactly the products of `step_matmul_flops`, with
    their shapes and nothing else: the rate a step could reach if it were all matmul.
    """
    rng = np.random.default_rng(0)
    operands = [tuple(jax.device_put(rng.standard_normal(shape, np.float32))
                      for shape in ((batch * r, i), (i, o), (batch * r, o))) for r, i, o in layers]

    @jax.jit
    def products(operands):
        out = [(x @ w, x.T @ dy) for x, w, dy in operands]
        return out + [dy @ w.T for _, w, dy in operands[1:]]

    seconds, _ = median_seconds(lambda: products(operands), repeats)
    flops = step_matmul_flops(batch, layers)
    return {"batch_size": batch, "layers": [list(layer) for layer in layers], "seconds": seconds,
            "flops": flops, "flops_per_second": flops / seconds}


def synthetic_images(n: int, seed: int) -> np.ndarray:
    """Binary float32 images of MNIST's shape and density of ones."""
    rng = np.random.default_rng(seed)
    return (rng.random((n, *IMAGE_SHAPE), np.float32) < _MNIST_ONES).astype(np.float32)


def mnist_shaped(source: str, num_train: int, num_test: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Static-binarized MNIST (train, test) cut to the sizes asked for, or synthetic images.

    Returns the arrays and {"data": "mnist" | "synthetic", "data_note": why synthetic or None}.
    MNIST is loaded by vaejax.input_pipeline in a child process, so that TensorFlow
    never enters this process's memory or threads.
    """
    note = "--data synthetic" if source == "synthetic" else None
    if source != "synthetic":
        loaded, note = _load_mnist_in_child()
        if loaded is not None:
            train, test = loaded
            return _repeat_to(train, num_train), _repeat_to(test, num_test), {"data": "mnist",
                                                                                "data_note": None}
        if source == "mnist":
            raise SystemExit(f"MNIST is unavailable: {note}")
    return (synthetic_images(num_train, 0), synthetic_images(num_test, 1),
            {"data": "synthetic", "data_note": note})


def _repeat_to(images: np.ndarray, n: int) -> np.ndarray:
    reps = math.ceil(n / images.shape[0])
    return np.concatenate([images] * reps)[:n] if reps > 1 else images[:n]


_LOAD_MNIST = """
import sys, numpy as np
from vaejax import input_pipeline
data = input_pipeline.load("mnist", binarization="static")
np.save(sys.argv[1] + "/train.npy", data.train.images.astype(np.uint8))
np.save(sys.argv[1] + "/test.npy", data.test.images.astype(np.uint8))
"""


def _load_mnist_in_child():
    with tempfile.TemporaryDirectory() as folder:
        child = subprocess.run([sys.executable, "-c", _LOAD_MNIST, folder],
                               capture_output=True, text=True)
        if child.returncode != 0:
            lines = child.stderr.strip().splitlines()
            return None, f"MNIST unavailable: {lines[-1] if lines else 'loader failed'}"
        train, test = (np.load(f"{folder}/{name}.npy").astype(np.float32) for name in ("train", "test"))
    return (train, test), None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_summary(flags: list[str], launch: list[list[str]] = ((),), env=None) -> dict:
    """summary.json of one `vaejax train` run (no progress bar) in a temporary folder, over as
    many processes as `launch` gives extra flags (process 0's summary)."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = [subprocess.Popen([sys.executable, "-m", "vaejax", "train", *flags, "--workdir",
                                  tmp, "--no-progress", *extra], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for extra in launch]
        errors = [run.communicate()[1] for run in runs]
        if any(run.returncode for run in runs):
            raise SystemExit(f"a run failed: {errors[0][-2000:]}")
        return json.loads((Path(tmp) / "summary.json").read_text())


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for k, row in enumerate(cells):
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def target(name: str, value, op: str, threshold: float, applies: bool) -> dict:
    """One target of the spec: whether `value op threshold` holds, when it applies.

    `met` is None when the target does not apply to this platform or the value
    could not be measured (a skipped baseline).
    """
    evaluated = applies and value is not None
    met = None
    if evaluated:
        met = bool(value >= threshold) if op == ">=" else bool(value <= threshold)
    return {"name": name, "value": value, "requirement": f"{op} {threshold:g}",
            "evaluated": evaluated, "met": met}


def emit(result: dict) -> None:
    """Prints the result as one JSON line (the last line of stdout)."""
    sys.stdout.flush()
    print(json.dumps(result, allow_nan=False))
