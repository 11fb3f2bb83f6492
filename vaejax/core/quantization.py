"""Vector quantisation (van den Oord et al. 2017): nearest codes, straight-through
gradients, the codebook and commitment losses, and the EMA codebook update."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vaejax.core import _checks


class Quantized(NamedTuple):
    """What `vector_quantize` returns; losses are per vector, summed over the code axis.

    Attributes:
      codes: z + sg(e_k − z): the nearest code e_k forwards, z's gradient backwards.
      indices: k, the index of each vector's nearest code (int32).
      codebook_loss: ‖sg(z) − e_k‖², which moves the codes (not needed with EMA codes).
      commitment_loss: ‖z − sg(e_k)‖², which keeps the encoder near its codes (× β).
    """

    codes: jax.Array
    indices: jax.Array
    codebook_loss: jax.Array
    commitment_loss: jax.Array


def vector_quantize(z: ArrayLike, codebook: ArrayLike) -> Quantized:
    """Replaces each vector of z by its nearest codebook entry (squared Euclidean distance).

    Args:
      z: encoder outputs, shape (..., d).
      codebook: K codes, shape (K, d).

    Returns:
      `Quantized`: codes (..., d), indices (...), both losses (...).

    Example:
      >>> out = vector_quantize(jnp.array([[0.9, 0.1]]), jnp.eye(2))
      >>> out.indices.tolist(), out.codes.tolist()
      ([0], [[1.0, 0.0]])
    """
    z, codebook = jnp.asarray(z), jnp.asarray(codebook)
    if codebook.ndim != 2 or z.ndim < 1 or z.shape[-1] != codebook.shape[-1]:
        raise ValueError(f"codebook must have shape (K, d) for z of shape (..., d), got "
                         f"z{z.shape}, codebook{codebook.shape}")
    # ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖²; ‖z‖² is the same for every code, so it is left out.
    scores = jnp.sum(codebook**2, axis=-1) - 2.0 * z @ codebook.T
    indices = jnp.argmin(scores, axis=-1).astype(jnp.int32)
    nearest = codebook[indices]
    return Quantized(
        codes=z + jax.lax.stop_gradient(nearest - z),
        indices=indices,
        codebook_loss=jnp.sum((jax.lax.stop_gradient(z) - nearest)**2, axis=-1),
        commitment_loss=jnp.sum((z - jax.lax.stop_gradient(nearest))**2, axis=-1))


def codebook_perplexity(indices: ArrayLike, num_codes: int) -> jax.Array:
    """exp(H(p)), p the codes' frequencies in indices: K when all are used equally, 1 for one.

    Args:
      indices: code indices, any shape.
      num_codes: K.

    Returns:
      the perplexity, a scalar.
    """
    _checks.at_least(num_codes, 1, "num_codes")
    counts = jnp.bincount(jnp.ravel(jnp.asarray(indices)), length=num_codes)
    p = counts / jnp.maximum(jnp.sum(counts), 1)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


class EmaCodebook(NamedTuple):
    """Exponential moving averages of each code's count N_k and vector sum m_k; e_k = m_k/N_k."""

    counts: jax.Array
    sums: jax.Array

    @classmethod
    def create(cls, codebook: ArrayLike) -> "EmaCodebook":
        """The state whose codes are `codebook` (counts of 1)."""
        codebook = jnp.asarray(codebook)
        return cls(jnp.ones(codebook.shape[0], codebook.dtype), codebook)

    def codebook(self, epsilon: float = 1e-5) -> jax.Array:
        """e_k = m_k / Ñ_k, with Laplace-smoothed counts Ñ_k = (N_k + ε) n / (n + K ε), n = Σ N_k,
        so a code that is never chosen keeps a finite entry."""
        dtype = jnp.result_type(self.counts, self.sums)
        # Small counts in half precision would overflow the quotient's gradient: float32 at least.
        counts, sums = (jnp.asarray(a, jnp.promote_types(dtype, jnp.float32))
                        for a in (self.counts, self.sums))
        n = jnp.sum(counts)
        smoothed = (counts + epsilon) * n / (n + counts.shape[0] * epsilon)
        return (sums / smoothed[:, None]).astype(dtype)


def ema_codebook_update(state: EmaCodebook, z: ArrayLike, indices: ArrayLike,
                        decay: float = 0.99) -> EmaCodebook:
    """One EMA step: N_k ← γN_k + (1−γ) n_k, m_k ← γm_k + (1−γ) Σ_{i: k_i = k} z_i.

    Args:
      state: the current averages.
      z: the encoder outputs of the batch, shape (..., d) (gradients are stopped).
      indices: their nearest codes, shape (...).
      decay: γ in [0, 1).

    Returns:
      the updated EmaCodebook.
    """
    _checks.in_range(decay, "decay", 0.0, 1.0)
    num_codes, d = state.sums.shape
    z = jax.lax.stop_gradient(jnp.asarray(z)).reshape(-1, d)
    one_hot = jax.nn.one_hot(jnp.ravel(jnp.asarray(indices)), num_codes, dtype=z.dtype)
    return EmaCodebook(decay * state.counts + (1 - decay) * jnp.sum(one_hot, axis=0),
                       decay * state.sums + (1 - decay) * one_hot.T @ z)
