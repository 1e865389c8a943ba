"""One colour per object (``AIRConfig.object_colour="single"``): the decoder draws a one-channel
shape per window pixel and one colour per object, so a window cannot draw two objects of
different colours.

The model's canvas and log-joint against numpy for both compositions (colour, non-square;
grayscale), the guide's DAIR residual, that every decoded window pixel is a multiple of its
object's colour (where the per-pixel decoder's are not), gradients reaching the shape and the
colour, the convolutional decoder, the CLI flag, validation and the Pyro export's refusal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL, make_scenes, params_of, run, site_log_probs
from test_canvas import colour_scenes, norm_logpdf, np_decode, np_place
from test_composition import PATTERN, decoder_grads, random_latents, random_params

from numpyro_air import AIRConfig
from numpyro_air.analysis.inference import decode_windows
from numpyro_air.cli import train as cli
from numpyro_air.core.guide import guide
from numpyro_air.core.model import model, split_decoded
from numpyro_air.core.nets import SingleColourDecoder, decoder_module, param_count
from numpyro_air.pyro_compat import pyro_state_dict_shapes

H, W, C = 20, 28, 3
SINGLE = AIRConfig.tutorial(**SMALL, image_width=W, channels=C, num_steps=3, object_colour="single")
SINGLE_OVER = SINGLE.replace(composition="over")


def np_object(params, z, config):
    """numpy (float64) decoder of one object: (shape (w, w), colour (C,))."""
    w = config.window_size
    shape = np_decode(params["shape"], z[None], config).reshape(w, w)
    k, b = (np.asarray(params["Colour"][n], np.float64) for n in ("kernel", "bias"))
    return shape, 1.0 / (1.0 + np.exp(-(np.asarray(z, np.float64) @ k + b)))


def np_canvas(zp, zw, zwhat, params, config):
    """(B, *image_shape) canvases and the canvas before each step (B, T, *image_shape): "add" sums
    w * shape * colour; "over" composites the colour at opacity w * shape front to back."""
    T, B = zw.shape[:2]
    canvases, before = np.zeros((B,) + config.image_shape), np.zeros((B, T) + config.image_shape)
    for b in range(B):
        canvas, trans, alive = np.zeros(config.image_shape), np.ones((config.height, config.width)), 1.0
        for t in range(T):
            before[b, t] = canvas
            alive *= zp[b, t]
            shape, colour = np_object(params, zwhat[t, b], config)
            placed = np_place(zw[t, b], shape, config.height, config.width) * alive
            cover = placed if config.composition == "add" else trans * placed
            canvas = canvas + (cover * colour[0] if config.channels == 1 else cover[..., None] * colour)
            trans = trans * (1 - placed)
        canvases[b] = canvas
    return canvases, before


@pytest.mark.parametrize("config", [SINGLE, SINGLE_OVER], ids=["add", "over"])
def test_canvas_and_log_joint_match_numpy(config, rng):
    B = PATTERN.shape[0]
    images = colour_scenes(B, config.image_shape, seed=7)
    params = random_params(config, rng, sd=0.5)
    zw, zwhat = random_latents(config, rng, B)
    tr, canvas = run(
        model,
        0,
        jnp.asarray(images),
        config,
        data={"decode$params": params, "z_pres": PATTERN.T.copy(), "z_where": zw, "z_what": zwhat},
    )
    expected, _ = np_canvas(PATTERN, zw, zwhat, jax.tree.map(np.asarray, params), config)
    assert canvas.shape == (B, H, W, C)
    np.testing.assert_allclose(canvas, expected, atol=1e-5)
    obs = norm_logpdf(images.reshape(B, -1), expected.reshape(B, -1), config.likelihood_sd).sum(-1)
    np.testing.assert_allclose(site_log_probs(tr)["obs"], obs, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(canvas[3], 0.0)
    # teeth: every drawn pixel of a one-object scene is a multiple of that object's colour
    one = np.array([[1, 0, 0]] * B, np.float32)
    _, single = run(
        model,
        0,
        jnp.asarray(images),
        config,
        data={"decode$params": params, "z_pres": one.T.copy(), "z_where": zw, "z_what": zwhat},
    )
    _, colour = np_object(jax.tree.map(np.asarray, params), zwhat[0, 0], config)
    drawn = np.asarray(single[0]).reshape(-1, C)
    assert (drawn.sum(-1) > 1e-3).sum() > 20
    np.testing.assert_allclose(np.cross(drawn, colour), 0.0, atol=1e-5)


@pytest.mark.parametrize("composition", ["add", "over"])
def test_grayscale_and_the_dair_residual(composition, rng):
    """Grayscale: the object is its shape times one intensity (added, or at the shape's opacity);
    the guide's residual before each step (DAIR) is the image minus the numpy canvas of the
    earlier steps."""
    config = AIRConfig.tutorial(**SMALL, guide_input="difference", object_colour="single", composition=composition)
    images = jnp.asarray(make_scenes(4, 20, seed=3))
    tr, _ = run(guide, 0, images, config)
    params = params_of(tr)
    params["decode$params"] = random_params(config, rng, sd=0.5)
    zw, zwhat = random_latents(config, rng, 4)
    data = {**params, "z_pres": PATTERN.T.copy(), "z_where": zw, "z_what": zwhat}
    _, out = run(guide, 0, images, config, data=data)
    expected, before = np_canvas(PATTERN, zw, zwhat, jax.tree.map(np.asarray, params["decode$params"]), config)
    np.testing.assert_allclose(out["residual"], np.asarray(images)[:, None] - before, atol=2e-5)
    _, canvas = run(model, 0, images, config, data=data)
    np.testing.assert_allclose(canvas, expected, atol=1e-5)
    assert np.abs(before[0, 2] - before[0, 1]).max() > 0.05


def test_decoded_windows_have_one_colour(rng):
    """Every pixel of a decoded window is its object's colour times the shape: rank one over the
    window's pixels, with the colour (sigmoid outputs) in (0, 1); the per-pixel decoder's windows
    are not."""
    for config in (SINGLE, SINGLE_OVER):
        params = random_params(config, rng, sd=0.5)
        z = rng.normal(size=(2, 3, 8)).astype(np.float32)
        windows = np.asarray(decode_windows({"decode$params": params}, jnp.asarray(z), config))
        assert windows.shape == (2, 3) + config.window_shape
        np_params = jax.tree.map(np.asarray, params)
        for i, j in np.ndindex(2, 3):
            shape, colour = np_object(np_params, z[i, j], config)
            assert np.all((colour > 0) & (colour < 1))
            np.testing.assert_allclose(windows[i, j], shape[..., None] * colour, atol=1e-5)
            assert np.linalg.svd(windows[i, j].reshape(-1, C), compute_uv=False)[1] < 1e-5
    pixel = SINGLE.replace(object_colour="pixel")
    windows = np.asarray(decode_windows({"decode$params": random_params(pixel, rng, sd=0.5)}, jnp.asarray(z), pixel))
    assert np.linalg.svd(windows[0, 0].reshape(-1, C), compute_uv=False)[1] > 1e-2


def test_gradients_reach_shape_and_colour(rng):
    config = SINGLE_OVER.replace(num_steps=2, presence_estimator="concrete")
    grads = decoder_grads(config, jnp.asarray(colour_scenes(4, config.image_shape, seed=2)), rng)
    assert np.abs(np.asarray(grads["Colour"]["kernel"])).max() > 1e-2
    assert np.abs(np.asarray(grads["shape"]["MLP_0"]["Dense_1"]["bias"])).max() > 1e-2


def test_sizes_conv_decoder_flag_and_refusals():
    w = SINGLE.window_size
    assert (SINGLE.decoder_channels, SINGLE.object_colours, SINGLE.decoder_output_size) == (1, 3, w * w + 3)
    assert SINGLE.replace(object_colour="pixel").decoder_output_size == w * w * 3
    assert SINGLE_OVER.replace(object_colour="pixel").decoder_output_size == w * w * 4
    module = decoder_module(SINGLE)
    assert isinstance(module, SingleColourDecoder)
    pixel_params = param_count(decoder_module(SINGLE.replace(object_colour="pixel")), 8)
    hidden = SINGLE.decoder_net[-1]
    assert param_count(module, 8) == pixel_params - hidden * w * w * 2 - w * w * 2 + 8 * 3 + 3
    conv = SINGLE_OVER.replace(conv_decoder=(16, 8), window_size=12)
    out = decoder_module(conv).apply(decoder_module(conv).init(jax.random.PRNGKey(0), jnp.zeros((1, 8))), jnp.ones((5, 8)))
    window, colour = split_decoded(out, conv)
    assert window.shape == (5, 12, 12) and colour.shape == (5, 3)
    air, *_ = cli.configs_from_args(cli.build_parser().parse_args(["--dataset", "multi-dsprites", "--object-colour", "single"]))
    assert air.object_colour == "single" and air.composition == "over"
    assert cli.configs_from_args(cli.build_parser().parse_args([]))[0].object_colour == "pixel"
    with pytest.raises(ValueError, match="object_colour must be one of"):
        AIRConfig(object_colour="rainbow")
    with pytest.raises(ValueError, match='object_colour="single"'):
        pyro_state_dict_shapes(AIRConfig.tutorial(object_colour="single"))
