"""Spatial transformer: PyTorch ``affine_grid`` + ``grid_sample`` semantics (bilinear, zero
padding, ``align_corners=False``) for AIR's axis-aligned transforms.

z_where = (s, x, y) denotes the matrix [[s, 0, x], [0, s, y]] mapping *output* normalised
coordinates u in [-1, 1] to *input* normalised coordinates s * u + (x or y); x is horizontal
(columns), y vertical (rows). As in PyTorch, each axis is normalised separately: on an H x W
canvas column j sits at u = (2j + 1) / W - 1 and row i at (2i + 1) / H - 1, so a window placed
with scale s covers W / s columns and H / s rows (its pixels are square only on a square canvas).
Images are (B, H, W) grayscale or (B, H, W, C) channels last; all channels move with the same
pose. Because the transform is axis-aligned, bilinear sampling is
separable: out = Wy @ img @ Wx^T with "hat" weight matrices Wy, Wx (B, out, in). This is an
exact reformulation of ``grid_sample``. Placing windows on the canvas (:func:`window_to_image`)
runs it as two batched matmuls; cropping (:func:`image_to_window`, the guide's glimpse) gathers
the two taps of every output row and column instead (each row of Wy, Wx has at most two non-zero
weights): the same values, about 5x faster at batch 1000 and faster at training batch sizes
(gradients flow to z_where through the weights; the image is data). Its derivative with
respect to the pose is taken from an equivalent form in which the pose enters only as weights on
gathers of the image (a custom JVP), so the gradient has no scatter (the transpose of a gather).
"""

from __future__ import annotations

import operator
from functools import partial
from typing import Tuple

import jax
import jax.numpy as jnp

# |s| below this is clamped (keeping its sign) before dividing by it, so cropping with a scale
# near 0 never produces inf/NaN values or gradients.
MIN_ABS_SCALE = 1e-3


def _check(z_where: jnp.ndarray, imgs: jnp.ndarray, name: str, square: bool) -> None:
    if z_where.ndim != 2 or z_where.shape[-1] != 3:
        raise ValueError(f"z_where must have shape (B, 3), got {z_where.shape}")
    if square and (imgs.ndim not in (3, 4) or imgs.shape[1] != imgs.shape[2]):
        raise ValueError(f"{name} must have shape (B, n, n) or (B, n, n, C), got {imgs.shape}")
    if imgs.ndim not in (3, 4):
        raise ValueError(f"{name} must have shape (B, H, W) or (B, H, W, C), got {imgs.shape}")
    if imgs.shape[0] != z_where.shape[0]:
        raise ValueError(f"batch mismatch: z_where {z_where.shape} vs {name} {imgs.shape}")


def _canvas_shape(image_size) -> Tuple[int, ...]:
    """(H, W) or (H, W, C) from an int (square canvas), (H, W) or (H, W, C)."""
    try:
        n = operator.index(image_size)
        return n, n
    except TypeError:
        pass
    shape = tuple(int(v) for v in image_size)
    if len(shape) not in (2, 3):
        raise ValueError(f"image_size must be an int, (H, W) or (H, W, C), got {image_size!r}")
    return shape


def canvas_hw(image_size) -> Tuple[int, int]:
    """(H, W) from an int (square canvas), (H, W) or (H, W, C) (e.g. ``AIRConfig.image_shape``)."""
    shape = _canvas_shape(image_size)
    return shape[0], shape[1]


def _channels(w: jnp.ndarray, ndim: int) -> jnp.ndarray:
    """w with a trailing channel axis when the images have one (ndim 4); unchanged for ndim 3."""
    return w[..., None] if ndim == 4 else w


def _source_index(scale: jnp.ndarray, shift: jnp.ndarray, out_size: int, in_size: int) -> jnp.ndarray:
    """Fractional input pixel index (B, out_size) sampled by each output pixel along one axis:
    output centre u_i = (2i + 1) / out_size - 1 maps to v = scale * u_i + shift, i.e. index
    ((v + 1) * in_size - 1) / 2."""
    u = (2.0 * jnp.arange(out_size, dtype=scale.dtype) + 1.0) / out_size - 1.0  # (out,)
    v = scale[:, None] * u[None, :] + shift[:, None]  # (B, out)
    return ((v + 1.0) * in_size - 1.0) / 2.0


def _hat_weights(scale: jnp.ndarray, shift: jnp.ndarray, out_size: int, in_size: int) -> jnp.ndarray:
    """Bilinear interpolation weights (B, out_size, in_size) for one axis.

    Output pixel centres u_i = (2i + 1) / out_size - 1 map to input normalised coordinates
    scale * u_i + shift, i.e. input pixel index ((v + 1) * in_size - 1) / 2; the weight of input
    pixel j is max(0, 1 - |index - j|). Taps outside [0, in_size) simply do not exist: zero padding.
    """
    idx = _source_index(scale, shift, out_size, in_size)
    j = jnp.arange(in_size, dtype=scale.dtype)
    return jax.nn.relu(1.0 - jnp.abs(idx[:, :, None] - j[None, None, :]))


