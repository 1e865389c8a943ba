"""AIR model and guide: shapes, exact log-joint vs an independent numpy computation, masking,
NaN-safe z_pres gradients, prior scene counts, Predictive, input validation and the Flax nets."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import SMALL, make_scenes, params_of, run, site_log_probs
from numpyro import handlers
from numpyro.infer import Predictive

from numpyro_air import AIRConfig, guide, model, z_pres_prior_probs
from numpyro_air.core.nets import AIRLSTM, Decoder
from numpyro_air.core.prior import count_distribution, make_prior
from numpyro_air.core.sites import BASELINE_SITE, is_baseline_param

LATENTS = ("z_pres", "z_where", "z_what")
# z_pres patterns (B, T) with finished images: all present, stop after 2, after 1, empty.
PATTERN = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)


def prev_of(z_pres_tb):
    """z_pres_prev (T, B) for z_pres (T, B): 1 at t = 0, else z_pres[t - 1]."""
    return np.concatenate([np.ones_like(z_pres_tb[:1]), z_pres_tb[:-1]], axis=0)


@pytest.fixture(scope="module")
def images(small_batch):
    return jnp.asarray(small_batch)


@pytest.fixture(scope="module")
def guide_run(small_config, images):
    return run(guide, 0, images, small_config)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("B", [1, 64])
def test_shapes(B, small_config):
    config = small_config
    T, H, z = config.num_steps, config.image_size, config.z_what_size
    imgs = jnp.asarray(make_scenes(B, H, seed=B))
    gtr, out = run(guide, 1, imgs, config)
    assert out["z_pres"].shape == (B, T) and out["pres_prob"].shape == (B, T)
    assert out["z_where"].shape == (B, T, 3) and out["z_what"].shape == (B, T, z)
    assert out["z_where_loc"].shape == (B, T, 3) and out["baseline"].shape == (B, T)
    assert gtr["z_pres"]["value"].shape == (T, B) and gtr["z_where"]["value"].shape == (T, B, 3)
    assert gtr["z_what"]["value"].shape == (T, B, z)
    np.testing.assert_array_equal(out["z_pres"], np.asarray(gtr["z_pres"]["value"]).T)
    zp = np.asarray(out["z_pres"])
    assert set(np.unique(zp)) <= {0.0, 1.0} and np.all(np.diff(zp, axis=1) <= 0)  # absorbing
    pp = np.asarray(out["pres_prob"])
    assert np.all((pp >= 0) & (pp <= 1)) and np.all(pp[:, 1:][zp[:, :-1] == 0] == 0)
    assert np.all(np.isfinite(out["z_where"])) and np.all(np.isfinite(out["z_what"]))

    latents = {k: gtr[k]["value"] for k in LATENTS}
    mtr, canvas = run(model, 2, imgs, config, data=latents)
    assert mtr["z_pres"]["value"].shape == (T, B) and mtr["z_where"]["value"].shape == (T, B, 3)
    assert mtr["z_what"]["value"].shape == (T, B, z)
    assert mtr["obs"]["value"].shape == (B, H * H) and canvas.shape == (B, H, H)
    np.testing.assert_array_equal(mtr["obs"]["value"], np.asarray(imgs).reshape(B, -1))
    for k in LATENTS:  # the model replays the guide's latents
        np.testing.assert_array_equal(mtr[k]["value"], gtr[k]["value"])
    assert all(np.all(np.isfinite(v)) for v in site_log_probs(mtr).values())


# ----------------------------------------------------------------------------- log p(x, z) in numpy


NP_NL = {"relu": lambda x: np.maximum(x, 0.0), "tanh": np.tanh}


def np_decode(params, z, config):
    layers = params["MLP_0"]
    h = np.asarray(z, np.float64)
    n = len(layers)
    for i in range(n):
        d = layers[f"Dense_{i}"]
        h = h @ np.asarray(d["kernel"], np.float64) + np.asarray(d["bias"], np.float64)  # torch x W^T + b
        if i < n - 1:
            h = NP_NL[config.non_linearity](h)
    if config.decoder_output_bias is not None:
        h = h + config.decoder_output_bias
    if config.decoder_output_use_sigmoid:
        h = 1.0 / (1.0 + np.exp(-h))
    return h


def np_place(z_where, window, H):
    """grid_sample(window, affine_grid([[s,0,x],[0,s,y]], (H,H)), bilinear, zeros, align_corners=False)
    with an explicit 4-tap loop over output pixels."""
    s, x, y = (float(v) for v in z_where)
    w = window.shape[0]
    out = np.zeros((H, H))
    for i in range(H):  # rows: y
        py = ((s * ((2 * i + 1) / H - 1) + y + 1) * w - 1) / 2
        y0 = math.floor(py)
        for j in range(H):  # columns: x
            px = ((s * ((2 * j + 1) / H - 1) + x + 1) * w - 1) / 2
            x0 = math.floor(px)
            val = 0.0
            for r, wr in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                for c, wc in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                    if 0 <= r < w and 0 <= c < w:
                        val += wr * wc * window[r, c]
            out[i, j] = val
    return out


def norm_logpdf(x, loc, sd):
    return -0.5 * ((x - loc) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def np_log_joint(images, zp, zw, zwhat, params, config, probs):
    """Per-site log-probs (z_*: (T, B), obs: (B,)) and canvas of AIR's model, in float64 numpy."""
    T, B = zp.shape
    H, w = config.image_size, config.window_size
    loc = np.array([config.scale_prior_mean, config.pos_prior_mean, config.pos_prior_mean])
    sd = np.array([config.scale_prior_sd, config.pos_prior_sd, config.pos_prior_sd])
    lp = {k: np.zeros((T, B)) for k in LATENTS}
    canvas = np.zeros((B, H, H))
    for b in range(B):
        alive = True
        for t in range(T):
            if not alive:  # absorbed: z_pres is 0 with probability 1, the step is masked out
                continue
            present = zp[t, b] == 1
            lp["z_pres"][t, b] = np.log(probs[t]) if present else np.log(1 - probs[t])
            alive = present
            if present:
                lp["z_where"][t, b] = norm_logpdf(zw[t, b], loc, sd).sum()
                lp["z_what"][t, b] = norm_logpdf(zwhat[t, b], 0.0, 1.0).sum()
                window = np_decode(params, zwhat[t, b][None], config).reshape(w, w)
                canvas[b] += np_place(zw[t, b], window, H)
    obs = norm_logpdf(images.reshape(B, -1), canvas.reshape(B, -1), config.likelihood_sd).sum(-1)
    return lp | {"obs": obs}, canvas


