"""Score-function estimator, baselines, Gumbel-softmax and categorical densities."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special, stats

import vaejax

PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)
MU, SIGMA = 0.8, 0.6


def assert_mean_within_se(draws, expected, num_se=5.0):
    draws = np.asarray(draws, np.float64)
    se = draws.std(axis=0) / np.sqrt(draws.shape[0])
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - expected), num_se * se + 1e-6)


def test_surrogate_forward_value_is_the_value(rng):
    """The surrogate's value is f(z), whatever log q and the baseline."""
    log_prob, value, baseline = rng.normal(size=(3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(
        vaejax.score_function_surrogate(log_prob, value, baseline), value)


def test_surrogate_gradient_is_pathwise_plus_score_term():
    """∇ surrogate = ∇f + (f − b)·∇ log q, and the baseline gets no gradient."""
    theta, a, c, b = 1.3, 0.7, 2.0, 0.5

    def surrogate(theta, baseline):
        return vaejax.score_function_surrogate(a * theta, c * theta**2, baseline)

    grad_theta, grad_baseline = jax.grad(surrogate, argnums=(0, 1))(theta, b)
    np.testing.assert_allclose(grad_theta, 2 * c * theta + (c * theta**2 - b) * a, rtol=1e-6)
    assert grad_baseline == 0.0


def _gaussian_surrogate(key, mu, log_sigma):
    log_var = 2.0 * log_sigma
    z = jax.lax.stop_gradient(vaejax.reparameterize(key, mu, log_var))
    return vaejax.score_function_surrogate(vaejax.diag_normal_log_prob(z, mu, log_var),
                                           jnp.sum(z**2))


def _gaussian_pathwise(key, mu, log_sigma):
    return jnp.sum(vaejax.reparameterize(key, mu, 2.0 * log_sigma)**2)


@functools.partial(jax.jit, static_argnums=(0, 1))
def per_draw_gradients(objective, num_draws):
    """Per-draw gradients w.r.t. (μ, log σ) of E[z²] under N(MU, SIGMA²), shape (num_draws, 2)."""
    mu, log_sigma = jnp.array([MU]), jnp.log(jnp.array([SIGMA]))
    grads = jax.vmap(lambda k: jax.grad(objective, argnums=(1, 2))(k, mu, log_sigma))(
        jax.random.split(jax.random.key(0), num_draws))
    return jnp.concatenate(grads, axis=-1)


def test_score_function_agrees_with_reparameterization_and_has_more_variance(record_property):
    """Both estimators average to (2μ, 2σ²); the score-function one has a larger variance."""
    exact = np.array([2 * MU, 2 * SIGMA**2])
    score = np.asarray(per_draw_gradients(_gaussian_surrogate, 200_000), np.float64)
    pathwise = np.asarray(per_draw_gradients(_gaussian_pathwise, 200_000), np.float64)
    assert_mean_within_se(score, exact)
    assert_mean_within_se(pathwise, exact)
    ratio = score.var(axis=0) / pathwise.var(axis=0)
    record_property("variance_ratio_score_over_pathwise", ratio.tolist())
    print(f"score-function / reparameterization variance ratio (mu, log sigma): {ratio}")
    assert np.all(ratio > 1.5)


@functools.partial(jax.jit, static_argnums=(0,))
def per_group_gradients(use_baseline, num_groups=20_000, group_size=10):
    """Gradients w.r.t. (μ, log σ) averaged over groups of draws, shape (num_groups, 2)."""

    def estimate(key, mu, log_sigma):
        log_var = 2.0 * log_sigma
        z = jax.lax.stop_gradient(vaejax.reparameterize(key, mu, log_var, group_size))
        values = z[:, 0]**2
        baseline = vaejax.leave_one_out_baseline(values) if use_baseline else 0.0
        log_q = vaejax.diag_normal_log_prob(z, mu, log_var)
        return jnp.mean(vaejax.score_function_surrogate(log_q, values, baseline))

    mu, log_sigma = jnp.array([MU]), jnp.log(jnp.array([SIGMA]))
    grads = jax.vmap(lambda k: jax.grad(estimate, argnums=(1, 2))(k, mu, log_sigma))(
        jax.random.split(jax.random.key(1), num_groups))
    return jnp.concatenate(grads, axis=-1)


def test_leave_one_out_baseline_keeps_the_mean_and_lowers_the_variance(record_property):
    """With the leave-one-out baseline the estimator stays unbiased and its variance drops."""
    exact = np.array([2 * MU, 2 * SIGMA**2])
    plain = np.asarray(per_group_gradients(False), np.float64)
    baselined = np.asarray(per_group_gradients(True), np.float64)
    assert_mean_within_se(plain, exact)
    assert_mean_within_se(baselined, exact)
    ratio = baselined.var(axis=0) / plain.var(axis=0)
    record_property("variance_ratio_baseline_over_plain", ratio.tolist())
    assert np.all(ratio < 0.8)


@functools.partial(jax.jit, static_argnums=(2,))
def categorical_score_gradients(logits, table, num_draws):
    def surrogate(logits, key):
        one_hot = jax.nn.one_hot(jax.random.categorical(key, logits), logits.shape[-1])
        return vaejax.score_function_surrogate(vaejax.categorical_log_prob(logits, one_hot),
                                               one_hot @ table)

    keys = jax.random.split(jax.random.key(2), num_draws)
    return jax.vmap(lambda k: jax.grad(surrogate)(logits, k))(keys)


def test_score_function_matches_enumerated_categorical_gradient():
    """For z ~ Cat(softmax θ) the mean score-function gradient is ∇θ E[f] = p ⊙ (f − p·f)."""
    logits = np.array([0.5, -1.0, 1.5, 0.0])
    table = np.array([3.0, -2.0, 1.0, 5.0])
    p = special.softmax(logits)
    exact = p * (table - p @ table)
    per_draw = categorical_score_gradients(jnp.asarray(logits, jnp.float32),
                                           jnp.asarray(table, jnp.float32), 100_000)
    assert_mean_within_se(per_draw, exact)


@pytest.mark.parametrize("axis", [0, 1])
def test_leave_one_out_baseline_is_the_mean_of_the_others(rng, axis):
    """b_k = (Σ_j v_j − v_k)/(K − 1) along the sample axis."""
    values = rng.normal(size=(5, 4)).astype(np.float32)
    expected = (values.sum(axis=axis, keepdims=True) - values) / (values.shape[axis] - 1)
    np.testing.assert_allclose(vaejax.leave_one_out_baseline(values, axis=axis), expected,
                               rtol=1e-5, atol=1e-6)


def test_leave_one_out_baseline_has_no_gradient(rng):
    """The baseline is a constant for autodiff."""
    values = jnp.asarray(rng.normal(size=(6,)), jnp.float32)
    grad = jax.grad(lambda v: jnp.sum(vaejax.leave_one_out_baseline(v)))(values)
    np.testing.assert_array_equal(grad, 0.0)


def test_leave_one_out_baseline_needs_two_samples():
    """A single draw has no others to average."""
    with pytest.raises(ValueError, match=">= 2 samples"):
        vaejax.leave_one_out_baseline(jnp.ones((1, 3)))


def test_categorical_log_prob_matches_numpy(rng):
    """log Cat(z; softmax θ) picks the log-softmax of the drawn category; samples broadcast."""
    logits = rng.normal(scale=2.0, size=(3, 6))
    draws = rng.integers(0, 6, size=(4, 3))
    one_hot = np.eye(6)[draws]
    expected = np.take_along_axis(special.log_softmax(logits, axis=-1)[None],
                                  draws[..., None], axis=-1)[..., 0]
    actual = vaejax.categorical_log_prob(logits.astype(np.float32), one_hot.astype(np.float32))
    assert actual.shape == (4, 3)
    np.testing.assert_allclose(actual, expected, rtol=1e-5)


@PROPERTY
@given(logits=hnp.arrays(np.float32, (3, 5), elements=st.floats(-20, 20, width=32)),
       temperature=st.floats(0.05, 10.0), seed=st.integers(0, 2**31 - 1))
def test_gumbel_softmax_draws_lie_on_the_simplex(logits, temperature, seed):
    """Relaxed draws are non-negative and sum to 1; hard draws are exactly one-hot."""
    key = jax.random.key(seed)
    soft = np.asarray(vaejax.gumbel_softmax(key, logits, temperature))
    hard = np.asarray(vaejax.gumbel_softmax(key, logits, temperature, hard=True))
    assert soft.shape == hard.shape == logits.shape
    assert np.all(soft >= 0)
    np.testing.assert_allclose(soft.sum(axis=-1), 1.0, atol=1e-5)
    assert np.all((hard == 0) | (hard == 1))
    np.testing.assert_array_equal(hard.sum(axis=-1), 1.0)


def test_hard_gumbel_softmax_is_the_argmax_of_the_soft_draw(rng):
    """With one key, the hard draw is the one-hot argmax of the relaxed draw."""
    logits = jnp.asarray(rng.normal(scale=2.0, size=(50, 7)), jnp.float32)
    key = jax.random.key(4)
    soft = vaejax.gumbel_softmax(key, logits, 0.5)
    hard = vaejax.gumbel_softmax(key, logits, 0.5, hard=True)
    np.testing.assert_array_equal(hard, jax.nn.one_hot(jnp.argmax(soft, axis=-1), 7))


def test_hard_gumbel_softmax_has_the_straight_through_gradient(rng):
    """∇ of a function of the hard draw equals ∇ of the same function of the soft draw."""
    logits = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    key = jax.random.key(5)

    def objective(logits, temperature, hard):
        return jnp.sum(weights * vaejax.gumbel_softmax(key, logits, temperature, hard=hard))

    for temperature in [0.3, 1.0]:
        grad_hard = jax.grad(objective, argnums=(0, 1))(logits, temperature, True)
        grad_soft = jax.grad(objective, argnums=(0, 1))(logits, temperature, False)
        np.testing.assert_allclose(grad_hard[0], grad_soft[0], rtol=1e-6)
        np.testing.assert_allclose(grad_hard[1], grad_soft[1], rtol=1e-6)
        assert np.any(np.asarray(grad_hard[0]) != 0)


def test_gumbel_argmax_frequencies_match_softmax():
    """The argmax of 2e5 Gumbel-perturbed draws follows softmax(logits)."""
    logits = jnp.array([1.0, -0.5, 0.0, 2.0, -2.0])
    num_draws = 200_000
    draws = vaejax.gumbel_softmax(jax.random.key(6), jnp.broadcast_to(logits, (num_draws, 5)),
                                  1.0, hard=True)
    counts = np.asarray(draws.sum(axis=0), np.float64)
    p = special.softmax(np.asarray(logits, np.float64))
    se = np.sqrt(p * (1 - p) / num_draws)
    np.testing.assert_array_less(np.abs(counts / num_draws - p), 5 * se)
    assert stats.chisquare(counts, num_draws * p).pvalue > 1e-4
