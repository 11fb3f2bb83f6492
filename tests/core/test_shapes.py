"""Shape contracts: clear ValueErrors for wrong shapes, and the same values under jit and vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaejax

KEY = jax.random.key(0)
BATCH = 4


def _array(*shape, seed=0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(scale=scale, size=shape), jnp.float32)


def _tril(*batch, d=3, seed=0):
    lower = np.tril(np.random.default_rng(seed).normal(scale=0.3, size=(*batch, d, d)), k=-1)
    return jnp.asarray(lower + np.eye(d), jnp.float32)


SHAPE_ERRORS = {
    "reparameterize log_var": (
        lambda: vaejax.reparameterize(KEY, jnp.zeros((2, 3)), jnp.zeros((2, 4))),
        "shapes must match.*log_var"),
    "reparameterize_tril batch": (
        lambda: vaejax.reparameterize_tril(KEY, jnp.zeros((2, 3)), _tril()), "scale_tril"),
    "reparameterize_tril size": (
        lambda: vaejax.reparameterize_tril(KEY, jnp.zeros(3), _tril(d=4)), "scale_tril"),
    "reparameterize_tril scalar mean": (
        lambda: vaejax.reparameterize_tril(KEY, jnp.zeros(()), jnp.ones((1, 1))), "scale_tril"),
    "diag_normal_log_prob": (
        lambda: vaejax.diag_normal_log_prob(jnp.zeros(3), jnp.zeros(3), jnp.zeros(2)),
        "shapes must match"),
    "mvn_tril_log_prob": (
        lambda: vaejax.mvn_tril_log_prob(jnp.zeros(3), jnp.zeros(3), jnp.eye(3)[:, :2]),
        "scale_tril"),
    "kl_standard_normal": (
        lambda: vaejax.kl_standard_normal(jnp.zeros((2, 3)), jnp.zeros(3)), "shapes must match"),
    "kl_diag_normals": (
        lambda: vaejax.kl_diag_normals(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(3),
                                       jnp.zeros(3)), "shapes must match.*mean_p"),
    "kl_mvn_tril means": (
        lambda: vaejax.kl_mvn_tril(jnp.zeros(3), jnp.eye(3), jnp.zeros(2), jnp.eye(2)),
        "shapes must match"),
    "kl_mvn_tril q factor": (
        lambda: vaejax.kl_mvn_tril(jnp.zeros(3), jnp.eye(2), jnp.zeros(3), jnp.eye(3)),
        "scale_tril_q"),
    "kl_mvn_tril p factor": (
        lambda: vaejax.kl_mvn_tril(jnp.zeros((2, 3)), _tril(2), jnp.zeros((2, 3)), _tril()),
        "scale_tril_p"),
    "kl_categorical": (
        lambda: vaejax.kl_categorical(jnp.zeros((2, 5)), jnp.zeros(5)), "shapes must match"),
    "posterior kl": (
        lambda: vaejax.DiagonalGaussian(jnp.zeros(3), jnp.zeros(2)).kl_standard_normal(),
        "shapes must match"),
    "bernoulli event_ndims": (
        lambda: vaejax.bernoulli_log_likelihood(jnp.zeros((4, 4)), jnp.zeros((4, 4)),
                                                event_ndims=3), "event_ndims=3"),
    "bernoulli negative event_ndims": (
        lambda: vaejax.bernoulli_log_likelihood(jnp.zeros(4), jnp.zeros(4), event_ndims=-1),
        "event_ndims=-1"),
    "gaussian event_ndims": (
        lambda: vaejax.gaussian_log_likelihood(jnp.zeros(4), jnp.zeros(4), event_ndims=2),
        "event_ndims=2"),
    "continuous_bernoulli event_ndims": (
        lambda: vaejax.continuous_bernoulli_log_likelihood(jnp.zeros((2, 4)), jnp.zeros((2, 4)),
                                                           event_ndims=3), "event_ndims=3"),
    "contractive event_ndims": (
        lambda: vaejax.contractive_penalty(lambda v: 2.0 * v, jnp.zeros((2, 3)), event_ndims=3),
        "event_ndims=3"),
}


def _diagonal(batch=2, d=3):
    return vaejax.DiagonalGaussian(jnp.zeros((batch, d)), jnp.zeros((batch, d)))


def _log_likelihood(z, x):
    return -jnp.sum((z[..., :1] - x)**2, axis=-1)


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


@pytest.mark.parametrize("name", list(SHAPE_ERRORS | BAD_ARGUMENTS))
def test_wrong_shapes_raise_a_clear_value_error(name):
    """A shape mismatch or bad argument is a ValueError that names the offending argument."""
    call, message = (SHAPE_ERRORS | BAD_ARGUMENTS)[name]
    with pytest.raises(ValueError, match=message):
        call()


def test_shape_errors_are_raised_at_trace_time():
    """The checks run on static shapes, so they fire inside jit too."""
    with pytest.raises(ValueError, match="shapes must match"):
        jax.jit(vaejax.kl_diag_normals)(jnp.zeros(3), jnp.zeros(3), jnp.zeros(2), jnp.zeros(2))


def _linear_gaussian():
    model = vaejax.LinearGaussian(_array(5, 2), _array(5, seed=1), jnp.float32(-0.3))
    x = _array(BATCH, 5, seed=2)
    return model, x, model.posterior(x)


BATCHED = {
    "standard_normal_log_prob": lambda: (vaejax.standard_normal_log_prob, (_array(BATCH, 3),)),
    "diag_normal_log_prob": lambda: (
        vaejax.diag_normal_log_prob,
        (_array(BATCH, 3), _array(BATCH, 3, seed=1), _array(BATCH, 3, seed=2))),
    "mvn_tril_log_prob": lambda: (
        vaejax.mvn_tril_log_prob, (_array(BATCH, 3), _array(BATCH, 3, seed=1), _tril(BATCH))),
    "diag_normal_entropy": lambda: (vaejax.diag_normal_entropy, (_array(BATCH, 3),)),
    "mvn_tril_entropy": lambda: (vaejax.mvn_tril_entropy, (_tril(BATCH),)),
    "kl_standard_normal": lambda: (vaejax.kl_standard_normal,
                                   (_array(BATCH, 3), _array(BATCH, 3, seed=1))),
    "kl_diag_normals": lambda: (vaejax.kl_diag_normals,
                                tuple(_array(BATCH, 3, seed=seed) for seed in range(4))),
    "kl_mvn_tril": lambda: (
        vaejax.kl_mvn_tril,
        (_array(BATCH, 3), _tril(BATCH), _array(BATCH, 3, seed=1), _tril(BATCH, seed=1))),
    "kl_categorical": lambda: (vaejax.kl_categorical,
                               (_array(BATCH, 5), _array(BATCH, 5, seed=1, scale=2))),
    "categorical_log_prob": lambda: (vaejax.categorical_log_prob,
                                     (_array(BATCH, 5), jax.nn.one_hot(jnp.arange(BATCH), 5))),
    "bernoulli_log_likelihood": lambda: (
        lambda logits, x: vaejax.bernoulli_log_likelihood(logits, x, event_ndims=3),
        (_array(BATCH, 4, 4, 1), jax.nn.sigmoid(_array(BATCH, 4, 4, 1, seed=1)))),
    "gaussian_log_likelihood": lambda: (
        vaejax.gaussian_log_likelihood,
        (_array(BATCH, 6), _array(BATCH, 6, seed=1), _array(BATCH, 1, seed=2))),
    "continuous_bernoulli_log_likelihood": lambda: (
        vaejax.continuous_bernoulli_log_likelihood,
        (_array(BATCH, 6, scale=3), jax.nn.sigmoid(_array(BATCH, 6, seed=1)))),
    "continuous_bernoulli_mean": lambda: (vaejax.continuous_bernoulli_mean,
                                          (_array(BATCH, 6, scale=0.02),)),
    "sparse_penalty": lambda: (vaejax.sparse_penalty, (_array(BATCH, 6),)),
    "iwae_bound": lambda: (lambda log_w: vaejax.iwae_bound(log_w, axis=-1), (_array(BATCH, 9),)),
    "score_function_surrogate": lambda: (
        vaejax.score_function_surrogate,
        (_array(BATCH, 2), _array(BATCH, 2, seed=1), _array(BATCH, 2, seed=2))),
    "leave_one_out_baseline": lambda: (lambda v: vaejax.leave_one_out_baseline(v, axis=-1),
                                       (_array(BATCH, 6),)),
    "contractive_penalty": lambda: (lambda x: vaejax.contractive_penalty(jnp.tanh, x),
                                    (_array(BATCH, 3),)),
    "LinearGaussian.log_marginal": lambda: (_linear_gaussian()[0].log_marginal,
                                            (_linear_gaussian()[1],)),
    "LinearGaussian.posterior": lambda: (_linear_gaussian()[0].posterior,
                                         (_linear_gaussian()[1],)),
}


@pytest.mark.parametrize("name", list(BATCHED))
def test_batched_functions_agree_under_jit_and_vmap(name):
    """f(batch) = jit(f)(batch) = vmap(f)(batch): batch axes lead and are independent."""
    fn, args = BATCHED[name]()
    expected = fn(*args)
    chex.assert_trees_all_close(jax.jit(fn)(*args), expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.jit(jax.vmap(fn))(*args), expected, rtol=1e-5, atol=1e-6)
    leading = jax.tree.leaves(expected)[0].shape[0]
    assert leading == BATCH


def _objective_case(objective, **kwargs):
    model, x, q = _linear_gaussian()
    return lambda k: objective(k, x, q, model.log_likelihood, **kwargs)


def _keyed_case(fn, *args, **kwargs):
    return lambda k: fn(k, *args, **kwargs)


KEYED = {
    "reparameterize": lambda: _keyed_case(vaejax.reparameterize, _array(2, 3),
                                          _array(2, 3, seed=1), 5),
    "reparameterize_tril": lambda: _keyed_case(vaejax.reparameterize_tril, _array(2, 3),
                                               _tril(2), 5),
    "gumbel_softmax": lambda: _keyed_case(vaejax.gumbel_softmax, _array(2, 5), 0.5),
    "gumbel_softmax hard": lambda: _keyed_case(vaejax.gumbel_softmax, _array(2, 5), 0.5,
                                               hard=True),
    "corrupt masking": lambda: _keyed_case(vaejax.corrupt, _array(3, 4), 0.3, "masking"),
    "corrupt gaussian": lambda: _keyed_case(vaejax.corrupt, _array(3, 4), 0.3, "gaussian"),
    "corrupt salt_and_pepper": lambda: _keyed_case(vaejax.corrupt, _array(3, 4), 0.3,
                                                   "salt_and_pepper"),
    "log_importance_weights": lambda: _objective_case(vaejax.log_importance_weights,
                                                      num_samples=4),
    "importance_log_likelihood": lambda: _objective_case(vaejax.importance_log_likelihood,
                                                         num_samples=20, chunk_size=5),
    "elbo entropy": lambda: _objective_case(vaejax.elbo, num_samples=2, beta=0.5, form="entropy"),
}


@pytest.mark.parametrize("name", list(KEYED))
def test_keyed_functions_agree_under_jit_and_vmap_over_keys(name):
    """jit gives the same draws, and vmap over keys equals a loop over the keys."""
    fn = KEYED[name]()
    jitted = jax.jit(fn)
    keys = jax.random.split(KEY, 3)
    looped = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[jitted(k) for k in keys])
    chex.assert_trees_all_close(jitted(keys[0]), fn(keys[0]), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(jax.jit(jax.vmap(fn))(keys), looped, rtol=1e-5, atol=1e-5)


def test_posteriors_are_pytrees_that_cross_jit_and_vmap():
    """DiagonalGaussian and CholeskyGaussian pass through jit and vmap as arguments."""
    model, x, cholesky = _linear_gaussian()
    diagonal = vaejax.DiagonalGaussian(cholesky.mean, jnp.log(jnp.sum(cholesky.scale_tril**2, -1)))
    for q in (diagonal, cholesky):
        kl = jax.jit(lambda q: q.kl_standard_normal())(q)
        chex.assert_trees_all_close(kl, q.kl_standard_normal(), rtol=1e-6)
        entropy = jax.jit(jax.vmap(lambda q: q.entropy()))(q)
        chex.assert_trees_all_close(entropy, q.entropy(), rtol=1e-6)
        z = q.sample(KEY, 2)
        log_prob = jax.jit(jax.vmap(lambda q, z: q.log_prob(z), in_axes=(0, 1), out_axes=1))
        chex.assert_trees_all_close(log_prob(q, z), q.log_prob(z), rtol=1e-5)


@pytest.mark.parametrize("batch", [(), (2, 3)])
def test_gaussian_functions_return_one_value_per_batch_element(batch):
    """Every density, entropy and KL reduces the event axis and keeps the batch shape."""
    mean, log_var = _array(*batch, 3), _array(*batch, 3, seed=1, scale=0.5)
    z = _array(5, *batch, 3, seed=2)
    scale_tril = jnp.broadcast_to(_tril(), (*batch, 3, 3))
    assert vaejax.standard_normal_log_prob(mean).shape == batch
    assert vaejax.diag_normal_log_prob(z, mean, log_var).shape == (5, *batch)
    assert vaejax.mvn_tril_log_prob(z, mean, scale_tril).shape == (5, *batch)
    assert vaejax.diag_normal_entropy(log_var).shape == batch
    assert vaejax.mvn_tril_entropy(scale_tril).shape == batch
    assert vaejax.kl_standard_normal(mean, log_var).shape == batch
    assert vaejax.kl_diag_normals(mean, log_var, z[0], log_var).shape == batch
    assert vaejax.kl_mvn_tril(mean, scale_tril, z[0], scale_tril).shape == batch
