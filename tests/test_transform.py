"""Spatial transformer: PyTorch affine_grid + grid_sample semantics (bilinear, zero padding,
align_corners=False) for z_where = (s, x, y), checked against an independent map_coordinates
implementation, hand-computed cases and finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.ndimage import map_coordinates

from numpyro_air import bounding_boxes, image_to_window, window_to_image

# ----------------------------------------------------------------------------- reference


@jax.jit
@jax.vmap
def _bilinear_zero_pad(src, rows, cols):
    return map_coordinates(src, [rows, cols], order=1, mode="constant", cval=0.0)


def ref_grid_sample(theta, src, out_size):
    """grid_sample(src, affine_grid([[s, 0, tx], [0, s, ty]])) via map_coordinates, per example.

    Output pixel i sits at normalised u_i = (2i + 1) / out - 1; it samples the source at
    s * u + t, i.e. pixel index ((v + 1) * n - 1) / 2; x (tx) is the column axis.
    """
    theta = np.asarray(theta, np.float64)
    src = np.asarray(src)
    n = src.shape[-1]
    u = (2.0 * np.arange(out_size) + 1.0) / out_size - 1.0
    s, tx, ty = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
    cols = ((s * u + tx + 1.0) * n - 1.0) / 2.0  # (B, out)
    rows = ((s * u + ty + 1.0) * n - 1.0) / 2.0
    rr = np.broadcast_to(rows[:, :, None], (len(src), out_size, out_size))
    cc = np.broadcast_to(cols[:, None, :], (len(src), out_size, out_size))
    return np.asarray(_bilinear_zero_pad(jnp.asarray(src), jnp.asarray(rr, src.dtype), jnp.asarray(cc, src.dtype)))


# Jitted entry points: one XLA program per shape instead of one per primitive (much faster on CPU).
w2i = jax.jit(window_to_image, static_argnums=2)
i2w = jax.jit(image_to_window, static_argnums=2)


def inverse(z):
    z = np.asarray(z, np.float64)
    s, x, y = z[:, 0], z[:, 1], z[:, 2]
    return np.stack([1 / s, -x / s, -y / s], axis=-1)


def random_z_where(rng, n):
    """Random (s, x, y) with scales of both signs, small and large, and off-centre positions."""
    s = rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.05, 4.0, size=n)
    s[:4] = [1.0, -0.7, 0.05, -0.05]  # identity-sized, mirrored, tiny (huge window) of both signs
    xy = rng.uniform(-1.5, 1.5, size=(n, 2))
    return np.concatenate([s[:, None], xy], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- vs reference


def test_window_to_image_matches_map_coordinates(rng):
    z = random_z_where(rng, 12)
    windows = rng.uniform(0, 1, size=(12, 7, 7)).astype(np.float32)
    out = w2i(jnp.asarray(z), jnp.asarray(windows), 16)
    assert out.shape == (12, 16, 16) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_grid_sample(z, windows, 16), atol=2e-5)
    assert np.abs(np.asarray(out)).sum() > 1.0  # non-trivial: objects actually land on the canvas


def test_image_to_window_matches_map_coordinates(rng):
    z = random_z_where(rng, 12)
    images = rng.uniform(0, 1, size=(12, 16, 16)).astype(np.float32)
    out = i2w(jnp.asarray(z), jnp.asarray(images), 7)
    assert out.shape == (12, 7, 7)
    np.testing.assert_allclose(out, ref_grid_sample(inverse(z), images, 7), atol=2e-5)
    assert np.abs(np.asarray(out)).sum() > 1.0


def test_pyro_sizes_round_trip_shapes(rng):
    z = jnp.asarray([[3.0, 0.5, -0.5], [1.5, 0.0, 0.0]], jnp.float32)
    windows = jnp.asarray(rng.uniform(0, 1, size=(2, 28, 28)), jnp.float32)
    canvas = w2i(z, windows, 50)
    assert canvas.shape == (2, 50, 50)
    np.testing.assert_allclose(canvas, ref_grid_sample(z, windows, 50), atol=2e-5)
    assert i2w(z, canvas, 28).shape == (2, 28, 28)


# ----------------------------------------------------------------------------- hand-computed


def test_identity(rng):  # eager (un-jitted) path
    img = jnp.asarray(rng.uniform(0, 1, size=(2, 9, 9)), jnp.float32)
    ident = jnp.asarray([[1.0, 0.0, 0.0]] * 2)
    np.testing.assert_allclose(window_to_image(ident, img, 9), img, atol=1e-6)
    np.testing.assert_allclose(image_to_window(ident, img, 9), img, atol=1e-6)


def test_shift_by_whole_pixels(rng):
    n = 8
    img = jnp.asarray(rng.uniform(0.1, 1, size=(1, n, n)), jnp.float32)
    # x = +2/n: output column j samples input column j + 1 (image moves left, zero column enters right)
    out = np.asarray(w2i(jnp.asarray([[1.0, 2.0 / n, 0.0]]), img, n))
    np.testing.assert_allclose(out[0, :, :-1], img[0, :, 1:], atol=1e-6)
    np.testing.assert_array_equal(out[0, :, -1], 0.0)
    # y = -2/n: rows move down by one, a zero row enters at the top
    out = np.asarray(w2i(jnp.asarray([[1.0, 0.0, -2.0 / n]]), img, n))
    np.testing.assert_allclose(out[0, 1:, :], img[0, :-1, :], atol=1e-6)
    np.testing.assert_array_equal(out[0, 0, :], 0.0)
    # x = -6/n (3 pixels right): 3 columns leave the canvas, the sum drops by exactly their mass
    out = np.asarray(w2i(jnp.asarray([[1.0, -6.0 / n, 0.0]]), img, n))
    np.testing.assert_allclose(out[0, :, 3:], img[0, :, :-3], atol=1e-6)
    np.testing.assert_array_equal(out[0, :, :3], 0.0)
    assert out.sum() == pytest.approx(float(img[0, :, :-3].sum()), rel=1e-5)


def test_scale_average_pooling():
    """s = 1, 4x4 window onto a 2x2 canvas: each canvas pixel samples index 0.5 or 2.5, i.e. the
    mean of a 2x2 block. s = 2 onto a 4x4 canvas: indices -1.5, 0.5, 2.5, 4.5, so the same 2x2
    pooled object sits in the centre with a zero border (the window covers H/s = 2 pixels)."""
    win = jnp.arange(16.0, dtype=jnp.float32).reshape(1, 4, 4)
    pooled = np.array([[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4], [(8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4]])
    np.testing.assert_allclose(w2i(jnp.asarray([[1.0, 0.0, 0.0]]), win, 2)[0], pooled, atol=1e-6)
    expected = np.zeros((4, 4))
    expected[1:3, 1:3] = pooled
    np.testing.assert_allclose(w2i(jnp.asarray([[2.0, 0.0, 0.0]]), win, 4)[0], expected, atol=1e-6)
    # mirrored scale flips both axes
    np.testing.assert_allclose(w2i(jnp.asarray([[-1.0, 0.0, 0.0]]), win, 2)[0], pooled[::-1, ::-1], atol=1e-6)


def test_crop_of_constant_image_inside_is_constant():
    ones = jnp.ones((1, 20, 20))
    # s = 2: the window covers the central 10x10 pixels, fully inside -> exactly ones
    np.testing.assert_allclose(i2w(jnp.asarray([[2.0, 0.0, 0.0]]), ones, 10), 1.0, atol=1e-6)
    # s = 0.5: the window covers 40 px around the canvas, the outer ring samples zero padding
    crop = np.asarray(i2w(jnp.asarray([[0.5, 0.0, 0.0]]), ones, 10))[0]
    np.testing.assert_allclose(crop[3:7, 3:7], 1.0, atol=1e-6)
    np.testing.assert_allclose(crop[0, :], 0.0, atol=1e-6)


def test_window_partly_off_canvas(rng):
    """s = 2 places a 10x10 window pixel-for-pixel on a 20x20 canvas; x = 2 centres it at
    normalised -x/s = -1 (the left edge), y = 0 at the middle: canvas column j samples window
    column j + 5 and row i samples window row i - 5, so half the object falls off the canvas."""
    win = jnp.asarray(rng.uniform(0.1, 1, size=(1, 10, 10)), jnp.float32)
    z = jnp.asarray([[2.0, 2.0, 0.0]])
    canvas = np.asarray(w2i(z, win, 20))[0]
    expected = np.zeros((20, 20))
    expected[5:15, 0:5] = np.asarray(win[0, :, 5:10])
    np.testing.assert_allclose(canvas, expected, atol=1e-6)
    assert canvas.sum() == pytest.approx(float(win[0, :, 5:].sum()), rel=1e-5)
    # bounding box agrees: x0 = -5, y0 = 5, 10 x 10 pixels
    np.testing.assert_allclose(bounding_boxes(z, 20)[0], [-5.0, 5.0, 10.0, 10.0], atol=1e-5)
    # and the crop with the same z_where recovers the visible half, zeros elsewhere
    crop = np.asarray(i2w(z, jnp.asarray(canvas[None]), 10))[0]
    np.testing.assert_allclose(crop[:, 5:], np.asarray(win[0, :, 5:]), atol=1e-6)
    np.testing.assert_allclose(crop[:, :5], 0.0, atol=1e-6)


# Box geometry from first principles (H = 20 canvas pixels). Placing a window with (s, x, y), canvas
# column j (normalised centre u = (2j + 1) / H - 1) samples the window at v = s * u + x, and the
# window's content spans v in [-1, 1] (its outer pixel edges). So it covers canvas u in
# [(-1 - x) / s, (1 - x) / s] (ends swapped for s < 0), and canvas-normalised u is the continuous
# pixel coordinate p = (u + 1) * H / 2 (pixel j spans [j, j + 1)): x0 = ((-1 - x) / s + 1) * H / 2
# and width = H / |s|. Same for rows with y.
#   (2, 0, 0):         u in [-0.5, 0.5] both ways              -> p in [5, 15]            -> (5, 5, 10, 10)
#   (2, 0.4, -0.6):    cols u in [-0.7, 0.3], rows [-0.2, 0.8]  -> [3, 13] and [8, 18]      -> (3, 8, 10, 10)
#   (4, 1, -2):        cols u in [-0.5, 0], rows [0.25, 0.75]   -> [5, 10] and [12.5, 17.5] -> (5, 12.5, 5, 5)
#   (1.25, -0.5, 0.25): cols u in [-0.4, 1.2], rows [-1, 0.6]   -> [6, 22] and [0, 16]      -> (6, 0, 16, 16)
#   (-2, 0.4, -0.6):   mirrored: cols u in [-0.3, 0.7], rows [-0.8, 0.2] -> [7, 17], [2, 12] -> (7, 2, 10, 10)
HAND_BOXES = [
    ((2.0, 0.0, 0.0), (5.0, 5.0, 10.0, 10.0)),
    ((2.0, 0.4, -0.6), (3.0, 8.0, 10.0, 10.0)),
    ((4.0, 1.0, -2.0), (5.0, 12.5, 5.0, 5.0)),
    ((1.25, -0.5, 0.25), (6.0, 0.0, 16.0, 16.0)),
    ((-2.0, 0.4, -0.6), (7.0, 2.0, 10.0, 10.0)),
]


def _footprint_profile(start, size, half, n):
    """Along one axis: the rendering of an all-ones window whose box is [start, start + size).

    Bilinear taps reach half a window pixel beyond the window's edges, and a window pixel is
    2 * half = size / w canvas pixels: the profile at canvas pixel centre c is the trapezoid
    clip(min(c - (start - half), start + size + half - c) / (2 * half), 0, 1), i.e. 0 until half a
    window pixel before the box's edge, 1 from half a window pixel inside it, linear in between.
    """
    c = np.arange(n) + 0.5
    return np.clip(np.minimum(c - (start - half), start + size + half - c) / (2 * half), 0.0, 1.0)


@pytest.mark.parametrize("w", [10, 7])
def test_bounding_boxes_hand_computed_and_rendered_footprint(w):
    H = 20
    z = np.array([zw for zw, _ in HAND_BOXES], np.float32)
    expected = np.array([box for _, box in HAND_BOXES])
    boxes = np.asarray(bounding_boxes(jnp.asarray(z), H, w))
    np.testing.assert_allclose(boxes, expected, atol=1e-5)
    # batched over leading dims, window_size optional
    np.testing.assert_allclose(bounding_boxes(jnp.asarray(z.reshape(1, 5, 3)), H)[0], expected, atol=1e-5)
    # the footprint of an all-ones window placed with the same z_where is the box (with the
    # half-window-pixel bilinear ramps at its edges), computed from the box alone
    rendered = np.asarray(w2i(jnp.asarray(z), jnp.ones((len(z), w, w), jnp.float32), H))
    for k, (x0, y0, bw, bh) in enumerate(boxes):
        half = H / abs(float(z[k, 0])) / w / 2
        want = np.outer(_footprint_profile(y0, bh, half, H), _footprint_profile(x0, bw, half, H))
        np.testing.assert_allclose(rendered[k], want, atol=1e-5, err_msg=str(HAND_BOXES[k]))
        # and plainly: nothing is drawn more than half a window pixel outside the box
        rows, cols = np.nonzero(rendered[k] > 1e-6)
        assert cols.min() + 0.5 > x0 - half and cols.max() + 0.5 < x0 + bw + half
        assert rows.min() + 0.5 > y0 - half and rows.max() + 0.5 < y0 + bh + half


def test_fully_off_canvas_is_zero(rng):
    win = jnp.asarray(rng.uniform(0.1, 1, size=(1, 10, 10)), jnp.float32)
    np.testing.assert_array_equal(w2i(jnp.asarray([[3.0, 5.0, 0.0]]), win, 20), 0.0)


# ----------------------------------------------------------------------------- s -> 0 and gradients


def _crop_loss(z, img, weights):
    return jnp.sum(image_to_window(z, img, weights.shape[-1]) * weights)


def _place_loss(z, win, weights):
    return jnp.sum(window_to_image(z, win, weights.shape[-1]) * weights)


_crop_value_and_grad = jax.jit(jax.value_and_grad(_crop_loss))
_place_value_and_grad = jax.jit(jax.value_and_grad(_place_loss))


@pytest.mark.parametrize("s", [1e-8, 0.0, -1e-8])
def test_scale_near_zero_is_finite_with_finite_gradients(rng, s):
    img = jnp.asarray(rng.uniform(0, 1, size=(1, 20, 20)), jnp.float32)
    win = jnp.asarray(rng.uniform(0, 1, size=(1, 10, 10)), jnp.float32)
    z = jnp.asarray([[s, 0.3, -0.2]], jnp.float32)
    assert np.all(np.isfinite(i2w(z, img, 10)))
    assert np.all(np.isfinite(w2i(z, win, 20)))
    for vg, src, w in ((_crop_value_and_grad, img, win), (_place_value_and_grad, win, img)):
        value, grad = vg(z, src, w)
        assert np.isfinite(float(value))
        assert np.all(np.isfinite(grad)), grad


def test_gradients_match_central_differences(rng):
    """d/dz_where of a random linear read-out, float64, vs central differences (eps 1e-6).

    The sampler is piecewise smooth in z_where (kinks only where a sampling index crosses an
    integer, which random z_where avoid), so the two agree to float64 round-off: rtol 1e-5,
    atol 1e-7.
    """
    s = rng.uniform(0.4, 2.0, size=3) * np.array([1.0, -1.0, 1.0])
    z_np = np.concatenate([s[:, None], rng.uniform(-0.6, 0.6, size=(3, 2))], axis=1)
    img_np = rng.uniform(0, 1, size=(3, 12, 12))
    w_out = rng.normal(size=(3, 6, 6))
    w_in = rng.normal(size=(3, 12, 12))
    with jax.enable_x64(True):
        img, win = jnp.asarray(img_np), jnp.asarray(img_np[:, :6, :6])
        assert i2w(jnp.asarray(z_np), img, 6).dtype == jnp.float64
        eps = 1e-6
        for loss, src, w in ((_crop_loss, img, jnp.asarray(w_out)), (_place_loss, win, jnp.asarray(w_in))):
            f = jax.jit(loss)
            g = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(z_np), src, w))
            fd = np.zeros_like(z_np)
            for idx in np.ndindex(*z_np.shape):
                dz = np.zeros_like(z_np)
                dz[idx] = eps
                plus, minus = f(jnp.asarray(z_np + dz), src, w), f(jnp.asarray(z_np - dz), src, w)
                fd[idx] = (float(plus) - float(minus)) / (2 * eps)
            np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)
            assert np.all(np.abs(g) > 1e-3)  # every coordinate matters


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="z_where"):
        window_to_image(jnp.zeros((2, 2)), jnp.zeros((2, 4, 4)), 8)
    with pytest.raises(ValueError, match="windows"):
        window_to_image(jnp.zeros((2, 3)), jnp.zeros((2, 4, 5)), 8)
    with pytest.raises(ValueError, match="batch"):
        image_to_window(jnp.zeros((3, 3)), jnp.zeros((2, 8, 8)), 4)


def test_gathered_crop_equals_the_hat_matrix_crop_values_and_gradients():
    """image_to_window gathers the two taps per row/column; it must equal the separable hat-matrix
    product (the placement path), windows partly or wholly outside the image included."""
    from numpyro_air.core.transform import _sample, _sample_taps, z_where_inv

    rng = np.random.default_rng(5)
    B = 40
    imgs = jnp.asarray(rng.uniform(0, 1, (B, 50, 50)).astype(np.float32))
    zw = np.stack([rng.uniform(0.8, 4.0, B), rng.uniform(-3, 3, B), rng.uniform(-3, 3, B)], 1).astype(np.float32)
    zw[:4, 0] = [-2.0, 1.0, 0.5, 3.0]  # a negative scale, a window larger than the image
    zw[4:8, 1:] = [[4.5, 0.0], [0.0, -4.5], [6.0, 6.0], [0.0, 0.0]]  # outside, edges, centre
    zw = jnp.asarray(zw)
    got = _sample_taps(z_where_inv(zw), imgs, 28)
    want = _sample(z_where_inv(zw), imgs, 28)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    assert float(jnp.abs(got[6]).max()) == 0.0  # entirely outside: zero padding
    loss = lambda f: lambda z: jnp.sum(f(z_where_inv(z), imgs, 28) ** 2)  # noqa: E731
    np.testing.assert_allclose(
        np.asarray(jax.grad(loss(_sample_taps))(zw)), np.asarray(jax.grad(loss(_sample))(zw)), rtol=1e-4, atol=1e-4
    )


def test_crop_gradients_in_pose_and_image_and_no_scatter_in_the_pose_gradient():
    """The crop's custom JVP: pose derivatives come from the scatter-free form and image
    derivatives from the crop itself (it is linear in the image); both must equal the hat-matrix
    crop's autodiff, forward and reverse, and the pose gradient must not contain a scatter (the
    transpose of the column gather, slow on CPU: the reason for the custom rule)."""
    from numpyro_air.core.transform import _sample, _sample_taps, z_where_inv

    rng = np.random.default_rng(7)
    B = 12
    imgs = jnp.asarray(rng.uniform(0, 1, (B, 50, 50)).astype(np.float32))
    zw = np.stack([rng.uniform(0.8, 4.0, B), rng.uniform(-2, 2, B), rng.uniform(-2, 2, B)], 1).astype(np.float32)
    zw[0, 0] = -1.5
    theta = z_where_inv(jnp.asarray(zw))
    loss = lambda f: lambda t, x: jnp.sum(jnp.sin(3.0 * f(t, x, 20)))  # noqa: E731
    for arg in (0, 1):
        got = jax.grad(loss(_sample_taps), arg)(theta, imgs)
        want = jax.grad(loss(_sample), arg)(theta, imgs)
        scale = float(jnp.abs(want).max())
        assert scale > 0
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6 * scale)
    dt = jnp.asarray(rng.normal(size=theta.shape).astype(np.float32))
    dx = jnp.asarray(rng.normal(size=imgs.shape).astype(np.float32))
    _, got = jax.jvp(lambda t, x: _sample_taps(t, x, 20), (theta, imgs), (dt, dx))
    _, want = jax.jvp(lambda t, x: _sample(t, x, 20), (theta, imgs), (dt, dx))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-3, rtol=1e-4)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(_sample_taps)))(theta, imgs))
    assert "scatter" not in jaxpr and "gather" in jaxpr
