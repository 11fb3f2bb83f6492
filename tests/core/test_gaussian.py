"""Reparameterized sampling, pathwise gradients, log-densities and entropies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import vaejax

NUM_DRAWS = 200_000


def test_reparameterize_has_the_diagonal_moments(check_moments):
    """Draws of N(μ, diag σ²) have mean μ and covariance diag σ²."""
    mean = np.array([0.5, -1.0, 2.0])
    log_var = np.array([0.3, -1.2, 0.0])
    draws = vaejax.reparameterize(jax.random.key(0), jnp.asarray(mean, jnp.float32),
                                  jnp.asarray(log_var, jnp.float32), num_samples=NUM_DRAWS)
    check_moments(draws, mean, np.diag(np.exp(log_var)))


def test_reparameterize_tril_has_the_full_moments(check_moments, random_tril):
    """Draws of N(μ, LLᵀ) have mean μ and covariance LLᵀ."""
    mean = np.array([1.0, -0.5, 0.25])
    scale_tril = random_tril(3)
    draws = vaejax.reparameterize_tril(jax.random.key(1), jnp.asarray(mean, jnp.float32),
                                       jnp.asarray(scale_tril, jnp.float32), num_samples=NUM_DRAWS)
    check_moments(draws, mean, scale_tril @ scale_tril.T)


@pytest.mark.parametrize("num_samples", [None, 1, 7])
def test_num_samples_adds_a_leading_axis(num_samples, random_tril):
    """num_samples prepends an axis of independent draws to the batch shape."""
    mean = jnp.zeros((2, 4, 3))
    expected = mean.shape if num_samples is None else (num_samples, *mean.shape)
    key = jax.random.key(2)
    z = vaejax.reparameterize(key, mean, jnp.zeros_like(mean), num_samples)
    z_tril = vaejax.reparameterize_tril(
        key, mean, jnp.asarray(random_tril(3, (2, 4)), jnp.float32), num_samples)
    assert z.shape == z_tril.shape == expected
    if num_samples == 7:
        assert len(np.unique(np.asarray(z[:, 0, 0, 0]))) == 7
        assert len(np.unique(np.asarray(z_tril[:, 0, 0, 0]))) == 7


def test_reparameterize_is_deterministic_in_the_key():
    """The same key gives the same draw, another key a different one."""
    mean, log_var = jnp.zeros(4), jnp.zeros(4)
    first = vaejax.reparameterize(jax.random.key(3), mean, log_var)
    np.testing.assert_array_equal(first, vaejax.reparameterize(jax.random.key(3), mean, log_var))
    assert not np.any(first == vaejax.reparameterize(jax.random.key(4), mean, log_var))


def _per_draw_tangents(fn, primals, tangents):
    return np.asarray(jax.jvp(fn, primals, tangents)[1], np.float64)


def test_pathwise_gradients_of_the_second_moment():
    """∂/∂μ E[z²] = 2μ, ∂/∂log σ² E[z²] = σ² and, by the chain rule, ∂/∂σ E[z²] = 2σ."""
    mean = jnp.array([0.7, -1.3, 0.0])
    sigma = jnp.array([0.5, 1.5, 1.0])
    key = jax.random.key(5)

    def squares(mu, log_var):
        return vaejax.reparameterize(key, mu, log_var, NUM_DRAWS)**2

    def squares_in_sigma(mu, s):
        return squares(mu, 2.0 * jnp.log(s))

    log_var = 2.0 * jnp.log(sigma)
    ones, zeros = jnp.ones(3), jnp.zeros(3)
    cases = [
        (squares, (mean, log_var), (ones, zeros), 2.0 * mean),
        (squares, (mean, log_var), (zeros, ones), sigma**2),
        (squares_in_sigma, (mean, sigma), (zeros, ones), 2.0 * sigma),
    ]
    for fn, primals, tangents, expected in cases:
        per_draw = _per_draw_tangents(fn, primals, tangents)
        se = per_draw.std(axis=0) / np.sqrt(NUM_DRAWS)
        np.testing.assert_array_less(np.abs(per_draw.mean(axis=0) - expected), 5 * se + 1e-6)

    grad_mean, grad_sigma = jax.grad(lambda m, s: jnp.mean(squares_in_sigma(m, s), axis=0).sum(),
                                     argnums=(0, 1))(mean, sigma)
    np.testing.assert_allclose(grad_sigma, _per_draw_tangents(
        squares_in_sigma, (mean, sigma), (zeros, ones)).mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(grad_mean, _per_draw_tangents(
        squares_in_sigma, (mean, sigma), (ones, zeros)).mean(axis=0), rtol=1e-4, atol=1e-5)


def test_pathwise_gradient_through_the_cholesky_factor(random_tril):
    """∂/∂L E‖μ + Lε‖² = 2L on the lower triangle (and 0 above it)."""
    mean = jnp.array([0.3, -0.2, 0.1])
    scale_tril = jnp.asarray(random_tril(3), jnp.float32)
    key = jax.random.key(6)

    def norms(lower):
        return jnp.sum(vaejax.reparameterize_tril(key, mean, lower, NUM_DRAWS)**2, axis=-1)

    per_draw = np.asarray(jax.jacfwd(norms)(scale_tril), np.float64)
    se = per_draw.std(axis=0) / np.sqrt(NUM_DRAWS)
    np.testing.assert_array_less(np.abs(per_draw.mean(axis=0) - 2.0 * np.asarray(scale_tril)),
                                 5 * se + 1e-6)


def test_standard_normal_log_prob_matches_scipy(precision, rng):
    """log N(z; 0, I) equals scipy's multivariate normal log-density."""
    dtype, rtol = precision
    z = rng.normal(scale=2.0, size=(4, 3))
    expected = stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z)
    np.testing.assert_allclose(vaejax.standard_normal_log_prob(jnp.asarray(z, dtype)), expected,
                               rtol=rtol)


