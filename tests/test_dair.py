"""DAIR (``guide_input="difference"``): the guide's recurrent net reads the image minus the
reconstruction of earlier steps, rendered with the model's (shared, detached) decoder."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SMALL, make_scenes, params_of
from numpyro import handlers
from numpyro.infer import SVI

from numpyro_air.analysis import inference
from numpyro_air.core.config import AIRConfig
from numpyro_air.core.guide import guide
from numpyro_air.core.model import model
from numpyro_air.estimators.nvil import NVIL_ELBO

# z_pres (B, T): all present, stop after 2, [1, 0, 1] (step 3 absorbed), empty
PATTERN = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 0, 0]], np.float32)
CONFIG = AIRConfig.tutorial(**SMALL, guide_input="difference")  # sigmoid + bias: windows never 0


# ----------------------------------------------------------------------------- numpy rendering


def np_decode(params, z, config) -> np.ndarray:
    """Decoder MLP (torch layout x @ W + b, non-linearity between layers), output bias and
    optional sigmoid, in float64: z (N, z) -> (N, w*w)."""
    layers = params["MLP_0"]
    h = np.asarray(z, np.float64)
    nl = {"relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh}[config.non_linearity]
    for i in range(len(layers)):
        dense = layers[f"Dense_{i}"]
        h = h @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"], np.float64)
        h = nl(h) if i < len(layers) - 1 else h
    h = h + (config.decoder_output_bias or 0.0)
    return 1.0 / (1.0 + np.exp(-h)) if config.decoder_output_use_sigmoid else h


def np_place(z_where, window, image_size: int) -> np.ndarray:
    """Window (w, w) placed on an (H, H) canvas as torch's grid_sample(affine_grid([[s, 0, x],
    [0, s, y]])) (bilinear, zero padding, align_corners=False): output pixel (i, j) reads the
    window at pixel coordinates ((s u + shift + 1) w - 1) / 2, u its normalised centre."""
    s, x, y = (float(v) for v in z_where)
    w = window.shape[0]
    padded = np.pad(np.asarray(window, np.float64), 1)  # out-of-range taps read the zero border

    def src(k: int, shift: float) -> float:
        return ((s * ((2 * k + 1) / image_size - 1) + shift + 1) * w - 1) / 2

    out = np.zeros((image_size, image_size))
    for i in range(image_size):
        r = src(i, y)
        for j in range(image_size):
            c = src(j, x)
            r0, c0 = math.floor(r), math.floor(c)
            fr, fc = r - r0, c - c0
            if -1 <= r0 < w and -1 <= c0 < w:  # the 2 x 2 taps (r0, c0) .. (r0 + 1, c0 + 1)
                p = padded[r0 + 1 : r0 + 3, c0 + 1 : c0 + 3]
                top, bottom = (1 - fc) * p[0, 0] + fc * p[0, 1], (1 - fc) * p[1, 0] + fc * p[1, 1]
                out[i, j] = (1 - fr) * top + fr * bottom
    return out


# ----------------------------------------------------------------------------- helpers


def trace_guide(config, images, data, seed=0, **kwargs):
    g = handlers.substitute(handlers.seed(guide, seed), data=jax.tree.map(jnp.asarray, data))
    with handlers.trace() as tr:
        out = g(images, config, **kwargs)
    return tr, out


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(make_scenes(4, CONFIG.image_size, seed=3))


@pytest.fixture(scope="module")
def setup(images):
    """Guide params (with a random, clearly non-zero decoder) and latents (T, B, ...) of one run."""
    rng = np.random.default_rng(0)
    tr, _ = trace_guide(CONFIG, images, {})
    params = params_of(tr)
    assert "decode$params" in params
    # larger random decoder weights than the init, so the rendered objects are far from uniform
    params["decode$params"] = jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0, 0.5, x.shape), jnp.float32), params["decode$params"]
    )
    T, B = CONFIG.num_steps, images.shape[0]
    zw = np.stack([rng.uniform(1.2, 2.5, (T, B)), rng.uniform(-0.6, 0.6, (T, B)), rng.uniform(-0.6, 0.6, (T, B))], -1)
    latents = {
        "z_pres": PATTERN.T.copy(),
        "z_where": zw.astype(np.float32),
        "z_what": rng.normal(size=(T, B, CONFIG.z_what_size)).astype(np.float32),
    }
    return params, latents


def np_residuals(images, params, latents, config):
    """(B, T, H, H) residuals image - sum_{s<t} z_pres_eff_s * object_s, in float64 numpy."""
    np_params = jax.tree.map(np.asarray, params["decode$params"])
    zp, zw, zwhat = latents["z_pres"], latents["z_where"], latents["z_what"]
    T, B = zp.shape
    w = config.window_size
    out = np.zeros((B, T) + images.shape[1:])
    for b in range(B):
        canvas, alive = np.zeros(images.shape[1:]), 1.0
        for t in range(T):
            out[b, t] = np.asarray(images[b], np.float64) - canvas
            alive *= zp[t, b]
            if alive:  # an absent (or absorbed) object adds nothing
                window = np_decode(np_params, zwhat[t, b][None], config).reshape(w, w)
                canvas = canvas + np_place(zw[t, b], window, config.image_size)
    return out


def test_residuals_match_numpy_rendering(images, setup):
    params, latents = setup
    _, out = trace_guide(CONFIG, images, {**params, **latents})
    res = np.asarray(out["residual"])
    assert res.shape == (4, CONFIG.num_steps, 20, 20)
    np.testing.assert_array_equal(res[:, 0], images)  # step 0 reads the image itself
    expected = np_residuals(np.asarray(images), params, latents, CONFIG)
    np.testing.assert_allclose(res, expected, atol=2e-5)
    # the rendering is not trivial: present objects change the residual, absent ones do not
    assert np.abs(res[0, 2] - res[0, 0]).max() > 0.1 and np.abs(res[2, 1] - res[2, 0]).max() > 0.1
    np.testing.assert_array_equal(res[2, 2], res[2, 1])  # step 2 of [1, 0, 1] is absent: nothing added
    np.testing.assert_array_equal(res[3], np.broadcast_to(images[3], res[3].shape))  # empty scene


def test_recurrent_net_reads_the_residual(images, setup):
    """Same params and latents: AIR and DAIR agree at step 0 (the residual is the image) and
    differ from step 1 on, exactly where an object was drawn; the baseline net reads it too."""
    params, latents = setup
    data = {**params, **latents}
    air = CONFIG.replace(guide_input="image")
    _, out_air = trace_guide(air, images, data)
    _, out_dair = trace_guide(CONFIG, images, data)
    for k in ("pres_prob", "z_where_loc", "baseline"):
        a, d = np.asarray(out_air[k]), np.asarray(out_dair[k])
        np.testing.assert_allclose(d[:, 0], a[:, 0], rtol=1e-5, atol=1e-6, err_msg=k)
        assert np.abs(d[:2, 1:] - a[:2, 1:]).max() > 1e-4, k  # images 0, 1: object 0 present
    # empty scene: the residual stays the image, so DAIR's pre-presence outputs equal AIR's
    np.testing.assert_allclose(out_dair["z_where_loc"][3], out_air["z_where_loc"][3], rtol=1e-5, atol=1e-6)


def test_decoder_is_shared_and_detached_in_the_guide(images, setup):
    """Gradients from the guide reach its own networks through the residual (via z_what_0), never
    the decoder: only the model's terms train it."""
    params, latents = setup
    data = {k: v for k, v in latents.items() if k != "z_what"}  # z_what sampled: depends on encode

    def residual_sum(p):
        _, out = trace_guide(CONFIG, images, {**p, **data}, seed=2)
        return jnp.sum(out["residual"][:, 1:] ** 2)

    grads = jax.jit(jax.grad(residual_sum))(params)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads["decode$params"]))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads["encode$params"]))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_nvil_step_with_dair(images):
    config = AIRConfig(**SMALL, guide_input="difference")
    svi = SVI(model, guide, optax.adam(1e-3), NVIL_ELBO(), config=config)
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), images)
    params = svi.get_params(state)
    assert [k for k in params if "decode" in k] == ["decode$params"]  # one decoder, no guide copy
    loss_fn = lambda p: svi.loss.loss(jax.random.PRNGKey(1), p, model, guide, images, config=config)  # noqa: E731
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert np.isfinite(loss)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    for name in ("decode$params", "rnn$params", "encode$params", "bl_rnn$params"):
        assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads[name])), name
    # infer works with DAIR (and its reconstruction is the model's canvas of the guide's latents)
    res = inference.infer(params, images, jax.random.PRNGKey(2), config)
    assert res["counts"].shape == (4,) and res["reconstruction"].shape == (4, 20, 20)
    np.testing.assert_array_equal(res["counts"], np.asarray(res["z_pres"]).sum(1))
    assert np.all(np.isfinite(res["reconstruction"]))


