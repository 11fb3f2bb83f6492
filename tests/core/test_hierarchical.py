"""The two-layer ELBO on a two-layer linear-Gaussian model, where log p(x) and every
posterior are exact (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaejax
from vaejax.core.hierarchical import hierarchical_elbo

D1, D2, DX = 3, 2, 5


@pytest.fixture
def model(rng):
    """z2 ~ N(0, I); z1 | z2 ~ N(A z2 + a, diag v1); x | z1 ~ N(B z1 + b, σ² I)."""
    return {"A": rng.normal(size=(D1, D2)), "a": rng.normal(size=D1),
            "log_v1": rng.normal(scale=0.3, size=D1), "B": rng.normal(size=(DX, D1)),
            "b": rng.normal(size=DX), "log_sigma": np.log(0.6)}


def _marginals(m):
    cov1 = m["A"] @ m["A"].T + np.diag(np.exp(m["log_v1"]))
    cov_x = m["B"] @ cov1 @ m["B"].T + np.exp(2 * m["log_sigma"]) * np.eye(DX)
    return cov1, cov_x


def log_px(m, x):
    _, cov_x = _marginals(m)
    r = x - m["B"] @ m["a"] - m["b"]
    return -0.5 * (r @ np.linalg.solve(cov_x, r) + np.linalg.slogdet(2 * np.pi * cov_x)[1])


def exact_layers(m, x):
    """p(z1|x) as (mean, cov) and p(z2|z1) as z1 ↦ C z1 + c with covariance S2."""
    cov1, _ = _marginals(m)
    inv_s2 = np.exp(-2 * m["log_sigma"])
    precision = np.linalg.inv(cov1) + inv_s2 * m["B"].T @ m["B"]
    cov_post = np.linalg.inv(precision)
    mean_post = cov_post @ (np.linalg.solve(cov1, m["a"]) + inv_s2 * m["B"].T @ (x - m["b"]))
    inv_v1 = np.diag(np.exp(-m["log_v1"]))
    s2 = np.linalg.inv(np.eye(D2) + m["A"].T @ inv_v1 @ m["A"])
    c_matrix = s2 @ m["A"].T @ inv_v1
    return mean_post, cov_post, c_matrix, -c_matrix @ m["a"], s2


def _elbo(m, x, layers, key, num_samples, prior=None):
    mean1, cov1, c_matrix, c, s2 = map(jnp.asarray, layers)
    encoders = [lambda x: vaejax.CholeskyGaussian(mean1, jnp.linalg.cholesky(cov1)),
                lambda z1: vaejax.CholeskyGaussian(
                    z1 @ c_matrix.T + c,
                    jnp.broadcast_to(jnp.linalg.cholesky(s2), z1.shape[:-1] + (D2, D2)))]
    decoders = [lambda z2: vaejax.DiagonalGaussian(z2 @ m["A"].T + m["a"],
                                                   jnp.broadcast_to(m["log_v1"], z2.shape[:-1] + (D1,)))]

    def log_likelihood(z1, x):
        return vaejax.gaussian_log_likelihood(z1 @ m["B"].T + m["b"], x, m["log_sigma"])

    return hierarchical_elbo(key, x, encoders, decoders, log_likelihood, prior=prior,
                             num_samples=num_samples)


def test_the_exact_posterior_gives_log_px_for_every_draw(model, rng):
    with jax.enable_x64(True):
        x = rng.normal(size=DX)
        terms = _elbo(model, x, exact_layers(model, x), jax.random.key(0), 7)
        # Each draw's log-weight is exact; the ELBO, with the top KL in closed form given
        # each z1, is exact only in expectation (next test).
        np.testing.assert_allclose(terms.log_weights, log_px(model, x), rtol=1e-10)
        np.testing.assert_allclose(sum(terms.kls), terms.log_likelihood - terms.elbo, rtol=1e-10)
        assert terms.log_weights.shape == (7,) and len(terms.kls) == 2


def _gaussian_kl(m_q, c_q, m_p, c_p):
    r = m_p - m_q
    return 0.5 * (np.trace(np.linalg.solve(c_p, c_q)) + r @ np.linalg.solve(c_p, r) - len(m_q)
                  + np.linalg.slogdet(c_p)[1] - np.linalg.slogdet(c_q)[1])


def test_an_inexact_posterior_falls_short_by_the_joint_kl(model, rng):
    """E[ELBO] = log p(x) − KL(q(z1, z2|x) ‖ p(z1, z2|x)), both Gaussian in closed form;
    the top KL in closed form and by Monte Carlo (a one-component mixture prior) agree."""
    with jax.enable_x64(True):
        x = rng.normal(size=DX)
        mean1, cov1, c_matrix, c, s2 = exact_layers(model, x)
        q = (mean1 + 0.3, cov1 * 1.5, c_matrix * 0.8, c - 0.2, s2 * 0.7)
        joint_q = _joint(q)
        joint_p = _joint((mean1, cov1, c_matrix, c, s2))
        expected = log_px(model, x) - _gaussian_kl(*joint_q, *joint_p)
        n = 40_000
        closed = _elbo(model, x, q, jax.random.key(1), n)
        standard = vaejax.MixtureOfGaussians(jnp.zeros(1), jnp.zeros((1, D2)), jnp.zeros((1, D2)))
        sampled = _elbo(model, x, q, jax.random.key(1), n, prior=standard)
        se = float(jnp.std(closed.log_weights)) / np.sqrt(n)
        for terms in (closed, sampled):
            assert abs(float(terms.elbo) - expected) < 5 * se
            assert abs(float(jnp.mean(terms.log_weights)) - expected) < 5 * se
        np.testing.assert_allclose(closed.log_weights, sampled.log_weights, rtol=1e-12)


def _joint(layers):
    """(mean, cov) of (z1, z2) under z1 ~ N(m1, S1), z2 | z1 ~ N(C z1 + c, S2)."""
    m1, s1, c_matrix, c, s2 = layers
    mean = np.concatenate([m1, c_matrix @ m1 + c])
    cov = np.block([[s1, s1 @ c_matrix.T], [c_matrix @ s1, c_matrix @ s1 @ c_matrix.T + s2]])
    return mean, cov


def test_layer_counts_and_samples_are_checked(model, rng):
    x = rng.normal(size=DX)
    layers = exact_layers(model, x)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        _elbo(model, x, layers, jax.random.key(0), 0)
    with pytest.raises(ValueError, match="2 encoders need 1 decoders"):
        hierarchical_elbo(jax.random.key(0), x, [None, None], [], lambda z, x: z)
