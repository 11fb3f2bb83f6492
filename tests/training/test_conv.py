"""vaejax.models.conv against nnx.Conv / nnx.ConvTranspose: same parameters, same values
and gradients, and a compiled loop whose convolutions are all stride-1 NHWC·HWIO."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import given, settings, strategies as st

from vaejax.models.conv import Conv, ConvTranspose, conv2d


def _values_and_grads(layer, x):
    def loss(layer, x):
        return jnp.sum(jnp.sin(layer(x)))
    return layer(x), nnx.grad(loss, argnums=(0, 1))(layer, x)


def _close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4 * (1 + float(jnp.max(jnp.abs(v)))))


@settings(max_examples=10, deadline=None)
@given(transpose=st.booleans(), kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)),
       strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       size=st.tuples(st.integers(1, 9), st.integers(1, 9)), lead=st.integers(0, 2))
def test_matches_flax(transpose, kernel, strides, size, lead):
    reference, fast = (nnx.ConvTranspose, ConvTranspose) if transpose else (nnx.Conv, Conv)
    a = reference(3, 4, kernel, strides=strides, rngs=nnx.Rngs(0))
    b = fast(3, 4, kernel, strides=strides, rngs=nnx.Rngs(0))
    # Same parameter tree and initial values: checkpoints of either load into the other.
    _close(nnx.state(b, nnx.Param), nnx.state(a, nnx.Param))
    x = jax.random.normal(jax.random.PRNGKey(1), (*(2,) * lead, *size, 3))
    (ya, ga), (yb, gb) = _values_and_grads(a, x), _values_and_grads(b, x)
    assert yb.shape == ya.shape
    _close(yb, ya)
    _close(gb, ga)


def test_conv2d_gradient_matches_lax():
    pad = ((0, 2), (1, 0))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 7, 2))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 2, 5))
    y, got = jax.vjp(lambda x, k: conv2d(x, k, pad), x, k)
    _, want = jax.vjp(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")), x, k)
    dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
    _close(got(dy), want(dy))


def test_loop_convolutions_are_canonical():
    """Inside a scan, every convolution of the step's gradient is the fast NHWC·HWIO form."""
    down = Conv(1, 4, (3, 3), strides=2, rngs=nnx.Rngs(0))
    up = ConvTranspose(4, 2, (3, 3), strides=2, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(nnx.List([down, up]))

    def loss(params, x):
        d, u = nnx.merge(graphdef, params)
        return jnp.sum(u(jax.nn.relu(d(x))) ** 2)

    def epoch(params, xs):
        return jax.lax.scan(lambda p, x: (jax.tree.map(
            lambda a, g: a - 1e-3 * g, p, jax.grad(loss)(p, x)), None), params, xs)[0]

    hlo = jax.jit(epoch).lower(params, jnp.ones((2, 4, 8, 8, 1))).compile().as_text()
    labels = [line.split("dim_labels=")[1].split(",")[0].split()[0]
              for line in hlo.splitlines() if " convolution(" in line]
    assert labels and set(labels) == {"b01f_01io->b01f"}, labels
    assert "lhs_dilate" not in hlo
