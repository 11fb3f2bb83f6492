"""Vector quantisation: nearest codes, straight-through gradients, losses, EMA updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vaejax


def test_nearest_codes_match_brute_force(rng):
    """Indices are the argmin of ‖z − e_k‖² over the codebook, and codes are those entries."""
    z, codebook = rng.normal(size=(3, 7, 4)), rng.normal(size=(16, 4))
    out = vaejax.vector_quantize(z, codebook)
    distances = ((z[..., None, :] - codebook) ** 2).sum(-1)
    np.testing.assert_array_equal(out.indices, distances.argmin(-1))
    np.testing.assert_allclose(out.codes, codebook[distances.argmin(-1)], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.codebook_loss, distances.min(-1), rtol=1e-5)
    np.testing.assert_allclose(out.commitment_loss, distances.min(-1), rtol=1e-5)


def test_straight_through_gradient_is_the_gradient_at_the_code(rng):
    """∂L(codes)/∂z equals ∂L/∂e evaluated at the chosen code e_k; the codebook gets none
    through the codes, only through the codebook loss, whose gradient is 2(e_k − z) per use."""
    z, codebook = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    target = rng.normal(size=(5, 3))
    loss = lambda codes: jnp.sum(jnp.sin(codes) * target)
    grad_z = jax.grad(lambda z: loss(vaejax.vector_quantize(z, codebook).codes))(z)
    nearest = codebook[vaejax.vector_quantize(z, codebook).indices]
    np.testing.assert_allclose(grad_z, jax.grad(loss)(nearest), rtol=1e-6)
    grad_codes = jax.grad(lambda c: loss(vaejax.vector_quantize(z, c).codes))(codebook)
    np.testing.assert_array_equal(grad_codes, 0.0)
    out = vaejax.vector_quantize(z, codebook)
    grad_book = jax.grad(lambda c: vaejax.vector_quantize(z, c).codebook_loss.sum())(codebook)
    expected = np.zeros_like(codebook)
    np.add.at(expected, np.asarray(out.indices), 2 * (np.asarray(nearest) - z))
    np.testing.assert_allclose(grad_book, expected, rtol=1e-5, atol=1e-6)
    # The commitment loss moves only the encoder output: 2(z − e_k).
    grad_commit = jax.grad(lambda z: vaejax.vector_quantize(z, codebook).commitment_loss.sum())(z)
    np.testing.assert_allclose(grad_commit, 2 * (z - nearest), rtol=1e-5, atol=1e-6)


def test_ema_update_matches_a_hand_computation():
    """Two codes, three vectors: N ← γN + (1−γ)n, m ← γm + (1−γ)Σz, e = m/Ñ (Laplace-smoothed)."""
    state = vaejax.EmaCodebook(jnp.array([2.0, 1.0]), jnp.array([[2.0, 0.0], [0.0, 3.0]]))
    z = jnp.array([[1.0, 1.0], [3.0, -1.0], [0.0, 5.0]])
    new = vaejax.ema_codebook_update(state, z, jnp.array([0, 0, 1]), decay=0.5)
    np.testing.assert_allclose(new.counts, [0.5 * 2 + 0.5 * 2, 0.5 * 1 + 0.5 * 1])
    np.testing.assert_allclose(new.sums, [[0.5 * 2 + 0.5 * 4, 0.5 * 0 + 0.5 * 0],
                                          [0.5 * 0 + 0.5 * 0, 0.5 * 3 + 0.5 * 5]])
    eps, n = 1e-5, 3.0
    smoothed = (np.array([2.0, 1.0]) + eps) * n / (n + 2 * eps)
    np.testing.assert_allclose(new.codebook(), np.array([[3.0, 0.0], [0.0, 4.0]]) / smoothed[:, None],
                               rtol=1e-6)
    # Unused codes decay but keep a finite entry.
    idle = vaejax.ema_codebook_update(state, z, jnp.array([0, 0, 0]), decay=0.5)
    assert np.all(np.isfinite(idle.codebook())) and float(idle.counts[1]) == 0.5


def test_ema_converges_to_the_cluster_means(rng):
    """With fixed assignments, repeated updates drive e_k to the mean of its vectors."""
    z = rng.normal(size=(60, 2)) + np.repeat([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]], 20, 0)
    indices = np.repeat([0, 1, 2], 20)
    state = vaejax.EmaCodebook.create(jnp.zeros((3, 2)))
    for _ in range(400):
        state = vaejax.ema_codebook_update(state, z, indices, decay=0.95)
    means = np.stack([z[indices == k].mean(0) for k in range(3)])
    np.testing.assert_allclose(state.codebook(), means, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=50))
def test_perplexity_is_exp_entropy_of_usage(indices):
    """exp H of the usage frequencies: between 1 and the number of codes used."""
    counts = np.bincount(indices, minlength=8)
    p = counts[counts > 0] / len(indices)
    expected = np.exp(-(p * np.log(p)).sum())
    got = float(vaejax.codebook_perplexity(jnp.array(indices), 8))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert 1 - 1e-5 <= got <= (counts > 0).sum() + 1e-4


def test_perplexity_extremes():
    assert float(vaejax.codebook_perplexity(jnp.arange(16) % 4, 4)) == pytest.approx(4.0)
    assert float(vaejax.codebook_perplexity(jnp.zeros(9, jnp.int32), 4)) == pytest.approx(1.0)


@pytest.mark.parametrize("call", [
    lambda: vaejax.vector_quantize(jnp.zeros((2, 3)), jnp.zeros((4, 2))),
    lambda: vaejax.vector_quantize(jnp.zeros((2, 3)), jnp.zeros(3)),
    lambda: vaejax.codebook_perplexity(jnp.zeros(3, jnp.int32), 0),
    lambda: vaejax.ema_codebook_update(vaejax.EmaCodebook.create(jnp.eye(2)), jnp.zeros((1, 2)),
                                       jnp.zeros(1, jnp.int32), decay=1.5),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