def _sample(theta: jnp.ndarray, src: jnp.ndarray, out_size) -> jnp.ndarray:
    """grid_sample of src (B, h, w) or (B, h, w, C) on the axis-aligned grid of theta (B, 3) =
    (s, tx, ty); returns (B, out_h, out_w) or (B, out_h, out_w, C), out_size = (out_h, out_w) or
    an int for a square output."""
    s, tx, ty = theta[:, 0], theta[:, 1], theta[:, 2]
    out_hw = canvas_hw(out_size)
    wx = _hat_weights(s, tx, out_hw[1], src.shape[2])  # columns
    wy = _hat_weights(s, ty, out_hw[0], src.shape[1])  # rows
    # Two explicit batched matmuls (rows, then columns): ~2x faster than a 3-operand einsum on CPU.
    # HIGHEST precision: GPUs default to TF32 for float32 matmuls (~1e-3 relative error), which
    # would make the sampling inexact; these matmuls are tiny, so exactness costs nothing.
    hi = jax.lax.Precision.HIGHEST
    if src.ndim == 4:  # channels: the same weights for each
        rows = jnp.einsum("boh,bhwc->bowc", wy, src, precision=hi)
        return jnp.einsum("bowc,bpw->bopc", rows, wx, precision=hi)
    rows = jnp.einsum("boh,bhw->bow", wy, src, precision=hi)
    return jnp.einsum("bow,bpw->bop", rows, wx, precision=hi)


def _taps(scale: jnp.ndarray, shift: jnp.ndarray, out_size: int, in_size: int):
    """The two non-zero taps of each row of :func:`_hat_weights`: (lo, hi) int32 indices clipped to
    [0, in_size) and their weights (B, out_size) each; a tap outside the input has weight 0."""
    idx = _source_index(scale, shift, out_size, in_size)
    lo = jnp.floor(idx)
    frac = idx - lo
    lo = lo.astype(jnp.int32)
    hi = lo + 1
    w_lo = jnp.where((lo >= 0) & (lo < in_size), 1.0 - frac, 0.0)
    w_hi = jnp.where((hi >= 0) & (hi < in_size), frac, 0.0)
    return jnp.clip(lo, 0, in_size - 1), jnp.clip(hi, 0, in_size - 1), w_lo, w_hi


def _gather_taps(theta: jnp.ndarray, src: jnp.ndarray, out_size):
    """Tap indices and weights along both axes and the rows of ``src`` (B, h, w[, C]) at the two
    row taps: ``(rows_lo, rows_hi)`` (B, out_h, w[, C]) each, then ``(y weights, x taps)``;
    out_size = (out_h, out_w) or an int for a square output."""
    s, tx, ty = theta[:, 0], theta[:, 1], theta[:, 2]
    out_hw = canvas_hw(out_size)
    y_lo, y_hi, wy_lo, wy_hi = _taps(s, ty, out_hw[0], src.shape[1])
    x_taps = _taps(s, tx, out_hw[1], src.shape[2])
    row = lambda i: jnp.take_along_axis(src, _channels(i[..., None], src.ndim), axis=1)  # noqa: E731
    return (row(y_lo), row(y_hi)), (wy_lo, wy_hi), x_taps


def _columns(a: jnp.ndarray, i: jnp.ndarray) -> jnp.ndarray:
    """a (B, out_h, w[, C]) at columns i (B, out_w) of every row: (B, out_h, out_w[, C])."""
    idx = jnp.broadcast_to(i[:, None, :], (i.shape[0], a.shape[1], i.shape[1]))
    return jnp.take_along_axis(a, _channels(idx, a.ndim), axis=2)


def _tap_weights(wy_lo, wy_hi, wx_lo, wx_hi, ndim: int):
    """Tap weights broadcast against (B, out_h, out_w[, C]): y (B, out_h, 1[, 1]), x (B, 1, out_w[, 1])."""
    ys = (_channels(w[..., None], ndim) for w in (wy_lo, wy_hi))
    xs = (_channels(w[:, None, :], ndim) for w in (wx_lo, wx_hi))
    return (*ys, *xs)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _sample_taps(theta: jnp.ndarray, src: jnp.ndarray, out_size) -> jnp.ndarray:
    """:func:`_sample` by gathering each output pixel's taps instead of multiplying by Wy, Wx:
    rows first (two row gathers, mixed by the y weights), then two column gathers."""
    (r_lo, r_hi), (wy_lo, wy_hi), (x_lo, x_hi, wx_lo, wx_hi) = _gather_taps(theta, src, out_size)
    wy_lo, wy_hi, wx_lo, wx_hi = _tap_weights(wy_lo, wy_hi, wx_lo, wx_hi, src.ndim)
    rows = wy_lo * r_lo + wy_hi * r_hi
    return wx_lo * _columns(rows, x_lo) + wx_hi * _columns(rows, x_hi)


