"""Reconstruction log-likelihoods: Bernoulli, Gaussian and continuous Bernoulli."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

import vaejax

CB_LOGITS = [-50.0, -5.0, -0.3, -1e-4, 0.0, 1e-3, 2.0, 30.0]
# Either side of the switch between the series and the closed form (|η| = 0.5).
CB_LOGITS_NEAR_ZERO = [-0.501, -0.499, 0.499, 0.501, 0.05]


def reference_binary_cross_entropy(logits, x):
    """−[x log σ(l) + (1 − x) log(1 − σ(l))] elementwise, in float64."""
    p = special.expit(np.asarray(logits, np.float64))
    return -(x * np.log(p) + (1.0 - x) * np.log1p(-p))


@pytest.mark.parametrize("shape, event_ndims", [((4, 6), 1), ((2, 4, 4, 3), 3)])
def test_bernoulli_is_minus_summed_cross_entropy(precision, rng, shape, event_ndims):
    """log Bern(x; σ(l)) summed over the event equals minus the summed cross-entropy."""
    dtype, rtol = precision
    logits = rng.normal(scale=3.0, size=(3, *shape))
    x = rng.uniform(size=shape)
    x[..., 0] = np.round(x[..., 0])
    event_axes = tuple(range(-event_ndims, 0))
    expected = -reference_binary_cross_entropy(logits, x).sum(axis=event_axes)
    actual = vaejax.bernoulli_log_likelihood(jnp.asarray(logits, dtype), jnp.asarray(x, dtype),
                                             event_ndims=event_ndims)
    assert actual.shape == (3, shape[0])
    np.testing.assert_allclose(actual, expected, rtol=rtol)


def test_bernoulli_is_exact_and_finite_at_extreme_logits():
    """At logits ±1e4 the per-pixel value is 0 or −1e4 and the gradient x − σ(l) is finite."""
    logits = jnp.array([1e4, 1e4, -1e4, -1e4], jnp.float32)
    x = jnp.array([1.0, 0.0, 0.0, 1.0], jnp.float32)
    per_pixel = vaejax.bernoulli_log_likelihood(logits, x, event_ndims=0)
    np.testing.assert_allclose(per_pixel, [0.0, -1e4, 0.0, -1e4], rtol=1e-7, atol=1e-6)
    grad = jax.grad(lambda l: vaejax.bernoulli_log_likelihood(l, x))(logits)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [0.0, -1.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(vaejax.bernoulli_log_likelihood(logits, x), -2e4)


def test_bernoulli_gradient_is_data_minus_probability(rng):
    """∂/∂l log Bern(x; σ(l)) = x − σ(l)."""
    logits, x = rng.normal(scale=3.0, size=(2, 5, 7)).astype(np.float32)
    x = special.expit(x)
    grad = jax.grad(lambda l: vaejax.bernoulli_log_likelihood(l, x).sum())(logits)
    np.testing.assert_allclose(grad, x - special.expit(logits.astype(np.float64)), atol=1e-6)


def test_bernoulli_derivatives_are_exact_at_zero_logit():
    """At l = 0, where the stable form's max and |·| have kinks: ∂ = x − ½ and ∂² = −¼."""
    x = jnp.float32(0.3)
    log_lik = lambda l: vaejax.bernoulli_log_likelihood(l, x, event_ndims=0)
    np.testing.assert_allclose(jax.grad(log_lik)(0.0), -0.2, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(jax.grad(log_lik))(0.0), -0.25, rtol=1e-6)


@pytest.mark.parametrize("log_scale_shape", [(), (1, 6)])
def test_gaussian_matches_closed_form_and_scipy(precision, rng, log_scale_shape):
    """log N(x; m, σ²I) = −SSE/2σ² − D log(σ√2π), and equals scipy's norm.logpdf summed."""
    dtype, rtol = precision
    mean, x = rng.normal(size=(2, 4, 6))
    log_scale = rng.normal(scale=0.5, size=log_scale_shape)
    sigma = np.exp(log_scale)
    actual = vaejax.gaussian_log_likelihood(*(jnp.asarray(a, dtype) for a in (mean, x, log_scale)))
    expected = stats.norm(mean, sigma).logpdf(x).sum(axis=-1)
    np.testing.assert_allclose(actual, expected, rtol=rtol)
    if not log_scale_shape:
        closed = (-np.sum((x - mean)**2, axis=-1) / (2 * sigma**2)
                  - 6 * np.log(sigma * np.sqrt(2 * np.pi)))
        np.testing.assert_allclose(actual, closed, rtol=rtol)


