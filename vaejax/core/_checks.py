"""Validation shared by the core functions: one clear ValueError at trace time.

Shapes are static, so their checks fire under jit too; values are checked only
where they are concrete (Python or NumPy numbers, unjitted arrays): a traced
value is unknown until run, and passes.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def same_shape(**arrays) -> None:
    """Raises ValueError unless all named arrays have one shape."""
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes must match, got {_describe(shapes)}")


def broadcastable(**arrays) -> None:
    """Raises ValueError unless the named arrays broadcast against each other."""
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    try:
        jnp.broadcast_shapes(*shapes.values())
    except ValueError:
        raise ValueError(f"shapes must broadcast, got {_describe(shapes)}") from None


def _describe(shapes):
    return ", ".join(f"{name}{s}" for name, s in shapes.items())


def square(scale_tril, name: str = "scale_tril") -> None:
    """Raises ValueError unless scale_tril is (..., d, d)."""
    s = jnp.shape(scale_tril)
    if len(s) < 2 or s[-1] != s[-2]:
        raise ValueError(f"{name} must have shape (..., d, d), got {s}")


def tril_pair(mean, scale_tril, name: str = "scale_tril") -> None:
    """Raises ValueError unless scale_tril is (..., d, d) for mean (..., d)."""
    m, s = jnp.shape(mean), jnp.shape(scale_tril)
    if len(m) < 1 or s != m + m[-1:]:
        raise ValueError(
            f"{name} must have shape mean.shape + (d,) = {m + m[-1:]}, got {s}")


def event_ndims(x, n: int, name: str = "x") -> None:
    """Raises ValueError unless x has at least n axes to sum over."""
    if n < 0 or jnp.ndim(x) < n:
        raise ValueError(
            f"{name} with shape {jnp.shape(x)} has fewer than event_ndims={n} axes")


def sum_event(x, n: int):
    """Sums the trailing n axes."""
    return jnp.sum(x, axis=tuple(range(-n, 0))) if n else x


def sample_axis(x, axis: int, minimum: int = 1, name: str = "log_weights") -> int:
    """The size K of x along `axis`; raises ValueError if there is no such axis or K < minimum."""
    shape = jnp.shape(x)
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"{name} with shape {shape} has no axis {axis}")
    if shape[axis] < minimum:
        raise ValueError(f"{name} needs >= {minimum} samples along axis {axis}, got {shape[axis]}")
    return shape[axis]


def sample_shape(mean, num_samples: int | None, minimum: int = 0) -> tuple[int, ...]:
    """mean's shape, after a leading axis of num_samples draws if given (>= minimum)."""
    if num_samples is None:
        return jnp.shape(mean)
    at_least(num_samples, minimum)
    return (num_samples, *jnp.shape(mean))


def at_least(n: int, minimum: int, name: str = "num_samples") -> None:
    """Raises ValueError unless the count n is >= minimum."""
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")


def in_range(x, name: str, low: float, high: float = math.inf, open_low: bool = False) -> None:
    """Raises ValueError unless every concrete value of x is finite and in [low, high]
    ((low, high] with open_low); a traced x passes."""
    if isinstance(x, jax.core.Tracer):
        return
    v = np.asarray(x, np.float64)
    if not np.all(np.isfinite(v) & (v > low if open_low else v >= low) & (v <= high)):
        bounds = f"{'(' if open_low else '['}{low}, {high}{')' if high == math.inf else ']'}"
        raise ValueError(f"{name} must be finite and in {bounds}, got {x}")
