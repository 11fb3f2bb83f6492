"""M2 (Kingma et al. 2014): its loss by hand on a model with known bounds, the bound U(x)
against log p(x), the kept labels, and semi-supervised training through the CLI."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vaejax
from vaejax import objectives, streaming
from vaejax.cli import main
from vaejax.config import ConfigError, ModelConfig, TrainConfig, validate
from vaejax.models import M2
from vaejax.objectives import Batch
from vaejax.train import keep_labels, prepare_data, read_summary, train_and_evaluate
from vaejax.trainer import Trainer

BOUND = jnp.array([[-3.0, -1.0, -2.0], [-5.0, -4.0, -6.0]])  # L(x_i, y), (B, K)
LOGITS = jnp.array([[0.5, 1.0, -1.0], [2.0, 0.0, 0.0]])


class Fixed:
    """A model whose L(x, y) and q(y|x) are the tables above."""

    def bound_per_class(self, key, x):
        return BOUND.T

    def classify(self, x):
        return vaejax.Categorical(LOGITS[:, None, :])


def test_loss_by_hand():
    """−(mean of L or U over the batch) + α·(mean −log q(y|x) over batch.labelled)."""
    log_q = jax.nn.log_softmax(LOGITS)
    marginal = jnp.sum(jnp.exp(log_q) * (BOUND - log_q), axis=-1)
    x = jnp.zeros((2, 1, 1, 1))
    stream = Batch(x, jnp.array([1, 0]))  # q(y|x) of its rows: LOGITS' rows
    batch = Batch(x, jnp.array([2, -1]), stream)  # the first labelled as 2
    loss, metrics = objectives.m2(5.0)(Fixed(), batch, jax.random.key(0), {"beta": 1.0})
    cross_entropy = -(log_q[0, 1] + log_q[1, 0]) / 2
    np.testing.assert_allclose(loss, -(BOUND[0, 2] + marginal[1]) / 2 + 5.0 * cross_entropy,
                               rtol=1e-6)
    np.testing.assert_allclose(metrics["classifier_cross_entropy"], cross_entropy, rtol=1e-6)
    np.testing.assert_allclose(metrics["labelled_fraction"], 0.5)
    with pytest.raises(ValueError, match="batch.labelled"):
        objectives.m2(5.0)(Fixed(), batch._replace(labelled=None), jax.random.key(0), {})
    out = objectives.m2_evaluation(Fixed(), Batch(batch.x, jnp.array([1, 1])), None)
    np.testing.assert_array_equal(out["test_error"], [0.0, 1.0])  # argmax q: 1, then 0


def test_marginal_bound_is_logsumexp_at_the_best_classifier():
    """max over q(y|x) of Σ q (L − log q) is logsumexp_y L, reached at q ∝ exp L."""
    class Best(Fixed):
        def classify(self, x):
            return vaejax.Categorical(BOUND[:, None, :])
    out = objectives.m2_evaluation(Best(), Batch(jnp.zeros((2, 1, 1, 1)), jnp.zeros(2, int)), None)
    np.testing.assert_allclose(out["test_elbo"], jax.nn.logsumexp(BOUND, axis=-1), rtol=1e-6)
    worse = objectives.m2_evaluation(Fixed(), Batch(jnp.zeros((2, 1, 1, 1)), jnp.zeros(2, int)),
                                     None)
    assert np.all(worse["test_elbo"] < out["test_elbo"])


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_bound_lies_below_log_px(likelihood):
    """U(x) ≤ log p(x) = log Σ_y p(y) p(x|y), p(x|y) by importance sampling (K = 1000)."""
    model = M2((3, 3, 1), (8,), 2, likelihood=likelihood, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    x = rng.binomial(1, 0.5, (4, 3, 3, 1)) if likelihood == "bernoulli" else rng.normal(
        size=(4, 3, 3, 1))
    x = jnp.asarray(x, jnp.float32)
    bounds = jax.vmap(lambda k: objectives.m2_evaluation(model, Batch(x, jnp.zeros(4, int)), k)
                      ["test_elbo"])(jax.random.split(jax.random.key(0), 20)).mean(0)
    per_class = []
    for y in range(10):
        given = model.given(jnp.full(4, y))
        per_class.append(vaejax.importance_log_likelihood(
            jax.random.key(y), x, given.encode(x), given.log_likelihood, 1000, 1000))
    log_px = jax.nn.logsumexp(jnp.stack(per_class), axis=0) - jnp.log(10.0)
    assert np.all(bounds < log_px), (bounds, log_px)


def test_keep_labels_keeps_an_equal_number_per_class():
    labels = np.repeat(np.arange(10), 30)
    kept = keep_labels("d", labels, 50, seed=0)
    assert np.sum(kept >= 0) == 50
    np.testing.assert_array_equal(np.bincount(kept[kept >= 0]), np.full(10, 5))
    assert np.all(kept[kept >= 0] == labels[kept >= 0])
    np.testing.assert_array_equal(kept, keep_labels("d", labels, 50, seed=0))
    assert not np.array_equal(kept, keep_labels("d", labels, 50, seed=1))
    with pytest.raises(ConfigError, match="fewer than the 40 per class"):
        keep_labels("d", labels, 400, seed=0)


M2_CONFIG = TrainConfig(model=ModelConfig(family="m2", hidden=(16,), latent_dim=2,
                                        activation="softplus"),
                        objective="m2", labels=20, batch_size=50, epochs=2)


def test_the_labelled_stream_draws_kept_labels_uniformly():
    """Each plan row: the epoch's permutation as without a stream, then batch_size draws
    from the labelled examples only, each as often as the others (χ² over 40 epochs)."""
    labels = np.full(500, -1)
    known = np.random.default_rng(0).choice(500, 20, replace=False)
    labels[known] = np.arange(20) % 10
    trainer = Trainer(M2_CONFIG, (8, 8, 1), 500)
    plain = Trainer(dataclasses.replace(M2_CONFIG, objective="elbo", labels=None,
                                        model=ModelConfig(hidden=(16,), latent_dim=2)), (8, 8, 1), 500)
    assert trainer.labelled == 50 and trainer.batch_width == 100
    key = jax.random.key(3)
    counts = np.zeros(500)
    for epoch in range(40):
        rows, keys = trainer.batch_plan(key, 500, epoch, jnp.asarray(labels))
        plain_rows, plain_keys = plain.batch_plan(key, 500, epoch)
        np.testing.assert_array_equal(rows[:, :50], plain_rows)
        np.testing.assert_array_equal(jax.random.key_data(keys), jax.random.key_data(plain_keys))
        counts += np.bincount(np.asarray(rows[:, 50:]).ravel(), minlength=500)
    assert set(np.flatnonzero(counts)) == set(known)
    expected = counts.sum() / 20
    chi2 = np.sum((counts[known] - expected) ** 2 / expected)
    assert chi2 < 43.8  # χ²(19) 0.999 quantile


def test_m2_epoch_paths_agree(tmp_path):
    """The labelled stream: the scanned epoch, the stepwise one from host arrays and the
    one streamed from ArrayRecord train the same parameters."""
    config = validate(M2_CONFIG)
    data = prepare_data(config)
    train = Batch(data.train, data.train_labels)
    levels = np.round(data.train * 16).astype(np.uint8)
    streaming.write_split(tmp_path / "d.array_record", [(levels, data.train_labels)],
                          levels.shape[1:], divisor=16.0)
    stream = streaming.open_split(tmp_path / "d.array_record")
    trainer = Trainer(config, data.train.shape[1:], data.train.shape[0])
    results = []
    for fn, source in ((trainer.train_epoch, trainer.place(train)),
                       (trainer.train_epoch_stepwise, train),
                       (trainer.train_epoch_stepwise, stream)):
        state = trainer.init()
        for epoch in range(2):
            state, metrics = fn(state, source, epoch)
        results.append(jax.tree.leaves(state.params))
        assert np.all(np.isfinite(metrics["classifier_cross_entropy"]))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


FLAGS = ["--model", "m2", "--objective", "m2", "--hidden", "64", "--latent-dim", "8",
         "--no-progress"]


def test_semi_supervised_training_on_100_digit_labels(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--workdir", str(run), *FLAGS, "--labels", "100", "--epochs", "20",
                 "--checkpoint-every", "20"]) == 0
    summary = read_summary(run)
    assert summary["test_error"] < 0.6  # chance: 0.9
    assert main(["evaluate", "--workdir", str(run), "--no-progress"]) == 0
    summary = read_summary(run)
    assert "test_log_likelihood" not in summary and 0.1 < summary["linear_probe_accuracy"] <= 1
    capsys.readouterr()
    assert main(["sample", "--workdir", str(run)]) == 2
    assert "is conditional" in capsys.readouterr().err
    assert (run / "samples.png").exists()


@pytest.mark.parametrize("flags,message", [
    (["--labels", "15"], "labels must be a positive multiple of the 10 classes"),
    (["--objective", "elbo"], "the m2 family trains with objective 'm2', not 'elbo'"),
])
def test_refusals(tmp_path, capsys, flags, message):
    assert main(["train", "--workdir", str(tmp_path / "r"), *FLAGS, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_labels_need_an_objective_that_reads_them(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path / "r"), "--labels", "100",
                 "--no-progress"]) == 2
    assert "the elbo objective does not read labels" in capsys.readouterr().err


@pytest.mark.parametrize("labels,message", [(None, "digits has none"),
                                            (-1, "training split has no labelled example")])
def test_no_labelled_example_is_refused(tmp_path, monkeypatch, labels, message):
    """Data with no known label (none at all, or all −1) cannot feed the labelled stream."""
    def unlabelled(*args):
        data = prepare_data(*args)
        return data._replace(train_labels=None if labels is None
                             else np.full_like(data.train_labels, labels))

    monkeypatch.setattr("vaejax.train.prepare_data", unlabelled)
    config = validate(TrainConfig(dataset="digits", model=ModelConfig(family="m2", hidden=(16,),
                                                                      latent_dim=2),
                                  objective="m2", epochs=1))
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(config, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
