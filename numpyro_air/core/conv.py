"""Convolution as slices and one matrix product (im2col), a drop-in for
``jax.lax.conv_general_dilated`` in Flax's ``nn.Conv`` (its ``conv_general_dilated`` field).

Why: XLA:CPU runs both gradients of a convolution inside a loop (``lax.scan``, as the model's and
guide's steps are) an order of magnitude slower than outside one; slices, pads, concatenations
and dots have fast kernels everywhere. ``benchmarks/conv_in_scan.py`` times both forms (4
stride-2 layers on a 64x64x64x3 batch, forward and gradient, 3 loop iterations; 2026-12-06 on a
2-core Xeon: XLA's 1,353 ms in the loop against 88 ms unrolled, this form 201 ms in the loop).
Outside a loop XLA's convolution is faster (1.6x unrolled in that benchmark), so the networks use
this form only for the convolutions inside the step loop. The result equals the convolution's up to float rounding
(the same products, summed in another order).

Only what AIR's networks use: 2-D, channels last (NHWC input, HWIO kernel, NHWC output), any
strides and padding, input dilation (a transposed convolution), no kernel dilation or groups.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Padding = Union[str, Sequence[Tuple[int, int]]]
CHANNELS_LAST = ("NHWC", "HWIO", "NHWC")


def _channels_last(lhs: jnp.ndarray, rhs: jnp.ndarray, dimension_numbers) -> None:
    """Raise unless ``dimension_numbers`` (None, names or ``ConvDimensionNumbers``) mean NHWC/HWIO/NHWC."""
    if lhs.ndim != 4 or rhs.ndim != 4:
        raise ValueError(f"patch_conv is 2-D only: got input {lhs.shape} and kernel {rhs.shape}")
    want = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, CHANNELS_LAST)
    got = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers or CHANNELS_LAST)
    if got != want:
        raise ValueError(f"patch_conv needs channels last (NHWC, HWIO, NHWC), got {dimension_numbers}")


def _dilate_and_pad(x: jnp.ndarray, kernel: Tuple[int, int], strides, padding: Padding, dilation) -> jnp.ndarray:
    """Insert ``dilation - 1`` zeros between input pixels, then pad (B, H, W, C) as ``padding``
    says ("SAME" or "VALID" without dilation, as XLA's; else explicit (low, high) pairs, possibly
    negative)."""
    dilation = (1, 1) if dilation is None else tuple(dilation)
    if isinstance(padding, str):
        if dilation != (1, 1):
            raise ValueError(f"input dilation needs explicit padding pairs, got padding={padding!r}")
        padding = jax.lax.padtype_to_pads(x.shape[1:3], kernel, strides, padding)
    config = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(padding, dilation)] + [(0, 0, 0)]
    return jax.lax.pad(x, jnp.zeros((), x.dtype), config)


def patch_conv(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Optional[Sequence[int]] = None,
    rhs_dilation: Optional[Sequence[int]] = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    dot_general: Callable = jax.lax.dot_general,
) -> jnp.ndarray:
    """``jax.lax.conv_general_dilated`` of an input (B, H, W, C) with a kernel (kh, kw, C, O):
    the (kh * kw) strided slices of the dilated, padded input side by side (B, H', W', kh*kw*C)
    times the kernel as a (kh*kw*C, O) matrix. Returns (B, H', W', O). With a
    ``preferred_element_type`` wider than the operands (bfloat16 operands, a float32 product), the
    slicing and its gradient's sums run in the wider type; only the product reads the operands' type.
    ``dot_general`` computes the product (as ``nn.Dense``'s field of that name), called as
    ``dot_general(patches, kernel matrix, dimension_numbers, precision=, preferred_element_type=)``.

    A stride s is taken by space-to-depth first (each s x s block of pixels becomes s*s*C
    channels), so that every tap is a unit-stride slice: a stride-2 kernel of 4 is 2 x 2 slices
    of the blocked input, and the gradient adds 4 shifted arrays of the output's size instead of
    16 strided ones of the input's. An input dilation d with unit strides (a transposed
    convolution) is computed per output phase instead (:func:`_phase_conv`), without the zeros."""
    _channels_last(lhs, rhs, dimension_numbers)
    if rhs_dilation is not None and tuple(rhs_dilation) != (1, 1):
        raise ValueError(f"patch_conv has no kernel dilation, got rhs_dilation={rhs_dilation}")
    if feature_group_count != 1 or batch_group_count != 1:
        raise ValueError("patch_conv has no feature or batch groups")
    kh, kw, C, out = rhs.shape
    if lhs.shape[-1] != C:
        raise ValueError(f"input has {lhs.shape[-1]} channels, the kernel expects {C}")
    sh, sw = window_strides
    operand = lhs.dtype
    if preferred_element_type is not None and jnp.dtype(preferred_element_type) != operand:
        # slice, pad and concatenate in the product's dtype, so that the gradient sums the taps'
        # shifted arrays in it too; the product reads the patches in the operands' dtype
        lhs = lhs.astype(preferred_element_type)

    def dot(patches: jnp.ndarray, kernel: jnp.ndarray, dimension_numbers) -> jnp.ndarray:
        patches = patches.astype(operand)  # a no-op unless widened above
        return dot_general(patches, kernel, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type)

    dilation = (1, 1) if lhs_dilation is None else tuple(lhs_dilation)
    if dilation != (1, 1) and (sh, sw) == (1, 1) and not isinstance(padding, str):
        return _phase_conv(lhs, rhs, dilation, tuple(map(tuple, padding)), dot)
    x = _dilate_and_pad(lhs, (kh, kw), (sh, sw), padding, lhs_dilation)
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"kernel {kh}x{kw} does not fit the padded input {x.shape[1]}x{x.shape[2]}")
    ah, aw = -(-kh // sh), -(-kw // sw)  # taps of the kernel on the strided grid
    blocks = _space_to_depth(x, (sh, sw), (oh + ah - 1, ow + aw - 1))  # (B, oh+ah-1, ow+aw-1, sh*sw*C)
    taps = [blocks[:, a : a + oh, b : b + ow, :] for a in range(ah) for b in range(aw)]
    patches = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
    return dot(patches, _blocked_kernel(rhs, (sh, sw), (ah, aw)), (((3,), (0,)), ((), ())))


def _phase_taps(n: int, d: int, pad: Tuple[int, int], k: int) -> Tuple[int, int, int, np.ndarray]:
    """One axis of an input-dilated, unit-stride convolution split by output phase: output o = d*m + p
    reads input m + e at kernel tap t = d*e + lo - p. Returns (output size, phase positions M,
    lowest offset e0, taps (R, d) int: the tap of offset e0 + a in phase p, or k where none)."""
    lo, hi = pad
    size = (n - 1) * d + 1 + lo + hi - k + 1
    if size <= 0:
        raise ValueError(f"kernel of {k} does not fit the dilated, padded input of {size + k - 1}")
    pairs = [(p, t) for p in range(d) for t in range(k) if (p + t - lo) % d == 0]
    offsets = [(p + t - lo) // d for p, t in pairs]
    e0 = min(offsets)
    taps = np.full((max(offsets) - e0 + 1, d), k)
    for (p, t), e in zip(pairs, offsets):
        taps[e - e0, p] = t
    return size, -(-size // d), e0, taps


def _phase_conv(x: jnp.ndarray, rhs: jnp.ndarray, dilation, padding, dot) -> jnp.ndarray:
    """Unit-stride convolution of the input (B, H, W, C) dilated by ``dilation`` and padded by
    ``padding`` ((lo, hi) per axis), without forming the dilated input: each of the dh*dw output
    phases is a small convolution of the input itself, all phases in one product whose columns are
    (phase row, phase column, output channel). Returns (B, H', W', O) as the dilated form would."""
    B, H, W, C = x.shape
    kh, kw, _, out = rhs.shape
    (dh, dw) = dilation
    sizes_h, mh, e0h, th = _phase_taps(H, dh, padding[0], kh)
    sizes_w, mw, e0w, tw = _phase_taps(W, dw, padding[1], kw)
    (rh, rw) = th.shape[0], tw.shape[0]
    # xp[m + a] = x[m + e0 + a] (zero outside the input) for m < M, a < R
    config = [(0, 0, 0), (-e0h, mh + rh - 1 + e0h - H, 0), (-e0w, mw + rw - 1 + e0w - W, 0), (0, 0, 0)]
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    taps = [xp[:, a : a + mh, b : b + mw, :] for a in range(rh) for b in range(rw)]
    patches = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]  # (B, mh, mw, rh*rw*C)
    k = jnp.pad(rhs, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap index k reads zeros
    k = k[th[:, None, :, None], tw[None, :, None, :]]  # (rh, rw, dh, dw, C, O)
    k = k.transpose(0, 1, 4, 2, 3, 5).reshape(rh * rw * C, dh * dw * out)
    y = dot(patches, k, (((3,), (0,)), ((), ())))  # (B, mh, mw, dh*dw*O)
    y = y.reshape(B, mh, mw, dh, dw, out).transpose(0, 1, 3, 2, 4, 5).reshape(B, mh * dh, mw * dw, out)
    return y[:, :sizes_h, :sizes_w, :]


def _space_to_depth(x: jnp.ndarray, strides: Tuple[int, int], size: Tuple[int, int]) -> jnp.ndarray:
    """(B, H, W, C) cropped or zero-padded to (B, size * strides, C), then each strides-sized block
    of pixels as channels: (B, size[0], size[1], sh*sw*C), block row, block column, channel."""
    (sh, sw), (n, m) = strides, size
    B, H, W, C = x.shape
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (0, n * sh - H, 0), (0, m * sw - W, 0), (0, 0, 0)])
    x = x.reshape(B, n, sh, m, sw, C).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B, n, m, sh * sw * C)


def _blocked_kernel(rhs: jnp.ndarray, strides: Tuple[int, int], taps: Tuple[int, int]) -> jnp.ndarray:
    """Kernel (kh, kw, C, O), zero-padded to (ah*sh, aw*sw), as the matrix (ah*aw*sh*sw*C, O)
    whose rows follow the patches of :func:`patch_conv`: tap row a, tap column b, then the
    block's row p, column q and channel c hold kernel[a*sh + p, b*sw + q, c]."""
    (sh, sw), (ah, aw) = strides, taps
    kh, kw, C, out = rhs.shape
    k = jnp.pad(rhs, ((0, ah * sh - kh), (0, aw * sw - kw), (0, 0), (0, 0)))
    k = k.reshape(ah, sh, aw, sw, C, out).transpose(0, 2, 1, 3, 4, 5)
    return k.reshape(ah * aw * sh * sw * C, out)


def transpose_padding(kernel: int, stride: int) -> Tuple[int, int]:
    """(low, high) padding of the dilated input that makes a stride-1 convolution with input
    dilation ``stride`` equal ``jax.lax.conv_transpose(..., padding="SAME")`` and Flax's
    ``nn.ConvTranspose`` with "SAME" padding (output side = stride x input side)."""
    total = kernel + stride - 2
    low = kernel - 1 if stride > kernel - 1 else int(np.ceil(total / 2))
    return low, total - low
