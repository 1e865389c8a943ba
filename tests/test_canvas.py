"""Any canvas: height != width, 3 channels, windows up to the canvas, up to 10 steps.

The log-joint of a colour, non-square model against an independent numpy computation; the
spatial transformer on H != W, C = 3 against scipy's ``map_coordinates`` (values) and central
differences (pose gradients), both directions; a 10-step model and guide; config validation; the
inference API (counts, boxes, reconstructions, decoded windows, prior scenes) in colour.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL, params_of, run, site_log_probs
from numpyro import handlers
from scipy.ndimage import map_coordinates

from numpyro_air import AIRConfig, bounding_boxes, guide, image_to_window, model, window_to_image
from numpyro_air.analysis.inference import decode_windows, infer, infer_batched, sample_prior
from numpyro_air.core.model import validate_images
from numpyro_air.core.nets import Decoder
from numpyro_air.core.prior import count_distribution, make_prior

H, W, C = 20, 28, 3  # canvas height, width, channels (SMALL: image_size 20, window 10)
RGB = AIRConfig(**SMALL, image_width=W, channels=C, num_steps=4)
RGB_TUTORIAL = AIRConfig.tutorial(**SMALL, image_width=W, channels=C, num_steps=4, non_linearity="tanh")
LATENTS = ("z_pres", "z_where", "z_what")


def colour_scenes(n: int, shape, seed: int = 0) -> np.ndarray:
    """(n, *shape) float32 in [0, 1]: coloured rectangles on a faint noise floor."""
    rng = np.random.default_rng(seed)
    imgs = rng.uniform(0.0, 0.05, size=(n,) + tuple(shape))
    for i in range(n):
        for _ in range(i % 3 + 1):
            r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 6)
            imgs[i, r : r + 4, c : c + 6] = rng.uniform(0.3, 1.0, size=shape[2:])
    return imgs.astype(np.float32)


# ----------------------------------------------------------------------------- numpy references


def ref_grid_sample(theta, src, out_hw):
    """grid_sample(src, affine_grid([[s, 0, tx], [0, s, ty]], out_hw)), bilinear, zero padding,
    align_corners=False, per example and channel with scipy's map_coordinates in float64.

    src (B, h, w, C). Each axis is normalised by its own size: output row i sits at
    u = (2i + 1) / out_h - 1 and samples source row ((s u + ty + 1) h - 1) / 2; columns likewise
    with out_w, tx and w. "grid-constant" interpolates towards 0 beyond the edges (zero padding).
    """
    theta, src = np.asarray(theta, np.float64), np.asarray(src, np.float64)
    B, h, w, nc = src.shape
    oh, ow = out_hw
    u_rows, u_cols = (2.0 * np.arange(oh) + 1) / oh - 1, (2.0 * np.arange(ow) + 1) / ow - 1
    out = np.zeros((B, oh, ow, nc))
    for b, (s, tx, ty) in enumerate(theta):
        rows = ((s * u_rows + ty + 1) * h - 1) / 2
        cols = ((s * u_cols + tx + 1) * w - 1) / 2
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        for k in range(nc):
            out[b, :, :, k] = map_coordinates(src[b, :, :, k], [rr, cc], order=1, mode="grid-constant", cval=0.0)
    return out


def inverse(z):
    z = np.asarray(z, np.float64)
    return np.stack([1 / z[:, 0], -z[:, 1] / z[:, 0], -z[:, 2] / z[:, 0]], axis=-1)


def np_place(z_where, window, H, W):
    """Window (w, w, C) onto an (H, W, C) canvas with an explicit 4-tap loop over output pixels."""
    s, x, y = (float(v) for v in z_where)
    w = window.shape[0]
    out = np.zeros((H, W) + window.shape[2:])
    for i in range(H):  # rows: y, normalised by H
        py = ((s * ((2 * i + 1) / H - 1) + y + 1) * w - 1) / 2
        y0 = math.floor(py)
        for j in range(W):  # columns: x, normalised by W
            px = ((s * ((2 * j + 1) / W - 1) + x + 1) * w - 1) / 2
            x0 = math.floor(px)
            for r, wr in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                for c, wc in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                    if 0 <= r < w and 0 <= c < w:
                        out[i, j] += wr * wc * window[r, c]
    return out


def np_decode(params, z, config):
    layers = params["MLP_0"]
    h, n = np.asarray(z, np.float64), len(layers)
    for i in range(n):
        d = layers[f"Dense_{i}"]
        h = h @ np.asarray(d["kernel"], np.float64) + np.asarray(d["bias"], np.float64)
        if i < n - 1:
            h = np.maximum(h, 0.0) if config.non_linearity == "relu" else np.tanh(h)
    if config.decoder_output_bias is not None:
        h = h + config.decoder_output_bias
    if config.decoder_output_use_sigmoid:
        h = 1.0 / (1.0 + np.exp(-h))
    return h


def norm_logpdf(x, loc, sd):
    return -0.5 * ((x - loc) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def np_log_joint(images, zp, zw, zwhat, params, config, probs):
    """Per-site log-probs (z_*: (T, B), obs: (B,)) and canvas (B, H, W, C) in float64: the decoder
    output is a channels-last (w, w, C) window, every pixel and channel an independent Normal."""
    T, B = zp.shape
    w = config.window_size
    loc = np.array([config.scale_prior_mean, config.pos_prior_mean, config.pos_prior_mean])
    sd = np.array([config.scale_prior_sd, config.pos_prior_sd, config.pos_prior_sd])
    lp = {k: np.zeros((T, B)) for k in LATENTS}
    canvas = np.zeros((B,) + config.image_shape)
    for b in range(B):
        for t in range(T):
            if t > 0 and zp[t - 1, b] == 0:  # absorbed (zp is the effective presence here)
                break
            present = zp[t, b] == 1
            lp["z_pres"][t, b] = np.log(probs[t] if present else 1 - probs[t])
            if present:
                lp["z_where"][t, b] = norm_logpdf(zw[t, b], loc, sd).sum()
                lp["z_what"][t, b] = norm_logpdf(zwhat[t, b], 0.0, 1.0).sum()
                window = np_decode(params, zwhat[t, b][None], config).reshape(w, w, config.channels)
                canvas[b] += np_place(zw[t, b], window, config.height, config.width)
    obs = norm_logpdf(images.reshape(B, -1), canvas.reshape(B, -1), config.likelihood_sd).sum(-1)
    return lp | {"obs": obs}, canvas


# ----------------------------------------------------------------------------- (a) log-joint


@pytest.mark.parametrize("config", [RGB, RGB_TUTORIAL], ids=["pyro-defaults", "tutorial-sigmoid-bias-tanh"])
def test_log_joint_rgb_non_square_matches_numpy(config, rng):
    B, T = 4, config.num_steps
    assert config.image_shape == (H, W, C) and T == 4
    images = colour_scenes(B, config.image_shape, seed=7)
    # effective presences (T, B): stop after 3; stop after 1 (the later 1s are absorbed); all; none
    zp_bt = np.array([[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]], np.float32)
    zp = zp_bt.T.copy()
    zw = np.stack([rng.uniform(1.2, 2.5, (T, B)), rng.uniform(-0.6, 0.6, (T, B)), rng.uniform(-0.6, 0.6, (T, B))], -1)
    zw = zw.astype(np.float32)
    zwhat = rng.normal(size=(T, B, config.z_what_size)).astype(np.float32)
    init = Decoder(config.decoder_net, config.window_size**2 * C).init(jax.random.PRNGKey(0), jnp.zeros((1, config.z_what_size)))
    leaves, treedef = jax.tree.flatten(init["params"])
    params = jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(0, 0.4, x.shape), jnp.float32) for x in leaves])

    data = {"decode$params": params, "z_pres": zp, "z_where": zw, "z_what": zwhat}
    tr, canvas = run(model, 3, jnp.asarray(images), config, data=data)
    lp = site_log_probs(tr)
    probs = make_prior(config.z_pres_prior, T)
    expected, np_canvas = np_log_joint(images, zp, zw, zwhat, jax.tree.map(np.asarray, params), config, probs)

    assert canvas.shape == (B, H, W, C) and tr["obs"]["value"].shape == (B, H * W * C)
    np.testing.assert_allclose(canvas, np_canvas, atol=1e-4)
    # the test has teeth: the channels differ, objects land off-centre on the wide canvas
    assert np.abs(np_canvas[..., 0] - np_canvas[..., 1]).max() > 0.05
    assert np.abs(np_canvas[2]).sum() > 1.0
    for k in LATENTS:
        np.testing.assert_allclose(lp[k], expected[k], rtol=1e-5, atol=1e-4, err_msg=k)
    np.testing.assert_allclose(lp["obs"], expected["obs"], rtol=1e-4)
    total, np_total = sum(float(v.sum()) for v in lp.values()), sum(v.sum() for v in expected.values())
    assert abs(total - np_total) <= 1e-4 * abs(np_total)
    np.testing.assert_array_equal(canvas[3], 0.0)  # no object: an exactly empty canvas


# ----------------------------------------------------------------------------- (b) the STN


w2i = jax.jit(window_to_image, static_argnums=2)
i2w = jax.jit(image_to_window, static_argnums=2)


def random_z_where(rng, n):
    """(s, x, y) with scales of both signs, small and large, and off-centre positions."""
    s = rng.choice([-1.0, 1.0], size=n) * rng.uniform(0.3, 3.0, size=n)
    s[:3] = [1.0, -0.7, 0.4]
    return np.concatenate([s[:, None], rng.uniform(-1.2, 1.2, size=(n, 2))], axis=1).astype(np.float32)


def test_stn_non_square_rgb_matches_map_coordinates(rng):
    z = random_z_where(rng, 10)
    windows = rng.uniform(0, 1, size=(10, 7, 7, C)).astype(np.float32)
    canvas = w2i(jnp.asarray(z), jnp.asarray(windows), (H, W))
    assert canvas.shape == (10, H, W, C) and canvas.dtype == jnp.float32
    np.testing.assert_allclose(canvas, ref_grid_sample(z, windows, (H, W)), atol=2e-5)
    assert np.abs(np.asarray(canvas)).sum() > 1.0
    # the same through config.image_shape, and every channel moves exactly as a grayscale image
    np.testing.assert_array_equal(w2i(jnp.asarray(z), jnp.asarray(windows), (H, W, C)), canvas)
    for k in range(C):
        np.testing.assert_allclose(canvas[..., k], w2i(jnp.asarray(z), jnp.asarray(windows[..., k]), (H, W)), atol=1e-6)

    images = rng.uniform(0, 1, size=(10, H, W, C)).astype(np.float32)
    crop = i2w(jnp.asarray(z), jnp.asarray(images), 7)
    assert crop.shape == (10, 7, 7, C)
    np.testing.assert_allclose(crop, ref_grid_sample(inverse(z), images, (7, 7)), atol=2e-5)
    assert np.abs(np.asarray(crop)).sum() > 1.0
    for k in range(C):
        np.testing.assert_allclose(crop[..., k], i2w(jnp.asarray(z), jnp.asarray(images[..., k]), 7), atol=1e-6)


def test_stn_non_square_axes_are_normalised_separately():
    """Identity pose on an 8 x 12 canvas: the window is stretched over the whole canvas, rows by
    8 / 4 and columns by 12 / 4 (each axis normalised by its own size), hand-computed."""
    win = jnp.asarray(np.arange(4 * 4 * C, dtype=np.float32).reshape(1, 4, 4, C))
    ident = jnp.asarray([[1.0, 0.0, 0.0]])
    # a 4x4 window onto 8 rows x 12 columns: canvas row i samples window row ((2i + 1) / 8 * 4 - 1) / 2
    # = (i - 0.5) / 2 and column j window column ((2j + 1) / 12 * 4 - 1) / 2 = (j - 1) / 3
    canvas = np.asarray(w2i(ident, win, (8, 12)))[0]
    np.testing.assert_allclose(canvas, ref_grid_sample([[1.0, 0.0, 0.0]], win, (8, 12))[0], atol=1e-5)
    # row 3 -> window row 1.25, column 4 -> window column 1.0
    np.testing.assert_allclose(canvas[3, 4], 0.75 * np.asarray(win[0, 1, 1]) + 0.25 * np.asarray(win[0, 2, 1]), atol=1e-5)
    # column 7 -> window column 2.0, row 0 -> window row -0.25: a quarter of the way into zero padding
    np.testing.assert_allclose(canvas[0, 7], 0.75 * np.asarray(win[0, 0, 2]), atol=1e-5)
    # ... and cropping the canvas back with the identity pose recovers the window's centre pixels
    # (window row r reads canvas rows 2r, 2r + 1 and column 3r + 1; the window is linear in r, c)
    back = np.asarray(i2w(ident, jnp.asarray(canvas[None]), 4))[0]
    np.testing.assert_allclose(back[1:3, 1:3], np.asarray(win[0, 1:3, 1:3]), atol=1e-5)


def test_stn_bad_shapes_raise():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"windows \(2, 4, 4\) do not have the 3 channels"):
        window_to_image(z, jnp.zeros((2, 4, 4)), (8, 9, 3))
    with pytest.raises(ValueError, match=r"windows must have shape \(B, n, n\) or \(B, n, n, C\)"):
        window_to_image(z, jnp.zeros((2, 4, 5, 3)), (8, 9))
    with pytest.raises(ValueError, match=r"images must have shape \(B, H, W\) or \(B, H, W, C\)"):
        image_to_window(z, jnp.zeros((2, 8, 9, 3, 1)), 4)
    with pytest.raises(ValueError, match="image_size must be an int"):
        window_to_image(z, jnp.zeros((2, 4, 4)), (8,))


def _loss(direction):
    if direction == "crop":
        return lambda z, src, weights: jnp.sum(image_to_window(z, src, weights.shape[1]) * weights)
    return lambda z, src, weights: jnp.sum(window_to_image(z, src, weights.shape[1:3]) * weights)


@pytest.mark.parametrize("direction", ["crop", "place"])
def test_stn_non_square_rgb_pose_gradients_match_central_differences(rng, direction):
    """d/dz_where of a random linear read-out, float64, vs central differences (eps 1e-6): the
    sampler is smooth in z_where away from integer sampling indices, which random poses avoid."""
    s = rng.uniform(0.5, 2.0, size=3) * np.array([1.0, -1.0, 1.0])
    z_np = np.concatenate([s[:, None], rng.uniform(-0.5, 0.5, size=(3, 2))], axis=1)
    h, w, ws = 10, 14, 6
    if direction == "crop":
        src_np, weights_np = rng.uniform(0, 1, size=(3, h, w, C)), rng.normal(size=(3, ws, ws, C))
    else:
        src_np, weights_np = rng.uniform(0, 1, size=(3, ws, ws, C)), rng.normal(size=(3, h, w, C))
    with jax.enable_x64(True):
        src, weights = jnp.asarray(src_np), jnp.asarray(weights_np)
        f = jax.jit(_loss(direction))
        g = np.asarray(jax.jit(jax.grad(_loss(direction)))(jnp.asarray(z_np), src, weights))
        assert g.dtype == np.float64
        eps, fd = 1e-6, np.zeros_like(z_np)
        for idx in np.ndindex(*z_np.shape):
            dz = np.zeros_like(z_np)
            dz[idx] = eps
            fd[idx] = (float(f(jnp.asarray(z_np + dz), src, weights)) - float(f(jnp.asarray(z_np - dz), src, weights))) / (
                2 * eps
            )
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)
        assert np.all(np.abs(g) > 1e-3)  # every coordinate matters
        # the image (window) gradient: the map is linear in it, so <grad, d> = f(src + d) - f(src)
        d = jnp.asarray(rng.normal(size=src_np.shape))
        g_src = jax.grad(_loss(direction), argnums=1)(jnp.asarray(z_np), src, weights)
        change = float(f(jnp.asarray(z_np), src + d, weights)) - float(f(jnp.asarray(z_np), src, weights))
        assert float(jnp.sum(g_src * d)) == pytest.approx(change, rel=1e-9, abs=1e-9)


# Box geometry on a 20 x 28 canvas: with (s, x, y) the window covers canvas-normalised columns
# u in [(-1 - x) / s, (1 - x) / s] (ends swapped for s < 0), pixel p = (u + 1) * W / 2, so
# x0 = ((-1 - x) / s + 1) * W / 2 and width W / |s|; rows likewise with y and H.
#   (2, 0, 0):        u in [-0.5, 0.5] both ways          -> cols [7, 21], rows [5, 15]       -> (7, 5, 14, 10)
#   (2, 0.5, -0.5):   cols [-0.75, 0.25], rows [-0.25, 0.75] -> [3.5, 17.5], [7.5, 17.5]       -> (3.5, 7.5, 14, 10)
#   (4, 1, -2):       cols [-0.5, 0], rows [0.25, 0.75]     -> [7, 14], [12.5, 17.5]          -> (7, 12.5, 7, 5)
#   (-2, 0.4, -0.6):  cols [-0.3, 0.7], rows [-0.8, 0.2]    -> [9.8, 23.8], [2, 12]           -> (9.8, 2, 14, 10)
WIDE_BOXES = [
    ((2.0, 0.0, 0.0), (7.0, 5.0, 14.0, 10.0)),
    ((2.0, 0.5, -0.5), (3.5, 7.5, 14.0, 10.0)),
    ((4.0, 1.0, -2.0), (7.0, 12.5, 7.0, 5.0)),
    ((-2.0, 0.4, -0.6), (9.8, 2.0, 14.0, 10.0)),
]


def _profile(start, size, half, n):
    """Rendering of an all-ones window along one axis whose box is [start, start + size): 0 until
    half a window pixel before the box's edge, 1 from half a window pixel inside, linear between."""
    c = np.arange(n) + 0.5
    return np.clip(np.minimum(c - (start - half), start + size + half - c) / (2 * half), 0.0, 1.0)


