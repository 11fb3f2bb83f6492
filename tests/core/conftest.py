"""Fixtures shared by the functional-core tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaejax


@pytest.fixture
def rng():
    """A seeded NumPy generator, so every test draws the same numbers."""
    return np.random.default_rng(1234)


@pytest.fixture(params=["float32", "float64"])
def precision(request):
    """(dtype, rtol) for comparisons with float64 references; float64 runs under x64."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield np.float64, 1e-10
    else:
        yield np.float32, 2e-5


@pytest.fixture
def random_tril(rng):
    """Draws well-conditioned lower-triangular factors with positive diagonals."""

    def draw(d, batch=()):
        lower = np.tril(rng.normal(scale=0.5, size=(*batch, d, d)), k=-1)
        diag = np.exp(rng.uniform(-0.5, 0.5, size=(*batch, d)))
        return lower + diag[..., None] * np.eye(d)

    return draw


@pytest.fixture
def check_moments():
    """Asserts that draws (N, d) have the given mean and covariance within 5 standard errors."""

    def check(draws, mean, cov, num_se=5.0):
        draws = np.asarray(draws, np.float64)
        n = draws.shape[0]
        centred = draws - draws.mean(axis=0)
        mean_se = draws.std(axis=0) / np.sqrt(n)
        np.testing.assert_array_less(np.abs(draws.mean(axis=0) - mean), num_se * mean_se)
        products = centred[:, :, None] * centred[:, None, :]
        cov_se = products.std(axis=0) / np.sqrt(n)
        np.testing.assert_array_less(np.abs(products.mean(axis=0) - cov), num_se * cov_se + 1e-6)

    return check


@pytest.fixture
def oracle_params(rng):
    """Float64 weight (D=5, d=2), bias and log_scale of a linear-Gaussian model."""
    return {
        "weight": rng.normal(size=(5, 2)),
        "bias": rng.normal(size=5),
        "log_scale": np.log(0.7),
    }


@pytest.fixture
def linear_gaussian(oracle_params):
    """A float32 LinearGaussian oracle and 6 data points drawn from it."""
    model = vaejax.LinearGaussian(
        **{name: jnp.asarray(value, jnp.float32) for name, value in oracle_params.items()})
    return model, model.sample(jax.random.key(0), 6)
