"""Posterior and prior contracts: one noise draw, priors' densities, KL by pair of types."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

import vaejax


def test_one_noise_draw_when_mean_and_log_var_dtypes_differ():
    """float32 mean, float64 log-variance: log q is the density of the z that was drawn."""
    with jax.enable_x64(True):
        q = vaejax.DiagonalGaussian(jnp.asarray([0.3, -1.2], jnp.float32),
                                    jnp.asarray([0.2, -0.7], jnp.float64))
        z, log_q = q.sample_and_log_prob(jax.random.key(0), 4)
        np.testing.assert_allclose(log_q, q.log_prob(z), rtol=1e-6)
        np.testing.assert_array_equal(z, q.sample(jax.random.key(0), 4))


@pytest.mark.parametrize("family", ["diagonal", "cholesky", "categorical"])
def test_posteriors_meet_the_contract(family):
    q = {"diagonal": vaejax.DiagonalGaussian(jnp.zeros((3, 2)), jnp.zeros((3, 2))),
         "cholesky": vaejax.CholeskyGaussian(jnp.zeros((3, 2)), jnp.broadcast_to(jnp.eye(2), (3, 2, 2))),
         "categorical": vaejax.Categorical(jnp.zeros((3, 2, 4)))}[family]
    assert isinstance(q, vaejax.Posterior)
    assert q.mode().shape == q.mean.shape == q.sample(jax.random.key(0)).shape


def test_categorical_mean_mode_entropy():
    logits = jnp.log(jnp.asarray([[[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]]]))
    q = vaejax.Categorical(logits)
    probs = np.exp(np.asarray(logits, np.float64))
    np.testing.assert_allclose(q.mean, probs, rtol=1e-6)
    np.testing.assert_array_equal(q.mode(), [[[0, 1, 0], [1, 0, 0]]])
    np.testing.assert_allclose(q.entropy(), [-np.sum(probs * np.log(probs))], rtol=1e-6)


def test_standard_normal_and_uniform_categorical_priors():
    key = jax.random.key(0)
    normal = vaejax.StandardNormal(3)
    z = normal.sample(key, 5)
    assert z.shape == (5, 3) and isinstance(normal, vaejax.Prior)
    np.testing.assert_allclose(normal.log_prob(z), stats.norm.logpdf(np.asarray(z)).sum(-1), rtol=1e-5)
    uniform = vaejax.UniformCategorical(4, 10)
    one_hot = uniform.sample(key, 2000)
    assert one_hot.shape == (2000, 4, 10) and np.all(np.asarray(one_hot).sum(-1) == 1)
    np.testing.assert_allclose(uniform.log_prob(one_hot), np.full(2000, -4 * np.log(10)), rtol=1e-6)
    # Every category drawn about equally often: each count within 5 standard errors of n/K.
    counts = np.asarray(one_hot).reshape(-1, 10).sum(0)
    assert np.all(np.abs(counts - 800) < 5 * np.sqrt(800 * 0.9))


def _mixture():
    return vaejax.MixtureOfGaussians(jnp.log(jnp.asarray([0.2, 0.5, 0.3])),
                                     jnp.asarray([[-2.0, 0.0], [1.0, 1.0], [3.0, -1.0]]),
                                     jnp.log(jnp.asarray([[0.5, 1.0], [0.3, 0.2], [1.5, 0.7]])))


def test_mixture_log_prob_against_a_float64_reference():
    prior = _mixture()
    z = np.random.default_rng(0).normal(size=(7, 2)) * 2
    weights = np.asarray([0.2, 0.5, 0.3])
    per = [stats.multivariate_normal(np.asarray(prior.means[c], np.float64),
                                     np.diag(np.exp(np.asarray(prior.log_vars[c], np.float64)))).logpdf(z)
           for c in range(3)]
    expected = special.logsumexp(np.stack(per, -1) + np.log(weights), axis=-1)
    np.testing.assert_allclose(prior.log_prob(z), expected, rtol=1e-5)


def test_mixture_density_integrates_to_one_and_samples_match_its_moments():
    one_d = vaejax.MixtureOfGaussians(jnp.asarray([0.0, 1.0]), jnp.asarray([[-1.0], [2.0]]),
                                      jnp.log(jnp.asarray([[0.25], [1.0]])))
    grid = np.linspace(-12, 14, 20001)[:, None]
    assert abs(np.trapezoid(np.exp(np.asarray(one_d.log_prob(grid), np.float64)), grid[:, 0]) - 1) < 1e-5
    prior = _mixture()
    draws = np.asarray(prior.sample(jax.random.key(1), 200_000), np.float64)
    w = np.exp(np.asarray(jax.nn.log_softmax(prior.logits), np.float64))
    mean = w @ np.asarray(prior.means)
    second = w @ (np.asarray(prior.means) ** 2 + np.exp(np.asarray(prior.log_vars)))
    se = draws.std(0) / np.sqrt(len(draws))
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 5 * se)
    np.testing.assert_allclose((draws**2).mean(0), second, rtol=2e-2)


def test_kl_dispatch_uses_the_registered_closed_forms(random_tril):
    mean, log_var = jnp.asarray([[0.5, -1.0]]), jnp.asarray([[0.2, -0.3]])
    q = vaejax.DiagonalGaussian(mean, log_var)
    np.testing.assert_allclose(vaejax.kl_divergence(q, vaejax.StandardNormal(2)),
                               vaejax.kl_standard_normal(mean, log_var), rtol=1e-6)
    p = vaejax.DiagonalGaussian(jnp.zeros(2), jnp.asarray([0.1, 0.4]))
    np.testing.assert_allclose(vaejax.kl_divergence(q, p),
                               vaejax.kl_diag_normals(mean, log_var, jnp.zeros((1, 2)),
                                                      jnp.asarray([[0.1, 0.4]])), rtol=1e-6)
    lq, lp = (jnp.asarray(random_tril(2), jnp.float32) for _ in range(2))
    np.testing.assert_allclose(
        vaejax.kl_divergence(vaejax.CholeskyGaussian(mean[0], lq), vaejax.CholeskyGaussian(jnp.zeros(2), lp)),
        vaejax.kl_mvn_tril(mean[0], lq, jnp.zeros(2), lp), rtol=1e-5)
    c = vaejax.Categorical(jnp.asarray([[0.0, 1.0, 2.0]]))
    np.testing.assert_allclose(vaejax.kl_divergence(c, vaejax.UniformCategorical(1, 3)),
                               vaejax.kl_divergence(c, vaejax.Categorical(jnp.zeros((1, 3)))), rtol=1e-6)


class _Shifted(vaejax.DiagonalGaussian):
    """A subclass: finds its parent's registered KL."""