def test_bounding_boxes_non_square_hand_computed_and_rendered_footprint():
    ws = 10
    z = np.array([zw for zw, _ in WIDE_BOXES], np.float32)
    boxes = np.asarray(bounding_boxes(jnp.asarray(z), (H, W)))
    np.testing.assert_allclose(boxes, np.array([b for _, b in WIDE_BOXES]), atol=1e-5)
    np.testing.assert_array_equal(bounding_boxes(jnp.asarray(z[None]), RGB.image_shape)[0], boxes)
    rendered = np.asarray(w2i(jnp.asarray(z), jnp.ones((len(z), ws, ws, C), jnp.float32), (H, W)))
    for k, (x0, y0, bw, bh) in enumerate(boxes):
        s = abs(float(z[k, 0]))
        want = np.outer(_profile(y0, bh, H / s / ws / 2, H), _profile(x0, bw, W / s / ws / 2, W))
        for c in range(C):
            np.testing.assert_allclose(rendered[k, ..., c], want, atol=1e-5, err_msg=str(WIDE_BOXES[k]))


# ----------------------------------------------------------------------------- (c) 10 steps

TEN = 10


@pytest.mark.parametrize(
    "kw",
    [{}, dict(image_width=W, channels=C, guide_input="difference", presence_estimator="concrete")],
    ids=["gray", "rgb-dair-concrete"],
)
def test_ten_steps_model_and_guide(kw):
    """10 steps: scene b has b objects (0..10) substituted for the presences; model and guide log-probs
    are finite with the right shapes, and the all-present scene draws all 10 objects."""
    config = AIRConfig(**SMALL, num_steps=TEN, **kw)
    B, T, z = TEN + 1, TEN, config.z_what_size
    images = jnp.asarray(colour_scenes(B, config.image_shape, seed=3))
    on = np.arange(T)[:, None] < np.arange(B)[None, :]  # (T, B)
    site = "z_pres_logit" if config.relaxed_presence else "z_pres"
    zp = np.where(on, 8.0, -8.0) if config.relaxed_presence else on.astype(np.float32)
    gtr, out = run(guide, 0, images, config, data={site: zp})
    assert out["z_pres"].shape == (B, T) and out["z_where"].shape == (B, T, 3) and out["z_what"].shape == (B, T, z)
    if config.guide_input == "difference":
        assert out["residual"].shape == (B, T) + config.image_shape
    glp = site_log_probs(gtr)
    assert all(v.shape == (T, B) and np.all(np.isfinite(v)) for v in glp.values())
    mtr, canvas = run(model, 1, images, config, data={k: gtr[k]["value"] for k in (site, "z_where", "z_what")})
    mlp = site_log_probs(mtr)
    assert canvas.shape == (B,) + config.image_shape and mlp["obs"].shape == (B,)
    assert all(np.all(np.isfinite(v)) for v in mlp.values())
    assert {k: mlp[k].shape for k in (site, "z_where", "z_what")} == {k: (T, B) for k in (site, "z_where", "z_what")}
    counts = np.asarray(out["z_pres"] > 0.5).sum(1)
    np.testing.assert_array_equal(counts, np.arange(B))
    if not config.relaxed_presence:
        probs = make_prior(config.z_pres_prior, T)
        assert np.all((probs > 0) & (probs < 1)) and count_distribution(probs).sum() == pytest.approx(1.0)
        np.testing.assert_allclose(mlp["z_pres"][:, -1], np.log(probs), rtol=1e-5)  # 10 present
        assert np.all(mlp["z_where"][:, -1] != 0) and np.all(mlp["z_where"][:, 0] == 0)  # masking
    empty = np.abs(np.asarray(canvas[0])).max()  # relaxed: presences sigmoid(-8), not exactly 0
    assert empty == 0.0 if not config.relaxed_presence else empty < 1e-2
    assert np.abs(np.asarray(canvas[-1])).sum() > 1.0


