"""Training throughput of three VAEs: vaejax vs a Flax loop vs PyTorch.

`--preset` picks the architecture, a vaejax preset: pytorch (784-400-20-400-784,
the PyTorch-examples VAE), flax (784-500-20-500-784, the Flax example's) or conv
(two stride-2 3×3 convolutions 32, 64 → dense 256 → 16 latents, mirrored by two
stride-2 transposed convolutions and a 3×3 output convolution). Every one has
ReLU, a Bernoulli decoder (summed binary cross-entropy over the pixels), an
analytic KL, one posterior sample and Adam with learning rate 1e-3, trained on
MNIST-shaped 28×28×1 binary images (static binarization, done once beforehand,
so every implementation sees the same data and does no per-batch preprocessing).
Three implementations:

* vaejax: `Trainer.train_epoch`, the whole epoch as one compiled program
  (lax.scan over batches of the data set held on the device);
* flax_loop: the structure of the official Flax VAE example, written with
  flax.nnx's stock layers and optax: a Python for-loop over host numpy batches,
  each copied to the device and passed to a jax.jit-compiled train step;
* pytorch: the same architecture in torch.nn with torch.optim.Adam, batches
  indexed from an in-memory tensor (skipped when torch cannot be imported).

Each implementation runs one untimed warm-up epoch (compilation), then
`--repeats` timed epochs; examples/s is steps × batch / median epoch time, with
every epoch awaited by block_until_ready. The FLOPs of one step are counted
three ways: XLA's cost analysis of the compiled step; analytically as
3 × 2·B·Σ rows·in·out over the layers (forward, input and weight gradients; a
convolution is `rows` = output positions of an im2col product with in = 9·C_in,
a transposed one `rows` = input positions with out = 9·C_out); and the matmul
work a step really does, which is that less the input gradient of the first
layer (the data need none). Achieved FLOP/s uses the last count and is compared
with the machine's measured matmul rate: a 2048×2048 float32 product, and
exactly the step's matmuls, same shapes, alone in one compiled program (the rate
the step would reach if it were all matmul). Peak memory is the process's
ru_maxrss after each implementation (it only grows, so later rows include
earlier peaks; torch is imported only after the JAX runs).
"""

import argparse
import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import common
from vaejax.config import PRESETS, ModelConfig, TrainConfig, validate
from vaejax.trainer import Trainer

SHAPE = (28, 28, 1)
LEARNING_RATE = 1e-3
IMPLEMENTATIONS = ("vaejax", "flax_loop", "pytorch")
MODELS = {"pytorch": "784-400-20-400-784", "flax": "784-500-20-500-784",
          "conv": "conv 32, 64 (3×3, stride 2) → 256 → 16 → 256 → deconv 64→32, 32→32 → conv 32→1"}
BENCHMARKED_PRESETS = tuple(MODELS)
CONV_TRAIN = 8192  # a conv epoch is ~50× an MLP's: fewer examples keep the run in minutes


def _down(size: int, steps: int) -> int:
    return size if steps == 0 else _down(math.ceil(size / 2), steps - 1)


def layers_of(model: ModelConfig, samples: int = 1) -> list[tuple[int, int, int]]:
    """The products of one forward pass per example, (rows, in, out): encoder, the
    mean+log-variance head, decoder; the decoder's rows once per latent sample."""
    encoder, decoder = _encoder_decoder(model)
    return [*encoder, *((r * samples, i, o) for r, i, o in decoder)]