def test_baseline_loss_never_reaches_the_guide_through_the_residual(images, setup):
    """DAIR's baseline network reads the residual detached: the gradient of NVIL's baseline loss
    with respect to every non-baseline parameter (recurrent net, predictor, encoder, initial
    latents, decoder) is exactly zero, while the baseline's own parameters do get one. The
    presences are pinned to PATTERN so objects are drawn and the residual depends on the guide's
    sampled z_what / z_where (hence on its parameters)."""
    from numpyro_air.core.sites import is_baseline_param

    params, latents = setup
    pinned = handlers.substitute(guide, data={"z_pres": jnp.asarray(latents["z_pres"])})
    assert any(is_baseline_param(k) for k in params) and "decode$params" in params

    @jax.jit
    def baseline_loss_grad(p):
        def bl_loss(p):
            out = NVIL_ELBO().components(jax.random.PRNGKey(4), p, model, pinned, images, config=CONFIG)
            return out["baseline_loss"]

        return jax.value_and_grad(bl_loss)(p)

    value, grads = baseline_loss_grad(params)
    assert np.isfinite(value) and value > 0
    assert set(grads) == set(params)
    for name, g in grads.items():
        leaves = [np.asarray(x) for x in jax.tree.leaves(g)]
        assert all(np.all(np.isfinite(x)) for x in leaves), name
        if is_baseline_param(name):
            assert any(np.any(x != 0) for x in leaves), f"baseline param {name} gets no gradient"
        else:
            nonzero = sum(int(np.count_nonzero(x)) for x in leaves)
            assert nonzero == 0, f"baseline loss reaches guide param {name} ({nonzero} nonzero gradient entries)"