# ----------------------------------------------------------------------------- (d) config


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(channels=2), r"^channels must be 1 \(grayscale\) or 3 \(RGB\), got 2$"),
        (dict(channels=0), r"^channels .* got 0$"),
        (dict(channels=4), r"^channels .* got 4$"),
        (dict(channels=3.0), r"^channels .* got 3\.0$"),
        (dict(channels=True), r"^channels .* got True$"),
        (dict(image_width=0), r"^image_width must be a positive int or None"),
        (dict(image_width=-28), r"^image_width .* got -28$"),
        (dict(image_width=28.0), r"^image_width .* got 28\.0$"),
        (dict(image_size=20, image_width=28, window_size=21), r"^window_size \(21\) .* image_size \(height 20\)"),
        (dict(image_size=30, image_width=24, window_size=25), r"^window_size \(25\) .* image_width \(width 24\)"),
        (dict(image_size=20, window_size=28), r"^window_size \(28\) .* larger than the canvas"),
    ],
)
def test_config_validation_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        AIRConfig(**kw)


def test_config_canvas_properties_and_defaults():
    d = AIRConfig()
    assert (d.image_width, d.channels, d.height, d.width) == (None, 1, 50, 50)
    assert d.image_shape == (50, 50) and d.window_shape == (28, 28) and d.num_pixels == 2500
    assert d.rnn_input_size == 2500 + 3 + 50 + 1
    assert RGB.image_shape == (H, W, C) and RGB.window_shape == (10, 10, C) and RGB.num_pixels == H * W * C
    assert RGB.rnn_input_size == H * W * C + 3 + RGB.z_what_size + 1
    tall = AIRConfig(image_size=30, image_width=12, window_size=12)  # a window as large as the canvas
    assert tall.image_shape == (30, 12) and (tall.height, tall.width) == (30, 12)
    assert AIRConfig(channels=3).image_shape == (50, 50, 3)
    assert AIRConfig.from_dict(RGB.to_dict()) == RGB
    old = {k: v for k, v in d.to_dict().items() if k not in ("image_width", "channels")}
    assert AIRConfig.from_dict(old) == d  # dicts written before these fields existed still load


