"""Where a compiled training epoch's time goes: XLA's per-operation profile on the host.

Trains a `throughput.py` preset (Bernoulli decoder, analytic KL, one sample, Adam 1e-3) on
synthetic MNIST-shaped images: one untimed epoch, then `--epochs` epochs under
`jax.profiler.trace`. XLA:CPU records each operation of the compiled program it runs (a
fusion, a dot, a copy) as a trace event on the thread that ran it; their durations are summed
per operation over threads and epochs (thread-seconds: a matmul split over two threads counts
twice). Each operation is described from the compiled program's text
(`Trainer.train_epoch.lower(...).compile().as_text()`):

| column | what |
|---|---|
| kind | `matmul` (contains a dot: a YNNPACK or XLA fusion with the element-wise work fused into it), `transcendental` (exp, log, tanh, …, no dot), `gather` (gather, dynamic-slice/update), `copy` (copy, transpose), `element-wise` (the rest) |
| source | the innermost frame of the JAX code it was traced from, in vaejax, Flax or optax (`file:function`) |

Prints the top operations and the totals by kind and by source file, and one JSON line.

  python benchmarks/profile_step.py --preset flax --batch-size 128 \
      --out benchmarks/results/profile-flax-128-cpu-DATE.json
"""

import argparse
import collections
import dataclasses
import json
import re
import tempfile
import time
from pathlib import Path

import jax

import common
from throughput import vaejax_config
from vaejax.config import ModelConfig
from vaejax.trainer import Trainer

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_COMPUTATION = re.compile(r"^%([\w.\-]+) .*\{$|^ENTRY %([\w.\-]+) ")
_FRAME = re.compile(r"^(\d+) \{file_location_id=(\d+)(?: parent_frame_id=(\d+))?\}")
_LOCATION = re.compile(r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+)")
_NAME = re.compile(r'^(\d+) "(.*)"$')
_CONTAINERS = {"while", "call", "conditional", "parameter", "tuple", "get-tuple-element",
               "constant", "bitcast"}
_TRANSCENDENTAL = ("exponential", "log", "log-plus-one", "exponential-minus-one", "tanh",
                   "logistic", "power", "sqrt", "rsqrt", "erf")
_LIBRARIES = ("vaejax", "optax", "flax")


def _sections(text: str):
    """The program text's tables (FileNames, FunctionNames, FileLocations, StackFrames)."""
    tables, current = collections.defaultdict(list), None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = line
        elif not line.strip():
            current = None
        elif current:
            tables[current].append(line)
    return tables


def _sources(text: str) -> dict[int, str]:
    """stack_frame_id -> `file:function` of its innermost frame in vaejax, Flax or optax."""
    tables = _sections(text)
    files = dict(_NAME.match(line).groups() for line in tables["FileNames"])
    functions = dict(_NAME.match(line).groups() for line in tables["FunctionNames"])
    locations = {m[1]: (files[m[2]], functions[m[3]])
                 for m in map(_LOCATION.match, tables["FileLocations"])}
    frames = {m[1]: (m[2], m[3]) for m in map(_FRAME.match, tables["StackFrames"])}

    def source(frame):
        seen = set()
        while frame in frames and frame not in seen:
            seen.add(frame)
            location, parent = frames[frame]
            path, function = locations[location]
            parts = Path(path).parts
            for library in _LIBRARIES:
                if library in parts:
                    inner = parts[len(parts) - 1 - parts[::-1].index(library):]
                    return f"{'/'.join(inner)}:{function}"
            frame = parent
        return "other"

    return {int(frame): source(frame) for frame in frames}


