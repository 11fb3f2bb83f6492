"""2-D convolutions with the parameters of `nnx.Conv` / `nnx.ConvTranspose` ("SAME"
padding) and their results to float rounding, written so that every convolution of
the forward and backward pass is a stride-1 NHWC·HWIO one.

Inside a loop (the compiled epoch's `lax.scan`) XLA's CPU backend leaves the
convolutions of a gradient in the forms autodiff emits (input-dilated, or with
batch and feature axes swapped) and runs them on a generic path: a conv preset
step took 2.3 s in a scan against 0.2 s alone. In the canonical form it takes
the fast path in both. Strides become a space-to-depth (Conv) or depth-to-space
(ConvTranspose) around a stride-1 convolution, and `conv2d`'s gradient is written
in the same form. Use these layers in your own models for the same speed.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_DIMS = ("NHWC", "HWIO", "NHWC")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, kernel, padding, result_dtype=None):
    """Stride-1 convolution (N, H, W, I) · (kh, kw, I, O) with padding ((lo, hi), (lo, hi)),
    its products summed in `result_dtype` (None: the operands' dtype)."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMS,
                                        preferred_element_type=result_dtype)


def _conv2d_fwd(x, kernel, padding, result_dtype):
    return conv2d(x, kernel, padding, result_dtype), (x, kernel)


def _conv2d_bwd(padding, result_dtype, residuals, dy):
    x, kernel = residuals
    dy = dy.astype(x.dtype)  # the gradient's products in the forward's operand dtype too
    (kh, kw), ((lo0, hi0), (lo1, hi1)) = kernel.shape[:2], padding
    # dx: the flipped kernel, in and out swapped, over dy.
    dx = conv2d(dy, jnp.swapaxes(kernel[::-1, ::-1], 2, 3),
                ((kh - 1 - lo0, kh - 1 - hi0), (kw - 1 - lo1, kw - 1 - hi1)), result_dtype)
    # dk[a, b, i, o] = Σ_nhw x[n, h+a, w+b, i]·dy[n, h, w, o]: a convolution with the
    # input channels as its batch and the examples as its features.
    dk = conv2d(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), padding,
                result_dtype)
    return dx.astype(x.dtype), jnp.transpose(dk, (1, 2, 0, 3)).astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _pairs(value):
    return (value,) * 2 if isinstance(value, int) else tuple(value)


def _plain(layer) -> bool:
    """Whether the layer is one that this module computes ("SAME", no dilation, groups, mask)."""
    return (layer.padding == "SAME" and _pairs(layer.kernel_dilation or 1) == (1, 1)
            and getattr(layer, "feature_group_count", 1) == 1
            and _pairs(getattr(layer, "input_dilation", 1) or 1) == (1, 1)
            and layer.mask is None and len(layer.kernel_size) == 2)


def _operands(layer, x, kernel):
    """x and the kernel in the layer's computation dtype (Flax's `dtype`; None: as given)."""
    return (x, kernel) if layer.dtype is None else (x.astype(layer.dtype),
                                                   kernel.astype(layer.dtype))


def _biased(layer, y):
    return y + layer.bias[...].astype(y.dtype) if layer.use_bias else y


def _batched(fn, x):
    lead = x.shape[:-3]
    y = fn(x.reshape(-1, *x.shape[-3:]))
    return y.reshape(*lead, *y.shape[1:])


class Conv(nnx.Conv):
    """`nnx.Conv`, a stride s as space-to-depth: output i reads taps s·q + r of the
    padded input, i.e. rows i + q of the input regrouped into blocks of s."""

    def __call__(self, x):
        if not _plain(self):
            return super().__call__(x)
        kernel, strides = self.kernel[...], _pairs(self.strides or 1)
        size, ks = x.shape[-3:-1], kernel.shape[:2]
        pads = jax.lax.padtype_to_pads(size, ks, strides, "SAME")
        out = [math.ceil(n / s) for n, s in zip(size, strides)]
        window = [math.ceil(k / s) for k, s in zip(ks, strides)]
        rows = [s * (o + q - 1) for s, o, q in zip(strides, out, window)]  # padded, blocked

        def apply(x):
            n, c = x.shape[0], x.shape[-1]
            x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *(
                (lo, r - n_ - lo, 0) for (lo, _), r, n_ in zip(pads, rows, size)), (0, 0, 0)])
            (s0, s1), (r0, r1) = strides, rows
            x = x.reshape(n, r0 // s0, s0, r1 // s1, s1, c).transpose(0, 1, 3, 2, 4, 5)
            return conv2d(x.reshape(n, r0 // s0, r1 // s1, -1), blocked, ((0, 0), (0, 0)),
                          self.preferred_element_type)

        (q0, q1), (s0, s1) = window, strides
        blocked = jnp.pad(kernel, [(0, q0 * s0 - ks[0]), (0, q1 * s1 - ks[1]), (0, 0), (0, 0)])
        blocked = blocked.reshape(q0, s0, q1, s1, *kernel.shape[2:]).transpose(0, 2, 1, 3, 4, 5)
        blocked = blocked.reshape(q0, q1, -1, kernel.shape[-1])
        x, blocked = _operands(self, x, blocked)
        return _biased(self, _batched(apply, x))


class ConvTranspose(nnx.ConvTranspose):
    """`nnx.ConvTranspose` (lax.conv_transpose's "SAME"), a stride s as one stride-1
    convolution to the s₀·s₁ output phases, then depth-to-space."""

    def __call__(self, x):
        if not _plain(self) or self.transpose_kernel:
            return super().__call__(x)
        kernel, strides = self.kernel[...], _pairs(self.strides or 1)
        taps, pads = zip(*(_phase_taps(k, s) for k, s in zip(kernel.shape[:2], strides)))
        # (window₀, window₁, in, s₀, s₁, out): the kernel taps each output phase reads.
        phased = jnp.einsum("paj,qbk,jkio->abipqo", *taps, kernel)
        phased = phased.reshape(*phased.shape[:3], -1)
        x, phased = _operands(self, x, phased)
        (s0, s1), out = strides, kernel.shape[-1]

        def apply(x):
            n, h, w, _ = x.shape
            y = conv2d(x, phased, pads, self.preferred_element_type).reshape(n, h, w, s0, s1, out)
            return y.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s0, w * s1, out)

        return _biased(self, _batched(apply, x))


def _phase_taps(k: int, s: int):
    """One axis of a stride-s "SAME" transposed convolution: which of the k taps output
    phase p takes from input offset d, as a 0/1 array (s, window, k), and the input
    padding (low, high) that the window needs."""
    low = k - 1 if s > k - 1 else -(-(k + s - 2) // 2)  # lax.conv_transpose's dilated padding
    offsets = {(p, t): (p + t - low) // s for p in range(s) for t in range(k)
               if (p + t - low) % s == 0}
    first, last = min(offsets.values()), max(offsets.values())
    taps = np.zeros((s, last - first + 1, k), np.float32)
    for (p, t), d in offsets.items():
        taps[p, d - first, t] = 1.0
    return taps, (-first, last)