def _encoder_decoder(model: ModelConfig):
    d = model.latent_dim
    if model.architecture == "mlp":
        sizes = (math.prod(SHAPE), *model.hidden)
        encoder = [(1, i, o) for i, o in (*zip(sizes, sizes[1:]), (model.hidden[-1], 2 * d))]
        decoder = zip((d, *model.hidden[::-1]), (*model.hidden[::-1], sizes[0]))
        return encoder, [(1, i, o) for i, o in decoder]
    (h, w, c), chans = SHAPE, (SHAPE[-1], *model.conv_channels)
    n = len(model.conv_channels)
    convs = [(_down(h, k + 1) * _down(w, k + 1), 9 * a, b)
             for k, (a, b) in enumerate(zip(chans, chans[1:]))]
    dense = (_down(h, n) * _down(w, n) * chans[-1], *model.hidden)
    up = chans[:0:-1]
    deconvs = [(_down(h, n - k) * _down(w, n - k), a, 9 * b)
               for k, (a, b) in enumerate(zip(up, (*up[1:], up[-1])))]
    return ([*convs, *((1, i, o) for i, o in zip(dense, dense[1:])), (1, model.hidden[-1], 2 * d)],
            [(1, d, model.hidden[-1]), *((1, i, o) for i, o in zip(dense[::-1], dense[-2::-1])),
             *deconvs, (h * w, 9 * up[-1], c)])


def analytic_step_flops(batch: int, layers) -> float:
    """3 × 2·B·Σ rows·in·out: forward, input gradient and weight gradient of every layer."""
    return 3.0 * 2.0 * batch * sum(r * i * o for r, i, o in layers)


# --- vaejax ---------------------------------------------------------------

def vaejax_config(preset: str, batch: int, samples: int = 1) -> TrainConfig:
    """The ELBO with one sample, or with samples > 1 the IWAE bound of that many."""
    return validate(TrainConfig(dataset="mnist", model=PRESETS[preset], binarization="static",
                                objective="iwae" if samples > 1 else "elbo",
                                num_samples=samples, batch_size=batch,
                                learning_rate=LEARNING_RATE, lr_schedule="constant", seeds=(0,),
                                betas=(1.0,)))


def bench_vaejax(preset: str, train: np.ndarray, batch: int, repeats: int,
                 samples: int = 1) -> dict:
    trainer = Trainer(vaejax_config(preset, batch, samples), train.shape[1:], train.shape[0])
    data = trainer.place(train)
    box = {"state": trainer.init(), "epoch": 0}

    def epoch():
        box["state"], metrics = trainer.train_epoch(box["state"], data, box["epoch"])
        box["epoch"] += 1
        return box["state"], metrics

    seconds, times = common.median_seconds(epoch, repeats)
    step = trainer.train_step.lower(
        box["state"], jax.ShapeDtypeStruct((1, batch, *train.shape[1:]), jnp.float32),
        jax.ShapeDtypeStruct((1, 2), jnp.uint32)).compile()
    return _row(layers_of(PRESETS[preset], samples), trainer.steps_per_epoch, batch, seconds,
                times, common.flops_of_compiled(step))


# --- Flax loop (the official Flax VAE example's structure, in NNX) ---------

class FlaxVAE(nnx.Module):
    """The preset's architecture from flax.nnx's stock layers; images (B, 28, 28, 1)."""

    def __init__(self, model: ModelConfig, rngs: nnx.Rngs):
        self.model, d, pixels = model, model.latent_dim, math.prod(SHAPE)
        widths = model.hidden
        if model.architecture == "conv":
            chans = (SHAPE[-1], *model.conv_channels)
            self.convs = nnx.List([nnx.Conv(a, b, (3, 3), strides=2, rngs=rngs)
                                   for a, b in zip(chans, chans[1:])])
            n = len(model.conv_channels)
            self.grid = (_down(SHAPE[0], n), _down(SHAPE[1], n), chans[-1])
            up = chans[:0:-1]
            self.deconvs = nnx.List([nnx.ConvTranspose(a, b, (3, 3), strides=2, rngs=rngs)
                                     for a, b in zip(up, (*up[1:], up[-1]))])
            self.out = nnx.Conv(up[-1], SHAPE[-1], (3, 3), rngs=rngs)
            pixels = math.prod(self.grid)
        sizes = (pixels, *widths)
        self.encoder = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:])])
        self.mean = nnx.Linear(widths[-1], d, rngs=rngs)
        self.logvar = nnx.Linear(widths[-1], d, rngs=rngs)
        back = (d, *sizes[::-1])
        self.decoder = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(back, back[1:])])

    def __call__(self, x, key):
        h = x
        for conv in getattr(self, "convs", []):
            h = nnx.relu(conv(h))
        h = h.reshape(x.shape[0], -1)
        for layer in self.encoder:
            h = nnx.relu(layer(h))
        mean, logvar = self.mean(h), self.logvar(h)
        h = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, logvar.shape)
        for k, layer in enumerate(self.decoder):
            h = layer(h)
            h = nnx.relu(h) if k + 1 < len(self.decoder) or self.model.architecture == "conv" else h
        if self.model.architecture == "mlp":
            return h.reshape(x.shape), mean, logvar
        h = h.reshape(x.shape[0], *self.grid)
        for deconv in self.deconvs:
            h = nnx.relu(deconv(h))
        return self.out(h[:, :SHAPE[0], :SHAPE[1]]), mean, logvar


