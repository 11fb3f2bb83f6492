"""The core at its edges: integer inputs, infinities, empty batches and bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaejax

KEY = jax.random.key(0)
NEG_INF_LOGITS = jnp.asarray([[0.0, -jnp.inf, 1.0]])


def _diagonal(batch=2, d=3):
    return vaejax.DiagonalGaussian(jnp.zeros((batch, d)), jnp.zeros((batch, d)))


def _log_likelihood(z, x):
    return -jnp.sum((z[..., :1] - x)**2, axis=-1)


def test_iwae_bound_promotes_integer_log_weights():
    """log K is not rounded: logsumexp(0..4) − log 5, not − 1."""
    expected = np.log(np.sum(np.exp(np.arange(5.0)))) - np.log(5.0)
    np.testing.assert_allclose(vaejax.iwae_bound(jnp.arange(5)), expected, rtol=1e-6)


def test_kl_diag_normals_of_a_tiny_variance_with_itself_is_zero():
    """0·exp(1e4) would be NaN; equal means add nothing, in the value and the gradient."""
    mean, log_var = jnp.zeros(2), jnp.full(2, -1e4)
    assert vaejax.kl_diag_normals(mean, log_var, mean, log_var) == 0.0
    grads = jax.grad(vaejax.kl_diag_normals, argnums=(0, 1, 2, 3))(mean, log_var, mean, log_var)
    assert all(np.all(np.isfinite(g)) for g in grads)


CATEGORICAL_WITH_NEG_INF = {
    "kl_categorical": lambda logits: vaejax.kl_categorical(logits, jnp.zeros_like(logits)),
    "kl_categorical against it": lambda logits: vaejax.kl_categorical(jnp.zeros_like(logits),
                                                                      logits),
    "categorical_log_prob": lambda logits: vaejax.categorical_log_prob(
        logits, jnp.asarray([[1.0, 0.0, 0.0]])),
    "Categorical.log_prob": lambda logits: vaejax.Categorical(logits[None]).log_prob(
        jnp.asarray([[[0.0, 0.0, 1.0]]])),
    "Categorical.entropy": lambda logits: vaejax.Categorical(logits[None]).entropy(),
    "Categorical.kl_uniform": lambda logits: vaejax.Categorical(logits[None]).kl_uniform(),
}


@pytest.mark.parametrize("name", list(CATEGORICAL_WITH_NEG_INF))
def test_a_category_of_logit_minus_infinity(name):
    """0·log 0 = 0: finite values and gradients, except KL(q‖p) = ∞ where p = 0 < q."""
    fn = CATEGORICAL_WITH_NEG_INF[name]
    q = np.asarray([1.0, 0.0, np.e]) / (1.0 + np.e)
    expected = {"kl_categorical": np.sum(q[[0, 2]] * np.log(3 * q[[0, 2]])),
                "kl_categorical against it": np.inf,
                "categorical_log_prob": np.log(q[0]),
                "Categorical.log_prob": np.log(q[2]),
                "Categorical.entropy": -np.sum(q[[0, 2]] * np.log(q[[0, 2]])),
                "Categorical.kl_uniform": np.sum(q[[0, 2]] * np.log(3 * q[[0, 2]]))}[name]
    np.testing.assert_allclose(jnp.sum(fn(NEG_INF_LOGITS)), expected, rtol=1e-5)
    if np.isfinite(expected):
        grad = jax.grad(lambda logits: jnp.sum(fn(logits)))(NEG_INF_LOGITS)
        assert np.all(np.isfinite(grad)) and grad[0, 1] == 0.0


def test_categorical_log_prob_of_an_impossible_category_is_minus_infinity():
    assert vaejax.categorical_log_prob(NEG_INF_LOGITS, jnp.asarray([[0.0, 1.0, 0.0]])) == -jnp.inf


@pytest.mark.parametrize("fn, logits", [
    (vaejax.continuous_bernoulli_mean, [-89.0, 89.0, 1e19, -1e19, 0.3]),
    (lambda logits: vaejax.continuous_bernoulli_log_likelihood(logits, jnp.full(5, 0.5)),
     [1e19, -1e19, 89.0, -89.0, 0.3]),
])
def test_continuous_bernoulli_gradients_are_finite_for_large_logits(fn, logits):
    """The branch `where` leaves unused must not see an input that overflows."""
    logits = jnp.asarray(logits, jnp.float32)
    grad = jax.grad(lambda eta: jnp.sum(fn(eta)))(logits)
    assert np.all(np.isfinite(fn(logits))) and np.all(np.isfinite(grad)), grad


def test_continuous_bernoulli_mean_is_accurate_for_negative_logits():
    """1/(1 − e^(−η)) − 1/η without cancellation: at η = −89 the mean is ≈ 1/89."""
    np.testing.assert_allclose(vaejax.continuous_bernoulli_mean(jnp.float32(-89.0)), 1 / 89,
                               rtol=1e-6)
    np.testing.assert_allclose(jax.grad(vaejax.continuous_bernoulli_mean)(jnp.float32(-89.0)),
                               1 / 89**2, rtol=1e-5)


EMPTY_BATCH = {
    "mvn_tril_log_prob": lambda: vaejax.mvn_tril_log_prob(
        jnp.zeros((0, 3)), jnp.zeros((0, 3)), jnp.zeros((0, 3, 3))),
    "mvn_tril_log_prob samples": lambda: vaejax.mvn_tril_log_prob(
        jnp.zeros((0, 2, 3)), jnp.zeros((2, 3)), jnp.broadcast_to(jnp.eye(3), (2, 3, 3))),
    "LinearGaussian.log_marginal": lambda: vaejax.LinearGaussian(
        jnp.ones((5, 2)), jnp.zeros(5), jnp.float32(0.0)).log_marginal(jnp.zeros((0, 5))),
    "contractive_penalty": lambda: vaejax.contractive_penalty(jnp.tanh, jnp.zeros((0, 3))),
}


@pytest.mark.parametrize("name", list(EMPTY_BATCH))
def test_per_example_functions_of_an_empty_batch_are_empty(name):
    assert EMPTY_BATCH[name]().shape[0] == 0


def test_value_checks_pass_traced_arguments_under_jit():
    """A traced β, τ or level is unknown at trace time: it is not checked, and does not fail."""
    loss = jax.jit(lambda beta: vaejax.elbo(KEY, jnp.zeros((2, 1)), _diagonal(), _log_likelihood,
                                            beta=beta).loss)(jnp.float32(0.5))
    assert loss.shape == (2,)
    assert jax.jit(lambda t: vaejax.gumbel_softmax(KEY, jnp.zeros(3), t))(0.5).shape == (3,)
    assert jax.jit(lambda level: vaejax.corrupt(KEY, jnp.ones(4), level))(0.5).shape == (4,)


def test_a_gaussian_noise_level_may_exceed_one():
    """For "gaussian" the level is a standard deviation, not a probability."""
    assert vaejax.corrupt(KEY, jnp.ones(4), 1.5, "gaussian").shape == (4,)


@pytest.mark.parametrize("fn", [
    lambda z, log_var: vaejax.diag_normal_log_prob(z, z, log_var),
    lambda z, log_var: vaejax.gaussian_log_likelihood(z, z, 0.5 * log_var),
])
def test_gaussian_densities_at_the_mean_of_a_tiny_variance_are_finite(fn):
    z, log_var = jnp.zeros(2), jnp.full(2, -1e4)
    assert np.isfinite(fn(z, log_var))
    assert np.all(np.isfinite(jax.grad(lambda v: jnp.sum(fn(z, v)))(log_var)))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_gumbel_softmax_is_finite_for_small_temperatures_and_impossible_categories(dtype):
    """(logits + g)/τ must not overflow, nor a −∞ logit make the gradient 0·∞."""
    logits = jnp.asarray([1e4, -jnp.inf, 0.0], dtype)
    fn = lambda logits, t: jnp.sum(vaejax.gumbel_softmax(KEY, logits, t)[:2])
    assert np.isfinite(fn(logits, 1e-3))
    grads = jax.grad(fn, argnums=(0, 1))(logits, jnp.asarray(1e-3, dtype))
    assert all(np.all(np.isfinite(g)) for g in grads), grads
