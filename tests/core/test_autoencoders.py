"""Sparse, denoising and contractive autoencoder regularisers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaejax

NUM_ENTRIES = 200_000


def test_sparse_penalty_is_the_l1_norm(rng):
    """Σ|h| over the last axis, one value per code."""
    code = rng.normal(size=(3, 4, 6)).astype(np.float32)
    penalty = vaejax.sparse_penalty(code)
    assert penalty.shape == (3, 4)
    np.testing.assert_allclose(penalty, np.abs(code).sum(axis=-1), rtol=1e-6)


def _fraction_within_se(fraction, p, n, num_se=5.0):
    return abs(fraction - p) < num_se * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("level", [0.1, 0.5])
def test_masking_zeroes_about_level_of_the_entries(rng, level):
    """Masking zeroes each entry with probability `level` and keeps the others unchanged."""
    x = jnp.asarray(rng.uniform(0.5, 1.0, size=(NUM_ENTRIES // 100, 100)), jnp.float32)
    corrupted = vaejax.corrupt(jax.random.key(0), x, level, "masking")
    assert corrupted.shape == x.shape and corrupted.dtype == x.dtype
    dropped = np.asarray(corrupted == 0)
    assert _fraction_within_se(dropped.mean(), level, x.size)
    np.testing.assert_array_equal(np.asarray(corrupted)[~dropped], np.asarray(x)[~dropped])


@pytest.mark.parametrize("level", [0.05, 0.7])
def test_gaussian_noise_has_standard_deviation_level(level):
    """Gaussian corruption adds zero-mean noise of standard deviation `level`."""
    x = jnp.full((NUM_ENTRIES,), 0.25, jnp.float32)
    noise = np.asarray(vaejax.corrupt(jax.random.key(1), x, level, "gaussian") - x, np.float64)
    assert abs(noise.mean()) < 5 * level / np.sqrt(NUM_ENTRIES)
    assert abs(noise.std() - level) < 5 * level / np.sqrt(2 * NUM_ENTRIES)


def test_salt_and_pepper_sets_about_level_of_the_entries_to_zero_or_one():
    """Hit entries become 0 or 1 with equal chance; the others keep their value."""
    level = 0.3
    x = jnp.full((NUM_ENTRIES,), 0.37, jnp.float32)
    corrupted = np.asarray(vaejax.corrupt(jax.random.key(2), x, level, "salt_and_pepper"))
    assert corrupted.dtype == np.float32
    assert set(np.unique(corrupted)) <= {np.float32(0.0), np.float32(1.0), np.float32(0.37)}
    hit = corrupted != np.float32(0.37)
    assert _fraction_within_se(hit.mean(), level, NUM_ENTRIES)
    assert _fraction_within_se((corrupted[hit] == 1).mean(), 0.5, hit.sum())


def test_unknown_noise_raises():
    """Only masking, gaussian and salt_and_pepper noise exist."""
    with pytest.raises(ValueError, match="noise"):
        vaejax.corrupt(jax.random.key(0), jnp.ones(3), 0.1, "dropout")


@pytest.mark.parametrize("code_size", [3, 8])
def test_contractive_penalty_of_a_linear_encoder_is_the_frobenius_norm(rng, code_size):
    """For h = Wx + b the Jacobian is W, so the penalty is ‖W‖²_F for every example."""
    weight = jnp.asarray(rng.normal(size=(code_size, 5)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=code_size), jnp.float32)
    x = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    penalty = vaejax.contractive_penalty(lambda v: weight @ v + bias, x)
    assert penalty.shape == (4,)
    np.testing.assert_allclose(penalty, np.full(4, np.sum(np.asarray(weight)**2)), rtol=1e-5)


def test_contractive_penalty_of_a_tanh_encoder(rng):
    """For h = tanh(Wx) the penalty is Σ_j (1 − h_j²)² Σ_i W_ji² per example."""
    weight = rng.normal(scale=0.5, size=(3, 5))
    x = rng.normal(size=(2, 4, 5))
    h = np.tanh(x @ weight.T)
    expected = np.sum((1 - h**2)**2 * np.sum(weight**2, axis=1), axis=-1)
    w32 = jnp.asarray(weight, jnp.float32)
    penalty = vaejax.contractive_penalty(lambda v: jnp.tanh(w32 @ v), jnp.asarray(x, jnp.float32))
    assert penalty.shape == (2, 4)
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)


def test_contractive_penalty_of_an_image_encoder(rng):
    """With event_ndims=3 an (H, W, C) image is one example of a flattening linear encoder."""
    weight = jnp.asarray(rng.normal(size=(6, 4 * 4 * 3)), jnp.float32)
    images = jnp.asarray(rng.uniform(size=(2, 4, 4, 3)), jnp.float32)
    penalty = vaejax.contractive_penalty(lambda image: weight @ image.reshape(-1), images,
                                         event_ndims=3)
    assert penalty.shape == (2,)
    np.testing.assert_allclose(penalty, np.full(2, np.sum(np.asarray(weight)**2)), rtol=1e-5)