def flax_train_step(graphdef, tx):
    @jax.jit
    def train_step(params, opt_state, batch, key):
        def loss_fn(params):
            logits, mean, logvar = nnx.merge(graphdef, params)(batch, key)
            bce = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, batch), axis=(1, 2, 3))
            kl = -0.5 * jnp.sum(1 + logvar - jnp.square(mean) - jnp.exp(logvar), axis=-1)
            return jnp.mean(bce + kl)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def bench_flax_loop(preset: str, train: np.ndarray, batch: int, repeats: int) -> dict:
    steps = train.shape[0] // batch
    graphdef, params = nnx.split(FlaxVAE(PRESETS[preset], nnx.Rngs(0)))
    tx = optax.adam(LEARNING_RATE)
    train_step = flax_train_step(graphdef, tx)
    box = {"params": params, "opt_state": tx.init(params), "rng": jax.random.PRNGKey(0),
           "order": np.random.default_rng(0)}

    def epoch():
        perm = box["order"].permutation(train.shape[0])
        params, opt_state, rng = box["params"], box["opt_state"], box["rng"]
        for i in range(steps):
            rng, key = jax.random.split(rng)
            x = train[perm[i * batch:(i + 1) * batch]]
            params, opt_state, _ = train_step(params, opt_state, x, key)
        box.update(params=params, opt_state=opt_state, rng=rng)
        return params, opt_state

    seconds, times = common.median_seconds(epoch, repeats)
    step = train_step.lower(params, box["opt_state"],
                            jax.ShapeDtypeStruct((batch, *SHAPE), jnp.float32),
                            jax.ShapeDtypeStruct((2,), jnp.uint32)).compile()
    return _row(layers_of(PRESETS[preset]), steps, batch, seconds, times,
                common.flops_of_compiled(step))


# --- PyTorch (the same architectures in torch.nn) ---------------------------

def torch_or_reason():
    try:
        import torch
    except Exception as err:  # ImportError, or a broken install
        return None, f"torch unavailable: {type(err).__name__}: {err}"
    return torch, None


