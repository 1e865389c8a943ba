"""Figures on any canvas: boxes, reconstructions, prior samples and decoded windows of a colour,
non-square model (random parameters) are drawn in colour with the canvas's aspect ratio; the
default 50x50 grayscale figures keep their gray look and size; boxes are in pixel coordinates of
the H x W canvas (x horizontal)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL
from numpyro import handlers
from PIL import Image

from numpyro_air import AIRConfig, guide, model
from numpyro_air.analysis import figures as viz
from numpyro_air.analysis.evaluation import figure_arrays, save_figures
from numpyro_air.analysis.inference import decode_windows, infer, sample_prior
from numpyro_air.core.one_shot import one_shot_jit, one_shot_options

H, W = 16, 32  # a canvas twice as wide as high
RGB = AIRConfig(**(SMALL | dict(image_size=H, window_size=8)), image_width=W, channels=3, num_steps=3)
DPI = 110  # figures.py saves at 110 dots per inch
MAGENTA = (1.0, 0.0, 1.0)


def read_png(path) -> np.ndarray:
    """(height, width, 3) uint8 pixels of a PNG written by figures.py."""
    return np.asarray(Image.open(path).convert("RGB"))


def magenta_mask(px: np.ndarray) -> np.ndarray:
    r, g, b = (px[..., k].astype(int) for k in range(3))
    return (r > 200) & (g < 60) & (b > 200)


def inches(px: np.ndarray) -> tuple:
    """(height, width) of a saved figure in inches."""
    return px.shape[0] / DPI, px.shape[1] / DPI


def bbox_aspect(mask: np.ndarray) -> float:
    """Width / height of the bounding box of the True pixels."""
    rows, cols = np.nonzero(mask)
    return (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1)


def scenes(n: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) float32: a magenta canvas with a yellow and a cyan rectangle."""
    rng = np.random.default_rng(seed)
    x = np.broadcast_to(np.asarray(MAGENTA, np.float32), (n, H, W, 3)).copy()
    for i in range(n):
        r, c = rng.integers(0, H - 5), rng.integers(0, W - 8)
        x[i, r : r + 5, c : c + 8] = (1.0, 1.0, 0.0)
        x[i, r // 2 : r // 2 + 3, -6:-2] = (0.0, 1.0, 1.0)
    return x


@pytest.fixture(scope="module")
def params():
    """Random guide and model parameters of the colour, non-square config."""
    images = jnp.asarray(scenes(2))
    with handlers.trace() as gtr:
        handlers.seed(guide, 0)(images, RGB)
    latents = {k: gtr[k]["value"] for k in ("z_pres", "z_where", "z_what")}
    with handlers.trace() as mtr:
        handlers.seed(handlers.substitute(model, data=latents), 1)(images, RGB)
    return {k: s["value"] for tr in (gtr, mtr) for k, s in tr.items() if s["type"] == "param"}


@pytest.fixture(scope="module")
def inferred(params):
    images = scenes(4)
    res = jax.device_get(infer(params, jnp.asarray(images), jax.random.PRNGKey(0), RGB))
    windows = np.asarray(decode_windows(params, jnp.asarray(res["z_what"]), RGB))
    return images, res, windows


def test_displayable_gray_colour_uint8_and_bad_shapes():
    g = np.linspace(-0.5, 1.5, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(viz.displayable(g), np.clip(g, 0, 1))
    assert viz.displayable(g[..., None]).shape == (3, 4)  # (H, W, 1) is grayscale
    u = np.full((3, 4, 3), 255, np.uint8)
    out = viz.displayable(u)
    assert out.shape == (3, 4, 3) and out.dtype == np.float32 and np.all(out == 1.0)
    with pytest.raises(ValueError, match=r"\(H, W\), \(H, W, 1\) or \(H, W, 3\), got shape \(3, 4, 4\)"):
        viz.displayable(np.zeros((3, 4, 4)))
    assert viz.panel_size((16, 64, 3), 1.6) == pytest.approx((3.2, 0.8))
    assert viz.panel_size((40, 10), 1.6) == pytest.approx((0.8, 3.2))
    assert viz.panel_size((50, 50), 1.6) == (1.6, 1.6)


def test_show_scene_limits_and_boxes_in_pixels_of_a_non_square_canvas():
    """x0 is horizontal (columns, up to W), y0 vertical (rows, up to H); the colour image is drawn
    without a colormap."""
    fig, ax = viz._subplots(figsize=(3, 2))
    boxes = np.array([[20.0, 2.0, 10.0, 5.0], [0.0, 0.0, 4.0, 4.0]])
    viz.show_scene(ax, scenes(1)[0], boxes, np.array([1.0, 0.0]))
    assert ax.get_xlim() == (-0.5, W - 0.5) and ax.get_ylim() == (H - 0.5, -0.5)
    (rect,) = ax.patches  # the absent step draws nothing
    assert rect.get_xy() == (19.5, 1.5) and (rect.get_width(), rect.get_height()) == (10.0, 5.0)
    (im,) = ax.images
    assert im.get_array().shape == (H, W, 3)


def test_colour_non_square_figures(tmp_path, params, inferred):
    images, res, windows = inferred
    prior = jax.device_get(sample_prior(params, jax.random.PRNGKey(3), RGB, 4, jnp.array([0, 1, 2, 3])))
    assert prior["canvas"].shape == (4, H, W, 3)
    paths = {
        "boxes": viz.save_boxes_figure(tmp_path / "b.png", images, res["boxes"], res["z_pres"], np.arange(4) % 3, ncols=2),
        "single": viz.save_boxes_figure(tmp_path / "one.png", images[:1], res["boxes"][:1], np.zeros((1, 3))),
        "recon": viz.save_reconstruction_figure(tmp_path / "r.png", images, res["reconstruction"], res["boxes"], res["z_pres"]),
        "prior": viz.save_prior_samples_figure(tmp_path / "p.png", prior["canvas"], prior["boxes"], prior["z_pres"]),
        "windows": viz.save_windows_figure(tmp_path / "w.png", images, windows, res["boxes"], res["z_pres"]),
    }
    px = {k: read_png(p) for k, p in paths.items()}
    # sizes: panels follow the 1:2 aspect with a square panel's area (1.6 x 1.6 -> 2.26 x 1.13)
    r = np.sqrt(2.0)
    assert inches(px["boxes"]) == pytest.approx((2 * (1.6 / r + 0.1), 2 * 1.6 * r), abs=0.01)
    assert inches(px["recon"]) == pytest.approx((2 * 1.5 / r + 0.2, 4 * 1.5 * r), abs=0.01)
    assert inches(px["prior"]) == pytest.approx((1.6 / r + 0.1 + 0.3, 4 * 1.6 * r), abs=0.01)  # + the title
    assert inches(px["windows"]) == pytest.approx((1.45 * 4, 1.4 * (3 + 2)), abs=0.01)
    for k in ("boxes", "single", "recon", "windows"):  # the magenta scenes are drawn in colour
        assert magenta_mask(px[k]).sum() > 100, k
    # one scene without boxes: the drawn canvas is twice as wide as high
    assert bbox_aspect(magenta_mask(px["single"])) == pytest.approx(W / H, rel=0.08)
    # yellow and cyan objects survive too (R != G, G != B somewhere)
    p = px["boxes"].astype(int)
    assert np.any(p[..., 0] != p[..., 1]) and np.any(p[..., 1] != p[..., 2])
    # prior samples and decoded windows come from random params: colour where the channels differ
    assert not np.allclose(prior["canvas"][..., 0], prior["canvas"][..., 1])
    w = px["windows"].astype(int)
    assert np.any(np.abs(w[..., 0] - w[..., 1]) > 20)


def test_save_figures_writes_four_colour_pngs(tmp_path, params):
    paths = save_figures(params, RGB, scenes(6), np.arange(6) % 3, jax.random.PRNGKey(1), tmp_path, tag="_x")
    assert [p.name for p in paths] == ["boxes_x.png", "reconstructions_x.png", "prior_samples_x.png", "windows_x.png"]
    for p in paths:
        px = read_png(p)
        assert px.shape[1] > px.shape[0] / 2 and np.any(px[..., 0] != px[..., 1]), p.name


def test_figure_arrays_equal_the_three_programs_and_compile_once(params):
    """save_figures' one -O0 program gives what infer, decode_windows and sample_prior give
    (the same keys), and is traced once for repeated calls of one shape."""
    images, key = jnp.asarray(scenes(7)), jax.random.PRNGKey(2)
    traced = []

    def counted(params, images, key, air):
        traced.append(1)
        return figure_arrays(params, images, key, air)

    one = one_shot_jit(counted, static_argnames=("air",))
    res, windows, prior = jax.device_get(one(params, images, key, RGB))
    jax.device_get(one(params, images, key, RGB))
    assert len(traced) == 1 and one_shot_options() == {"xla_backend_optimization_level": 0}  # the CPU's
    ref = jax.device_get(infer(params, images, key, RGB))
    assert sorted(res) == sorted(ref) and windows.shape == (6, RGB.num_steps) + RGB.window_shape
    for k in ref:
        np.testing.assert_allclose(res[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(windows, decode_windows(params, jnp.asarray(ref["z_what"][:6]), RGB), rtol=1e-4, atol=1e-5)
    counts = jnp.arange(16) % (RGB.num_steps + 1)
    ref_prior = jax.device_get(sample_prior(params, jax.random.fold_in(key, 7), RGB, 16, counts))
    np.testing.assert_array_equal(prior["z_pres"].sum(1), counts)
    for k in ref_prior:
        np.testing.assert_allclose(prior[k], ref_prior[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_gray_default_figures_keep_their_look(tmp_path):
    """50x50 grayscale scenes (no boxes): the previous figure sizes, and every pixel gray."""
    config = AIRConfig()
    assert config.image_shape == (50, 50)
    rng = np.random.default_rng(0)
    n, T = 5, config.num_steps
    images = rng.uniform(0, 1, (n, 50, 50)).astype(np.float32)
    boxes = np.tile(np.array([10.0, 12.0, 20.0, 20.0]), (n, T, 1))
    none = np.zeros((n, T))
    windows = rng.uniform(0, 1, (n, T) + config.window_shape)
    paths = [
        viz.save_boxes_figure(tmp_path / "b.png", images, boxes, none, np.ones(n), ncols=3, title="t"),
        viz.save_reconstruction_figure(tmp_path / "r.png", images, images[::-1], boxes, none),
        viz.save_windows_figure(tmp_path / "w.png", images, windows, boxes, np.ones((n, T))),
    ]
    sizes = [(1.7 * 2, 1.6 * 3), (3.2, 1.5 * n), (1.45 * n, 1.4 * (T + 1))]  # (height, width) inches
    for path, (h, w) in zip(paths, sizes):
        assert inches(read_png(path)) == pytest.approx((h, w), abs=0.01), path.name
    b, r = read_png(paths[0]).astype(int), read_png(paths[1]).astype(int)
    for px in (b, r):  # no colour anywhere: gray images, black text, white background
        assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])
    w = read_png(paths[2]).astype(int)  # present windows: coloured frames around gray windows
    assert np.any(w[..., 0] != w[..., 1])
    # and with boxes, the step colours show
    viz.save_boxes_figure(tmp_path / "b2.png", images, boxes, np.ones((n, T)))
    b2 = read_png(tmp_path / "b2.png").astype(int)
    assert np.any(b2[..., 0] != b2[..., 1])
