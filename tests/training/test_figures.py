"""Figures: many models wrap, curves show train and test, traversals follow the latents' use."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

import vaejax
from vaejax import input_pipeline, plots
from vaejax.models import VAE
from vaejax.trainer import Trainer

from .conftest import SMALL


@pytest.fixture
def saved(monkeypatch):
    """The figures the plots module saves, by file name (written to disk as well)."""
    figures, save = {}, plots.save

    def keep(fig, path):
        figures[path.name] = fig
        save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    return figures


def test_run_figures_wrap_models_and_curves_show_train_and_test(tmp_path, saved):
    """Six models: grids of two rows of at most four; the ELBO panel has a dashed train curve
    beside each test curve; the grids come back for TensorBoard."""
    config = dataclasses.replace(SMALL, seeds=(0, 1), betas=(0.5, 1.0, 2.0))
    trainer = Trainer(config, (8, 8, 1), 1497)
    records = [{"epoch": e, "model": m, "beta": b, "test_elbo": -50.0 + e + m, "rate": 1.0,
                "distortion": 49.0, "train_elbo": -52.0 + e + m}
               for e in (1, 2) for m, (_, b) in enumerate(trainer.replicas())]
    test = input_pipeline.load("digits").test.images
    grids = plots.write_run_figures(tmp_path, trainer, trainer.init(), test, records)
    assert [len(grids[name]) for name in ("samples", "reconstructions")] == [6, 6]
    assert grids["samples"][0].shape == (8 * 9 - 1, 8 * 9 - 1, 1)
    for name in ("samples.png", "reconstructions.png"):
        shown = [ax for ax in saved[name].axes if ax.images]
        assert len(shown) == 6 and len(saved[name].axes) == 8  # 2 × 4, two left blank
    elbo_panel = saved["curves.png"].axes[0]
    dashed = [line for line in elbo_panel.lines if line.get_linestyle() == "--"]
    assert len(elbo_panel.lines) == 12 and len(dashed) == 6
    np.testing.assert_array_equal(dashed[2].get_ydata(), [-49.0, -48.0])  # model 2's train


@pytest.mark.parametrize("posterior,in_nats", [("diagonal", True), ("categorical", True),
                                               ("full", False)])
def test_latent_activity(posterior, in_nats):
    """The mean per-latent KL where q and p factorise (it sums to the rate), else Var_x E_q[z]."""
    config = dataclasses.replace(SMALL.model, posterior=posterior, latent_dim=5,
                                 num_categories=3)
    model = VAE((8, 8, 1), config, rngs=nnx.Rngs(0))
    test = input_pipeline.load("digits").test.images[:100]
    activity, nats = plots.latent_activity(model, test, batch_size=64)
    assert nats == in_nats and activity.shape == (5,)
    q = model.encode(test)
    if in_nats:
        rate = float(np.mean(vaejax.kl_divergence(q, model.prior)))
        assert activity.sum() == pytest.approx(rate, rel=1e-5)
    else:
        np.testing.assert_allclose(activity, np.var(np.asarray(q.mean), axis=0), rtol=1e-5)


def test_traversals_follow_the_most_active_latents(tmp_path, saved):
    """Rows vary the latents in decreasing order of their KL, each labelled with it."""
    config = dataclasses.replace(SMALL, model=dataclasses.replace(SMALL.model, latent_dim=12))
    trainer = Trainer(config, (8, 8, 1), 1497)
    state = trainer.init()
    test = input_pipeline.load("digits").test.images
    plots.write_sample_figures(tmp_path, trainer, state, test)
    activity, _ = plots.latent_activity(trainer.models(state)[0], test)
    order = np.argsort(-activity)[:10]
    labels = [t.get_text() for t in saved["traversals.png"].axes[0].get_yticklabels()]
    assert labels == [f"z{j}: {activity[j]:.2f} nats" for j in order]
    codes = np.asarray(plots._traversal_codes(np.zeros(12), 9, order))
    for row, j in enumerate(order):  # row r sweeps latent order[r] alone
        np.testing.assert_array_equal(codes[row, :, j], np.linspace(-3, 3, 9, dtype=np.float32))
        assert not np.delete(codes[row], j, axis=1).any()
