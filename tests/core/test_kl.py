"""KL divergences: float64 references, Monte Carlo estimates and properties."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import special, stats

import vaejax

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True)
NUM_DRAWS = 100_000


def reference_kl_gaussians(mean_q, cov_q, mean_p, cov_p):
    """KL(N(μq, Σq) ‖ N(μp, Σp)) in float64 with an explicit inverse, per batch element."""
    mean_q, cov_q, mean_p, cov_p = (np.asarray(a, np.float64)
                                    for a in (mean_q, cov_q, mean_p, cov_p))
    precision_p = np.linalg.inv(cov_p)
    diff = mean_p - mean_q
    trace = np.einsum("...ij,...ji->...", precision_p, cov_q)
    quad = np.einsum("...i,...ij,...j->...", diff, precision_p, diff)
    log_det = np.linalg.slogdet(cov_p)[1] - np.linalg.slogdet(cov_q)[1]
    return 0.5 * (trace + quad - mean_q.shape[-1] + log_det)


def reference_kl_categorical(logits_q, logits_p):
    """Σ q (log q − log p) in float64."""
    log_q = special.log_softmax(np.asarray(logits_q, np.float64), axis=-1)
    log_p = special.log_softmax(np.asarray(logits_p, np.float64), axis=-1)
    return np.sum(np.exp(log_q) * (log_q - log_p), axis=-1)


def diag_cov(log_var):
    return np.exp(np.asarray(log_var))[..., None] * np.eye(np.shape(log_var)[-1])


def tril_cov(scale_tril):
    return scale_tril @ np.swapaxes(scale_tril, -1, -2)


def assert_within_mc_error(kl, per_draw):
    """The KL lies within 5 standard errors of the Monte Carlo mean of per-draw log-ratios."""
    se = per_draw.std(axis=0) / np.sqrt(per_draw.shape[0])
    np.testing.assert_array_less(np.abs(np.asarray(kl) - per_draw.mean(axis=0)), 5 * se + 1e-5)


def test_kl_standard_normal_matches_reference(precision, rng):
    """KL(N(μ, diag σ²) ‖ N(0, I)) equals the float64 closed form."""
    dtype, rtol = precision
    mean, log_var = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    expected = reference_kl_gaussians(mean, diag_cov(log_var), np.zeros(3), np.eye(3))
    actual = vaejax.kl_standard_normal(jnp.asarray(mean, dtype), jnp.asarray(log_var, dtype))
    np.testing.assert_allclose(actual, expected, rtol=rtol)


def test_kl_diag_normals_matches_reference(precision, rng):
    """KL between diagonal Gaussians equals the float64 closed form."""
    dtype, rtol = precision
    mean_q, log_var_q, mean_p, log_var_p = rng.normal(size=(4, 4, 3))
    expected = reference_kl_gaussians(mean_q, diag_cov(log_var_q), mean_p, diag_cov(log_var_p))
    actual = vaejax.kl_diag_normals(
        *(jnp.asarray(a, dtype) for a in (mean_q, log_var_q, mean_p, log_var_p)))
    np.testing.assert_allclose(actual, expected, rtol=rtol)


def test_kl_mvn_tril_matches_reference(precision, rng, random_tril):
    """KL between full-covariance Gaussians equals the explicit-inverse float64 closed form."""
    dtype, rtol = precision
    mean_q, mean_p = rng.normal(size=(2, 4, 3))
    tril_q, tril_p = random_tril(3, (4,)), random_tril(3, (4,))
    expected = reference_kl_gaussians(mean_q, tril_cov(tril_q), mean_p, tril_cov(tril_p))
    actual = vaejax.kl_mvn_tril(*(jnp.asarray(a, dtype) for a in (mean_q, tril_q, mean_p, tril_p)))
    np.testing.assert_allclose(actual, expected, rtol=rtol)


def test_kl_categorical_matches_reference(precision, rng):
    """KL between categoricals equals the float64 sum over categories."""
    dtype, rtol = precision
    logits_q, logits_p = rng.normal(scale=2.0, size=(2, 4, 6))
    actual = vaejax.kl_categorical(jnp.asarray(logits_q, dtype), jnp.asarray(logits_p, dtype))
    np.testing.assert_allclose(actual, reference_kl_categorical(logits_q, logits_p), rtol=rtol)


def test_kl_standard_normal_matches_monte_carlo(rng):
    """KL(q ‖ N(0, I)) agrees with E_q[log q − log p] over 1e5 draws."""
    mean, log_var = np.array([0.5, -1.0, 0.2]), np.array([-0.5, 0.4, 0.0])
    z = mean + np.exp(0.5 * log_var) * rng.normal(size=(NUM_DRAWS, 3))
    per_draw = (stats.norm(mean, np.exp(0.5 * log_var)).logpdf(z) - stats.norm().logpdf(z)).sum(-1)
    assert_within_mc_error(vaejax.kl_standard_normal(mean, log_var), per_draw)


def test_kl_diag_normals_matches_monte_carlo(rng):
    """KL between diagonal Gaussians agrees with its Monte Carlo estimate."""
    mean_q, log_var_q = np.array([0.5, -1.0, 0.2]), np.array([-0.5, 0.4, 0.0])
    mean_p, log_var_p = np.array([0.0, 0.5, -0.3]), np.array([0.3, -0.2, 0.6])
    q = stats.norm(mean_q, np.exp(0.5 * log_var_q))
    p = stats.norm(mean_p, np.exp(0.5 * log_var_p))
    z = q.rvs(size=(NUM_DRAWS, 3), random_state=rng)
    per_draw = (q.logpdf(z) - p.logpdf(z)).sum(-1)
    assert_within_mc_error(vaejax.kl_diag_normals(mean_q, log_var_q, mean_p, log_var_p), per_draw)


def test_kl_mvn_tril_matches_monte_carlo(rng, random_tril):
    """KL between full-covariance Gaussians agrees with its Monte Carlo estimate."""
    mean_q, mean_p = np.array([0.3, -0.4, 0.1]), np.array([-0.2, 0.5, 0.0])
    tril_q, tril_p = random_tril(3), random_tril(3)
    q = stats.multivariate_normal(mean_q, tril_cov(tril_q))
    p = stats.multivariate_normal(mean_p, tril_cov(tril_p))
    z = q.rvs(size=NUM_DRAWS, random_state=rng)
    per_draw = q.logpdf(z) - p.logpdf(z)
    assert_within_mc_error(vaejax.kl_mvn_tril(mean_q, tril_q, mean_p, tril_p), per_draw)


def test_kl_categorical_matches_monte_carlo(rng):
    """KL between categoricals agrees with E_q[log q − log p] over 1e5 draws."""
    logits_q, logits_p = np.array([1.0, -0.5, 0.3, 2.0]), np.array([0.0, 0.7, -1.0, 0.2])
    log_q = special.log_softmax(logits_q)
    log_p = special.log_softmax(logits_p)
    draws = rng.choice(4, size=NUM_DRAWS, p=np.exp(log_q))
    per_draw = log_q[draws] - log_p[draws]
    assert_within_mc_error(vaejax.kl_categorical(logits_q, logits_p), per_draw)


def test_kl_mvn_tril_with_diagonal_factors_is_kl_diag_normals(rng):
    """Diagonal Cholesky factors reduce kl_mvn_tril to kl_diag_normals."""
    mean_q, log_var_q, mean_p, log_var_p = rng.normal(size=(4, 2, 3))
    as_tril = lambda log_var: np.exp(0.5 * log_var)[..., None] * np.eye(3)
    np.testing.assert_allclose(
        vaejax.kl_mvn_tril(mean_q, as_tril(log_var_q), mean_p, as_tril(log_var_p)),
        vaejax.kl_diag_normals(mean_q, log_var_q, mean_p, log_var_p), rtol=1e-5)


def test_kl_diag_normals_against_the_prior_is_kl_standard_normal(rng):
    """With p = N(0, I), kl_diag_normals is kl_standard_normal."""
    mean, log_var = rng.normal(size=(2, 4, 3))
    zeros = np.zeros_like(mean)
    np.testing.assert_allclose(vaejax.kl_diag_normals(mean, log_var, zeros, zeros),
                               vaejax.kl_standard_normal(mean, log_var), rtol=1e-6)


def test_posterior_kl_methods_agree(rng):
    """CholeskyGaussian and DiagonalGaussian give one KL to the prior for one distribution."""
    mean, log_var = rng.normal(size=(2, 4, 3))
    scale_tril = np.exp(0.5 * log_var)[..., None] * np.eye(3)
    diagonal = vaejax.DiagonalGaussian(jnp.asarray(mean), jnp.asarray(log_var))
    cholesky = vaejax.CholeskyGaussian(jnp.asarray(mean), jnp.asarray(scale_tril))
    np.testing.assert_allclose(cholesky.kl_standard_normal(), diagonal.kl_standard_normal(),
                               rtol=1e-5)


def test_kl_of_a_distribution_with_itself_is_zero(rng, random_tril):
    """KL(p ‖ p) = 0 for every family."""
    mean, log_var = rng.normal(size=(2, 4, 3))
    scale_tril = random_tril(3, (4,))
    logits = rng.normal(scale=3.0, size=(4, 6))
    np.testing.assert_allclose(vaejax.kl_standard_normal(np.zeros(3), np.zeros(3)), 0.0, atol=1e-7)
    np.testing.assert_allclose(vaejax.kl_diag_normals(mean, log_var, mean, log_var), 0.0, atol=1e-6)
    np.testing.assert_allclose(vaejax.kl_mvn_tril(mean, scale_tril, mean, scale_tril), 0.0,
                               atol=1e-5)
    np.testing.assert_allclose(vaejax.kl_categorical(logits, logits), 0.0, atol=1e-6)


def finite_arrays(shape, low, high):
    return hnp.arrays(np.float32, shape, elements=st.floats(low, high, width=32))


@PROPERTY
@given(mean=finite_arrays((3,), -5, 5), log_var=finite_arrays((3,), -5, 5))
def test_kl_standard_normal_is_non_negative(mean, log_var):
    """KL(q ‖ N(0, I)) ≥ 0."""
    assert vaejax.kl_standard_normal(mean, log_var) >= -1e-5


@PROPERTY
@given(params=finite_arrays((4, 3), -4, 4))
def test_kl_diag_normals_is_non_negative(params):
    """KL between diagonal Gaussians ≥ 0."""
    assert vaejax.kl_diag_normals(*params) >= -1e-5


def tril_factors(d=3):
    """Lower-triangular factors with off-diagonals in [-1, 1] and diagonals in [e⁻¹, e]."""
    return st.tuples(finite_arrays((d, d), -1, 1), finite_arrays((d,), -1, 1)).map(
        lambda parts: np.tril(parts[0], k=-1) + np.diag(np.exp(parts[1])))


@PROPERTY
@given(means=finite_arrays((2, 3), -3, 3), tril_q=tril_factors(), tril_p=tril_factors())
def test_kl_mvn_tril_is_non_negative_and_matches_reference(means, tril_q, tril_p):
    """KL between full-covariance Gaussians ≥ 0 and equals the explicit-inverse reference."""
    kl = vaejax.kl_mvn_tril(means[0], tril_q, means[1], tril_p)
    expected = reference_kl_gaussians(means[0], tril_cov(tril_q.astype(np.float64)),
                                      means[1], tril_cov(tril_p.astype(np.float64)))
    assert kl >= -1e-4
    np.testing.assert_allclose(kl, expected, rtol=1e-4, atol=1e-4)


@PROPERTY
@given(logits=finite_arrays((2, 5), -10, 10))
def test_kl_categorical_is_non_negative(logits):
    """KL between categoricals ≥ 0."""
    assert vaejax.kl_categorical(logits[0], logits[1]) >= -1e-6

