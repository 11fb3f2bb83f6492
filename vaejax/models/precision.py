"""Mixed precision: the products of a model's layers in bfloat16, everything else in float32.

| precision | matmuls, convolutions | parameters, optimizer state, activations, loss |
|---|---|---|
| `float32` | float32 | float32 |
| `bf16` | bfloat16 operands, float32 results | float32 |

Flax layers with a product (`nnx.Linear`, `nnx.Conv`, `nnx.ConvTranspose`, `nnx.Einsum`,
vaejax's `Conv`, …) take a computation `dtype` and a `preferred_element_type`; `bf16`
sets them to bfloat16 and float32, so each layer rounds its inputs and weights to bfloat16,
multiplies, and returns float32. The parameters stay float32 (gradients flow through the
rounding), and the likelihoods, KLs and their sums over an image run on float32 values.
"""

import jax.numpy as jnp
from flax import nnx

from vaejax.config import PRECISIONS, ConfigError


def _product_layers(model: nnx.Module) -> list[nnx.Module]:
    return [m for _, m in nnx.iter_graph(model)
            if isinstance(m, nnx.Module) and hasattr(m, "preferred_element_type")
            and hasattr(m, "dtype")]


def with_precision(model: nnx.Module, precision: str) -> nnx.Module:
    """The model (changed in place) with its product layers computing at `precision`.

    Raises ConfigError for an unknown precision, or for "bf16" on a model without a Flax
    product layer (its products would stay float32: the setting would have no effect).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "float32":
        return model
    layers = _product_layers(model)
    if not layers:
        raise ConfigError(f"--precision {precision}: the model has no Flax layer with a "
                          "computation dtype (nnx.Linear, nnx.Conv, ...) to compute in bfloat16")
    for layer in layers:
        layer.dtype, layer.preferred_element_type = jnp.bfloat16, jnp.float32
    return model
