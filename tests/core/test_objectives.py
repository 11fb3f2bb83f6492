"""ELBO forms, IWAE bound and importance-sampled log p(x) on the linear-Gaussian oracle."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special

import vaejax

PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)
NUM_DRAWS = 20_000


def exact_elbo(model, x, mean, cov):
    """E_q[log p(x|z)] − KL(q ‖ N(0, I)) for q = N(mean, cov), in closed form in float64."""
    weight, bias = np.asarray(model.weight, np.float64), np.asarray(model.bias, np.float64)
    sigma = np.exp(np.float64(model.log_scale))
    x, mean, cov = (np.asarray(a, np.float64) for a in (x, mean, cov))
    residual = x - mean @ weight.T - bias
    spread = np.einsum("ij,...jk,ik->...", weight, cov, weight)
    expected_log_lik = (-(np.sum(residual**2, axis=-1) + spread) / (2 * sigma**2)
                        - weight.shape[0] * np.log(sigma * np.sqrt(2 * np.pi)))
    kl = 0.5 * (np.trace(cov, axis1=-2, axis2=-1) + np.sum(mean**2, axis=-1) - mean.shape[-1]
                - np.linalg.slogdet(cov)[1])
    return expected_log_lik - kl


def covariance(posterior):
    """The float64 covariance matrix of a DiagonalGaussian or CholeskyGaussian."""
    if isinstance(posterior, vaejax.DiagonalGaussian):
        return np.exp(np.asarray(posterior.log_var, np.float64))[..., None] * np.eye(
            posterior.mean.shape[-1])
    scale_tril = np.asarray(posterior.scale_tril, np.float64)
    return scale_tril @ np.swapaxes(scale_tril, -1, -2)


def poor_posterior(model, x, shift=1.0, widen=1.5):
    """The exact posterior with its mean moved by `shift` standard deviations and L scaled."""
    exact = model.posterior(x)
    sd = jnp.sqrt(jnp.diagonal(exact.scale_tril @ jnp.swapaxes(exact.scale_tril, -1, -2),
                               axis1=-2, axis2=-1))
    return vaejax.CholeskyGaussian(exact.mean + shift * sd, widen * exact.scale_tril)


def diagonal_posterior(model, x):
    """A mean-field q: the exact posterior mean moved by 0.3, with the exact marginal variances."""
    exact = model.posterior(x)
    variances = jnp.sum(exact.scale_tril**2, axis=-1)
    return vaejax.DiagonalGaussian(exact.mean + 0.3, jnp.log(variances))


@functools.partial(jax.jit, static_argnames=("form", "num_draws"))
def elbo_draws(model, x, posterior, form="analytic", num_draws=NUM_DRAWS):
    """Single-draw ELBO estimates for num_draws independent keys, shape (num_draws, batch)."""
    keys = jax.random.split(jax.random.key(7), num_draws)
    return jax.vmap(lambda k: vaejax.elbo(k, x, posterior, model.log_likelihood,
                                          form=form).elbo)(keys)


def assert_mean_within_se(draws, expected, num_se=5.0, atol=1e-4):
    draws = np.asarray(draws, np.float64)
    se = draws.std(axis=0) / np.sqrt(draws.shape[0])
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - expected), num_se * se + atol)


def test_monte_carlo_elbo_of_exact_posterior_is_log_evidence_for_every_draw(linear_gaussian):
    """With q = p(z|x), log p(x|z) + log p(z) − log q(z|x) = log p(x) for each single draw."""
    model, x = linear_gaussian
    log_evidence = model.log_marginal(x)
    for seed in range(5):
        terms = vaejax.elbo(jax.random.key(seed), x, model.posterior(x), model.log_likelihood,
                            num_samples=1, form="monte_carlo")
        np.testing.assert_allclose(terms.elbo, log_evidence, rtol=1e-5, atol=1e-4)


def test_log_weights_of_exact_posterior_are_all_log_evidence(linear_gaussian):
    """With q = p(z|x) every importance weight is p(x), so log w_k = log p(x) for all k."""
    model, x = linear_gaussian
    log_weights = vaejax.log_importance_weights(jax.random.key(1), x, model.posterior(x),
                                                model.log_likelihood, 16)
    assert log_weights.shape == (16, x.shape[0])
    np.testing.assert_allclose(log_weights, jnp.broadcast_to(model.log_marginal(x), (16, 6)),
                               rtol=1e-5, atol=1e-4)


def test_closed_form_elbo_of_exact_posterior_is_log_evidence(linear_gaussian):
    """The float64 closed-form ELBO of the exact posterior equals log p(x) (oracle sanity)."""
    model, x = linear_gaussian
    exact = model.posterior(x)
    np.testing.assert_allclose(exact_elbo(model, x, exact.mean, covariance(exact)),
                               model.log_marginal(x), rtol=1e-5)


def test_analytic_elbo_of_exact_posterior_is_log_evidence_in_expectation(linear_gaussian):
    """mean_s log p(x|z_s) − KL with q = p(z|x) averages to log p(x)."""
    model, x = linear_gaussian
    assert_mean_within_se(elbo_draws(model, x, model.posterior(x)), model.log_marginal(x))


def test_evidence_minus_elbo_is_kl_to_the_exact_posterior(linear_gaussian):
    """log p(x) − ELBO(q) = KL(q ‖ p(z|x)), with the KL from kl_mvn_tril."""
    model, x = linear_gaussian
    q, exact = poor_posterior(model, x), model.posterior(x)
    kl = vaejax.kl_mvn_tril(q.mean, q.scale_tril, exact.mean, exact.scale_tril)
    assert np.all(kl > 1.0)
    np.testing.assert_allclose(model.log_marginal(x) - exact_elbo(model, x, q.mean, covariance(q)),
                               kl, rtol=1e-4)
    assert_mean_within_se(model.log_marginal(x) - elbo_draws(model, x, q), kl, atol=1e-3)


@pytest.mark.parametrize("form", ["analytic", "monte_carlo", "entropy"])
@pytest.mark.parametrize("family", ["diagonal", "cholesky"])
def test_every_elbo_form_is_unbiased(linear_gaussian, form, family):
    """Each form averages to the closed-form ELBO, for diagonal and full-covariance q."""
    model, x = linear_gaussian
    q = diagonal_posterior(model, x) if family == "diagonal" else poor_posterior(model, x)
    assert_mean_within_se(elbo_draws(model, x, q, form=form),
                          exact_elbo(model, x, q.mean, covariance(q)), atol=1e-3)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 4.0])
def test_elbo_terms_are_consistent(linear_gaussian, beta):
    """loss = −log_likelihood + β·kl; elbo = log_likelihood − kl for every β; rate and distortion."""
    model, x = linear_gaussian
    q = poor_posterior(model, x)
    key = jax.random.key(3)
    terms = vaejax.elbo(key, x, q, model.log_likelihood, num_samples=4, beta=beta)
    unweighted = vaejax.elbo(key, x, q, model.log_likelihood, num_samples=4)
    assert terms.elbo.shape == terms.loss.shape == terms.kl.shape == (6,)
    np.testing.assert_allclose(terms.loss, -terms.log_likelihood + beta * terms.kl, rtol=1e-6)
    np.testing.assert_allclose(terms.elbo, terms.log_likelihood - terms.kl, rtol=1e-6)
    np.testing.assert_array_equal(terms.elbo, unweighted.elbo)
    np.testing.assert_array_equal(terms.rate, terms.kl)
    np.testing.assert_array_equal(terms.distortion, -terms.log_likelihood)
    np.testing.assert_allclose(terms.kl, q.kl_standard_normal(), rtol=1e-6)
    assert np.all(terms.rate >= 0)


def test_beta_can_be_traced_under_jit(linear_gaussian):
    """A traced β weights the KL in the loss."""
    model, x = linear_gaussian
    q = poor_posterior(model, x)
    loss = jax.jit(lambda b: vaejax.elbo(jax.random.key(0), x, q, model.log_likelihood,
                                         beta=b).loss)
    terms = vaejax.elbo(jax.random.key(0), x, q, model.log_likelihood)
    np.testing.assert_allclose(loss(jnp.float32(2.5)), -terms.log_likelihood + 2.5 * terms.kl,
                               rtol=1e-5)


@pytest.mark.parametrize("beta", [-1.0, -1e-3, -2, float("inf"), float("nan")])
def test_negative_or_non_finite_beta_raises(linear_gaussian, beta):
    """β must be a finite number ≥ 0."""
    model, x = linear_gaussian
    with pytest.raises(ValueError, match="beta"):
        vaejax.elbo(jax.random.key(0), x, model.posterior(x), model.log_likelihood, beta=beta)


def test_unknown_elbo_form_raises(linear_gaussian):
    """An unknown form is a ValueError naming the choices."""
    model, x = linear_gaussian
    with pytest.raises(ValueError, match="form"):
        vaejax.elbo(jax.random.key(0), x, model.posterior(x), model.log_likelihood, form="exact")


def test_iwae_bound_with_one_sample_is_the_log_weight(rng):
    """L_1 = log w."""
    log_weights = rng.normal(scale=10.0, size=(1, 5)).astype(np.float32)
    np.testing.assert_array_equal(vaejax.iwae_bound(log_weights), log_weights[0])


@pytest.mark.parametrize("axis", [0, -1])
def test_iwae_bound_is_logsumexp_minus_log_k(precision, rng, axis):
    """L_K = logsumexp(log w) − log K along the sample axis, stable for large log-weights."""
    dtype, rtol = precision
    log_weights = rng.normal(scale=300.0, size=(7, 4, 3))
    expected = special.logsumexp(log_weights, axis=axis) - np.log(log_weights.shape[axis])
    actual = vaejax.iwae_bound(jnp.asarray(log_weights, dtype), axis=axis)
    np.testing.assert_allclose(actual, expected, rtol=rtol)


@PROPERTY
@given(log_weights=hnp.arrays(np.float32, (9,), elements=st.floats(-50, 50, width=32)))
def test_iwae_bound_lies_between_mean_and_max_log_weight(log_weights):
    """mean(log w) ≤ L_K ≤ max(log w) (Jensen, and averaging never exceeds the largest)."""
    bound = float(vaejax.iwae_bound(log_weights))
    assert np.mean(log_weights) - 1e-4 <= bound <= np.max(log_weights) + 1e-4


@functools.partial(jax.jit, static_argnames=("num_samples", "repeats"))
def iwae_bounds(model, x, posterior, num_samples, repeats=25):
    keys = jax.random.split(jax.random.key(num_samples), repeats)
    log_w = jax.vmap(lambda k: vaejax.log_importance_weights(
        k, x, posterior, model.log_likelihood, num_samples))(keys)
    return vaejax.iwae_bound(log_w, axis=1)


def test_iwae_bound_rises_toward_log_evidence(linear_gaussian):
    """For a poor q, E[L_K] is non-decreasing in K = 1, 10, 100, 1000 and closes the gap."""
    model, x = linear_gaussian
    q = poor_posterior(model, x)
    log_evidence = np.asarray(model.log_marginal(x), np.float64)
    gaps, errors = [], []
    for num_samples in [1, 10, 100, 1000]:
        gap = log_evidence - np.asarray(iwae_bounds(model, x, q, num_samples), np.float64)
        gaps.append(gap.mean())
        errors.append(gap.std() / np.sqrt(gap.size))
    for k in range(3):
        assert gaps[k + 1] <= gaps[k] + 3 * np.hypot(errors[k], errors[k + 1])
    assert gaps[0] > 1.0
    assert -5 * errors[-1] <= gaps[-1] < 0.02 * gaps[0] + 5 * errors[-1]


def test_importance_log_likelihood_converges_to_log_evidence(linear_gaussian):
    """With K = 5000 draws in chunks of 500 the estimate is within 0.05 nats of log p(x)."""
    model, x = linear_gaussian
    estimate = jax.jit(lambda q: vaejax.importance_log_likelihood(
        jax.random.key(2), x, q, model.log_likelihood, num_samples=5000, chunk_size=500))
    np.testing.assert_allclose(estimate(poor_posterior(model, x, shift=0.5, widen=1.2)),
                               model.log_marginal(x), atol=0.05)
    np.testing.assert_allclose(estimate(model.posterior(x)), model.log_marginal(x),
                               rtol=1e-5, atol=1e-4)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def importance_estimates(model, x, posterior, chunk_size):
    keys = jax.random.split(jax.random.key(chunk_size), 20)
    return jax.vmap(lambda k: vaejax.importance_log_likelihood(
        k, x, posterior, model.log_likelihood, num_samples=5000, chunk_size=chunk_size))(keys)


def test_chunking_keeps_the_estimator_distribution(linear_gaussian):
    """Chunks of 500 and one chunk of 5000 give estimates with one mean and spread."""
    model, x = linear_gaussian
    q = poor_posterior(model, x)
    log_evidence = model.log_marginal(x)
    chunked = np.asarray(importance_estimates(model, x, q, 500) - log_evidence, np.float64)
    whole = np.asarray(importance_estimates(model, x, q, 5000) - log_evidence, np.float64)
    se = np.hypot(chunked.std(), whole.std()) / np.sqrt(chunked.size)
    assert abs(chunked.mean() - whole.mean()) < 5 * se
    assert 0.67 < chunked.std() / whole.std() < 1.5
    assert abs(chunked.mean()) < 5 * chunked.std() / np.sqrt(chunked.size) + 0.01


@pytest.mark.parametrize("num_samples, chunk_size",
                         [(5000, 300), (1001, 500), (0, 500), (500, 0), (500, -5)])
def test_importance_log_likelihood_rejects_bad_sample_counts(linear_gaussian, num_samples,
                                                             chunk_size):
    """num_samples must be a positive multiple of a positive chunk_size."""
    model, x = linear_gaussian
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        vaejax.importance_log_likelihood(jax.random.key(0), x, model.posterior(x),
                                         model.log_likelihood, num_samples, chunk_size)


def test_importance_log_likelihood_with_fewer_samples_than_a_chunk(linear_gaussian):
    """num_samples below chunk_size runs as one chunk."""
    model, x = linear_gaussian
    estimate = vaejax.importance_log_likelihood(jax.random.key(0), x, model.posterior(x),
                                                model.log_likelihood, num_samples=30)
    np.testing.assert_allclose(estimate, model.log_marginal(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family", ["diagonal", "cholesky", "categorical"])
def test_sample_and_log_prob_is_sample_then_log_prob(linear_gaussian, family):
    """The same draw as `sample(key)` and the density `log_prob` gives it (where both are exact)."""
    model, x = linear_gaussian
    posterior = {"diagonal": diagonal_posterior(model, x), "cholesky": poor_posterior(model, x),
                 "categorical": vaejax.Categorical(jnp.log(jnp.arange(1.0, 7.0)).reshape(2, 3))
                 }[family]
    key = jax.random.key(3)
    z, log_q = posterior.sample_and_log_prob(key, 5)
    np.testing.assert_array_equal(z, posterior.sample(key, 5))
    np.testing.assert_allclose(log_q, posterior.log_prob(z), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family", ["diagonal", "cholesky"])
def test_log_weight_gradients_stay_exact_when_the_scale_is_tiny(family):
    """σ = e⁻⁵⁰ next to μ = 3: the pathwise gradient of log w is f'(z), with f = log p(x|z) + log p(z).

    log q taken from ε is −½‖ε‖² − Σ log σ, so ∂ log w/∂μ = f'(z) and ∂ log w/∂ log σ = σε·f'(z) + 1.
    Written with (z − μ)/σ, the two cancelling terms of size ε/σ overflow here.
    """
    mean, log_scale = jnp.full((1, 2), 3.0), jnp.full((1, 2), -50.0)

    def log_weight(mean, log_scale):
        posterior = (vaejax.DiagonalGaussian(mean, 2 * log_scale) if family == "diagonal" else
                     vaejax.CholeskyGaussian(mean, jnp.exp(log_scale)[..., None] * jnp.eye(2)))
        return vaejax.log_importance_weights(jax.random.key(0), jnp.zeros((1, 2)), posterior,
                                             lambda z, x: -jnp.sum((z - x)**2, -1), 1).sum()

    grad_mean, grad_log_scale = jax.grad(log_weight, argnums=(0, 1))(mean, log_scale)
    # f(z) = −‖z‖² − ½‖z‖² + const, so f'(z) = −3z, and z equals μ to float32 precision.
    np.testing.assert_allclose(grad_mean, -9.0 * np.ones((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(grad_log_scale, np.ones((1, 2)), atol=1e-6)