def _sample_taps_pose_linear(theta: jnp.ndarray, src: jnp.ndarray, out_size) -> jnp.ndarray:
    """The same values as :func:`_sample_taps`, written so that ``theta`` enters only through
    element-wise weights on four gathers of ``src``: its derivative needs no scatter (the
    transpose of a gather), which is what makes the rows-first form slow to differentiate."""
    (r_lo, r_hi), (wy_lo, wy_hi), (x_lo, x_hi, wx_lo, wx_hi) = _gather_taps(theta, src, out_size)
    wy_lo, wy_hi, wx_lo, wx_hi = _tap_weights(wy_lo, wy_hi, wx_lo, wx_hi, src.ndim)
    lo = wx_lo * _columns(r_lo, x_lo) + wx_hi * _columns(r_lo, x_hi)
    hi = wx_lo * _columns(r_hi, x_lo) + wx_hi * _columns(r_hi, x_hi)
    return wy_lo * lo + wy_hi * hi


@_sample_taps.defjvp
def _sample_taps_jvp(out_size, primals, tangents):
    theta, src = primals
    dtheta, dsrc = tangents
    # pose: differentiate the scatter-free form (its gathers read src, a constant here) ...
    out, dout = jax.jvp(lambda t: _sample_taps_pose_linear(t, src, out_size), (theta,), (dtheta,))
    # ... image: cropping is linear in src
    return out, dout + _sample_taps(theta, dsrc, out_size)


def z_where_inv(z_where: jnp.ndarray) -> jnp.ndarray:
    """Inverse transform (1/s, -x/s, -y/s) (B, 3), with |s| clamped to ``MIN_ABS_SCALE``."""
    s = z_where[:, 0]
    s_safe = jnp.where(jnp.abs(s) < MIN_ABS_SCALE, jnp.where(s < 0, -MIN_ABS_SCALE, MIN_ABS_SCALE), s)
    inv = 1.0 / s_safe
    return jnp.stack([inv, -z_where[:, 1] * inv, -z_where[:, 2] * inv], axis=-1)


def window_to_image(z_where: jnp.ndarray, windows: jnp.ndarray, image_size) -> jnp.ndarray:
    """Place windows (B, w, w) or (B, w, w, C) on canvases (B, H, W) or (B, H, W, C) with z_where
    (B, 3); ``image_size`` is H = W (int), (H, W) or (H, W, C).

    The window covers W / s columns and H / s rows centred at normalised (-x/s, -y/s).
    """
    _check(z_where, windows, "windows", square=True)
    shape = _canvas_shape(image_size)
    if len(shape) == 3 and windows.shape[3:] != shape[2:]:
        raise ValueError(f"windows {tuple(windows.shape)} do not have the {shape[2]} channels of the canvas {shape}")
    return _sample(z_where, windows, shape[:2])


def image_to_window(z_where: jnp.ndarray, images: jnp.ndarray, window_size: int) -> jnp.ndarray:
    """Crop images (B, H, W) or (B, H, W, C) to windows (B, window_size, window_size[, C]) with the
    inverse of z_where (B, 3)."""
    _check(z_where, images, "images", square=False)
    return _sample_taps(z_where_inv(z_where), images, (window_size, window_size))


def bounding_boxes(z_where: jnp.ndarray, image_size, window_size: int | None = None) -> jnp.ndarray:
    """Pixel boxes (..., 4) = (x0, y0, width, height) of windows placed with z_where (..., 3) on an
    H x W canvas; ``image_size`` is H = W (int), (H, W) or (H, W, C).

    The window spans normalised [(-1 - x)/s, (1 - x)/s] horizontally, i.e. W / |s| pixels centred
    at pixel (1 - x/s) * W / 2, and H / |s| pixels centred at (1 - y/s) * H / 2 vertically.
    ``window_size`` is unused (the geometry does not depend on it) and accepted for API symmetry.
    """
    del window_size
    H, W = canvas_hw(image_size)
    s = z_where[..., 0]
    s_safe = jnp.where(jnp.abs(s) < MIN_ABS_SCALE, jnp.where(s < 0, -MIN_ABS_SCALE, MIN_ABS_SCALE), s)
    width, height = W / jnp.abs(s_safe), H / jnp.abs(s_safe)
    cx = (1.0 - z_where[..., 1] / s_safe) * W / 2.0
    cy = (1.0 - z_where[..., 2] / s_safe) * H / 2.0
    return jnp.stack([cx - width / 2, cy - height / 2, width, height], axis=-1)