@pytest.mark.parametrize(
    "config",
    [AIRConfig(**SMALL), AIRConfig.tutorial(**SMALL, non_linearity="tanh")],
    ids=["pyro-defaults", "tutorial-sigmoid-bias-tanh"],
)
def test_log_joint_matches_numpy(config, rng):
    B, T, H = 4, config.num_steps, config.image_size
    images = make_scenes(B, H, seed=7)
    # z_pres rows: [1,1,0], [1,0,1] (step 3 must be absorbed), [1,1,1], [0,1,1]
    zp_bt = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]], np.float32)
    zp = zp_bt.T.copy()
    zw = np.stack([rng.uniform(1.2, 2.5, (T, B)), rng.uniform(-0.6, 0.6, (T, B)), rng.uniform(-0.6, 0.6, (T, B))], -1)
    zw = zw.astype(np.float32)
    zwhat = rng.normal(size=(T, B, config.z_what_size)).astype(np.float32)
    # decoder weights: the Flax init pytree, filled with larger random values (torch layout x @ W + b)
    init = Decoder(config.decoder_net, config.window_size**2).init(jax.random.PRNGKey(0), jnp.zeros((1, config.z_what_size)))
    leaves, treedef = jax.tree.flatten(init["params"])
    params = jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(0, 0.4, x.shape), jnp.float32) for x in leaves])

    data = {"decode$params": params, "z_pres": zp, "z_where": zw, "z_what": zwhat}
    tr, canvas = run(model, 3, jnp.asarray(images), config, data=data)
    lp = site_log_probs(tr)
    np_params = jax.tree.map(np.asarray, params)
    probs = make_prior(config.z_pres_prior)
    expected, np_canvas = np_log_joint(images, zp, zw, zwhat, np_params, config, probs)

    np.testing.assert_allclose(canvas, np_canvas, atol=1e-4)
    assert np.abs(np_canvas[1]).sum() > 1.0
    for k in LATENTS:
        np.testing.assert_allclose(lp[k], expected[k], rtol=1e-5, atol=1e-4, err_msg=k)
    np.testing.assert_allclose(lp["obs"], expected["obs"], rtol=1e-4)
    total, np_total = sum(float(v.sum()) for v in lp.values()), sum(v.sum() for v in expected.values())
    assert abs(total - np_total) <= 1e-4 * abs(np_total)
    # [1, 0, 1]: step 3 is absorbed (no log-prob at all) and adds nothing to the canvas
    for k in LATENTS:
        assert lp[k][2, 1] == 0.0 and lp[k][1, 3] == 0.0 and lp[k][2, 3] == 0.0
    only_first = np_place(zw[0, 1], np_decode(np_params, zwhat[0, 1][None], config).reshape(config.window_size, -1), H)
    np.testing.assert_allclose(canvas[1], only_first, atol=1e-4)


