"""Planar and IAF steps against autodiff Jacobians; flow posteriors against exact densities."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vaejax
from vaejax.core.flows import MADE, FlowPosterior, Planar, iaf_step, planar_step


def _jacobian_log_det(step, z, params, context=None):
    jacobian = jax.jacfwd(lambda v: step(v, params, context)[0])(z)
    return jnp.linalg.slogdet(jacobian)


def _made(rng, d, hidden, scale=0.7):
    return MADE(*(jnp.asarray(rng.normal(scale=scale, size=s))
                  for s in ((d, hidden), (hidden,), (hidden, d), (d,), (hidden, d), (d,))))


@pytest.mark.parametrize("wu", [-30.0, -1.0, 0.0, 2.0])  # wᵀu below −1 needs the û correction
def test_planar_log_det_is_the_jacobians(rng, wu):
    with jax.enable_x64(True):
        d = 4
        w = rng.normal(size=d)
        u = rng.normal(size=d)
        u = u + (wu - w @ u) * w / (w @ w)  # set wᵀu
        for _ in range(5):
            z = rng.normal(size=d) * 2
            params = Planar(jnp.asarray(u), jnp.asarray(w), jnp.asarray(rng.normal()))
            sign, expected = _jacobian_log_det(planar_step, jnp.asarray(z), params)
            assert sign == 1.0  # invertible, orientation kept
            np.testing.assert_allclose(planar_step(jnp.asarray(z), params)[1], expected, rtol=1e-10)


@pytest.mark.parametrize("d,hidden", [(1, 3), (3, 8), (5, 7)])
def test_iaf_jacobian_is_lower_triangular_and_its_log_det_exact(rng, d, hidden):
    with jax.enable_x64(True):
        made = _made(rng, d, hidden)
        context = jnp.asarray(rng.normal(size=hidden))
        z = jnp.asarray(rng.normal(size=d))
        jacobian = jax.jacfwd(lambda v: iaf_step(v, made, context)[0])(z)
        np.testing.assert_array_equal(np.triu(jacobian, k=1), 0.0)  # autoregressive
        sign, expected = jnp.linalg.slogdet(jacobian)
        assert sign == 1.0
        np.testing.assert_allclose(iaf_step(z, made, context)[1], expected, rtol=1e-10)


def test_an_affine_flow_gives_the_gaussian_log_density(rng):
    """IAF steps with zero weights are z' = σz + (1 − σ)b: the density is a known Gaussian."""
    with jax.enable_x64(True):
        d, hidden, k = 3, 4, 2
        zero = np.zeros
        s = rng.normal(size=(k, d))
        shift = rng.normal(size=(k, d))
        made = MADE(zero((k, d, hidden)), zero((k, hidden)), zero((k, hidden, d)), shift,
                    zero((k, hidden, d)), s)
        base = vaejax.DiagonalGaussian(jnp.asarray(rng.normal(size=(6, d))),
                                       jnp.asarray(rng.normal(size=(6, d))))
        q = FlowPosterior(base, jax.tree.map(jnp.asarray, made), iaf_step)
        z, log_q = q.sample_and_log_prob(jax.random.key(0), 3)
        mean, std = base.mean, jnp.exp(0.5 * base.log_var)
        for sigma, b in zip(jax.nn.sigmoid(s), shift):
            mean, std = sigma * mean + (1 - sigma) * b, sigma * std
        np.testing.assert_allclose(log_q, vaejax.diag_normal_log_prob(z, mean, 2 * jnp.log(std)),
                                   rtol=1e-10)


@pytest.mark.parametrize("kind", ["planar", "iaf"])
def test_flow_log_q_is_normalised(rng, kind):
    """E_q[p(z)/q(z)] = 1 for a normalised p: Monte Carlo within 5 standard errors."""
    d, k = 2, 3
    base = vaejax.DiagonalGaussian(jnp.asarray([0.3, -0.2]), jnp.asarray([-0.5, 0.2]))
    if kind == "planar":
        params, step = Planar(*(jnp.asarray(rng.normal(size=s), jnp.float32)
                                for s in ((k, d), (k, d), (k,)))), planar_step
    else:
        params, step = jax.tree.map(lambda a: jnp.stack([a] * k), _made(rng, d, 5)), iaf_step
    q = FlowPosterior(base, params, step, reverse=True)
    z, log_q = q.sample_and_log_prob(jax.random.key(1), 200_000)
    # p: a Gaussian a little narrower than q's draws, so p/q has light tails.
    log_p = vaejax.diag_normal_log_prob(z, z.mean(0), 2 * jnp.log(0.8 * z.std(0)))
    ratio = np.exp(np.asarray(log_p - log_q, np.float64))
    assert abs(ratio.mean() - 1) < 5 * ratio.std() / np.sqrt(ratio.size)
    assert ratio.std() < 3  # the check has power: a log q off by 1% of its scale fails it


def test_an_iaf_posterior_closes_the_gap_on_the_linear_gaussian_oracle(rng):
    """Fitted to one x, a diagonal Gaussian leaves log p(x) − ELBO > 0 (the exact posterior is
    correlated: the weight's two columns nearly agree); pushed through IAF steps it drives the
    gap to ≈ 0."""
    with jax.enable_x64(True):
        column = rng.normal(size=(5, 1))
        weight = np.hstack([column, column + 0.2 * rng.normal(size=(5, 1))])
        model = vaejax.LinearGaussian(jnp.asarray(weight), jnp.asarray(rng.normal(size=5)),
                                      jnp.asarray(np.log(0.7)))
        x = model.sample(jax.random.key(0), 1)[0]
        d, hidden, k = 2, 8, 2
        init = {"mean": jnp.zeros(d), "log_var": jnp.zeros(d),
                "made": jax.tree.map(lambda a: 0.1 * jnp.stack([a] * k),
                                     _made(np.random.default_rng(0), d, hidden, 1.0))}

        def gap(params, key, flows):
            base = vaejax.DiagonalGaussian(params["mean"], params["log_var"])
            q = FlowPosterior(base, params["made"], iaf_step, reverse=True) if flows else base
            terms = vaejax.elbo(key, x, q, model.log_likelihood, num_samples=256,
                                form="monte_carlo")
            return model.log_marginal(x) - terms.elbo

        def fit(flows, steps=1500):
            optimizer = optax.adam(0.02)

            def update(carry, key):
                params, state = carry
                value, grads = jax.value_and_grad(gap)(params, key, flows)
                updates, state = optimizer.update(grads, state)
                return (optax.apply_updates(params, updates), state), value

            (params, _), _ = jax.lax.scan(update, (init, optimizer.init(init)),
                                          jax.random.split(jax.random.key(1), steps))
            return float(gap(params, jax.random.key(2), flows))

        diagonal, flow = fit(False), fit(True)
        assert diagonal > 0.05 and flow < 0.01 * diagonal, (diagonal, flow)
