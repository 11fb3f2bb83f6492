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

import vaejax
from vaejax import evaluation, objectives


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


def _model_panels(k: int, max_cols: int = 4):
    """(figure, axes) for one panel per model, at most max_cols to a row; spare axes hidden."""
    cols = min(k, max_cols)
    rows = -(-k // cols)
    fig, axes = subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows))
    for ax in axes.flat[k:]:
        ax.set_axis_off()
    return fig, axes.ravel()


def _samples(model, key, num_images: int):
    """E[x|z], z ~ p(z); of a conditional model, 8 per class, one row per class."""
    if hasattr(model, "given"):
        model = model.given(jnp.repeat(jnp.arange(model.num_classes), 8))
        num_images = model.y.shape[0]
    return model.mean_image(model.prior.sample(key, num_images))


def write_run_figures(workdir, trainer, state, test: np.ndarray, records: list[dict],
                      num_images: int = 64, test_labels=None) -> dict[str, list[np.ndarray]]:
    """Writes samples.png (for models with a prior; one row per class for a conditional
    model), reconstructions.png and curves.png into workdir.

    Returns:
      the image grids by name ("samples", "reconstructions"), one (H, W, C) array per model.
    """
    workdir = Path(workdir)
    x = jnp.asarray(test[:num_images // 2])
    y = None if test_labels is None else jnp.asarray(test_labels[:num_images // 2])

    def pictures(variables):
        model = trainer.model(*variables)
        given = objectives.conditioned(model, y)
        out = {"reconstructions": given.mean_image(given.encode(x).mode())}
        if hasattr(model, "prior") or hasattr(model, "given"):
            out["samples"] = _samples(model, jax.random.PRNGKey(0), num_images)
        return out

    images = jax.device_get(jax.jit(trainer.per_model(pictures, (0,)))((state.params, state.rest)))
    labels = _model_labels(trainer)
    # data | reconstruction, side by side
    grids = {"reconstructions": [tile(np.concatenate([np.asarray(x), r], axis=2), 4)
                                 for r in images["reconstructions"]]}
    if "samples" in images:
        grids["samples"] = [tile(samples, 8) for samples in images["samples"]]
    by_class = ", row k: y = k" if trainer.conditional else ""
    for name, title in (("samples", "samples z ~ p(z)" + by_class),
                        ("reconstructions", "data | reconstruction")):
        if name not in grids:
            continue
        fig, axes = _model_panels(len(labels))
        for ax, grid, label in zip(axes, grids[name], labels):
            _show(ax, grid, f"{title}, {label}")
        save(fig, workdir / f"{name}.png")
    write_curves(workdir / "curves.png", records, labels)
    return grids


_TITLES = {"test_elbo": "ELBO (nats)", "rate": "rate KL (nats)",
           "distortion": "distortion −E log p(x|z) (nats)", "squared_error": "squared error"}


def write_curves(path: Path, records: list[dict], labels: list[str]) -> None:
    """Each test metric over epochs (test —, train - - where the objective reports it);
    the rate–distortion curve for several β."""
    from vaejax.train import test_keys
    keys = test_keys(records[0])
    betas = sorted({r["beta"] for r in records})
    rate_distortion = len(betas) > 1 and {"rate", "distortion"} <= set(keys)
    panels = len(keys) + rate_distortion
    fig, axes = subplots(1, panels, figsize=(4.2 * panels, 3.4))
    axes = axes[0]
    trains = {key: "train_" + key.removeprefix("test_") for key in keys}
    for i, label in enumerate(labels):
        mine = [r for r in records if r["model"] == i]
        epochs = [r["epoch"] for r in mine]
        for ax, key in zip(axes, keys):
            line, = ax.plot(epochs, [r[key] for r in mine], label=label)
            if trains[key] in mine[0]:
                ax.plot(epochs, [r[trains[key]] for r in mine], "--", color=line.get_color())
    for ax, key in zip(axes, keys):
        ax.set_xlabel("epoch")
        both = ": test —, train - -" if trains[key] in records[0] else " (test)"
        ax.set_title(_TITLES.get(key, key.replace("_", " ")) + both, fontsize=10)
    if len(labels) <= 10:
        axes[0].legend(fontsize=7)
    if rate_distortion:
        last_epoch = max(r["epoch"] for r in records)
        final = sorted((r for r in records if r["epoch"] == last_epoch), key=lambda r: r["beta"])
        axes[-1].plot([r["rate"] for r in final], [r["distortion"] for r in final], "o-")
        for r in final:
            axes[-1].annotate(f"β={r['beta']:g}", (r["rate"], r["distortion"]), fontsize=7)
        axes[-1].set_xlabel("rate (nats)")
        axes[-1].set_ylabel("distortion (nats)")
        axes[-1].set_title("rate–distortion (test)", fontsize=10)
    fig.set_layout_engine("tight")
    save(fig, path)


def _unit_kl(q, prior):
    """KL(q(z_j|x) ‖ p(z_j)) per image and latent variable j where both factorise over j."""
    if isinstance(q, vaejax.DiagonalGaussian) and isinstance(prior, vaejax.StandardNormal):
        return vaejax.kl_standard_normal(q.mean[..., None], q.log_var[..., None])
    if isinstance(q, vaejax.Categorical) and isinstance(prior, vaejax.UniformCategorical):
        return vaejax.kl_categorical(q.logits, jnp.zeros_like(q.logits))
    return None


def latent_activity(model, images: np.ndarray, batch_size: int = 1000):
    """How much the model uses each latent variable on the images: (values (d,), in_nats).

    Where q(z|x) and p(z) factorise over the variables (a diagonal Gaussian and N(0, I), a
    categorical and the uniform prior), the mean over images of KL(q(z_j|x) ‖ p(z_j)): the
    variable's share of the rate, in nats. Otherwise (a full covariance, a learned prior),
    Var_x E_q[z_j], the active-units statistic.
    """
    posteriors = [model.encode(jnp.asarray(images[i:i + batch_size]))
                  for i in range(0, images.shape[0], batch_size)]
    kls = [_unit_kl(q, model.prior) for q in posteriors]
    if kls[0] is not None:
        return np.concatenate(kls).mean(axis=0), True
    codes = np.concatenate([q.mean for q in posteriors])
    return evaluation.unit_variances(codes[None])[0], False


def _traversal_codes(base, steps: int, units):
    """Codes varying one latent variable of `units` at a time around `base`:
    (len(units), steps, *code).

    A vector code (d,) sweeps the entry over [−3, 3]; a one-hot code (d, K)
    sets the variable to each of its K categories.
    """
    if base.ndim == 2:
        eye = jnp.eye(base.shape[1])
        return jnp.stack([jnp.stack([base.at[j].set(row) for row in eye]) for j in units])
    values = jnp.linspace(-3.0, 3.0, steps)
    return jnp.stack([jnp.tile(base, (steps, 1)).at[:, j].set(values) for j in units])


def _label_rows(ax, labels, height: int) -> None:
    """Writes a label left of each row of a mosaic of images `height` pixels tall."""
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([r * (height + 1) + (height - 1) / 2 for r in range(len(labels))], labels,
                  fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)


def write_sample_figures(outdir, trainer, state, test: np.ndarray, model_index: int = 0,
                         seed: int = 0, steps: int = 9, num_units: int = 10) -> list[Path]:
    """samples.png, interpolations.png and traversals.png of one model; returns the paths.

    The traversals vary the `num_units` most active latent variables (`latent_activity` on
    the test images), most active first, each row labelled with its activity.
    """
    outdir = Path(outdir)
    model = trainer.models(state)[model_index]
    key = jax.random.PRNGKey(seed)
    samples = model.mean_image(model.prior.sample(key, 64))
    codes = model.encode(jnp.asarray(test[:16])).mode()
    t = jnp.linspace(0.0, 1.0, steps).reshape(-1, *([1] * (codes.ndim - 1)))
    interpolations = model.mean_image((1 - t) * codes[0:8:2][:, None] + t * codes[1:8:2][:, None])
    activity, in_nats = latent_activity(model, test)
    units = np.argsort(-activity, kind="stable")[:num_units]
    traversals = model.mean_image(_traversal_codes(codes[0], steps, units))
    label = _model_labels(trainer)[model_index]
    unit_labels = [f"z{j}: {activity[j]:.2f} nats" if in_nats else
                   f"z{j}: Var E[z] {activity[j]:.3f}" for j in units]
    paths = []
    for name, images, cols, title, row_labels in (
            ("samples.png", np.asarray(samples), 8, f"samples z ~ p(z), {label}", None),
            ("interpolations.png", np.asarray(interpolations).reshape(-1, *test.shape[1:]), steps,
             "interpolations between posterior codes of test images", None),
            ("traversals.png", np.asarray(traversals).reshape(-1, *test.shape[1:]),
             traversals.shape[1], "latent traversals, most active latent first", unit_labels)):
        fig, ax = subplots(figsize=(0.45 * cols + 1, 0.45 * (-(-images.shape[0] // cols)) + 0.6))
        _show(ax[0, 0], tile(images, cols), title)
        if row_labels:
            _label_rows(ax[0, 0], row_labels, test.shape[1])
        save(fig, outdir / name)
        paths.append(outdir / name)
    return paths
