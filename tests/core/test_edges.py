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


BAD_ARGUMENTS = {
    "mvn_tril_entropy non-square": (lambda: vaejax.mvn_tril_entropy(jnp.ones((3, 2))),
                                    r"\(\.\.\., d, d\)"),
    "bernoulli x": (lambda: vaejax.bernoulli_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2, 4))),
                    "broadcast.*x"),
    "gaussian x": (lambda: vaejax.gaussian_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2, 4))),
                   "broadcast.*x"),
    "gaussian log_scale": (lambda: vaejax.gaussian_log_likelihood(
        jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(2)), "broadcast.*log_scale"),
    "continuous_bernoulli x": (lambda: vaejax.continuous_bernoulli_log_likelihood(
        jnp.zeros((2, 3)), jnp.zeros((2, 4))), "broadcast.*x"),
    "diag_normal_log_prob z": (lambda: vaejax.diag_normal_log_prob(
        jnp.zeros((2, 4)), jnp.zeros((2, 3)), jnp.zeros((2, 3))), "broadcast.*z"),
    "mvn_tril_log_prob z": (lambda: vaejax.mvn_tril_log_prob(
        jnp.zeros((2, 4)), jnp.zeros(3), jnp.eye(3)), "broadcast.*z"),
    "categorical_log_prob one_hot": (lambda: vaejax.categorical_log_prob(
        jnp.zeros((2, 3)), jnp.zeros((2, 4))), "broadcast.*one_hot"),
    "score_function_surrogate": (lambda: vaejax.score_function_surrogate(
        jnp.zeros(3), jnp.zeros(4)), "broadcast.*value"),
    "iwae_bound scalar": (lambda: vaejax.iwae_bound(jnp.float32(1.0)), "no axis 0"),
    "iwae_bound axis": (lambda: vaejax.iwae_bound(jnp.zeros((2, 3)), axis=5), "no axis 5"),
    "iwae_bound K = 0": (lambda: vaejax.iwae_bound(jnp.zeros((0, 3))), ">= 1 samples"),
    "leave_one_out_baseline axis": (lambda: vaejax.leave_one_out_baseline(jnp.zeros(3), axis=1),
                                    "no axis 1"),
    "reparameterize num_samples": (lambda: vaejax.reparameterize(
        KEY, jnp.zeros(3), jnp.zeros(3), num_samples=-1), "num_samples must be >= 0"),
    "posterior num_samples": (lambda: _diagonal().sample(KEY, -2), "num_samples must be >= 0"),
    "Categorical num_samples": (lambda: vaejax.Categorical(jnp.zeros((2, 3))).sample(KEY, -1),
                                "num_samples must be >= 0"),
    "gumbel_softmax temperature 0": (lambda: vaejax.gumbel_softmax(KEY, jnp.zeros(3), 0.0),
                                     "temperature"),
    "gumbel_softmax temperature < 0": (lambda: vaejax.gumbel_softmax(
        KEY, jnp.zeros(3), np.float32(-1.0)), "temperature"),
    "elbo num_samples 0": (lambda: vaejax.elbo(KEY, jnp.zeros((2, 1)), _diagonal(),
                                               _log_likelihood, num_samples=0),
                           "num_samples must be >= 1"),
    "corrupt level > 1": (lambda: vaejax.corrupt(KEY, jnp.ones(4), 1.5), "level"),
    "corrupt level < 0": (lambda: vaejax.corrupt(KEY, jnp.ones(4), -0.1, "gaussian"), "level"),
    "beta numpy": (lambda: vaejax.elbo(KEY, jnp.zeros((2, 1)), _diagonal(), _log_likelihood,
                                       beta=np.float32(-1.0)), "beta"),
    "beta jax": (lambda: vaejax.elbo(KEY, jnp.zeros((2, 1)), _diagonal(), _log_likelihood,
                                     beta=jnp.float32(-1.0)), "beta"),
    "beta nan": (lambda: vaejax.elbo(KEY, jnp.zeros((2, 1)), _diagonal(), _log_likelihood,
                                     beta=float("nan")), "beta"),
}


@pytest.mark.parametrize("name", list(BAD_ARGUMENTS))
def test_bad_arguments_raise_a_clear_value_error(name):
    call, message = BAD_ARGUMENTS[name]
    with pytest.raises(ValueError, match=message):
        call()


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
