"""Convolution as strided slices and one matrix product (im2col), a drop-in for
``jax.lax.conv_general_dilated`` in Flax's ``nn.Conv`` (its ``conv_general_dilated`` field).

Why: XLA:CPU runs the gradient of a convolution inside a loop (``lax.scan``, as the model's and
guide's steps are) an order of magnitude slower than the same convolution outside one
(``benchmarks/conv_in_scan.py``: 4 stride-2 layers on a 64x64x64x3 batch, 3 loop iterations,
forward and gradient: 1,467 ms as a loop against 87 ms unrolled, 2026-12-06). Written as slices
and a matrix product the loop costs 92 ms and the unrolled form 59 ms: slices, pads,
concatenations and dots have fast kernels everywhere. The result equals the convolution's up to
float rounding (the same products, summed in another order).

Only what AIR's networks use: 2-D, channels last (NHWC input, HWIO kernel, NHWC output), any
strides and padding, input dilation (a transposed convolution), no kernel dilation or groups.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

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
) -> jnp.ndarray:
    """``jax.lax.conv_general_dilated`` of an input (B, H, W, C) with a kernel (kh, kw, C, O):
    the (kh * kw) strided slices of the dilated, padded input side by side (B, H', W', kh*kw*C)
    times the kernel as a (kh*kw*C, O) matrix. Returns (B, H', W', O).

    A stride s is taken by space-to-depth first (each s x s block of pixels becomes s*s*C
    channels), so that every tap is a unit-stride slice: a stride-2 kernel of 4 is 2 x 2 slices
    of the blocked input, and the gradient adds 4 shifted arrays of the output's size instead of
    16 strided ones of the input's."""
    _channels_last(lhs, rhs, dimension_numbers)
    if rhs_dilation is not None and tuple(rhs_dilation) != (1, 1):
        raise ValueError(f"patch_conv has no kernel dilation, got rhs_dilation={rhs_dilation}")
    if feature_group_count != 1 or batch_group_count != 1:
        raise ValueError("patch_conv has no feature or batch groups")
    kh, kw, C, out = rhs.shape
    if lhs.shape[-1] != C:
        raise ValueError(f"input has {lhs.shape[-1]} channels, the kernel expects {C}")
    sh, sw = window_strides
    x = _dilate_and_pad(lhs, (kh, kw), (sh, sw), padding, lhs_dilation)
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"kernel {kh}x{kw} does not fit the padded input {x.shape[1]}x{x.shape[2]}")
    ah, aw = -(-kh // sh), -(-kw // sw)  # taps of the kernel on the strided grid
    blocks = _space_to_depth(x, (sh, sw), (oh + ah - 1, ow + aw - 1))  # (B, oh+ah-1, ow+aw-1, sh*sw*C)
    taps = [blocks[:, a : a + oh, b : b + ow, :] for a in range(ah) for b in range(aw)]
    patches = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
    return jax.lax.dot_general(
        patches,
        _blocked_kernel(rhs, (sh, sw), (ah, aw)),
        (((3,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )


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
