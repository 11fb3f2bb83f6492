"""M1+M2: M2 over a trained model's posterior means, M1's weights frozen in the run's state;
training and loading through the CLI, and the refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaejax import models
from vaejax.cli import main
from vaejax.config import ConfigError, ModelConfig
from vaejax.models import M1M2, M2
from vaejax.train import load_run, read_summary

M2_FLAGS = ["--model", "m1m2", "--objective", "m2", "--hidden", "64", "--latent-dim", "4",
            "--no-progress"]


@pytest.fixture(scope="module")
def m1_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("m1") / "run"
    assert main(["train", "--workdir", str(workdir), "--epochs", "10", "--checkpoint-every", "10",
                 "--no-progress"]) == 0
    return workdir


def _leaves(model):
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model)))


def test_trains_on_m1_features_and_leaves_m1_unchanged(tmp_path, m1_run):
    run = tmp_path / "m1m2"
    assert main(["train", "--workdir", str(run), *M2_FLAGS, "--features-from", str(m1_run),
                 "--labels", "100", "--epochs", "15", "--checkpoint-every", "15"]) == 0
    summary = read_summary(run)
    assert summary["test_error"] < 0.7  # chance: 0.9
    assert np.isfinite(summary["test_feature_elbo"]) and "test_elbo" not in summary
    model, m1 = load_run(run).model, load_run(m1_run).model
    assert isinstance(model, M1M2)
    for a, b in zip(_leaves(model.m1()), _leaves(m1)):
        np.testing.assert_array_equal(a, b)  # bitwise: no optimizer touched M1
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 8, 8, 1)), jnp.float32)
    np.testing.assert_array_equal(model.features(x)[:, 0, 0], m1.encode(x).mean)
    given = model.given(jnp.arange(5))
    assert given.mean_image(given.prior.sample(jax.random.key(0), 5)).shape == x.shape
    assert (run / "samples.png").exists() and (run / "reconstructions.png").exists()
    assert main(["evaluate", "--workdir", str(run), "--no-progress"]) == 0


def test_m2_learns_through_the_features_only(m1_run):
    """The loss's gradient reaches M2's parameters; M1's weights are not parameters at all."""
    m1 = load_run(m1_run).model
    model = M1M2(m1, (8, 8, 1), (16,), 2, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert "m1_state" not in nnx.to_pure_dict(params)
    x = jnp.asarray(np.random.default_rng(1).binomial(1, 0.5, (4, 8, 8, 1)), jnp.float32)

    def loss(params):
        merged = nnx.merge(nnx.graphdef(model), params, nnx.state(model, models.Frozen))
        return merged.bound_per_class(jax.random.key(0), x).sum()
    grads = jax.tree.leaves(jax.grad(loss)(params))
    assert grads and all(np.all(np.isfinite(g)) for g in grads)
    assert any(np.abs(g).max() > 0 for g in grads)


def test_a_conditional_m1_is_refused():
    with pytest.raises(ValueError, match="unconditional"):
        M1M2(M2((8, 8, 1), (8,), 2, rngs=nnx.Rngs(0)), (8, 8, 1), rngs=nnx.Rngs(1))


def test_m1_of_other_images_is_refused(m1_run):
    build = models.model_fn(ModelConfig(family="m1m2", hidden=(8,), latent_dim=2,
                                        features_from=str(m1_run)))
    with pytest.raises(ConfigError, match=r"trained on images of shape \(8, 8, 1\)"):
        build((28, 28, 1), nnx.Rngs(0))


@pytest.mark.parametrize("flags,message", [
    ([], "models the features of a trained model: give features_from"),
    (["--features-from", "nowhere"], "features_from: nowhere holds no run"),
])
def test_refusals(tmp_path, capsys, flags, message):
    assert main(["train", "--workdir", str(tmp_path / "r"), *M2_FLAGS, "--labels", "100",
                 *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_features_from_is_refused_by_families_that_do_not_read_it(tmp_path, capsys, m1_run):
    for family in ("vae", "vampprior"):
        assert main(["train", "--workdir", str(tmp_path / "r"), "--model", family,
                     "--features-from", str(m1_run)]) == 2
        assert "does not use features_from" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