class _Unregistered(vaejax.StandardNormal):
    pass


def test_subclasses_dispatch_and_monte_carlo_fallback():
    q = _Shifted(jnp.asarray([0.5, -1.0]), jnp.asarray([0.2, -0.3]))
    exact = float(vaejax.kl_standard_normal(q.mean, q.log_var))
    assert float(vaejax.kl_divergence(q, vaejax.StandardNormal(2))) == pytest.approx(exact, rel=1e-6)

    @vaejax.register_kl(_Shifted, _Unregistered)
    def _(q, p):
        return jnp.float32(-1.0)

    assert float(vaejax.kl_divergence(q, _Unregistered(2))) == -1.0  # the most specific entry
    mixture = vaejax.MixtureOfGaussians(jnp.zeros(1), jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="no closed-form KL .*DiagonalGaussian, MixtureOfGaussians"):
        vaejax.kl_divergence(vaejax.DiagonalGaussian(q.mean, q.log_var), mixture)
    # A one-component mixture is N(0, I): the Monte Carlo estimate converges to the exact KL.
    draws = vaejax.kl_divergence(vaejax.DiagonalGaussian(q.mean, q.log_var), mixture,
                                 key=jax.random.key(0), num_samples=100_000)
    z, log_q = vaejax.DiagonalGaussian(q.mean, q.log_var).sample_and_log_prob(jax.random.key(0), 100_000)
    se = float(jnp.std(log_q - mixture.log_prob(z))) / np.sqrt(100_000)
    assert abs(float(draws) - exact) < 5 * se


def test_elbo_takes_the_prior(linear_gaussian):
    """The ELBO with an explicit N(0, I) is the default; with a mixture prior the analytic
    form falls back to the Monte Carlo KL on the same draws."""
    model, x = linear_gaussian
    q = model.posterior(x)
    key = jax.random.key(2)
    default = vaejax.elbo(key, x, q, model.log_likelihood)
    explicit = vaejax.elbo(key, x, q, model.log_likelihood, prior=vaejax.StandardNormal(2))
    np.testing.assert_array_equal(default.elbo, explicit.elbo)
    mixture = vaejax.MixtureOfGaussians(jnp.zeros(1), jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    analytic = vaejax.elbo(key, x, q, model.log_likelihood, prior=mixture, num_samples=8)
    monte_carlo = vaejax.elbo(key, x, q, model.log_likelihood, prior=mixture, num_samples=8,
                              form="monte_carlo")
    np.testing.assert_allclose(analytic.elbo, monte_carlo.elbo, rtol=1e-6)
    # q is the exact posterior and the one-component mixture is the model's prior: ELBO = log p(x).
    np.testing.assert_allclose(analytic.elbo, model.log_marginal(x), rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=4, max_size=4))
def test_kl_between_diagonal_gaussians_is_non_negative_and_zero_on_the_diagonal(values):
    q = vaejax.DiagonalGaussian(jnp.asarray(values[:2]), jnp.asarray(values[2:]))
    p = vaejax.DiagonalGaussian(jnp.asarray(values[2:]), jnp.asarray(values[:2]))
    assert float(vaejax.kl_divergence(q, p)) >= -1e-5
    assert abs(float(vaejax.kl_divergence(q, q))) < 1e-5
