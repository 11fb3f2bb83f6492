"""The autoencoder family: each objective's loss by hand, training through the compiled
trainer, its evaluation and figures, and a linear autoencoder recovering PCA's subspace."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

import vaejax
from vaejax import objectives
from vaejax.cli import main
from vaejax.config import ModelConfig, TrainConfig
from vaejax.models import Autoencoder
from vaejax.objectives import Batch
from vaejax.train import load_run, prepare_data, read_summary, train_and_evaluate

X = jnp.asarray(np.random.default_rng(0).binomial(1, 0.4, (6, 4, 4, 1)), jnp.float32)
HYPER = {"beta": jnp.float32(0.3)}


def _loss(objective, model, key=jax.random.key(1)):
    return objective(model, Batch(X), key, HYPER)


@pytest.fixture
def model():
    return Autoencoder((4, 4, 1), (8,), 3, "tanh", rngs=nnx.Rngs(0))


def test_plain_loss_is_the_mean_reconstruction_nll(model):
    loss, metrics = _loss(objectives.autoencoder(), model)
    logits = model.to_pixels(model.decoder(model.code(X)))
    nll = -vaejax.bernoulli_log_likelihood(logits, X.reshape(6, -1))
    np.testing.assert_allclose(loss, jnp.mean(nll), rtol=1e-6)
    np.testing.assert_allclose(metrics["distortion"], loss, rtol=1e-6)


def test_sparse_loss_adds_beta_times_the_l1_norm_of_the_code(model):
    plain, _ = _loss(objectives.autoencoder(), model)
    loss, metrics = _loss(objectives.autoencoder("sparse"), model)
    l1 = jnp.mean(jnp.sum(jnp.abs(model.code(X)), axis=-1))
    np.testing.assert_allclose(metrics["penalty"], l1, rtol=1e-6)
    np.testing.assert_allclose(loss, plain + 0.3 * l1, rtol=1e-6)


def test_contractive_penalty_of_a_linear_encoder_is_its_weight_norm():
    """h = Wx + b has ∂h/∂x = W for every x: the penalty is ‖W‖²_F exactly."""
    linear = Autoencoder((4, 4, 1), (), 3, rngs=nnx.Rngs(0))
    loss, metrics = _loss(objectives.autoencoder("contractive"), linear)
    weight_norm = jnp.sum(linear.to_code.kernel[...]**2)
    np.testing.assert_allclose(metrics["penalty"], weight_norm, rtol=1e-5)
    np.testing.assert_allclose(loss, metrics["distortion"] + 0.3 * weight_norm, rtol=1e-5)


def test_contractive_penalty_gradient_reaches_the_encoder(model):
    def penalty(model):
        return _loss(objectives.autoencoder("contractive"), model)[1]["penalty"]
    grads = nnx.grad(penalty)(model)
    assert float(jnp.abs(grads.encoder.layers[0].kernel[...]).sum()) > 0


@pytest.mark.parametrize("noise,level", [("masking", 0.5), ("gaussian", 0.3),
                                         ("salt_and_pepper", 0.2)])
def test_denoising_reconstructs_the_clean_image_from_the_corrupted_one(model, noise, level):
    key = jax.random.key(7)
    loss, _ = _loss(objectives.autoencoder(corruption=(noise, level)), model, key)
    noisy = vaejax.corrupt(key, X, level, noise)
    expected = -jnp.mean(model.log_likelihood(model.code(noisy), X))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert abs(float(loss) - float(_loss(objectives.autoencoder(), model)[0])) > 1e-3


def test_reconstruction_evaluation_by_hand(model):
    out = objectives.reconstruction_evaluation(model, Batch(X), jax.random.key(0))
    mean = jax.nn.sigmoid(model.decode(model.code(X)))
    np.testing.assert_allclose(out["squared_error"],
                               jnp.sum((X.reshape(6, -1) - mean)**2, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(out["distortion"], -model.log_likelihood(model.code(X), X),
                               rtol=1e-6)


@pytest.mark.parametrize("objective,extra", [  # "ae" trains in the evaluate test below
    ("sparse-ae", ["--beta", "0.01,0.1"]), ("contractive-ae", ["--beta", "0.01"]),
    ("denoising-ae", ["--corruption", "masking:0.25"])])
def test_each_objective_trains_through_the_cli(tmp_path, capsys, objective, extra):
    """Registered family and objective: test distortion falls, the summary holds the
    reconstruction metrics (no ELBO), figures hold reconstructions but no samples."""
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), "--model", "autoencoder", "--objective",
                 objective, "--hidden", "32", "--latent-dim", "6", "--epochs", "4",
                 "--no-progress", *extra]) == 0
    assert "squared error" in capsys.readouterr().out
    summary = read_summary(run)
    assert "test_elbo" not in summary
    records = load_run(run).metrics
    for model in range(summary["num_models"]):
        mine = [r for r in records if r["model"] == model]
        assert mine[-1]["distortion"] < mine[0]["distortion"] - 1.0
        assert 0 < mine[-1]["squared_error"] < 64
    assert (run / "reconstructions.png").exists() and not (run / "samples.png").exists()


def test_evaluate_reports_the_probe_and_sample_refuses(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--workdir", run, "--model", "autoencoder", "--objective", "ae",
                 "--hidden", "32", "--latent-dim", "6", "--epochs", "2", "--no-progress"]) == 0
    assert main(["evaluate", "--workdir", run, "--no-progress"]) == 0
    summary = read_summary(run)
    assert 0.3 < summary["linear_probe_accuracy"] <= 1
    assert "test_log_likelihood" not in summary and "active_units" not in summary
    capsys.readouterr()
    assert main(["sample", "--workdir", run]) == 2
    assert "has no prior p(z) to sample from" in capsys.readouterr().err
    assert main(["evaluate", "--workdir", run, "-k", "50", "--no-progress"]) == 2
    assert "no importance sampling" in capsys.readouterr().err


def test_a_user_model_fn_brings_its_evaluation(tmp_path):
    config = TrainConfig(objective="ae", epochs=1, checkpoint_every=1)
    summary = train_and_evaluate(
        config, tmp_path / "run", model_fn=lambda shape, rngs: Autoencoder(shape, (16,), 4,
                                                                           rngs=rngs),
        evaluation=objectives.reconstruction_evaluation, progress=False)
    assert {"distortion", "squared_error"} <= set(summary) and "test_elbo" not in summary


def test_linear_autoencoder_spans_the_principal_subspace(tmp_path):
    """Baldi & Hornik: a linear AE trained on squared error has its decoder span the top-d
    principal subspace; here within 1° of scikit-learn's PCA on the digits training split."""
    from sklearn.decomposition import PCA
    d = 4
    config = TrainConfig(model=ModelConfig(family="autoencoder", hidden=(), latent_dim=d,
                                           likelihood="gaussian", gaussian_scale=1.0),
                         objective="ae", binarization="dequantize", epochs=300,
                         learning_rate=1e-2, lr_schedule="cosine", checkpoint_every=300)
    train_and_evaluate(config, tmp_path / "run", progress=False)
    decoder = np.asarray(load_run(tmp_path / "run").model.to_pixels.kernel[...])  # (d, pixels)
    train = prepare_data(config).train
    pca = PCA(d).fit(train.reshape(len(train), -1))
    angles = np.degrees(scipy.linalg.subspace_angles(decoder.T, pca.components_.T))
    assert angles.max() < 1.0, angles


