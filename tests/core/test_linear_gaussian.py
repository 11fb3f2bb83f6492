"""The linear-Gaussian oracle against scipy and Gaussian conditioning in float64."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import vaejax


def build(oracle_params, dtype):
    return vaejax.LinearGaussian(
        **{name: jnp.asarray(value, dtype) for name, value in oracle_params.items()})


def marginal_covariance(params):
    weight = params["weight"]
    return weight @ weight.T + np.exp(2 * params["log_scale"]) * np.eye(weight.shape[0])


def test_log_marginal_matches_scipy(precision, oracle_params, rng):
    """log p(x) = log N(x; b, WWᵀ + σ²I) for a batch of points."""
    dtype, rtol = precision
    x = rng.normal(scale=2.0, size=(2, 3, 5))
    expected = stats.multivariate_normal(oracle_params["bias"],
                                         marginal_covariance(oracle_params)).logpdf(x)
    actual = build(oracle_params, dtype).log_marginal(jnp.asarray(x, dtype))
    assert actual.shape == (2, 3)
    np.testing.assert_allclose(actual, expected, rtol=rtol)


def test_posterior_matches_joint_gaussian_conditioning(precision, oracle_params, rng):
    """p(z|x) equals the conditional of the joint Gaussian of (z, x)."""
    dtype, rtol = precision
    weight, bias = oracle_params["weight"], oracle_params["bias"]
    x = rng.normal(scale=2.0, size=(4, 5))
    gain = weight.T @ np.linalg.inv(marginal_covariance(oracle_params))
    expected_mean = (x - bias) @ gain.T
    expected_cov = np.eye(2) - gain @ weight
    posterior = build(oracle_params, dtype).posterior(jnp.asarray(x, dtype))
    assert isinstance(posterior, vaejax.CholeskyGaussian)
    assert posterior.mean.shape == (4, 2) and posterior.scale_tril.shape == (4, 2, 2)
    scale_tril = np.asarray(posterior.scale_tril, np.float64)
    np.testing.assert_array_equal(np.triu(scale_tril, k=1), 0.0)
    np.testing.assert_allclose(posterior.mean, expected_mean, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(scale_tril @ np.swapaxes(scale_tril, -1, -2),
                               np.broadcast_to(expected_cov, (4, 2, 2)), rtol=rtol, atol=rtol)


def test_posterior_of_a_single_point_is_unbatched(linear_gaussian):
    """An unbatched x (D,) gives a posterior with mean (d,) and scale_tril (d, d)."""
    model, x = linear_gaussian
    posterior = model.posterior(x[0])
    assert posterior.mean.shape == (2,) and posterior.scale_tril.shape == (2, 2)
    np.testing.assert_allclose(posterior.mean, model.posterior(x).mean[0], rtol=1e-6)


def test_log_likelihood_matches_scipy(oracle_params, linear_gaussian, rng):
    """log p(x|z) = Σ log N(x_i; (Wz + b)_i, σ²), with sample axes broadcasting against x."""
    model, x = linear_gaussian
    z = rng.normal(size=(3, 6, 2))
    mean = z @ oracle_params["weight"].T + oracle_params["bias"]
    expected = stats.norm(mean, np.exp(oracle_params["log_scale"])).logpdf(
        np.asarray(x, np.float64)).sum(axis=-1)
    np.testing.assert_allclose(model.log_likelihood(jnp.asarray(z, jnp.float32), x), expected,
                               rtol=1e-5)


def test_bayes_rule_holds_pointwise(linear_gaussian, rng):
    """log p(z|x) = log p(x|z) + log p(z) − log p(x) at arbitrary z."""
    model, x = linear_gaussian
    z = jnp.asarray(rng.normal(scale=1.5, size=(5, 6, 2)), jnp.float32)
    posterior = model.posterior(x)
    joint = model.log_likelihood(z, x) + vaejax.standard_normal_log_prob(z)
    np.testing.assert_allclose(posterior.log_prob(z), joint - model.log_marginal(x),
                               rtol=1e-4, atol=1e-4)


def test_samples_have_the_marginal_moments(oracle_params, linear_gaussian, check_moments):
    """Draws of x have mean b and covariance WWᵀ + σ²I."""
    model, _ = linear_gaussian
    draws = model.sample(jax.random.key(11), 100_000)
    assert draws.shape == (100_000, 5)
    check_moments(draws, oracle_params["bias"], marginal_covariance(oracle_params))