# ----------------------------------------------------------------------------- residual glimpse
def np_crop(z_where, image, window_size: int) -> np.ndarray:
    """The glimpse (w, w) of ``image`` (H, H) at z_where = (s, x, y): the window placed with the
    inverse pose (1/s, -x/s, -y/s), i.e. :func:`np_place` with the image as its source."""
    s, x, y = (float(v) for v in z_where)
    return np_place((1.0 / s, -x / s, -y / s), image, window_size)


@pytest.mark.parametrize("source", ["image", "residual", "both"])
def test_glimpse_is_the_crop_of_the_image_or_of_the_residual(images, setup, source):
    """``glimpse_input="residual"`` (the DAIR paper's glimpse): the encoder's input at step t is
    the crop at z_where_t of image - reconstruction(steps < t), against a numpy crop of the numpy
    residual; with "image" it is the crop of the image, with "both" the two crops as channels
    (image first). z_what's density follows the glimpse."""
    params, latents = setup
    config = CONFIG.replace(glimpse_input=source)
    if source == "both":  # the encoder's input doubles: the guide draws its first layer for 2 w^2 inputs
        params = _with_encoder_of(config, images, params)
        assert params["encode$params"]["MLP_0"]["Dense_0"]["kernel"].shape[0] == 2 * config.window_size**2
    tr, out = trace_guide(config, images, {**params, **latents})
    glimpse = np.asarray(out["glimpse"])  # (B, T, w, w) or (B, T, w, w, 2)
    w = config.window_size
    assert glimpse.shape == (4, config.num_steps, w, w) + ((2,) if source == "both" else ())
    assert config.glimpse_channels == (2 if source == "both" else 1)
    residual = np_residuals(np.asarray(images), params, latents, config)
    expected = np.zeros(glimpse.shape)
    for b in range(4):
        for t in range(config.num_steps):
            crops = {
                "image": np_crop(latents["z_where"][t, b], np.asarray(images[b], np.float64), w),
                "residual": np_crop(latents["z_where"][t, b], residual[b, t], w),
            }
            expected[b, t] = np.stack([crops["image"], crops["residual"]], -1) if source == "both" else crops[source]
    np.testing.assert_allclose(glimpse, expected, atol=3e-5)
    if source == "residual":  # equal to the image's crop at step 0, different once an object is drawn
        of_image = np.asarray(trace_guide(CONFIG, images, {**params, **latents})[1]["glimpse"])
        np.testing.assert_allclose(glimpse[:, 0], of_image[:, 0], atol=1e-6)
        assert np.abs(glimpse[0, 1:] - of_image[0, 1:]).max() > 1e-2
    # z_what ~ N(encode(glimpse)): its log-density at the pinned z_what is that of the glimpse's encoding
    from numpyro_air.core.nets import encoder_module

    flat = jnp.asarray(glimpse.reshape(4 * config.num_steps, -1))
    loc, sd = encoder_module(config).apply({"params": params["encode$params"]}, flat)
    z = latents["z_what"].transpose(1, 0, 2).reshape(-1, config.z_what_size)
    lp = jax.scipy.stats.norm.logpdf(z, loc, sd).sum(-1).reshape(4, config.num_steps)
    mask = np.cumprod(latents["z_pres"].T, axis=1) > 0
    site = tr["z_what"]
    np.testing.assert_allclose(np.asarray(site["fn"].log_prob(site["value"])).T, np.where(mask, lp, 0.0), rtol=1e-4, atol=1e-3)


