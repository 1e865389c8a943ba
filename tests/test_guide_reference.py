"""The AIR guide against an independent float64 numpy reference: per-site, per-image log q for
given parameters and substituted latents, and the attention crop itself.

The reference re-derives every step from the maths (torch LSTMCell with gate order i, f, g, o;
predict net -> z_pres logit, z_where loc offset, softplus scale factor; loc = offset + prior loc,
sd = factor * prior sd, both ordered (s, x, y); the crop by explicit bilinear loops; encoder ->
z_what loc and softplus scale; absorbing z_pres; masked z_where/z_what log-probs where z_pres = 0).
z_where sits at asymmetric values (s != 1, x != y, s far from the prior's 3), so reading z_where
in the wrong order, or ordering the prior loc/sd differently, changes the numbers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL, make_scenes
from numpyro import handlers
from test_model_guide import NP_NL, norm_logpdf, prev_of, site_log_probs

from numpyro_air.core.config import AIRConfig
from numpyro_air.core.guide import guide
from numpyro_air.core.transform import image_to_window

LATENTS = ("z_pres", "z_where", "z_what")
ZW = (1.7, 0.3, -0.4)  # (s, x, y): the asymmetric z_where of the checks
# z_pres (B, T): all present, stop after 2, 1-0-1 (the last 1 is absorbed: counts as 0), empty
Z_PRES = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 0, 0]], np.float32)


# ----------------------------------------------------------------------------- numpy reference


def np_bilinear(img, r, c):
    """img sampled at continuous pixel index (row r, column c): 4 taps, zero outside the image."""
    n_r, n_c = img.shape
    r0, c0 = math.floor(r), math.floor(c)
    val = 0.0
    for rr, wr in ((r0, 1.0 - (r - r0)), (r0 + 1, r - r0)):
        for cc, wc in ((c0, 1.0 - (c - c0)), (c0 + 1, c - c0)):
            if 0 <= rr < n_r and 0 <= cc < n_c:
                val += wr * wc * img[rr, cc]
    return val


def np_crop(z_where, image, w):
    """The w x w window that z_where = (s, x, y) attends to in ``image`` (H, H), by explicit loops.

    Placing a window with (s, x, y) samples the window at window-normalised v = s * u + (x, y) for
    canvas-normalised u (STN convention of numpyro_air/transform.py, x horizontal). So window
    coordinate v shows canvas coordinate u = (v - (x, y)) / s, and the crop reads the image there.
    Window pixel k has its centre at v = (2k + 1) / w - 1; canvas-normalised u is the continuous
    pixel index ((u + 1) * H - 1) / 2 (pixel k's centre at u = (2k + 1) / H - 1, align_corners=False).
    """
    s, x, y = (float(v) for v in z_where)
    H = image.shape[0]
    out = np.zeros((w, w))
    for i in range(w):  # window rows <- image rows, shifted by y
        u_row = ((2 * i + 1) / w - 1 - y) / s
        r = ((u_row + 1) * H - 1) / 2
        for j in range(w):  # window columns <- image columns, shifted by x
            u_col = ((2 * j + 1) / w - 1 - x) / s
            c = ((u_col + 1) * H - 1) / 2
            out[i, j] = np_bilinear(image, r, c)
    return out


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _softplus(v):
    return np.logaddexp(0.0, v)


def _log_sigmoid(v):
    return -np.logaddexp(0.0, -v)


def np_mlp(layers, x, nl, output_nl=False):
    """Linear layers Dense_0..Dense_{n-1} (x @ kernel + bias), ``nl`` between them."""
    n = len(layers)
    for i in range(n):
        d = layers[f"Dense_{i}"]
        x = x @ d["kernel"] + d["bias"]
        if i < n - 1 or output_nl:
            x = NP_NL[nl](x)
    return x


def np_guide_log_q(images, params, zp, zw, zwhat, config):
    """Per-site log q (T, B) of the guide with all latents given, plus z_where loc (T, B, 3) and
    pres_prob (T, B), in float64 numpy. ``zp`` (T, B) may contain a 1 after a 0 (absorbed)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    T, B = zp.shape
    w, nl = config.window_size, config.non_linearity
    x = np.asarray(images, np.float64).reshape(B, -1)
    if config.embed_net is not None:
        x = np_mlp(p["embed$params"], x, nl, output_nl=True)
    rnn = p["rnn$params"]
    prior_loc = np.array([config.scale_prior_mean, config.pos_prior_mean, config.pos_prior_mean])
    prior_sd = np.array([config.scale_prior_sd, config.pos_prior_sd, config.pos_prior_sd])
    lq = {k: np.zeros((T, B)) for k in LATENTS}
    locs, pres_prob = np.zeros((T, B, 3)), np.zeros((T, B))
    for b in range(B):
        h, c = p["h_init"][0], p["c_init"][0]
        z_where_prev, z_what_prev, z_pres_prev = p["z_where_init"][0], p["z_what_init"][0], 1.0
        for t in range(T):
            lat = np.concatenate([z_where_prev, z_what_prev, [z_pres_prev]])
            gates = (
                x[b] @ rnn["img"]["kernel"]
                + rnn["img"]["bias"]
                + lat @ rnn["lat"]["kernel"]
                + h @ rnn["hh"]["kernel"]
                + rnn["hh"]["bias"]
            )
            g_i, g_f, g_g, g_o = np.split(gates, 4)  # torch LSTMCell order
            c = _sig(g_f) * c + _sig(g_i) * np.tanh(g_g)
            h = _sig(g_o) * np.tanh(c)
            out = np_mlp(p["predict$params"]["MLP_0"], h, nl)
            logit, loc = out[0], out[1:4] + prior_loc
            sd = _softplus(out[4:7]) * prior_sd
            locs[t, b], pres_prob[t, b] = loc, _sig(logit) * z_pres_prev
            if z_pres_prev == 1:
                lq["z_pres"][t, b] = _log_sigmoid(logit) if zp[t, b] == 1 else _log_sigmoid(-logit)
            z_pres = zp[t, b] * z_pres_prev  # absorbing
            window = np_crop(zw[t, b], np.asarray(images[b], np.float64), w)
            enc = np_mlp(p["encode$params"]["MLP_0"], window.reshape(-1), nl)
            what_loc, what_sd = enc[: config.z_what_size], _softplus(enc[config.z_what_size :])
            if z_pres == 1 or not config.use_masking:
                lq["z_where"][t, b] = norm_logpdf(zw[t, b].astype(np.float64), loc, sd).sum()
                lq["z_what"][t, b] = norm_logpdf(zwhat[t, b].astype(np.float64), what_loc, what_sd).sum()
            z_where_prev, z_what_prev, z_pres_prev = zw[t, b], zwhat[t, b], z_pres
    return lq, locs, pres_prob


# ----------------------------------------------------------------------------- inputs


def asymmetric_images(B, H, seed):
    """make_scenes plus a row ramp, a quadratic column ramp and a bright off-diagonal block (no
    symmetry between x and y), clipped to [0, 1]."""
    rows, cols = np.meshgrid(np.arange(H) / H, np.arange(H) / H, indexing="ij")
    imgs = 0.4 * make_scenes(B, H, seed=seed) + 0.2 * rows + 0.15 * cols**2
    for b in range(B):
        r, c = H // 10 + b, H // 2 + H // 20 - b
        imgs[b, r : r + H // 4, c : c + H // 3] += 0.4
    return np.clip(imgs, 0.0, 1.0).astype(np.float32)


def random_params(tr, rng):
    """The guide's param pytree with every leaf redrawn: kernels N(0, (1.5 / sqrt(fan_in))^2),
    biases and initial states N(0, 0.5^2) (larger than the init, so every term matters)."""

    def redraw(path, a):
        name = jax.tree_util.keystr(path)
        sd = 1.5 / math.sqrt(a.shape[0]) if name.endswith("['kernel']") else 0.5
        return jnp.asarray(rng.normal(0.0, sd, a.shape), jnp.float32)

    params = {k: s["value"] for k, s in tr.items() if s["type"] == "param"}
    return jax.tree_util.tree_map_with_path(redraw, params)


def latents_for(config, rng, B):
    T = config.num_steps
    zp = Z_PRES.T.copy()
    zw = np.array(ZW) + rng.uniform(-0.15, 0.15, size=(T, B, 3))
    zw[0, :] = ZW  # the exact asymmetric z_where at step 1 of every image
    zwhat = rng.normal(size=(T, B, config.z_what_size))
    return zp, zw.astype(np.float32), zwhat.astype(np.float32)


def run_guide(config, images, data, seed=0):
    fn = handlers.substitute(handlers.seed(guide, jax.random.PRNGKey(seed)), data=jax.tree.map(jnp.asarray, data))
    with handlers.trace() as tr:
        out = fn(jnp.asarray(images), config)
    return tr, out


CONFIGS = [
    AIRConfig(**SMALL),
    AIRConfig(
        **{**SMALL, "embed_net": (24,), "predict_net": (16,)},
        non_linearity="tanh",
        use_masking=False,
        use_baselines=False,
        scale_prior_mean=2.0,
        scale_prior_sd=0.3,
        pos_prior_mean=0.2,
        pos_prior_sd=0.7,
    ),
]


# ----------------------------------------------------------------------------- tests


def test_numpy_crop_matches_hand_computed_window():
    """The reference crop itself, by hand: H = 20, w = 10, (s, x, y) = (2, 0.4, -0.6). Window
    column j (v = (2j + 1) / 10 - 1) shows canvas u = (v - 0.4) / 2, i.e. pixel index
    ((u + 1) * 20 - 1) / 2 = j + 3 exactly; rows: (v + 0.6) / 2 -> index i + 8. So the window is
    image[8:18, 3:13], an exact sub-array (no interpolation)."""
    img = np.arange(400, dtype=np.float64).reshape(20, 20) / 400.0
    np.testing.assert_allclose(np_crop((2.0, 0.4, -0.6), img, 10), img[8:18, 3:13], atol=1e-12)
    # s = 1, x = y = 0 is the identity; s = 0.5 shows twice the image, so mostly zero padding
    np.testing.assert_allclose(np_crop((1.0, 0.0, 0.0), img, 20), img, atol=1e-12)
    assert np.count_nonzero(np_crop((0.5, 0.0, 0.0), img, 20)) < 20 * 20 * 0.6


@pytest.mark.parametrize(
    "z_where", [(2.0, 0.4, -0.6), ZW, (0.8, -0.5, 0.25), (-1.3, 0.2, 0.6)], ids=["aligned", "asym", "large-window", "mirrored"]
)
def test_image_to_window_matches_numpy_crop(z_where):
    H, w = 20, 10
    img = asymmetric_images(1, H, seed=3)
    got = np.asarray(image_to_window(jnp.asarray([z_where], jnp.float32), jnp.asarray(img), w))[0]
    expected = np_crop(z_where, img[0].astype(np.float64), w)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert np.abs(expected).sum() > 1.0
    # the checks can tell the coordinates apart: reading (s, x, y) as (x, s, y) / swapping x and y
    # gives a visibly different window
    s, x, y = z_where
    for wrong in ((x, s, y), (s, y, x)):
        assert np.abs(np_crop(wrong, img[0], w) - expected).max() > 0.05, wrong
    if z_where == (2.0, 0.4, -0.6):
        np.testing.assert_allclose(got, img[0, 8:18, 3:13], atol=2e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=["pyro-defaults", "embed-predict-tanh-nomask"])
def test_guide_log_q_matches_numpy(config):
    B, H, T = 4, config.image_size, config.num_steps
    rng = np.random.default_rng(2024)
    images = asymmetric_images(B, H, seed=5)
    tr0, _ = run_guide(config, images, {})
    params = random_params(tr0, rng)
    zp, zw, zwhat = latents_for(config, rng, B)
    tr, out = run_guide(config, images, {**params, "z_pres": zp, "z_where": zw, "z_what": zwhat}, seed=1)
    for k, v in zip(LATENTS, (zp, zw, zwhat)):  # every latent was substituted
        np.testing.assert_array_equal(tr[k]["value"], v)
    lq = site_log_probs(tr)
    expected, locs, pres_prob = np_guide_log_q(images, params, zp, zw, zwhat, config)

    for k in LATENTS:
        assert lq[k].shape == (T, B), k
        np.testing.assert_allclose(lq[k], expected[k], rtol=2e-5, atol=2e-4, err_msg=k)
        # per image (summed over steps), as a training objective sees it
        np.testing.assert_allclose(lq[k].sum(0), expected[k].sum(0), rtol=2e-5, atol=5e-4, err_msg=k)
    np.testing.assert_allclose(np.swapaxes(np.asarray(out["z_where_loc"]), 0, 1), locs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["pres_prob"]).T, pres_prob, rtol=1e-5, atol=1e-6)

    # masking and absorption in the reference agree with the guide: exact zeros at the same places
    eff = np.cumprod(zp, 0)  # effective presence: [1, 0, 1] counts as [1, 0, 0]
    prev = prev_of(eff)
    assert np.all(lq["z_pres"][prev == 0] == 0.0) and np.all(expected["z_pres"][prev == 0] == 0.0)
    for k in ("z_where", "z_what"):
        if config.use_masking:
            assert np.all(lq[k][eff == 0] == 0.0), k
        else:
            assert np.all(lq[k] != 0.0), k
    assert np.all(lq["z_where"][eff == 1] != 0.0) and np.all(lq["z_what"][eff == 1] != 0.0)

    # non-trivial: reading z_where in another order (crop and LSTM input) moves every present
    # z_what term of the reference by far more than the tolerance
    wrong = np_guide_log_q(images, params, zp, zw[..., [1, 0, 2]], zwhat, config)[0]["z_what"]
    assert np.abs(wrong - expected["z_what"])[eff == 1].min() > 1e-2
