"""Discretised logistic likelihoods and bits/dim: exact sums, float64 references, properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

import vaejax


def reference_log_mass(mean, scale, k, levels):
    """log P(k) as a difference of the logistic CDF F, in float64 (end bins open); above the
    mean as a difference of 1 − F, so neither side cancels near 1."""
    top, h = levels - 1, 0.5 / (levels - 1)
    a, b = (k / top + h - mean) / scale, (k / top - h - mean) / scale
    a, b = np.where(k == top, np.inf, a), np.where(k == 0, -np.inf, b)
    below = special.expit(a) - special.expit(b)
    above = special.expit(-b) - special.expit(-a)
    return np.log(np.where(a + b > 0, above, below))


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("mean, log_scale", [(0.3, -3.0), (0.0, -6.0), (1.2, 0.0), (-5.0, 2.0),
                                             (0.5, -12.0), (0.999, -9.0)])
def test_discretized_logistic_sums_to_one_over_the_levels(precision, levels, mean, log_scale):
    """Σ_k P(k) = 1 over the L levels of one pixel, for centred, off-grid and far means."""
    dtype, rtol = precision
    x = jnp.arange(levels, dtype=dtype) / (levels - 1)
    log_p = vaejax.discretized_logistic_log_likelihood(dtype(mean), dtype(log_scale), x, levels,
                                                       event_ndims=0)
    np.testing.assert_allclose(jnp.exp(log_p).sum(), 1.0, rtol=10 * rtol)


@pytest.mark.parametrize("levels", [17, 256])
def test_discretized_logistic_matches_cdf_differences(rng, levels):
    """Each level's log-mass equals log(F(upper) − F(lower)) in float64 where that is accurate."""
    with jax.enable_x64(True):
        k = rng.integers(0, levels, size=(4, 50))
        mean, scale = rng.uniform(-0.2, 1.2, size=(4, 50)), np.exp(rng.uniform(-4, 0, (4, 50)))
        expected = reference_log_mass(mean, scale, k, levels)
        actual = vaejax.discretized_logistic_log_likelihood(mean, np.log(scale), k / (levels - 1),
                                                            levels, event_ndims=0)
        np.testing.assert_allclose(actual, expected, rtol=1e-9)
        summed = vaejax.discretized_logistic_log_likelihood(mean, np.log(scale), k / (levels - 1),
                                                            levels)
        np.testing.assert_allclose(summed, actual.sum(-1), rtol=1e-12)


def test_discretized_logistic_is_finite_far_in_the_tails():
    """A level 60 scales from the mean: CDF differences give log 0, the product form does not."""
    x = jnp.array([0.0, 0.5, 1.0], jnp.float32)
    log_p = vaejax.discretized_logistic_log_likelihood(jnp.array([1.0, 0.0, 0.0]), -3.0, x,
                                                       event_ndims=0)
    grads = jax.grad(lambda m, s: vaejax.discretized_logistic_log_likelihood(m, s, x).sum(),
                     argnums=(0, 1))(jnp.array([1.0, 0.0, 0.0]), jnp.float32(-3.0))
    assert np.all(np.isfinite(log_p)) and np.all(log_p < -10)
    assert all(np.all(np.isfinite(g)) for g in grads)
    # Far inside a bin the tails give e^(−t): log P ≈ −|x − μ|/s for the end bins.
    np.testing.assert_allclose(log_p[0], -math.exp(3.0) * (1 - 0.5 / 255), rtol=1e-5)


def test_a_narrow_logistic_puts_its_mass_on_the_nearest_level():
    """As s → 0 the mass concentrates on the level nearest the mean: P → 1 there."""
    x = jnp.arange(256.0) / 255
    p = jnp.exp(vaejax.discretized_logistic_log_likelihood(100 / 255, -15.0, x, event_ndims=0))
    assert p[100] == pytest.approx(1.0, abs=1e-6)


def test_the_inner_mass_is_the_density_times_the_bin_for_wide_scales():
    """For s ≫ bin width, P(k) ≈ f(c_k)·2h, f the logistic density."""
    with jax.enable_x64(True):
        levels, mean, s = 256, 0.4, 0.2
        k = np.arange(1, 255)
        c = k / 255
        t = (c - mean) / s
        density = np.exp(-t) / (s * (1 + np.exp(-t))**2)
        log_p = vaejax.discretized_logistic_log_likelihood(mean, math.log(s), c, levels,
                                                           event_ndims=0)
        np.testing.assert_allclose(np.exp(log_p), density / 255, rtol=1e-4)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 64), st.lists(st.floats(-2.0, 3.0), min_size=2, max_size=4),
       st.lists(st.floats(-6.0, 1.0), min_size=2, max_size=4),
       st.lists(st.floats(-3.0, 3.0), min_size=2, max_size=4))