def _with_encoder_of(config, images, params) -> dict:
    """``params`` with the glimpse encoder the guide draws for ``config`` (its input size follows
    ``config.glimpse_channels``)."""
    return dict(params, **{"encode$params": params_of(trace_guide(config, images, {})[0])["encode$params"]})


def test_residual_glimpse_needs_dair():
    for source in ("residual", "both"):
        with pytest.raises(ValueError, match=f"glimpse_input=.{source}. needs guide_input=.difference."):
            AIRConfig(glimpse_input=source)
    with pytest.raises(ValueError, match="glimpse_input must be one of"):
        CONFIG.replace(glimpse_input="canvas")


def test_glimpse_flags_of_the_train_command(capsys):
    """``--residual-glimpse`` and ``--image-and-residual-glimpse`` set ``glimpse_input``; the two
    together are refused by the parser; the conv encoder reads 2C channels with "both"."""
    from numpyro_air.cli import train as cli
    from numpyro_air.core.nets import encoder_module

    air = lambda *argv: cli.configs_from_args(cli.build_parser().parse_args(["--dair", *argv]))[0]  # noqa: E731
    assert air().glimpse_input == "image"
    assert air("--residual-glimpse").glimpse_input == "residual"
    both = air("--image-and-residual-glimpse")
    assert both.glimpse_input == "both" and both.glimpse_channels == 2
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--dair", "--residual-glimpse", "--image-and-residual-glimpse"])
    assert "not allowed with" in capsys.readouterr().err
    conv = CONFIG.replace(glimpse_input="both", conv_encoder=(4,))
    x = jnp.zeros((2, conv.window_size**2 * 2))
    loc, sd = encoder_module(conv).apply(encoder_module(conv).init(jax.random.PRNGKey(0), x), x)
    assert loc.shape == sd.shape == (2, conv.z_what_size)
    kernel = encoder_module(conv).init(jax.random.PRNGKey(0), x)["params"]["ConvStack_0"]["Conv_0"]["kernel"]
    assert kernel.shape[2] == 2  # input channels of the first convolution


def test_both_glimpse_of_colour_scenes_is_image_then_residual(setup):
    """RGB "both": channels 0-2 of the glimpse are the image's crop, channels 3-5 the residual's
    (each as its own ``glimpse_input`` crops it, same parameters and latents)."""
    _, latents = setup
    rgb = CONFIG.replace(channels=3)
    images = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (4, rgb.image_size, rgb.image_size, 3)), jnp.float32)
    params = params_of(trace_guide(rgb, images, {})[0])
    params["decode$params"] = jax.tree.map(lambda x: x + 0.3, params["decode$params"])  # objects far from 0
    both = rgb.replace(glimpse_input="both")
    both_params = _with_encoder_of(both, images, params)
    glimpse = {
        src: np.asarray(trace_guide(rgb.replace(glimpse_input=src), images, {**params, **latents})[1]["glimpse"])
        for src in ("image", "residual")
    }
    got = np.asarray(trace_guide(both, images, {**both_params, **latents})[1]["glimpse"])
    assert got.shape == glimpse["image"].shape[:-1] + (6,)
    np.testing.assert_allclose(got[..., :3], glimpse["image"], atol=1e-6)
    np.testing.assert_allclose(got[..., 3:], glimpse["residual"], atol=1e-6)
    assert np.abs(glimpse["image"][:, 1:] - glimpse["residual"][:, 1:]).max() > 1e-2  # the two differ after step 0
