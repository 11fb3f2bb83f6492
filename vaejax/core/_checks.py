"""Shape validation shared by the core functions: one clear error at trace time."""

import jax.numpy as jnp


def same_shape(**arrays) -> None:
    """Raises ValueError unless all named arrays have one shape."""
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name}{s}" for name, s in shapes.items())
        raise ValueError(f"shapes must match, got {described}")


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