def torch_vae(torch, model: ModelConfig):
    """The preset's architecture in torch.nn, on (B, 1, 28, 28) images (NCHW)."""
    from torch import nn

    class TorchVAE(nn.Module):
        def __init__(self):
            super().__init__()
            d, c, pixels = model.latent_dim, SHAPE[-1], math.prod(SHAPE)
            convs, deconvs = [], [nn.Unflatten(1, (c, *SHAPE[:2]))]
            if model.architecture == "conv":
                chans, n = (c, *model.conv_channels), len(model.conv_channels)
                convs = [nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans, chans[1:])]
                grid = (chans[-1], _down(SHAPE[0], n), _down(SHAPE[1], n))
                up = chans[:0:-1]
                deconvs = [nn.Unflatten(1, grid), *self._relu(
                    nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1)
                    for a, b in zip(up, (*up[1:], up[-1]))), nn.Conv2d(up[-1], c, 3, padding=1)]
                pixels = math.prod(grid)
            sizes = (pixels, *model.hidden)
            self.encoder = nn.Sequential(*self._relu(convs), nn.Flatten(), *self._relu(
                nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])))
            self.mean, self.logvar = nn.Linear(sizes[-1], d), nn.Linear(sizes[-1], d)
            back = (d, *sizes[::-1])
            dense = [nn.Linear(a, b) for a, b in zip(back, back[1:])]
            # ReLU after every dense layer but an MLP's last, whose outputs are the logits.
            last = [dense.pop()] if model.architecture == "mlp" else []
            self.decoder = nn.Sequential(*self._relu(dense), *last, *deconvs)

        @staticmethod
        def _relu(layers):
            return [m for layer in layers for m in (layer, nn.ReLU())]

        def forward(self, x):
            h = self.encoder(x)
            mu, logvar = self.mean(h), self.logvar(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return self.decoder(z), mu, logvar

    return TorchVAE()


def bench_pytorch(torch, preset: str, train: np.ndarray, batch: int, repeats: int) -> dict:
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = torch_vae(torch, PRESETS[preset])
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    images = torch.from_numpy(np.ascontiguousarray(train.transpose(0, 3, 1, 2)))
    steps = images.shape[0] // batch

    def epoch():
        perm = torch.randperm(images.shape[0])
        for i in range(steps):
            x = images[perm[i * batch:(i + 1) * batch]]
            optimizer.zero_grad()
            logits, mu, logvar = model(x)
            bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            (bce + kld).backward()
            optimizer.step()
        return None

    seconds, times = common.median_seconds(epoch, repeats)
    return _row(layers_of(PRESETS[preset]), steps, batch, seconds, times, None)


# --- report ----------------------------------------------------------------

def _row(layers, steps: int, batch: int, seconds: float, times: list[float],
         xla_step_flops) -> dict:
    examples_per_second = steps * batch / seconds
    achieved = common.step_matmul_flops(batch, layers) * steps / seconds
    return {
        "status": "ok", "steps_per_epoch": steps, "epoch_seconds": seconds, "epoch_seconds_all": times,
        "examples_per_second": examples_per_second, "achieved_flops_per_second": achieved,
        "step_flops_xla": xla_step_flops,
        "achieved_flops_per_second_xla": xla_step_flops * steps / seconds if xla_step_flops else None,
        "peak_rss_mb": common.peak_rss_mb(),
    }


def _skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def _ratio(a: dict, b: dict):
    if a.get("status") != "ok" or b.get("status") != "ok":
        return None
    return a["examples_per_second"] / b["examples_per_second"]


def add_hardware_fractions(row: dict, square: dict, model_rate: dict) -> None:
    if row.get("status") == "ok":
        achieved = row["achieved_flops_per_second"]
        row["fraction_of_square_matmul_rate"] = achieved / square["flops_per_second"]
        row["fraction_of_model_matmul_rate"] = achieved / model_rate["flops_per_second"]


def targets(preset: str, results: dict, ratios: dict, platform: str, samples: int = 1) -> list[dict]:
    """The spec's throughput targets. MLPs: vaejax's achieved FLOP/s at least the lower of
    0.88 × the 2048² product's rate and 0.95 × the rate of the step's own matmul shapes
    (the value is achieved / that floor); the conv preset: ≥ 0.5 of the 2048² rate; IWAE
    (samples > 1): ≥ 0.7 of the 2048² rate."""
    cpu, gpu = platform == "cpu", platform == "gpu"
    over_flax = ratios.get("128", {}).get("vaejax_over_flax_loop")
    over_torch = ratios.get("128", {}).get("vaejax_over_pytorch")
    rows = {b: r["vaejax"] for b, r in results.items() if r["vaejax"].get("status") == "ok"}
    if samples > 1:
        return [common.target(f"cpu_iwae_k{samples}_batch{b}_fraction_of_matmul_rate",
                              row["fraction_of_square_matmul_rate"], ">=", 0.7, cpu)
                for b, row in rows.items()]
    if preset == "conv":
        fraction = rows.get("128", {}).get("fraction_of_square_matmul_rate")
        return [common.target("cpu_conv_batch128_fraction_of_matmul_rate", fraction, ">=", 0.5, cpu),
                common.target("cpu_conv_batch128_vaejax_over_pytorch", over_torch, ">=", 1.5, cpu),
                common.target("gpu_conv_batch128_vaejax_over_flax_loop", over_flax, ">=", 10.0, gpu)]
    floors = [common.target(
        f"cpu_batch{b}_achieved_over_min_088_square_095_step_matmul_rate",
        # achieved / min(0.88 · square rate, 0.95 · step-matmul rate)
        max(row["fraction_of_square_matmul_rate"] / 0.88, row["fraction_of_model_matmul_rate"] / 0.95),
        ">=", 1.0, cpu) for b, row in rows.items()]
    return [
        common.target("cpu_batch128_vaejax_over_flax_loop", over_flax, ">=", 1.3, cpu),
        common.target("cpu_batch128_vaejax_over_pytorch", over_torch, ">=", 1.8, cpu),
        *floors,
        common.target("gpu_batch128_vaejax_over_flax_loop", over_flax, ">=", 10.0, gpu),
    ]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_flags(parser)
    parser.add_argument("--preset", choices=BENCHMARKED_PRESETS, default="pytorch",
                        help="the architecture: a vaejax preset (default pytorch, 784-400-20)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--num-train", type=int, default=None,
                        help=f"training examples (default {common.MNIST_TRAIN}, conv "
                             f"{CONV_TRAIN}; --tiny 2048, conv 256)")
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="n of the n×n matmul (default 2048; --tiny 512)")
    parser.add_argument("--implementations", nargs="+", choices=IMPLEMENTATIONS,
                        default=list(IMPLEMENTATIONS))
    parser.add_argument("-k", "--num-samples", type=int, default=1,
                        help="k > 1: vaejax's IWAE objective with k samples (vaejax only)")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"-k must be at least 1; got {args.num_samples}")
    if args.num_samples > 1 and args.implementations != ["vaejax"]:
        parser.error("-k > 1 trains vaejax's iwae objective, which the baselines do not "
                     "implement: add --implementations vaejax")
    conv = args.preset == "conv"
    args.num_train = args.num_train or (
        (256 if conv else 2048) if args.tiny else (CONV_TRAIN if conv else common.MNIST_TRAIN))
    common.apply_common_defaults(args, repeats=5)
    args.matmul_size = args.matmul_size or (512 if args.tiny else 2048)
    if max(args.batch_sizes) > args.num_train:
        parser.error(f"--batch-sizes {max(args.batch_sizes)} exceeds --num-train {args.num_train}")
    return args