@pytest.mark.parametrize("fn", [model, guide], ids=["model", "guide"])
def test_images_must_match_the_canvas(fn):
    gray = np.full((2, H, W), 0.5, np.float32)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 20, 28, 3\), got \(2, 20, 28\)"):
        handlers.seed(fn, 0)(gray, RGB)
    with pytest.raises(ValueError, match=r"\(B, 20, 28\), got \(2, 28, 20\)"):
        handlers.seed(fn, 0)(np.swapaxes(gray, 1, 2), RGB.replace(channels=1))
    assert validate_images(gray[..., None].repeat(3, -1), RGB.image_shape).shape == (2, H, W, C)


# ----------------------------------------------------------------------------- inference API


def test_inference_api_in_colour():
    """infer / decode_windows / infer_batched / sample_prior on the colour, non-square config:
    shapes, boxes from the (H, W) geometry, and the reconstruction equals the presence-weighted
    sum of the decoded windows placed at z_where."""
    config, B, T = RGB, 5, RGB.num_steps
    images = colour_scenes(B, config.image_shape, seed=11)
    gtr, _ = run(guide, 0, jnp.asarray(images), config)
    mtr, _ = run(model, 1, jnp.asarray(images), config, data={k: gtr[k]["value"] for k in LATENTS})
    params = params_of(gtr) | params_of(mtr)
    hidden = config.rnn_hidden_size
    assert params["rnn$params"]["img"]["kernel"].shape == (H * W * C, 4 * hidden)
    assert params["encode$params"]["MLP_0"]["Dense_0"]["kernel"].shape == (10 * 10 * C, 16)
    assert params["decode$params"]["MLP_0"]["Dense_1"]["kernel"].shape == (16, 10 * 10 * C)

    key = jax.random.PRNGKey(2)
    res = infer(params, jnp.asarray(images), key, config)
    assert res["reconstruction"].shape == (B, H, W, C) and res["boxes"].shape == (B, T, 4)
    assert res["counts"].shape == (B,) and res["z_pres"].shape == (B, T)
    s = np.abs(np.asarray(res["z_where"])[..., 0])
    np.testing.assert_allclose(res["boxes"][..., 2], W / s, rtol=1e-5)
    np.testing.assert_allclose(res["boxes"][..., 3], H / s, rtol=1e-5)
    windows = decode_windows(params, res["z_what"], config)
    assert windows.shape == (B, T, 10, 10, C)
    placed = sum(
        np.asarray(res["z_pres"])[:, t, None, None, None] * np.asarray(w2i(res["z_where"][:, t], windows[:, t], (H, W)))
        for t in range(T)
    )
    np.testing.assert_allclose(res["reconstruction"], placed, atol=1e-5)

    batched = infer_batched(params, images, key, config, batch_size=2, reconstruct=False)
    assert batched["counts"].shape == (B,) and batched["boxes"].shape == (B, T, 4)
    prior = sample_prior(params, key, config, 4, counts=jnp.array([0, 1, 2, 4]))
    assert prior["images"].shape == (4, H, W, C) and prior["canvas"].shape == (4, H, W, C)
    np.testing.assert_array_equal(np.asarray(prior["z_pres"]).sum(1), [0, 1, 2, 4])
    np.testing.assert_array_equal(prior["canvas"][0], 0.0)


def test_training_step_in_colour():
    """Two jitted NVIL steps on the colour, non-square config: finite losses, every parameter
    group of model and guide updated (gradients reach them through the colour paths)."""
    from numpyro_air.train.recipes import OptimConfig
    from numpyro_air.train.svi import make_svi, make_update

    images = jnp.asarray(colour_scenes(4, RGB.image_shape, seed=5))
    svi = make_svi(RGB, OptimConfig())
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), images)
    before = svi.get_params(state)
    step = jax.jit(make_update(svi, RGB))
    for t in (1, 2):
        state, info = step(state, images, jnp.asarray(t))
        assert np.isfinite(float(info.loss)) and int(info.skipped) == 0
    after = svi.get_params(state)
    for name in ("decode$params", "encode$params", "rnn$params", "predict$params", "bl_rnn$params"):
        moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name]))]
        assert any(moved), name