# ----------------------------------------------------------------------------- masking


def check_masking(lp, zp, masked):
    """Absorbed z_pres log-probs are exactly 0; z_where/z_what are exactly 0 where z_pres = 0 iff masked."""
    prev = prev_of(zp)
    assert np.all(lp["z_pres"][prev == 0] == 0.0)
    assert np.all(lp["z_pres"][prev == 1] != 0.0)
    for k in ("z_where", "z_what"):
        assert np.all(lp[k][zp == 1] != 0.0), k
        if masked:
            assert np.all(lp[k][zp == 0] == 0.0), k
        else:
            assert np.all(lp[k][zp == 0] != 0.0) and np.all(np.isfinite(lp[k])), k


@pytest.mark.parametrize("use_masking", [True, False], ids=["masking", "no-masking"])
def test_masking_exact_zeros(small_config, images, use_masking):
    # the no-masking config also switches baselines off (one compile for both behaviours)
    config = small_config if use_masking else small_config.replace(use_masking=False, use_baselines=False)
    zp = PATTERN.T.copy()
    gtr, out = run(guide, 4, images, config, data={"z_pres": zp})
    np.testing.assert_array_equal(out["z_pres"], PATTERN)
    check_masking(site_log_probs(gtr), zp, masked=use_masking)
    mtr, canvas = run(model, 5, images, config, data={k: gtr[k]["value"] for k in LATENTS})
    check_masking(site_log_probs(mtr), zp, masked=use_masking)
    # objects of finished steps never reach the canvas, masked or not
    assert np.all(np.asarray(canvas[3]) == 0.0)
    if not use_masking:
        assert not any(is_baseline_param(k) for k in params_of(gtr)) and BASELINE_SITE not in gtr
        assert "baseline" not in out and gtr["z_pres"]["infer"].get("baseline") is None
    else:
        b = np.asarray(gtr[BASELINE_SITE]["value"])  # (T, B), multiplied by z_pres_prev
        assert np.all(b[prev_of(zp) == 0] == 0.0) and np.all(b[prev_of(zp) == 1] != 0.0)
        assert gtr["z_pres"]["infer"]["baseline"] == {"baseline_value": BASELINE_SITE}