def run_jax_implementations(args, train: np.ndarray, batch: int) -> dict:
    benches = {"vaejax": functools.partial(bench_vaejax, samples=args.num_samples),
               "flax_loop": bench_flax_loop}
    return {name: bench(args.preset, train, batch, args.repeats) if name in args.implementations
            else _skipped("not requested") for name, bench in benches.items()}


def run_pytorch(args, train: np.ndarray) -> tuple[dict, str | None]:
    """PyTorch rows per batch size, and torch's version (None when it cannot run)."""
    if "pytorch" not in args.implementations:
        return {batch: _skipped("not requested") for batch in args.batch_sizes}, None
    torch, reason = torch_or_reason()
    if torch is None:
        return {batch: _skipped(reason) for batch in args.batch_sizes}, None
    return {batch: bench_pytorch(torch, args.preset, train, batch, args.repeats)
            for batch in args.batch_sizes}, \
        torch.__version__


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = common.machine_info()
    train, _, data_info = common.mnist_shaped(args.data, args.num_train, 1)
    # Matmuls take milliseconds, so they get more repeats than the epochs do.
    matmul_repeats = 5 * args.repeats
    square = common.square_matmul_rate(args.matmul_size, matmul_repeats)
    layers = layers_of(PRESETS[args.preset], args.num_samples)
    model_rates = {str(b): common.layer_matmul_rate(b, layers, matmul_repeats) for b in args.batch_sizes}
    # JAX first, torch imported after: its idle OpenMP workers must not compete with XLA's threads.
    results = {str(b): run_jax_implementations(args, train, b) for b in args.batch_sizes}
    torch_rows, torch_version = run_pytorch(args, train)
    flops, ratios = {}, {}
    for batch in args.batch_sizes:
        key = str(batch)
        rows = results[key]
        rows["pytorch"] = torch_rows[batch]
        for row in rows.values():
            add_hardware_fractions(row, square, model_rates[key])
        flops[key] = {"analytic": analytic_step_flops(batch, layers),
                      "matmul_work": common.step_matmul_flops(batch, layers),
                      "xla_vaejax": rows["vaejax"].get("step_flops_xla"),
                      "xla_flax_loop": rows["flax_loop"].get("step_flops_xla")}
        ratios[key] = {"vaejax_over_flax_loop": _ratio(rows["vaejax"], rows["flax_loop"]),
                       "vaejax_over_pytorch": _ratio(rows["vaejax"], rows["pytorch"])}
    result = {
        "benchmark": "throughput", "tiny": args.tiny, "machine": machine, "torch_version": torch_version,
        **data_info, "num_train": args.num_train, "repeats": args.repeats,
        "preset": args.preset, "layers": [list(layer) for layer in layers],
        "model": f"{MODELS[args.preset]}, ReLU, Bernoulli decoder, " + (
            f"IWAE k = {args.num_samples}" if args.num_samples > 1 else "analytic KL, 1 sample")
            + ", Adam 1e-3",
        "num_samples": args.num_samples,
        "batch_sizes": args.batch_sizes, "matmul_repeats": matmul_repeats,
        "matmul": {"square": square, "model_shapes": model_rates},
        "step_flops": flops, "results": results, "ratios": ratios,
        "targets": targets(args.preset, results, ratios, machine["platform"], args.num_samples),
        "peak_rss_mb": common.peak_rss_mb(),
    }
    report(result)
    return result


