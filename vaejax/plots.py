"""Figures of a run: sample grids, reconstructions, training curves, the R–D curve.

matplotlib is imported here only, so `import vaejax` stays light. Figures are
plain `matplotlib.figure.Figure` objects, never pyplot's: drawing them selects
no backend and leaves a notebook's inline backend alone.
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure


def tile(images: np.ndarray, cols: int) -> np.ndarray:
    """(N, H, W, C) images → one (rows·H, cols·W, C) mosaic with 1-pixel gaps."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c), np.float32)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = image
    return grid


def _show(ax, mosaic, title=None):
    ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def subplots(rows: int = 1, cols: int = 1, **kwargs):
    """(figure, axes) like pyplot.subplots, without pyplot's global state."""
    fig = Figure(**kwargs)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save(fig, path: Path) -> None:
    """Saves a figure atomically."""
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def _model_labels(trainer):
    return [f"seed {s}, β={b:g}" for s, b in trainer.replicas()]


def write_run_figures(workdir, trainer, state, test: np.ndarray, records: list[dict],
                      num_images: int = 64) -> None:
    """Writes samples.png, reconstructions.png and curves.png into workdir."""
    workdir = Path(workdir)
    x = jnp.asarray(test[:num_images // 2])

    def pictures(variables):
        model = trainer.model(*variables)
        samples = model.mean_image(model.prior.sample(jax.random.PRNGKey(0), num_images))
        return samples, model.mean_image(model.encode(x).mode())

    samples, recons = jax.device_get(jax.jit(trainer.per_model(pictures, (0,)))(
        (state.params, state.rest)))
    labels = _model_labels(trainer)
    k = len(labels)
    fig, axes = subplots(1, k, figsize=(3.2 * k, 3.4))
    for ax, images, label in zip(axes[0], samples, labels):
        _show(ax, tile(images, 8), f"samples z ~ p(z), {label}")
    save(fig, workdir / "samples.png")

    fig, axes = subplots(1, k, figsize=(3.2 * k, 3.4))
    for ax, images, label in zip(axes[0], recons, labels):
        pairs = np.concatenate([np.asarray(x), images], axis=2)  # data | reconstruction
        _show(ax, tile(pairs, 4), f"data | reconstruction, {label}")
    save(fig, workdir / "reconstructions.png")
    write_curves(workdir / "curves.png", records, labels)


def write_curves(path: Path, records: list[dict], labels: list[str]) -> None:
    """ELBO, rate and distortion over epochs; the rate–distortion curve for several β."""
    betas = sorted({r["beta"] for r in records})
    panels = 4 if len(betas) > 1 else 3
    fig, axes = subplots(1, panels, figsize=(4.2 * panels, 3.4))
    axes = axes[0]
    for i, label in enumerate(labels):
        mine = [r for r in records if r["model"] == i]
        epochs = [r["epoch"] for r in mine]
        axes[0].plot(epochs, [r["test_elbo"] for r in mine], label=label)
        axes[1].plot(epochs, [r["rate"] for r in mine])
        axes[2].plot(epochs, [r["distortion"] for r in mine])
    for ax, name in zip(axes, ("test ELBO (nats)", "rate KL (nats)", "distortion −E log p(x|z)")):
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
    if len(labels) <= 10:
        axes[0].legend(fontsize=7)
    if panels == 4:
        last_epoch = max(r["epoch"] for r in records)
        final = sorted((r for r in records if r["epoch"] == last_epoch), key=lambda r: r["beta"])
        axes[3].plot([r["rate"] for r in final], [r["distortion"] for r in final], "o-")
        for r in final:
            axes[3].annotate(f"β={r['beta']:g}", (r["rate"], r["distortion"]), fontsize=7)
        axes[3].set_xlabel("rate (nats)")
        axes[3].set_ylabel("distortion (nats)")
        axes[3].set_title("rate–distortion (test)", fontsize=10)
    fig.set_layout_engine("tight")
    save(fig, path)


def _traversal_codes(base, steps: int):
    """Codes varying one latent at a time around `base`: (variables, steps, *code).

    A vector code (d,) sweeps each of its first 10 entries over [−3, 3]; a
    one-hot code (d, K) sets each variable to each of its K categories.
    """
    if base.ndim == 2:
        d, k = base.shape
        eye = jnp.eye(k)
        return jnp.stack([jnp.stack([base.at[j].set(eye[c]) for c in range(k)]) for j in range(d)])
    values = jnp.linspace(-3.0, 3.0, steps)
    dims = min(base.shape[-1], 10)
    return jnp.stack([jnp.tile(base, (steps, 1)).at[:, j].set(values) for j in range(dims)])


def write_sample_figures(outdir, trainer, state, test: np.ndarray, model_index: int = 0,
                         seed: int = 0, steps: int = 9) -> list[Path]:
    """samples.png, interpolations.png and traversals.png of one model; returns the paths."""
    outdir = Path(outdir)
    model = trainer.models(state)[model_index]
    key = jax.random.PRNGKey(seed)
    samples = model.mean_image(model.prior.sample(key, 64))
    codes = model.encode(jnp.asarray(test[:16])).mode()
    t = jnp.linspace(0.0, 1.0, steps).reshape(-1, *([1] * (codes.ndim - 1)))
    interpolations = model.mean_image((1 - t) * codes[0:8:2][:, None] + t * codes[1:8:2][:, None])
    traversals = model.mean_image(_traversal_codes(codes[0], steps))
    label = _model_labels(trainer)[model_index]
    paths = []
    for name, images, cols, title in (
            ("samples.png", np.asarray(samples), 8, f"samples z ~ p(z), {label}"),
            ("interpolations.png", np.asarray(interpolations).reshape(-1, *test.shape[1:]), steps,
             "interpolations between posterior codes of test images"),
            ("traversals.png", np.asarray(traversals).reshape(-1, *test.shape[1:]),
             traversals.shape[1], "latent traversals: one latent varied per row")):
        fig, ax = subplots(figsize=(0.45 * cols + 1, 0.45 * (-(-images.shape[0] // cols)) + 0.6))
        _show(ax[0, 0], tile(images, cols), title)
        save(fig, outdir / name)
        paths.append(outdir / name)
    return paths