def test_z_pres_score_gradient_is_nan_safe(guide_run, small_config, images):
    """grad of sum(log q(z_pres) * big) w.r.t. the guide params is finite when some z_pres_prev
    are 0; the naive Bernoulli(probs=p * prev) gives NaN in the same setup."""
    params = params_of(guide_run[0])
    zp = PATTERN.T.copy()

    def surrogate(params, naive):
        tr, _ = run(guide, 6, images, small_config, data={**params, "z_pres": zp})
        site = tr["z_pres"]
        if naive:
            d = dist.Bernoulli(probs=jax.nn.sigmoid(site["fn"].logits) * site["fn"].prev)
        else:
            d = site["fn"]
        return jnp.sum(d.log_prob(site["value"]) * -3500.0)

    grads = jax.jit(lambda p: (jax.grad(surrogate)(p, False), jax.grad(surrogate)(p, True)))(params)
    safe, naive = (jax.tree.leaves(g) for g in grads)
    assert all(np.all(np.isfinite(g)) for g in safe)
    assert any(np.any(np.asarray(g) != 0) for g in safe)
    assert any(np.any(np.isnan(g)) for g in naive)  # the test setup does trigger the NaN


# ----------------------------------------------------------------------------- prior samples

TINY = dict(image_size=8, window_size=4, z_what_size=2, rnn_hidden_size=8, encoder_net=(4,), decoder_net=(4,))


def check_counts(z_pres_tn, expected):
    N = z_pres_tn.shape[1]
    assert np.all(np.diff(z_pres_tn, axis=0) <= 0)  # absorbing
    freq = np.bincount(z_pres_tn.sum(0).astype(int), minlength=4) / N
    se = np.sqrt(expected * (1 - expected) / N)
    assert np.all(np.abs(freq - expected) <= 4 * se), (freq, expected)


def test_prior_scene_counts_follow_schedule():
    config = AIRConfig(**TINY)
    N = 20_000
    tr, _ = run(model, 7, None, config, batch_size=N)
    zp = np.asarray(tr["z_pres"]["value"])
    assert zp.shape == (3, N) and tr["obs"]["value"].shape == (N, 64)
    check_counts(zp, np.array([8, 4, 2, 1]) / 15)
    # present objects' z_where follow N([3, 0, 0], [0.1, 1, 1])
    zw = np.asarray(tr["z_where"]["value"])[zp == 1]
    se = np.array([0.1, 1.0, 1.0]) / np.sqrt(len(zw))
    assert np.all(np.abs(zw.mean(0) - [3.0, 0.0, 0.0]) <= 4 * se)
    np.testing.assert_allclose(zw.std(0), [0.1, 1.0, 1.0], rtol=0.05)

    # lin-annealed prior passed as an array: at step 600 of 1000 each p_t moved 60% towards 0.05
    annealed = config.replace(anneal_prior="lin", anneal_prior_to=0.05, anneal_prior_duration=1000)
    probs = z_pres_prior_probs(annealed, 600)
    np.testing.assert_allclose(probs, make_prior(0.5) - 0.6 * (make_prior(0.5) - 0.05), rtol=1e-6)
    tr, _ = run(model, 8, None, config, z_pres_prior=probs, batch_size=N)
    expected = count_distribution(np.asarray(probs, np.float64))
    assert expected[0] > 0.75  # clearly different from the un-annealed 0.533
    check_counts(np.asarray(tr["z_pres"]["value"]), expected)


def test_predictive_prior_and_posterior(guide_run, small_config, images):
    cfg, T, H = small_config, small_config.num_steps, small_config.image_size
    prior = Predictive(model, num_samples=3)(jax.random.PRNGKey(0), None, cfg, batch_size=5)
    assert prior["z_pres"].shape == (3, T, 5) and prior["z_where"].shape == (3, T, 5, 3)
    assert prior["z_what"].shape == (3, T, 5, cfg.z_what_size)
    assert prior["obs"].shape == (3, 5, H * H) and prior["canvas"].shape == (3, 5, H, H)
    assert not np.allclose(prior["obs"][0], prior["obs"][1])

    decoder = Decoder(cfg.decoder_net, cfg.window_size**2).init(jax.random.PRNGKey(2), jnp.zeros((1, cfg.z_what_size)))
    params = params_of(guide_run[0]) | {"decode$params": decoder["params"]}
    post = Predictive(model, guide=guide, params=params, num_samples=2, return_sites=["z_pres", "z_where", "canvas"])
    samples = post(jax.random.PRNGKey(1), images, cfg)
    B = images.shape[0]
    assert samples["z_pres"].shape == (2, T, B) and samples["canvas"].shape == (2, B, H, H)
    zp = np.asarray(samples["z_pres"])
    assert np.all(np.diff(zp, axis=1) <= 0) and np.all(np.isfinite(samples["canvas"]))
    empty = zp.sum(1) == 0  # (2, B): scenes without objects have an exactly empty canvas
    assert np.all(np.asarray(samples["canvas"])[empty] == 0.0)
    assert np.all(np.abs(np.asarray(samples["canvas"])[~empty]).sum(axis=(-1, -2)) > 0)