def describe(text: str) -> dict[str, dict]:
    """Each scheduled operation of the program text: its opcode, kind and source."""
    sources = _sources(text)
    bodies, current, ops = collections.defaultdict(list), None, {}
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = head[1] or head[2]
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, rest = m.groups()
        opcode = re.search(r"\b([a-z][\w\-]*)\(", rest)[1]
        bodies[current].append(opcode)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        called = re.search(r"calls=%([\w.\-]+)", rest)
        ops[name] = {"opcode": opcode, "calls": called[1] if called else None,
                     "source": sources.get(int(frame[1]), "other") if frame else "other"}
    for op in ops.values():
        inside = set(bodies.get(op.pop("calls"), [])) | {op["opcode"]}
        op["kind"] = ("matmul" if inside & {"dot", "convolution"} else
                      "transcendental" if inside & set(_TRANSCENDENTAL) else
                      "gather" if inside & {"gather", "dynamic-slice", "dynamic-update-slice"} else
                      "copy" if inside <= {"copy", "transpose", "fusion"} else "element-wise")
    return ops


def profile(trainer, state, data, epochs: int) -> tuple[dict[str, float], float, object]:
    """Thread-seconds per operation over `epochs` traced epochs, their wall seconds, the state."""
    with tempfile.TemporaryDirectory() as folder:
        tic = time.perf_counter()
        with jax.profiler.trace(folder):
            for epoch in range(1, epochs + 1):
                state, _ = trainer.train_epoch(state, data, epoch)
                jax.block_until_ready(state)
        wall = time.perf_counter() - tic
        trace, = Path(folder).rglob("*.xplane.pb")
        planes = jax.profiler.ProfileData.from_file(str(trace)).planes
        seconds = collections.Counter()
        for plane in planes:
            for line in plane.lines:
                for event in line.events:
                    seconds[event.name] += event.duration_ns * 1e-9
    return seconds, wall, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="flax", choices=("pytorch", "flax"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="traced epochs")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--tiny", action="store_true", help="a small model, 1,024 images")
    args = parser.parse_args()
    config = vaejax_config(args.preset, args.batch_size)
    train = common.synthetic_images(1024 if args.tiny else common.MNIST_TRAIN, 0)
    if args.tiny:
        config = dataclasses.replace(config, model=ModelConfig(hidden=(32,), latent_dim=4))
        args.epochs = 1
    trainer = Trainer(config, train.shape[1:], train.shape[0])
    data, state = trainer.place(train), trainer.init()
    text = trainer.train_epoch.lower(state, data, 0).compile().as_text()
    state, _ = trainer.train_epoch(state, data, 0)  # compiles outside the trace
    jax.block_until_ready(state)
    ops = describe(text)
    seconds, wall, _ = profile(trainer, state, data, args.epochs)
    rows = sorted(({"op": name, **ops[name], "seconds": s / args.epochs}
                   for name, s in seconds.items()
                   if name in ops and ops[name]["opcode"] not in _CONTAINERS),
                  key=lambda r: -r["seconds"])
    total = sum(r["seconds"] for r in rows)
    for row in rows:
        row["share"] = row["seconds"] / total

    def totals(key):
        sums = collections.Counter()
        for row in rows:
            sums[row[key]] += row["seconds"]
        return {k: {"seconds": v, "share": v / total} for k, v in sums.most_common()}

    result = {"preset": "tiny" if args.tiny else args.preset, "batch_size": config.batch_size,
              "steps_per_epoch": trainer.steps_per_epoch, "epochs": args.epochs,
              "epoch_seconds": wall / args.epochs, "op_thread_seconds_per_epoch": total,
              "by_kind": totals("kind"), "by_source": totals("source"), "ops": rows,
              "tiny": args.tiny, "machine": common.machine_info()}
    common.print_table(f"top operations per epoch ({result['preset']}, batch "
                       f"{config.batch_size}; epoch {wall / args.epochs:.3f} s wall)",
                       ["op", "kind", "source", "seconds", "share"],
                       [[r["op"], r["kind"], r["source"], r["seconds"], r["share"]]
                        for r in rows[:args.top]])
    for key in ("kind", "source"):
        common.print_table(f"by {key}", [key, "seconds", "share"],
                           [[k, v["seconds"], v["share"]] for k, v in result[f"by_{key}"].items()])
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n")
    common.emit(result)


if __name__ == "__main__":
    main()