def test_a_model_fn_of_the_family_gets_the_family_evaluation(tmp_path):
    """Training with model_fn under the registered family name records what load_run and
    evaluate rebuild: the family's reconstruction values, not an ELBO."""
    from vaejax import models
    config = TrainConfig(model=ModelConfig(family="autoencoder", hidden=(16,), latent_dim=4),
                         objective="ae", epochs=1, checkpoint_every=1)
    summary = train_and_evaluate(config, tmp_path / "run", model_fn=models.model_fn(config.model),
                                 progress=False)
    assert "squared_error" in summary
    assert main(["evaluate", "--workdir", str(tmp_path / "run"), "--no-progress"]) == 0


def test_resume_with_another_evaluation_is_refused(tmp_path):
    from vaejax.train import RunError
    config = TrainConfig(objective="ae", epochs=1, checkpoint_every=1)
    model_fn = lambda shape, rngs: Autoencoder(shape, (16,), 4, rngs=rngs)  # noqa: E731
    train_and_evaluate(config, tmp_path / "run", model_fn=model_fn,
                       evaluation=objectives.reconstruction_evaluation, progress=False)

    def other(model, batch, key):
        return {"distortion": objectives.reconstruction_evaluation(model, batch, key)["distortion"]}

    with pytest.raises(RunError, match="pass the evaluation the run was trained with"):
        train_and_evaluate(dataclasses.replace(config, epochs=2), tmp_path / "run",
                           model_fn=model_fn, evaluation=other, resume=True, progress=False)