# ----------------------------------------------------------------------------- validation


def _bad(kind):
    x = np.full((2, 20, 20), 0.5, np.float32)
    if kind == "ndim":
        return x[0], r"\(20, 20\)"
    if kind == "size":
        return np.zeros((2, 21, 21), np.float32), r"\(2, 21, 21\)"
    if kind == "uint8":
        return np.zeros((2, 20, 20), np.uint8), "uint8"
    if kind == "above_one":
        x[1, 3, 4] = 1.5
        return x, "1.5"
    if kind == "negative":
        x[0, 0, 0] = -0.25
        return x, "-0.25"
    x[1, 2, 3] = np.nan
    return x, "NaN"


@pytest.mark.parametrize("fn", [model, guide], ids=["model", "guide"])
@pytest.mark.parametrize("kind", ["ndim", "size", "uint8", "above_one", "negative", "nan"])
def test_bad_images_raise(small_config, fn, kind):
    x, msg = _bad(kind)
    with pytest.raises(ValueError, match=msg):
        handlers.seed(fn, 0)(x, small_config)


@pytest.mark.parametrize("fn", [model, guide], ids=["model", "guide"])
def test_batch_size_mismatch_raises(small_config, small_batch, fn):
    with pytest.raises(ValueError, match="batch_size=3"):
        handlers.seed(fn, 0)(small_batch, small_config, batch_size=3)


def test_model_argument_errors(small_config):
    with pytest.raises(ValueError, match="batch_size"):
        handlers.seed(model, 0)(None, small_config)
    with pytest.raises(ValueError, match="z_pres_prior"):
        handlers.seed(model, 0)(None, small_config, batch_size=2, z_pres_prior=jnp.ones(2) * 0.5)


# ----------------------------------------------------------------------------- nets and params


def test_torch_style_init_ranges(guide_run, small_config):
    """Linear: U(+-1/sqrt(fan_in)); LSTMCell: U(+-1/sqrt(hidden)) (Pyro sizes, and via flax_module)."""
    key = jax.random.PRNGKey(0)
    dec = Decoder((200,), 16).init(key, jnp.zeros((1, 50)))["params"]["MLP_0"]  # decode: Linear(50, 200)
    for name, fan_in in (("Dense_0", 50), ("Dense_1", 200)):
        for leaf in (dec[name]["kernel"], dec[name]["bias"]):
            bound = 1 / math.sqrt(fan_in)
            assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound
    h = jnp.zeros((1, 256))  # LSTMCell(., 256): every weight and bias in U(+-1/16)
    lstm = AIRLSTM(256).init(key, jnp.zeros((1, 40)), jnp.zeros((1, 54)), (h, h))["params"]
    assert {k: v["kernel"].shape for k, v in lstm.items()} == {"img": (40, 1024), "lat": (54, 1024), "hh": (256, 1024)}
    for leaf in jax.tree.leaves(lstm):
        assert np.abs(leaf).max() <= 1 / 16 and np.abs(leaf).max() > 0.99 / 16
    hh_kernel = np.asarray(lstm["hh"]["kernel"])
    assert hh_kernel.std() == pytest.approx(1 / 16 / math.sqrt(3), rel=0.01)  # uniform, not normal
    # Flax's own scheme is different (lecun normal, zero bias): the torch init is not a no-op
    flax_dec = Decoder((200,), 16, init_scheme="flax").init(key, jnp.zeros((1, 50)))["params"]["MLP_0"]
    assert np.abs(flax_dec["Dense_0"]["kernel"]).max() > 1 / math.sqrt(50)
    # the guide's params (flax_module under NumPyro's seed) use the torch scheme too
    params = params_of(guide_run[0])
    H = small_config.rnn_hidden_size
    for leaf in jax.tree.leaves(params["rnn$params"]):
        assert np.abs(leaf).max() <= 1 / math.sqrt(H)
    enc0 = params["encode$params"]["MLP_0"]["Dense_0"]["kernel"]
    assert enc0.shape == (100, 16) and np.abs(enc0).max() <= 0.1


