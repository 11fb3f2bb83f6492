"""VQ-VAE through the registered family and objective: it learns, its EMA codebook is state
that is checkpointed and resumed bitwise, and its test ELBO is log p(x|z_q) − n·log K."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

import vaejax
from vaejax.cli import main
from vaejax.objectives import eval_terms
from vaejax.train import load_run, read_summary

FLAGS = ["--model", "vqvae", "--objective", "vq", "--hidden", "64", "--latent-dim", "4",
         "--checkpoint-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4-epoch run, and one cut at epoch 2 and resumed to 4."""
    root = tmp_path_factory.mktemp("vq")
    assert main(["train", "--workdir", str(root / "whole"), *FLAGS, "--epochs", "4"]) == 0
    assert main(["train", "--workdir", str(root / "cut"), *FLAGS, "--epochs", "2"]) == 0
    assert main(["train", "--workdir", str(root / "cut"), "--resume", "--epochs", "4",
                 "--no-progress"]) == 0
    return load_run(root / "whole"), load_run(root / "cut")


def test_vq_vae_learns_and_uses_its_codes(runs):
    run = runs[0]
    first, last = run.metrics[0], run.metrics[-1]
    assert last["test_elbo"] > first["test_elbo"] + 1.0
    assert last["rate"] == pytest.approx(4 * math.log(64), rel=1e-6)
    assert 1.5 < last["train_perplexity"] <= 64


def test_codebook_is_trained_state_resumed_bitwise(runs):
    whole, cut = runs
    fresh = vaejax.models.VQVAE((8, 8, 1), (64,), 4, rngs=nnx.Rngs(0))
    assert not np.allclose(whole.model.sums[...], fresh.sums[...])  # the EMA moved the codes
    for a, b in zip(jax.tree.leaves(jax.device_get(whole.state)),
                    jax.tree.leaves(jax.device_get(cut.state))):
        np.testing.assert_array_equal(a, b)


def test_test_elbo_is_the_quantised_likelihood_minus_n_log_k(runs):
    model = runs[0].model
    x = np.random.default_rng(0).binomial(1, 0.3, (50, 8, 8, 1)).astype(np.float32)
    terms = eval_terms(model, x, jax.random.key(0))
    out = vaejax.vector_quantize(model.vectors(x), model.codebook())
    log_lik = vaejax.bernoulli_log_likelihood(model.logits_from_vectors(out.codes), x.reshape(50, -1))
    np.testing.assert_allclose(terms.elbo, log_lik - 4 * math.log(64), rtol=1e-5)
    np.testing.assert_allclose(terms.kl, 4 * math.log(64), rtol=1e-6)


def test_vqvae_refuses_stock_settings(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path / "r"), *FLAGS, "--likelihood",
                 "logistic"]) == 2
    assert "vqvae family builds its own architecture" in capsys.readouterr().err


def test_code_usage_counts_picked_codes():
    from vaejax.evaluation import code_usage
    # 2 models, 3 images, 2 variables, K = 4: model 0 picks codes 0,0,1,1,2,2; model 1 only 3.
    picks = np.array([[[0, 0], [1, 1], [2, 2]], [[3, 3], [3, 3], [3, 3]]])
    probs = jax.nn.one_hot(picks, 4) * 0.7 + 0.075  # soft, argmax unchanged
    perplexity, unused = code_usage(np.asarray(probs))
    np.testing.assert_allclose(perplexity, [3.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(unused, [1, 3])


def test_evaluate_reports_code_usage(tmp_path, capsys):
    workdir = str(tmp_path / "r")
    assert main(["train", "--workdir", workdir, *FLAGS, "--epochs", "1"]) == 0
    assert main(["evaluate", "--workdir", workdir, "-k", "2", "--no-progress"]) == 0
    summary = read_summary(workdir)
    assert 1.0 <= summary["code_perplexity"] <= 64
    assert 0 <= summary["unused_codes"] < 64
    assert "code perplexity" in capsys.readouterr().out