def test_mixture_sums_to_one_and_is_the_weighted_mixture(levels, means, log_scales, logits):
    """A mixture of discretised logistics sums to 1 and equals Σ π_m P_m level by level."""
    m = min(map(len, (means, log_scales, logits)))
    means, log_scales, logits = (np.asarray(v[:m]) for v in (means, log_scales, logits))
    with jax.enable_x64(True):
        x = np.arange(levels) / (levels - 1)
        log_p = vaejax.discretized_logistic_mixture_log_likelihood(
            np.broadcast_to(logits, (levels, m)), np.broadcast_to(means, (levels, m)),
            np.broadcast_to(log_scales, (levels, m)), x, levels, event_ndims=0)
        np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-10)
        weights = special.softmax(logits)
        expected = sum(w * np.exp(reference_log_mass(mu, np.exp(ls), np.arange(levels), levels))
                       for w, mu, ls in zip(weights, means, log_scales))
        np.testing.assert_allclose(np.exp(log_p), expected, rtol=1e-8, atol=1e-300)


def test_one_component_mixture_is_the_logistic(rng):
    """M = 1 reduces the mixture to the single discretised logistic, summed over the event."""
    x = rng.integers(0, 256, size=(3, 2, 5)) / 255
    mean, log_scale = rng.uniform(0, 1, (3, 2, 5, 1)), rng.uniform(-5, -1, (3, 2, 5, 1))
    mixture = vaejax.discretized_logistic_mixture_log_likelihood(np.zeros((3, 2, 5, 1)), mean,
                                                                 log_scale, x, event_ndims=2)
    single = vaejax.discretized_logistic_log_likelihood(mean[..., 0], log_scale[..., 0], x,
                                                        event_ndims=2)
    assert mixture.shape == (3,)
    np.testing.assert_allclose(mixture, single, rtol=1e-5)


def test_bits_per_dim():
    """−log p/(D ln 2); dequantised densities add D·log L; 8 bits/dim for the uniform model."""
    d = 784
    np.testing.assert_allclose(vaejax.bits_per_dim(-d * math.log(2.0), d), 1.0)
    # The uniform density on [0, 1)^D (log p = 0) of dequantised 8-bit data is the uniform P.
    np.testing.assert_allclose(vaejax.bits_per_dim(0.0, d, dequantized_levels=256), 8.0)
    uniform = jnp.full(256, -math.log(256.0))  # the uniform discrete model, one pixel
    np.testing.assert_allclose(vaejax.bits_per_dim(uniform, 1), 8.0, rtol=1e-6)


def test_dequantised_density_bounds_the_discrete_model():
    """E_u log p((k + u)/L) − log L ≤ log P(k) for a density p on [0, 1] (Jensen), and bits/dim
    of the dequantised density is the larger."""
    with jax.enable_x64(True):
        levels, eta = 17, 2.5
        k = np.arange(levels)
        u = np.random.default_rng(0).uniform(size=(20000, 1))
        y = (k + u) / levels
        log_density = vaejax.continuous_bernoulli_log_likelihood(eta, y, event_ndims=0)
        # P(k): the continuous Bernoulli's mass over [k/L, (k+1)/L); its density ∝ e^(ηy).
        mass = np.exp(eta * (k + 1) / levels) - np.exp(eta * k / levels)
        mass = mass / mass.sum()
        bound = np.asarray(log_density).mean(0) - math.log(levels)
        assert np.all(bound <= np.log(mass) + 1e-3)
        assert vaejax.bits_per_dim(log_density.mean(0), 1, dequantized_levels=levels).mean() >= \
            vaejax.bits_per_dim(np.log(mass), 1).mean() - 1e-3


@pytest.mark.parametrize("call", [
    lambda: vaejax.discretized_logistic_log_likelihood(0.0, 0.0, 0.5, levels=1, event_ndims=0),
    lambda: vaejax.discretized_logistic_log_likelihood(jnp.zeros(3), 0.0, jnp.zeros(4)),
    lambda: vaejax.discretized_logistic_mixture_log_likelihood(jnp.zeros((3, 2)), jnp.zeros((3, 3)),
                                                              0.0, jnp.zeros(3)),
    lambda: vaejax.bits_per_dim(0.0, 0),
    lambda: vaejax.bits_per_dim(0.0, 4, dequantized_levels=1),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