def test_lstm_matches_torch_lstm_cell(rng):
    F, L, H, B = 30, 5, 16, 3
    lstm = AIRLSTM(H)
    h0, c0 = (jnp.asarray(rng.normal(size=(B, H)), jnp.float32) for _ in range(2))
    params = lstm.init(jax.random.PRNGKey(1), jnp.zeros((1, F)), jnp.zeros((1, L)), (h0[:1], c0[:1]))
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.5, x.shape), jnp.float32), params)
    x_img = jnp.asarray(rng.normal(size=(B, F)), jnp.float32)
    x_lat = jnp.asarray(rng.normal(size=(B, L)), jnp.float32)
    proj = lstm.apply(params, x_img, method="project_image")
    h, c = lstm.apply(params, proj, x_lat, (h0, c0), method="step")

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    W_ih = np.concatenate([p["img"]["kernel"], p["lat"]["kernel"]], axis=0).T  # torch (4H, F + L)
    W_hh = p["hh"]["kernel"].T
    x = np.concatenate([np.asarray(x_img), np.asarray(x_lat)], axis=1)
    gates = x @ W_ih.T + p["img"]["bias"] + np.asarray(h0) @ W_hh.T + p["hh"]["bias"]
    i, f, g, o = np.split(gates, 4, axis=1)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    c_ref = sig(f) * np.asarray(c0) + sig(i) * np.tanh(g)
    h_ref = sig(o) * np.tanh(c_ref)
    np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5)
    h2, c2 = lstm.apply(params, x_img, x_lat, (h0, c0))  # __call__ == project_image + step
    np.testing.assert_allclose(h2, h, rtol=1e-6, atol=1e-6)


def test_baseline_params_partition(guide_run):
    names = set(params_of(guide_run[0]))
    baseline = {"bl_rnn$params", "bl_predict$params", "bl_h_init", "bl_c_init"}
    guide_only = {"rnn$params", "predict$params", "encode$params", "h_init", "c_init", "z_where_init", "z_what_init"}
    assert names == baseline | guide_only
    assert {n for n in names if is_baseline_param(n)} == baseline
    assert all(n.startswith("bl_") for n in baseline) and not any(n.startswith("bl_") for n in guide_only)


def test_embed_net_params(small_config, small_batch):
    config = small_config.replace(embed_net=(64,))
    tr, out = run(guide, 0, jnp.asarray(small_batch[:2]), config)
    params = params_of(tr)
    assert {"embed$params", "bl_embed$params"} <= set(params)
    assert is_baseline_param("bl_embed$params") and not is_baseline_param("embed$params")
    assert params["embed$params"]["Dense_0"]["kernel"].shape == (400, 64)
    assert params["rnn$params"]["img"]["kernel"].shape == (64, 4 * small_config.rnn_hidden_size)
    assert out["z_pres"].shape == (2, 3)


def test_seed_gives_different_params(guide_run, small_config, images):
    p0 = params_of(guide_run[0])
    p1 = params_of(run(guide, 1, images, small_config)[0])
    p0_again = params_of(run(guide, 0, images, small_config)[0])
    for name in ("rnn$params", "predict$params", "encode$params", "bl_rnn$params", "bl_predict$params"):
        for a, b, c in zip(jax.tree.leaves(p0[name]), jax.tree.leaves(p1[name]), jax.tree.leaves(p0_again[name])):
            assert not np.allclose(a, b), name
            np.testing.assert_array_equal(a, c)
