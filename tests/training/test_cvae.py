"""The conditional VAE through the stock objectives: labels reach the encoder and decoder,
its samples belong to the class asked for, and log p(x|y) is estimated given the labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vaejax
from vaejax import evaluation, objectives
from vaejax.cli import main
from vaejax.models import ConditionalVAE
from vaejax.objectives import Batch
from vaejax.train import load_run, prepare_data, read_summary

FLAGS = ["--model", "cvae", "--hidden", "64", "--latent-dim", "4", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cvae") / "run"
    assert main(["train", "--workdir", str(workdir), *FLAGS, "--epochs", "40",
                 "--checkpoint-every", "40", "--lr-schedule", "cosine"]) == 0
    return workdir


def test_given_labels_broadcast_over_sample_axes():
    model = ConditionalVAE((4, 4, 1), (8,), 3, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).binomial(1, 0.5, (5, 4, 4, 1)), jnp.float32)
    y = jnp.array([0, 1, 2, 3, 9])
    z = jax.random.normal(jax.random.key(0), (7, 5, 3))
    given = model.given(y)
    together = given.log_likelihood(z, x)
    one_by_one = jnp.stack([model.log_likelihood(z[s, i], x[i], y[i]) for s in range(7)
                            for i in range(5)]).reshape(7, 5)
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5)
    other = model.given((y + 1) % 10).log_likelihood(z, x)
    assert not np.allclose(together, other)  # the decoder reads y
    assert not np.allclose(given.encode(x).mean, model.given((y + 1) % 10).encode(x).mean)


def test_gaussian_likelihood_by_hand():
    """log N(x; μ, σ²) per value summed, log σ clipped to [−6, 2]; E[x|z, y] = μ."""
    model = ConditionalVAE((2, 2, 1), (8,), 3, likelihood="gaussian", rngs=nnx.Rngs(0))
    kernel = model.to_logits.kernel
    kernel[...] = kernel[...].at[:, 4:].multiply(50.0)  # log σ far outside [−6, 2]
    x = jax.random.normal(jax.random.key(1), (5, 2, 2, 1))
    y, z = jnp.arange(5), jax.random.normal(jax.random.key(2), (5, 3))
    out = np.asarray(model.logits(z, y), np.float64)
    mean, log_scale = out[:, :4], np.clip(out[:, 4:], -6.0, 2.0)
    assert np.any(out[:, 4:] < -6) and np.any(out[:, 4:] > 2)
    flat = np.asarray(x, np.float64).reshape(5, 4)
    expected = np.sum(-0.5 * ((flat - mean) / np.exp(log_scale)) ** 2 - log_scale
                      - 0.5 * np.log(2 * np.pi), axis=-1)
    np.testing.assert_allclose(model.log_likelihood(z, x, y), expected, rtol=1e-5)
    np.testing.assert_allclose(model.mean_image(z, y), mean.reshape(5, 2, 2, 1), rtol=1e-6)
    with pytest.raises(ValueError, match="likelihood must be"):
        ConditionalVAE((2, 2, 1), (8,), 3, likelihood="poisson", rngs=nnx.Rngs(0))


def test_stock_objectives_need_the_labels():
    model = ConditionalVAE((4, 4, 1), (8,), 3, rngs=nnx.Rngs(0))
    x = jnp.zeros((2, 4, 4, 1))
    with pytest.raises(ValueError, match="needs labels"):
        objectives.elbo()(model, Batch(x), jax.random.key(0), {"beta": 1.0})
    loss, _ = objectives.iwae_dreg(5)(model, Batch(x, jnp.array([1, 2])), jax.random.key(0),
                                      {"beta": 1.0})
    assert np.isfinite(loss)


def test_samples_belong_to_the_class_asked_for(run):
    """A classifier fitted on the real training digits labels the CVAE's samples of class k
    as k — the decoder's y is the class, not noise."""
    from sklearn.linear_model import LogisticRegression
    model, data = load_run(run).model, prepare_data(load_run(run).config)
    classifier = LogisticRegression(max_iter=2000).fit(data.train.reshape(len(data.train), -1),
                                                       data.train_labels)
    y = jnp.repeat(jnp.arange(10), 50)
    given = model.given(y)
    samples = given.mean_image(given.prior.sample(jax.random.key(3), len(y)))
    accuracy = classifier.score(np.asarray(samples).reshape(len(y), -1), np.asarray(y))
    assert accuracy > 0.6, accuracy  # 0.80 here, as on real test digits; 0.1 if y were ignored


def test_conditional_log_likelihood_needs_the_right_labels(run):
    """log p(x|y) by importance sampling: above the test ELBO, and lower under wrong labels."""
    loaded = load_run(run)
    data = prepare_data(loaded.config)
    kwargs = dict(num_samples=200, chunk_size=100, progress=False)
    right = evaluation.importance_log_likelihood(loaded.trainer, loaded.state, data.test,
                                                 labels=data.test_labels, **kwargs)
    wrong = evaluation.importance_log_likelihood(loaded.trainer, loaded.state, data.test,
                                                 labels=(data.test_labels + 1) % 10, **kwargs)
    assert right.mean() > read_summary(run)["test_elbo"]
    assert right.mean() > wrong.mean() + 2.0


def test_run_writes_class_rows_and_evaluate_uses_labels(run, capsys):
    assert (run / "samples.png").exists()
    assert main(["evaluate", "--workdir", str(run), "-k", "50", "--no-progress"]) == 0
    summary = read_summary(run)
    assert summary["test_log_likelihood"] > summary["test_elbo"]
    capsys.readouterr()
    assert main(["sample", "--workdir", str(run)]) == 2
    assert "is conditional" in capsys.readouterr().err


def test_cvae_trains_with_iwae(tmp_path):
    assert main(["train", "--workdir", str(tmp_path / "r"), *FLAGS, "--objective", "iwae",
                 "-k", "4", "--epochs", "2"]) == 0
    assert np.isfinite(read_summary(tmp_path / "r")["test_elbo"])


def test_cvae_refuses_stock_settings(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path / "r"), *FLAGS, "--posterior", "full"]) == 2
    assert "the cvae family builds its own architecture" in capsys.readouterr().err
    assert vaejax.models.ConditionalVAE is ConditionalVAE


def test_a_data_set_without_labels_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from vaejax import train
    from vaejax.config import ConfigError, ModelConfig, TrainConfig
    real = train.prepare_data
    monkeypatch.setattr(train, "prepare_data", lambda *a, **k: real(*a, **k)._replace(
        train_labels=None, test_labels=None))
    with pytest.raises(ConfigError, match="conditioned on labels, and digits has none"):
        train.train_and_evaluate(TrainConfig(model=ModelConfig(family="cvae", hidden=(16,)),
                                             epochs=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