def test_gaussian_sums_image_events_and_broadcasts_samples(rng):
    """With event_ndims=3 an (S, B, H, W, C) mean and (B, H, W, C) data give (S, B)."""
    mean = rng.normal(size=(3, 2, 4, 4, 1)).astype(np.float32)
    x = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
    actual = vaejax.gaussian_log_likelihood(mean, x, event_ndims=3)
    expected = stats.norm(mean, 1.0).logpdf(x).sum(axis=(-3, -2, -1))
    assert actual.shape == (3, 2)
    np.testing.assert_allclose(actual, expected, rtol=1e-5)


_cb_density = jax.jit(lambda eta, x: jnp.exp(
    vaejax.continuous_bernoulli_log_likelihood(eta, x, event_ndims=0)))


def _cb_moment(eta, power):
    """∫₀¹ xᵖ CB(x; η) dx by quadrature of the float64 density η e^(ηx)/(e^η − 1)."""
    eta = float(eta)
    log_norm = np.log(np.expm1(eta) / eta) if eta else 0.0
    return integrate.quad(lambda x: x**power * np.exp(eta * x - log_norm), 0.0, 1.0,
                          epsabs=1e-13, epsrel=1e-12)[0]


@pytest.mark.parametrize("eta", CB_LOGITS + CB_LOGITS_NEAR_ZERO)
def test_continuous_bernoulli_integrates_to_one(precision, eta):
    """The continuous Bernoulli density integrates to 1 over [0, 1]."""
    dtype, _ = precision
    tol = 1e-10 if dtype == np.float64 else 1e-6
    total, _ = integrate.quad(lambda x: float(_cb_density(dtype(eta), dtype(x))), 0.0, 1.0,
                              epsabs=tol, epsrel=tol)
    np.testing.assert_allclose(total, 1.0, rtol=100 * tol)


@pytest.mark.parametrize("eta", CB_LOGITS + CB_LOGITS_NEAR_ZERO)
def test_continuous_bernoulli_mean_is_the_quadrature_mean(precision, eta):
    """continuous_bernoulli_mean equals ∫ x CB(x; η) dx."""
    dtype, _ = precision
    expected = _cb_moment(eta, 1)
    actual = vaejax.continuous_bernoulli_mean(jnp.asarray(eta, dtype))
    np.testing.assert_allclose(actual, expected, atol=1e-7 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("eta", [0.0, 1e-4, -1e-3, -0.501, 0.499, 0.501, 0.3, -2.0])
def test_continuous_bernoulli_gradients_are_finite_and_exact(precision, eta):
    """As an exponential family in η: ∂ log CB(x)/∂η = x − E[x] and ∂E[x]/∂η = Var[x]."""
    dtype, _ = precision
    x = 0.3
    mean = _cb_moment(eta, 1)
    variance = _cb_moment(eta, 2) - mean**2
    grad_log_lik = jax.grad(lambda e: vaejax.continuous_bernoulli_log_likelihood(
        e, jnp.asarray(x, dtype), event_ndims=0))(jnp.asarray(eta, dtype))
    grad_mean = jax.grad(vaejax.continuous_bernoulli_mean)(jnp.asarray(eta, dtype))
    assert np.isfinite(grad_log_lik) and np.isfinite(grad_mean)
    float64 = dtype == np.float64
    np.testing.assert_allclose(grad_log_lik, x - mean, rtol=1e-5 if float64 else 1e-3)
    np.testing.assert_allclose(grad_mean, variance, rtol=1e-4 if float64 else 2e-3)


def test_continuous_bernoulli_sums_image_events(rng):
    """With event_ndims=3 the per-pixel log-densities are summed per image."""
    logits = rng.normal(scale=2.0, size=(2, 3, 4, 4, 1)).astype(np.float32)
    x = rng.uniform(size=(3, 4, 4, 1)).astype(np.float32)
    per_pixel = vaejax.continuous_bernoulli_log_likelihood(logits, x, event_ndims=0)
    summed = vaejax.continuous_bernoulli_log_likelihood(logits, x, event_ndims=3)
    assert summed.shape == (2, 3)
    np.testing.assert_allclose(summed, per_pixel.sum(axis=(-3, -2, -1)), rtol=1e-5)