def test_diag_normal_log_prob_matches_scipy(precision, rng):
    """log N(z; μ, diag σ²), with a leading sample axis, equals scipy's norm.logpdf summed."""
    dtype, rtol = precision
    mean, log_var = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    z = rng.normal(scale=2.0, size=(5, 2, 3))
    expected = stats.norm(mean, np.exp(0.5 * log_var)).logpdf(z).sum(axis=-1)
    actual = vaejax.diag_normal_log_prob(*(jnp.asarray(a, dtype) for a in (z, mean, log_var)))
    assert actual.shape == (5, 2)
    np.testing.assert_allclose(actual, expected, rtol=rtol)


def test_mvn_tril_log_prob_matches_scipy(precision, rng, random_tril):
    """log N(z; μ, LLᵀ), with a leading sample axis, equals scipy's multivariate normal."""
    dtype, rtol = precision
    mean, scale_tril = rng.normal(size=(2, 3)), random_tril(3, (2,))
    z = rng.normal(scale=2.0, size=(5, 2, 3))
    expected = np.stack([
        stats.multivariate_normal(mean[i], scale_tril[i] @ scale_tril[i].T).logpdf(z[:, i])
        for i in range(2)], axis=-1)
    actual = vaejax.mvn_tril_log_prob(*(jnp.asarray(a, dtype) for a in (z, mean, scale_tril)))
    assert actual.shape == (5, 2)
    np.testing.assert_allclose(actual, expected, rtol=rtol)


def test_mvn_tril_log_prob_with_diagonal_factor_is_the_diagonal_log_prob(rng):
    """A diagonal Cholesky factor diag(σ) gives the diagonal-Gaussian log-density."""
    mean, log_var = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    z = rng.normal(size=(4, 2, 3))
    scale_tril = np.exp(0.5 * log_var)[..., None] * np.eye(3)
    np.testing.assert_allclose(vaejax.mvn_tril_log_prob(z, mean, scale_tril),
                               vaejax.diag_normal_log_prob(z, mean, log_var), rtol=1e-5)


def test_diag_normal_entropy_matches_scipy(precision, rng):
    """H[N(μ, diag σ²)] equals the sum of scipy's univariate normal entropies."""
    dtype, rtol = precision
    log_var = rng.normal(size=(4, 3))
    expected = stats.norm(0.0, np.exp(0.5 * log_var)).entropy().sum(axis=-1)
    np.testing.assert_allclose(vaejax.diag_normal_entropy(jnp.asarray(log_var, dtype)), expected,
                               rtol=rtol)


def test_mvn_tril_entropy_matches_scipy(precision, random_tril):
    """H[N(μ, LLᵀ)] equals scipy's multivariate normal entropy."""
    dtype, rtol = precision
    scale_tril = random_tril(3, (4,))
    expected = [stats.multivariate_normal(np.zeros(3), s @ s.T).entropy() for s in scale_tril]
    np.testing.assert_allclose(vaejax.mvn_tril_entropy(jnp.asarray(scale_tril, dtype)), expected,
                               rtol=rtol)