def _millions(value):
    return None if value is None else value / 1e6


def report(result: dict) -> None:
    m = result["machine"]
    print(f"{m['cpu_model']} × {m['cpu_count']} CPUs, {m['platform']} ({m['device_kind']}), "
          f"jax {m['jax_version']}; data: {result['data']}, {result['num_train']} examples, "
          f"median of {result['repeats']} epochs")
    sq = result["matmul"]["square"]
    rows = [[f"{sq['n']}×{sq['n']} · {sq['n']}×{sq['n']}", sq["seconds"], sq["flops_per_second"] / 1e9]]
    for key, rate in result["matmul"]["model_shapes"].items():
        rows.append([f"step matmuls, B={key}", rate["seconds"], rate["flops_per_second"] / 1e9])
    common.print_table("Matmul rate", ["product", "seconds", "GFLOP/s"], rows)
    rows = []
    for key, impls in result["results"].items():
        for name, row in impls.items():
            if row["status"] != "ok":
                rows.append([key, name, row["status"], None, None, None, None, None])
                continue
            rows.append([key, name, row["examples_per_second"], row["epoch_seconds"],
                         row["achieved_flops_per_second"] / 1e9, row["fraction_of_model_matmul_rate"],
                         row["fraction_of_square_matmul_rate"], row["peak_rss_mb"]])
    common.print_table("Training throughput", ["batch", "implementation", "examples/s", "epoch s",
                                               "GFLOP/s", "of step-matmul rate", "of n×n rate",
                                               "peak RSS MB"], rows)
    reasons = {f"{name}: {row['reason']}" for impls in result["results"].values()
               for name, row in impls.items() if row["status"] != "ok"}
    for reason in sorted(reasons):
        print(f"skipped {reason}")
    names = ("analytic", "matmul_work", "xla_vaejax", "xla_flax_loop")
    rows = [[k, *(_millions(v[name]) for name in names)] for k, v in result["step_flops"].items()]
    common.print_table("FLOPs of one step (millions)",
                       ["batch", "3·2·B·Σ in·out", "matmul work", "XLA vaejax", "XLA flax loop"], rows)
    rows = [[k, v["vaejax_over_flax_loop"], v["vaejax_over_pytorch"]] for k, v in result["ratios"].items()]
    common.print_table("Speed ratios", ["batch", "vaejax / flax loop", "vaejax / pytorch"], rows)
    rows = [[t["name"], t["requirement"], t["value"], t["met"] if t["evaluated"] else "n/a"]
            for t in result["targets"]]
    common.print_table("Targets", ["target", "requirement", "value", "met"], rows)


if __name__ == "__main__":
    common.emit(main(sys.argv[1:]))
