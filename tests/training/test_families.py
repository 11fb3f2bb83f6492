"""The registered families beyond the stock VAE train, evaluate and load through the CLI."""

import json

import numpy as np
import pytest

from vaejax import models
from vaejax.cli import main
from vaejax.train import load_run

QUICK = ["--epochs", "2", "--checkpoint-every", "1", "--hidden", "32", "--latent-dim", "3",
         "--no-progress"]


@pytest.mark.parametrize("family,kind,extra", [
    ("vampprior", models.VampVAE, []),
    ("vae-planar", models.FlowVAE, []),
    ("vae-iaf", models.FlowVAE, ["--objective", "iwae", "-k", "3"]),
    ("two-layer", models.TwoLayerVAE, ["--objective", "iwae-dreg", "-k", "3"]),
    ("two-layer-vampprior", models.TwoLayerVAE, []),
])
def test_family_trains_evaluates_and_loads(tmp_path, family, kind, extra):
    workdir = tmp_path / family
    assert main(["train", "--workdir", str(workdir), "--model", family, *QUICK, *extra]) == 0
    assert main(["evaluate", "--workdir", str(workdir), "-k", "20", "--no-progress"]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert np.isfinite(summary["test_log_likelihood"]) and np.isfinite(summary["test_elbo"])
    # K draws bound log p(x) more tightly than one: the estimate sits above the ELBO.
    assert summary["test_log_likelihood"] > summary["test_elbo"] - 1.0
    run = load_run(workdir)
    assert isinstance(run.model, kind) and run.epoch == 2


def test_the_vampprior_pseudo_inputs_train(tmp_path):
    workdir = tmp_path / "run"
    assert main(["train", "--workdir", str(workdir), "--model", "vampprior", *QUICK,
                 "--epochs", "1"]) == 0
    run = load_run(workdir)
    initial = run.trainer.models(run.trainer.init())[0]  # the same seed's initial model
    moved = np.abs(np.asarray(run.model.pseudo_inputs[...]) - np.asarray(initial.pseudo_inputs[...]))
    assert moved.max() > 1e-4


@pytest.mark.parametrize("family,flag", [("vampprior", ["--likelihood", "gaussian"]),
                                         ("two-layer", ["--activation", "tanh"])])
def test_a_setting_the_family_does_not_use_is_refused(tmp_path, capsys, family, flag):
    assert main(["train", "--workdir", str(tmp_path / "run"), "--model", family, *flag]) == 2
    assert f"the {family} family builds its own architecture: it does not use" in (
        capsys.readouterr().err)
    assert not (tmp_path / "run").exists()
