"""Every public core function, fuzzed over shapes, dtypes and extreme values.

One table row a function: its arguments as (kind, shape template). Each example
is run in the drawn dtype and, on the same rounded inputs, in float64 under x64:
where the float64 value is finite and within the dtype's range, the drawn
dtype's must be finite too, and so must the gradients where the float64 value
and gradients are. float64 itself must never be NaN: every drawn input is valid.
Shapes come from a small set, so the compiled kernels are reused across examples.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import vaejax

KEY = jax.random.key(0)
DTYPES = ("float16", "bfloat16", "float32", "float64")
HALF = DTYPES[:2]
# (batch shape, event size d): two sizes only, to bound recompilation.
SHAPES = (((), 1), ((2,), 3))
DRAWS = 8  # examples per hypothesis example, checked together

# Values of each kind, extremes included; "tril" is a lower-triangular factor built
# from "real" entries below a diagonal drawn from "scale".
KINDS = {
    "real": (0.0, 1e-30, -1e-30, 0.5, -0.5, 3.0, -3.0, 40.0, -40.0, 1e4, -1e4),
    "moderate": (0.0, 0.5, -0.5, 3.0, -3.0),
    "unit": (0.0, 1e-3, 0.5, 0.999, 1.0),
    "scale": (1e-3, 0.5, 1.0, 30.0),
    "cat_logit": (0.0, 3.0, -3.0, 40.0, -40.0, 1e4, -1e4, -np.inf),
    "index": (0, 1),  # code indices into the two codes of a "k" axis
}


def _shape(template, batch, d):
    """'b' → the batch axes, 'd' → d, 'k' → two samples (or components)."""
    return sum(({"b": batch, "d": (d,), "k": (2,)}[c] for c in template), ())


@st.composite
def _argument(draw, kind, shape):
    if kind == "one_hot":
        return np.eye(shape[-1])[draw(st.integers(0, shape[-1] - 1))] * np.ones(shape)
    if kind == "tril":
        lower = np.tril(draw(_argument("moderate", shape)), k=-1)
        return lower + np.eye(shape[-1]) * draw(_argument("scale", shape[:-1]))[..., None]
    values = np.asarray([draw(st.sampled_from(KINDS[kind])) for _ in range(int(np.prod(shape)))])
    values = values.reshape(shape)
    if kind == "cat_logit":  # at least one possible category
        values[..., 0] = np.where(np.isinf(values[..., 0]), 0.0, values[..., 0])
    return values


def case(fn, *args, diff=None, dtypes=DTYPES):
    """fn(*arrays), each argument (kind, shape template); `diff` the indices differentiated
    (default: every float argument that is not one-hot)."""
    if diff is None:
        diff = tuple(i for i, (kind, _) in enumerate(args) if kind != "one_hot")
    return fn, args, diff, dtypes


def _diagonal(mean, log_var):
    return vaejax.DiagonalGaussian(mean, log_var)


def _gauss(z, x):
    return vaejax.gaussian_log_likelihood(z, x)


def _objective(objective, log_var="real", **kwargs):
    return case(lambda x, m, v: objective(KEY, x, _diagonal(m, v), _gauss, **kwargs),
                ("real", "bd"), ("real", "bd"), (log_var, "bd"))


# Moderate log-variances where a draw is pushed on or scored again: σ = e^5000 draws an
# infinite z, whose flow, conditional density or log q(z) is ∞ − ∞ in float64 too.
FINITE_DRAWS = "moderate"


def _linear_gaussian(method):
    # The oracle solves and factorises matrices: moderate values, float32/64 (no half-precision
    # Cholesky on CPU).
    return case(lambda w, b, s, x: method(vaejax.LinearGaussian(w, b, s), x),
                ("moderate", "dd"), ("moderate", "d"), ("moderate", ""), ("moderate", "bd"),
                dtypes=("float32", "float64"))


FUZZ = {
    "bernoulli_log_likelihood": case(vaejax.bernoulli_log_likelihood, ("real", "bd"), ("unit", "bd")),
    "continuous_bernoulli_log_likelihood": case(
        vaejax.continuous_bernoulli_log_likelihood, ("real", "bd"), ("unit", "bd")),
    "continuous_bernoulli_mean": case(vaejax.continuous_bernoulli_mean, ("real", "bd")),
    "gaussian_log_likelihood": case(vaejax.gaussian_log_likelihood,
                                    ("real", "bd"), ("real", "bd"), ("real", "")),
    "discretized_logistic_log_likelihood": case(
        lambda m, s, x: vaejax.discretized_logistic_log_likelihood(m, s, x, 256),
        ("real", "bd"), ("real", "bd"), ("unit", "bd"), diff=(0, 1)),
    "discretized_logistic_mixture_log_likelihood": case(
        lambda w, m, s, x: vaejax.discretized_logistic_mixture_log_likelihood(w, m, s, x, 256),
        ("cat_logit", "bdk"), ("real", "bdk"), ("moderate", "bdk"), ("unit", "bd"),
        diff=(0, 1, 2)),
    "bits_per_dim": case(lambda ll: vaejax.bits_per_dim(ll, 784, 256), ("real", "b")),
    "standard_normal_log_prob": case(vaejax.standard_normal_log_prob, ("real", "bd")),
    "diag_normal_log_prob": case(vaejax.diag_normal_log_prob,
                                 ("real", "kbd"), ("real", "bd"), ("real", "bd")),
    "mvn_tril_log_prob": case(vaejax.mvn_tril_log_prob,
                              ("real", "kbd"), ("real", "bd"), ("tril", "bdd")),
    "kl_standard_normal": case(vaejax.kl_standard_normal, ("real", "bd"), ("real", "bd")),
    "kl_diag_normals": case(vaejax.kl_diag_normals, *[("real", "bd")] * 4),
    "kl_mvn_tril": case(vaejax.kl_mvn_tril, ("real", "bd"), ("tril", "bdd"),
                        ("real", "bd"), ("tril", "bdd")),
    "diag_normal_entropy": case(vaejax.diag_normal_entropy, ("real", "bd")),
    "mvn_tril_entropy": case(vaejax.mvn_tril_entropy, ("tril", "bdd")),
    "reparameterize": case(lambda m, v: vaejax.reparameterize(KEY, m, v, 2),
                           ("real", "bd"), ("real", "bd")),
    "reparameterize_tril": case(lambda m, s: vaejax.reparameterize_tril(KEY, m, s, 2),
                                ("real", "bd"), ("tril", "bdd")),
    "categorical_log_prob": case(vaejax.categorical_log_prob, ("cat_logit", "bd"), ("one_hot", "bd")),
    "kl_categorical": case(vaejax.kl_categorical, ("cat_logit", "bd"), ("cat_logit", "bd")),
    "uniform_categorical_log_prob": case(vaejax.uniform_categorical_log_prob, ("one_hot", "bdd")),
    "gumbel_softmax": case(lambda logits, t: vaejax.gumbel_softmax(KEY, logits, t),
                           ("cat_logit", "bd"), ("scale", "")),
    "gumbel_softmax hard": case(lambda logits, t: vaejax.gumbel_softmax(KEY, logits, t, hard=True),
                                ("cat_logit", "bd"), ("scale", "")),
    "score_function_surrogate": case(vaejax.score_function_surrogate, *[("real", "bd")] * 3),
    "leave_one_out_baseline": case(vaejax.leave_one_out_baseline, ("real", "kbd")),
    "iwae_bound": case(vaejax.iwae_bound, ("real", "kbd")),
    "sparse_penalty": case(vaejax.sparse_penalty, ("real", "bd")),
    "corrupt": case(lambda x: vaejax.corrupt(KEY, x, 0.3), ("real", "bd")),
    "corrupt gaussian": case(lambda x: vaejax.corrupt(KEY, x, 0.3, "gaussian"), ("real", "bd")),
    "corrupt salt_and_pepper": case(lambda x: vaejax.corrupt(KEY, x, 0.3, "salt_and_pepper"),
                                    ("real", "bd")),
    "contractive_penalty": case(lambda x: vaejax.contractive_penalty(jnp.tanh, x), ("real", "bd")),
    "elbo": _objective(vaejax.elbo, num_samples=2),
    "elbo monte_carlo": _objective(vaejax.elbo, form="monte_carlo"),
    "elbo entropy": _objective(vaejax.elbo, form="entropy"),
    "log_importance_weights": _objective(vaejax.log_importance_weights, num_samples=2),
    "importance_log_likelihood": _objective(vaejax.importance_log_likelihood, num_samples=4,
                                            chunk_size=2),
    "kl_divergence": case(lambda *a: vaejax.kl_divergence(_diagonal(*a[:2]), _diagonal(*a[2:])),
                          *[("real", "bd")] * 4),
    "DiagonalGaussian.sample_and_log_prob": case(
        lambda m, v: _diagonal(m, v).sample_and_log_prob(KEY, 2), ("real", "bd"), ("real", "bd")),
    "CholeskyGaussian.sample_and_log_prob": case(
        lambda m, s: vaejax.CholeskyGaussian(m, s).sample_and_log_prob(KEY, 2),
        ("real", "bd"), ("tril", "bdd")),
    "CholeskyGaussian.kl_standard_normal": case(
        lambda m, s: vaejax.CholeskyGaussian(m, s).kl_standard_normal(),
        ("real", "bd"), ("tril", "bdd")),
    "Categorical.log_prob": case(lambda logits, z: vaejax.Categorical(logits).log_prob(z),
                                 ("cat_logit", "bdd"), ("one_hot", "bdd")),
    "Categorical.sample_and_log_prob": case(
        lambda logits: vaejax.Categorical(logits).sample_and_log_prob(KEY, 2), ("cat_logit", "bdd")),
    "Categorical.entropy": case(lambda logits: vaejax.Categorical(logits).entropy(),
                                ("cat_logit", "bdd")),
    "Categorical.kl_uniform": case(lambda logits: vaejax.Categorical(logits).kl_uniform(),
                                   ("cat_logit", "bdd")),
    "MixtureOfGaussians.log_prob": case(
        lambda z, logits, means, log_vars: vaejax.MixtureOfGaussians(logits, means, log_vars
                                                                     ).log_prob(z),
        # Moderate variances: a component whose density underflows to 0 gives a NaN gradient.
        ("real", "bd"), ("cat_logit", "k"), ("real", "kd"), ("moderate", "kd")),
    "MixtureOfGaussians.sample": case(
        lambda logits, means, log_vars: vaejax.MixtureOfGaussians(logits, means, log_vars
                                                                  ).sample(KEY, 2),
        # Moderate variances: the draws of each dtype differ, and e^20 overflows float16.
        ("cat_logit", "k"), ("real", "kd"), ("moderate", "kd")),
    "planar_step": case(lambda z, u, w, b: vaejax.planar_step(z, vaejax.Planar(u, w, b)),
                        ("real", "bd"), ("moderate", "bd"), ("moderate", "bd"), ("moderate", "b")),
    "iaf_step": case(lambda z, *made: vaejax.iaf_step(z, vaejax.MADE(*made)), ("real", "bd"),
                     *[("moderate", "dd"), ("moderate", "d")] * 3),
    "FlowPosterior.sample_and_log_prob": case(
        lambda m, v, u, w, b: vaejax.FlowPosterior(_diagonal(m, v), vaejax.Planar(u, w, b)
                                                   ).sample_and_log_prob(KEY, 2),
        ("real", "bd"), (FINITE_DRAWS, "bd"), ("moderate", "kbd"), ("moderate", "kbd"),
        ("moderate", "kb")),
    "hierarchical_elbo": case(
        lambda x, m, v: vaejax.hierarchical_elbo(
            KEY, x, [lambda x: _diagonal(m, v), lambda z1: _diagonal(z1, jnp.broadcast_to(v, z1.shape))],
            [lambda z2: _diagonal(z2, jnp.zeros_like(z2))], _gauss, num_samples=2).elbo,
        ("real", "bd"), ("real", "bd"), (FINITE_DRAWS, "bd")),
    "iwae_dreg": _objective(vaejax.iwae_dreg, FINITE_DRAWS, num_samples=2),
    "scale_gradient": case(vaejax.scale_gradient, ("real", "bd"), ("unit", "bd")),
    "vector_quantize": case(lambda z, c: vaejax.vector_quantize(z, c), ("real", "bd"),
                            ("moderate", "kd")),
    "codebook_perplexity": case(lambda i: vaejax.codebook_perplexity(i, 4), ("index", "b"),
                                diff=()),
    "ema_codebook_update": case(
        lambda n, m, z, i: vaejax.ema_codebook_update(vaejax.EmaCodebook(n, m), z, i, 0.9),
        ("scale", "k"), ("real", "kd"), ("real", "bd"), ("index", "b"), diff=(0, 1)),
    "EmaCodebook.codebook": case(lambda n, m: vaejax.EmaCodebook(n, m).codebook(),
                                 ("scale", "k"), ("real", "kd")),
    "LinearGaussian.log_likelihood": _linear_gaussian(lambda model, x: model.log_likelihood(x, x)),
    "LinearGaussian.log_marginal": _linear_gaussian(lambda model, x: model.log_marginal(x)),
    "LinearGaussian.posterior": _linear_gaussian(lambda model, x: model.posterior(x)),
    "LinearGaussian.sample": _linear_gaussian(lambda model, x: model.sample(KEY, 2)),
}

_SAME_ARITHMETIC = "a thin call of a fuzzed function (or of sample_and_log_prob)"
EXCLUDED = {
    "ElboTerms": "a container of elbo's results (fuzzed as elbo)",
    "Quantized": "a container of vector_quantize's results (fuzzed there)",
    "EmaCodebook.create": "a constructor, no arithmetic",
    "Posterior": "a protocol, no code",
    "Prior": "a protocol, no code",
    "closed_form_kl": "a registry lookup, no arithmetic",
    "register_kl": "a decorator, no arithmetic",
    **{f"{cls}.{method}": _SAME_ARITHMETIC for cls in ("DiagonalGaussian", "CholeskyGaussian")
       for method in ("sample", "log_prob", "mode", "entropy", "kl_standard_normal")
       if f"{cls}.{method}" not in FUZZ},
    "Categorical.sample": _SAME_ARITHMETIC,
    "Categorical.mode": "an argmax, no arithmetic",
    "StandardNormal.log_prob": _SAME_ARITHMETIC,
    "StandardNormal.sample": "a key is its only input",
    "UniformCategorical.log_prob": "a constant",
    "UniformCategorical.sample": "a key is its only input",
    "FlowPosterior.sample": _SAME_ARITHMETIC,
    "FlowPosterior.mode": _SAME_ARITHMETIC,
    "FlowPosterior.push": "the flow of sample_and_log_prob (fuzzed there)",
    "FlowPosterior.log_prob": "raises: a flow gives log q of its own draws only",
    "FlowPosterior.step": "the field's default, planar_step (fuzzed)",
}


def _public_core_functions():
    """Every public name of `vaejax` and, for its classes, every public method."""
    for name in vaejax.__all__:
        obj = getattr(vaejax, name)
        if inspect.isclass(obj) and name not in EXCLUDED:
            yield from (f"{name}.{m}" for m, f in vars(obj).items()
                        if not m.startswith("_") and inspect.isfunction(f))
        else:
            yield name


def test_every_public_core_function_is_fuzzed_or_excluded_with_a_reason():
    covered = {name.split(" ")[0] for name in FUZZ} | set(EXCLUDED)
    missing = sorted(set(_public_core_functions()) - covered)
    assert not missing, f"add to FUZZ (one line) or EXCLUDED (with a reason): {missing}"


@functools.cache
def _compiled(name):
    """jit(vmap(f ↦ (values, gradients))) of one row, built once so its compilations are reused.
    The gradient is that of the sum of every finite value."""
    fn, _, diff, _ = FUZZ[name]

    def per_example(*arrays):
        def total(*diff_args):
            full = list(arrays)
            for i, a in zip(diff, diff_args):
                full[i] = a
            leaves = [x for x in jax.tree.leaves(fn(*full)) if jnp.issubdtype(x.dtype, jnp.floating)]
            return sum(jnp.sum(jnp.where(jnp.isfinite(x), x, 0.0)) for x in leaves), fn(*full)

        if not diff:
            return (), fn(*arrays)
        return jax.grad(total, argnums=tuple(range(len(diff))), has_aux=True)(
            *[arrays[i] for i in diff])

    return jax.jit(jax.vmap(per_example))


def _run(name, arrays):
    grads, values = _compiled(name)(*arrays)
    as_float = lambda tree: [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    return as_float(values), as_float(grads)


@pytest.mark.parametrize("name", list(FUZZ))
# No shrinking: each failing draw is printed as drawn, and a failure stays cheap.
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck),
          phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(data=st.data())
def test_finite_where_float64_is_finite(name, data):
    _, kinds, _, dtypes = FUZZ[name]
    dtype = data.draw(st.sampled_from(dtypes), "dtype")
    batch, d = data.draw(st.sampled_from(SHAPES), "shape")
    # A stack of draws, checked together under vmap: one compilation checks them all.
    inputs = [np.stack([data.draw(_argument(kind, _shape(t, batch, d))) for _ in range(DRAWS)])
              for kind, t in kinds]
    rounded = [np.asarray(a, jnp.dtype(dtype)).astype(np.float64) for a in inputs]  # what both runs see
    # Index arguments stay integers in both runs.
    cast = lambda arrays, to: [jnp.asarray(a, jnp.int32 if kind == "index" else to)
                               for a, (kind, _) in zip(arrays, kinds)]
    with jax.enable_x64(True):
        ref_values, ref_grads = _run(name, cast(rounded, jnp.float64))
    big = float(jnp.finfo(dtype).max) / 4
    fits = lambda ref: np.isfinite(ref) & (np.abs(ref) < big)
    # A draw's gradients are defined where all its values are finite (an infinite one
    # may take them along).
    finite_draws = np.all([fits(ref).reshape(DRAWS, -1).all(axis=1) for ref in ref_values], axis=0)
    assert not any(np.isnan(ref).any() for ref in ref_values), "float64 value NaN"
    assert not any(np.isnan(g[finite_draws]).any() for g in ref_grads), "float64 gradient NaN"
    if dtype == "float64":
        return
    values, grads = _run(name, cast(rounded, dtype))
    for got, ref in zip(values, ref_values):
        assert np.all(np.isfinite(got[fits(ref)])), (dtype, got, ref)
    for got, ref in zip(grads, ref_grads):
        ok = fits(ref) & finite_draws.reshape((DRAWS,) + (1,) * (ref.ndim - 1))
        assert np.all(np.isfinite(got[ok])), (dtype, "gradient", got, ref)
