"""Shapes and invariants of the NNX models for every architecture and head."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vaejax
from vaejax.config import PRESETS, ModelConfig
from vaejax.models import VAE

CASES = [((8, 8, 1), "mlp", "diagonal"), ((8, 8, 1), "conv", "full"),
         ((28, 28, 1), "mlp", "categorical"), ((28, 28, 1), "conv", "diagonal"),
         ((32, 32, 3), "conv", "categorical"), ((32, 32, 3), "mlp", "full"),
         ((5, 7, 2), "conv", "diagonal"), ((5, 7, 2), "mlp", "categorical")]


@pytest.mark.parametrize("shape,architecture,posterior", CASES)
def test_encode_decode_shapes(shape, architecture, posterior):
    """q(z|x) has the batch shape of x; decode(z) returns images of the data's shape."""
    config = ModelConfig(architecture=architecture, hidden=(32,), conv_channels=(8, 16),
                         latent_dim=3, posterior=posterior, num_categories=4)
    model = VAE(shape, config, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (5, *shape))
    q = model.encode(x)
    z = q.sample(jax.random.key(1), 2)
    assert z.shape[:2] == (2, 5)
    assert model.decode(z).shape == (2, 5, *shape)
    assert model.log_likelihood(z, x).shape == (2, 5)
    assert model.mean_image(model.prior.sample(jax.random.key(2), 6)).shape == (6, *shape)


def test_cholesky_head_has_positive_diagonal():
    """The full-covariance head gives a lower-triangular factor with a positive diagonal."""
    config = dataclasses.replace(PRESETS["digits"], posterior="full", latent_dim=5)
    model = VAE((8, 8, 1), config, rngs=nnx.Rngs(0))
    q = model.encode(10.0 * jax.random.normal(jax.random.key(0), (7, 8, 8, 1)))
    diag = jnp.diagonal(q.scale_tril, axis1=-2, axis2=-1)
    assert bool(jnp.all(diag > 0))
    np.testing.assert_array_equal(q.scale_tril, jnp.tril(q.scale_tril))


@pytest.mark.parametrize("likelihood,scale,architecture", [
    ("bernoulli", 0.1, "mlp"), ("gaussian", 0.3, "mlp"), ("gaussian", None, "mlp"),
    ("continuous_bernoulli", 0.1, "mlp"), ("logistic", 0.1, "mlp"), ("logistic_mixture", 0.1, "mlp"),
    ("bernoulli", 0.1, "conv"), ("logistic_mixture", 0.1, "conv")])
def test_likelihood_heads_use_the_core(likelihood, scale, architecture):
    """The model's log p(x|z) is the core likelihood of its decoder output."""
    config = dataclasses.replace(PRESETS["digits"], likelihood=likelihood, gaussian_scale=scale,
                                 architecture=architecture, conv_channels=(4,), levels=17,
                                 mixture_components=3)
    model = VAE((8, 8, 1), config, rngs=nnx.Rngs(0))
    x = jnp.round(jax.random.uniform(jax.random.key(0), (4, 8, 8, 1)) * 16) / 16
    z = jax.random.normal(jax.random.key(1), (4, config.latent_dim))
    out = model.decode(z)
    log_scale = np.log(scale or 1.0)
    if config.learned_scale:  # a different σ per pixel, so the pixels must stay aligned
        log_scale = 0.3 * jax.random.normal(jax.random.key(2), (8, 8, 1))
        model.log_scale[...] = log_scale
    expected = {
        "bernoulli": lambda: vaejax.bernoulli_log_likelihood(out, x, event_ndims=3),
        "continuous_bernoulli": lambda: vaejax.continuous_bernoulli_log_likelihood(out, x, 3),
        "gaussian": lambda: vaejax.gaussian_log_likelihood(out, x, log_scale, 3),
        "logistic": lambda: vaejax.discretized_logistic_log_likelihood(
            out[..., 0], out[..., 1], x, 17, event_ndims=3),
        "logistic_mixture": lambda: vaejax.discretized_logistic_mixture_log_likelihood(
            out[..., :3], out[..., 3:6], out[..., 6:], x, 17, event_ndims=3),
    }[likelihood]()
    assert out.shape == (4, 8, 8, 1) + {"logistic": (2,), "logistic_mixture": (9,)}.get(
        likelihood, ())
    np.testing.assert_allclose(model.log_likelihood(z, x), expected, rtol=1e-6)
    assert bool(jnp.all((model.mean_image(z) >= 0) & (model.mean_image(z) <= 1)))


def test_learned_scale_is_a_parameter():
    """gaussian_scale=None adds a trainable per-pixel log σ."""
    config = dataclasses.replace(PRESETS["digits"], likelihood="gaussian", gaussian_scale=None)
    params = nnx.state(VAE((8, 8, 1), config, rngs=nnx.Rngs(0)), nnx.Param)
    assert params["log_scale"][...].shape == (8, 8, 1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build(name):
    """Every preset builds for 28×28 images and its sizes are as configured."""
    config = PRESETS[name]
    model = VAE((28, 28, 1), config, rngs=nnx.Rngs(0))
    if config.architecture == "mlp":
        assert model.encoder.layers[0].kernel[...].shape == (784, config.hidden[0])
    assert model.code_size == config.latent_dim * (
        config.num_categories if config.posterior == "categorical" else 1)


def test_paper_presets():
    """The literature architectures are what their names promise."""
    assert (PRESETS["burda"].hidden, PRESETS["burda"].latent_dim, PRESETS["burda"].activation) == (
        (200, 200), 50, "tanh")
    assert (PRESETS["flax"].hidden, PRESETS["flax"].latent_dim) == ((500,), 20)
    assert (PRESETS["pytorch"].hidden, PRESETS["pytorch"].latent_dim) == ((400,), 20)
    assert (PRESETS["pythae"].hidden, PRESETS["pythae"].latent_dim) == ((400,), 40)


def test_split_merge_round_trip():
    """nnx.split / nnx.merge reproduce the same function (training is pure over the state)."""
    model = VAE((8, 8, 1), PRESETS["digits"], rngs=nnx.Rngs(3))
    graphdef, state = nnx.split(model)
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
    np.testing.assert_array_equal(nnx.merge(graphdef, state).encode(x).mean, model.encode(x).mean)
