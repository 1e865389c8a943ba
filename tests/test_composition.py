"""Occluding objects (``AIRConfig.composition="over"``): the decoder draws an opacity next to the
colour and the objects cover each other front to back (step 0 in front).

The model's canvas and log-joint against a numpy compositing of numpy-rendered windows (colour,
non-square; grayscale through DAIR's residual); an opaque front object hides the one behind it
(where "add" would sum them); fractional (relaxed) presences; gradients reach both the colour and
the opacity outputs; the CLI flag, validation, the Pyro export's refusal and the decoded windows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL, make_scenes, params_of, run, site_log_probs
from numpyro.infer.util import log_density
from test_canvas import colour_scenes, norm_logpdf, np_decode, np_place

from numpyro_air import AIRConfig
from numpyro_air.analysis.inference import decode_windows
from numpyro_air.cli import train as cli
from numpyro_air.core.guide import guide
from numpyro_air.core.model import add_object, empty_canvas, model
from numpyro_air.core.nets import decoder_module
from numpyro_air.pyro_compat import pyro_state_dict_shapes

H, W, C = 20, 28, 3
OVER = AIRConfig.tutorial(**SMALL, image_width=W, channels=C, num_steps=3, composition="over")
# effective presences (B, T): all; stop after 2; [1, 0, 1] (absorbed); none
PATTERN = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 0, 0]], np.float32)


def random_params(config: AIRConfig, rng, sd: float = 0.4):
    init = decoder_module(config).init(jax.random.PRNGKey(0), jnp.zeros((1, config.z_what_size)))
    leaves, treedef = jax.tree.flatten(init["params"])
    return jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(0, sd, x.shape), jnp.float32) for x in leaves])


def random_latents(config: AIRConfig, rng, B: int):
    T = config.num_steps
    zw = np.stack([rng.uniform(1.2, 2.2, (T, B)), rng.uniform(-0.4, 0.4, (T, B)), rng.uniform(-0.4, 0.4, (T, B))], -1)
    return zw.astype(np.float32), rng.normal(size=(T, B, config.z_what_size)).astype(np.float32)


def np_over(zp, zw, zwhat, params, config, occlude: bool = True):
    """(B, T) numpy canvases (B, *image_shape), front to back: every object's placed colour c and
    opacity a (the decoder's last channel), coverage k = w a with w the running product of
    presences, canvas += T k c, T *= 1 - k; also the residual image the guide sees before each step."""
    T, B = zw.shape[:2]
    w, D = config.window_size, config.decoder_channels
    canvases = np.zeros((B,) + config.image_shape)
    before = np.zeros((B, T) + config.image_shape)
    for b in range(B):
        canvas, trans, alive = np.zeros(config.image_shape), np.ones((config.height, config.width)), 1.0
        for t in range(T):
            before[b, t] = canvas
            alive *= zp[b, t]
            window = np_decode(params, zwhat[t, b][None], config).reshape(w, w, D)
            placed = np_place(zw[t, b], window, config.height, config.width)
            colour = placed[..., 0] if config.channels == 1 else placed[..., : config.channels]
            cover = alive * placed[..., config.channels]
            seen = trans * cover
            canvas = canvas + colour * (seen if config.channels == 1 else seen[..., None])
            trans = trans * (1 - cover) if occlude else trans
        canvases[b] = canvas
    return canvases, before


def test_over_canvas_and_log_joint_match_numpy(rng):
    B = PATTERN.shape[0]
    images = colour_scenes(B, OVER.image_shape, seed=5)
    params = random_params(OVER, rng)
    zw, zwhat = random_latents(OVER, rng, B)
    data = {"decode$params": params, "z_pres": PATTERN.T.copy(), "z_where": zw, "z_what": zwhat}
    tr, canvas = run(model, 0, jnp.asarray(images), OVER, data=data)
    np_params = jax.tree.map(np.asarray, params)
    expected, _ = np_over(PATTERN, zw, zwhat, np_params, OVER)
    assert canvas.shape == (B, H, W, C)
    np.testing.assert_allclose(canvas, expected, atol=1e-5)
    obs = norm_logpdf(images.reshape(B, -1), expected.reshape(B, -1), OVER.likelihood_sd).sum(-1)
    np.testing.assert_allclose(site_log_probs(tr)["obs"], obs, rtol=1e-5)
    # teeth: with every transmittance 1 (no occlusion) scene 0's three objects would differ
    no_occlusion, _ = np_over(PATTERN, zw, zwhat, np_params, OVER, occlude=False)
    assert np.abs(no_occlusion[0] - expected[0]).max() > 0.05
    np.testing.assert_array_equal(canvas[3], 0.0)  # no object: an exactly black canvas
    assert np.abs(np.asarray(canvas[2]) - np.asarray(canvas[1])).max() > 0.05  # [1, 0, 1] stops after 1


def test_an_opaque_front_object_hides_the_one_behind():
    """Opacity ~1 everywhere in the window (large output bias): two objects at the same pose show
    only the front one's colour; "add" would show their sum, and the back one alone its own."""
    config = OVER.replace(decoder_output_bias=12.0)
    rng = np.random.default_rng(1)
    params = random_params(config, rng, sd=0.05)
    decode = lambda z: decoder_module(config).apply({"params": params}, z)  # noqa: E731
    z_where = jnp.asarray([[1.5, 0.1, -0.1]], jnp.float32)
    front, back = jnp.asarray(rng.normal(size=(1, 8)), jnp.float32), jnp.asarray(rng.normal(size=(1, 8)), jnp.float32)
    one = jnp.ones((1,), jnp.float32)
    state = add_object(empty_canvas(config, 1), decode, front, z_where, one, config)
    both = add_object(state, decode, back, z_where, one, config)
    assert float(jnp.min(both[1])) >= 0.0 and float(jnp.max(both[1])) <= 1.0
    inside = np.asarray(state[1][0]) < 1e-3  # pixels the front object covers fully (not its edges)
    assert inside.sum() > 20
    np.testing.assert_allclose(np.asarray(both[0][0])[inside], np.asarray(state[0][0])[inside], atol=1e-3)  # hidden
    edge = (np.asarray(state[1][0]) > 0.05) & (np.asarray(state[1][0]) < 0.95)  # half-covered: both show
    assert edge.any() and np.abs(np.asarray(both[0][0] - state[0][0])[edge]).max() > 1e-3
    added = OVER.replace(composition="add")
    summed = add_object(empty_canvas(added, 1), decode_rgb(decode), front, z_where, one, added)
    summed = add_object(summed, decode_rgb(decode), back, z_where, one, added)
    assert np.abs(np.asarray(summed[0]) - np.asarray(both[0]))[0][inside].max() > 0.5


def decode_rgb(decode):
    """The colour channels of a 4-channel decoder, as an "add" model's decoder."""
    return lambda z: decode(z).reshape(z.shape[0], -1, 4)[..., :3].reshape(z.shape[0], -1)


def test_fractional_presence_and_the_residual_through_dair(rng):
    """Relaxed presences weight coverage (grayscale, DAIR): the guide's residual before each step is
    the image minus the numpy front-to-back canvas of the earlier steps."""
    config = AIRConfig.tutorial(**SMALL, guide_input="difference", composition="over")
    images = jnp.asarray(make_scenes(4, 20, seed=3))
    tr, _ = run(guide, 0, images, config)
    params = params_of(tr)
    params["decode$params"] = random_params(config, rng, sd=0.5)
    zw, zwhat = random_latents(config, rng, 4)
    _, out = run(guide, 0, images, config, data={**params, "z_pres": PATTERN.T.copy(), "z_where": zw, "z_what": zwhat})
    _, before = np_over(PATTERN, zw, zwhat, jax.tree.map(np.asarray, params["decode$params"]), config)
    np.testing.assert_allclose(out["residual"], np.asarray(images)[:, None] - before, atol=2e-5)
    assert np.abs(before[0, 2] - before[0, 1]).max() > 0.05
    # fractional presences: coverage scales with w, and w = 0 draws nothing
    decode = lambda z: decoder_module(config).apply({"params": params["decode$params"]}, z)  # noqa: E731
    z_where, z = jnp.asarray(zw[0, :2]), jnp.asarray(zwhat[0, :2])
    half = add_object(empty_canvas(config, 2), decode, z, z_where, jnp.asarray([0.5, 0.0]), config)
    full = add_object(empty_canvas(config, 2), decode, z, z_where, jnp.ones(2), config)
    np.testing.assert_allclose(half[0][0], 0.5 * full[0][0], atol=1e-6)
    np.testing.assert_allclose(1 - half[1][0], 0.5 * (1 - full[1][0]), atol=1e-6)
    np.testing.assert_array_equal(half[0][1], 0.0)
    np.testing.assert_array_equal(half[1][1], 1.0)


def test_gradients_reach_colour_and_opacity(rng):
    """The log-joint's gradient with respect to the decoder (relaxed presences, grayscale): finite,
    and non-zero on the opacity outputs as well as the colour outputs (the last layer's columns
    are channels-last: even index colour, odd index opacity)."""
    config = AIRConfig.tutorial(**SMALL, num_steps=2, composition="over", presence_estimator="concrete")
    grads = decoder_grads(config, jnp.asarray(make_scenes(4, 20, seed=2)), rng)
    last = np.asarray(grads["MLP_0"]["Dense_1"]["bias"])
    assert last.shape == (config.window_size**2 * 2,)
    colour, opacity = last.reshape(-1, 2).T
    assert np.abs(opacity).max() > 1e-2 and np.abs(colour).max() > 1e-2


def decoder_grads(config: AIRConfig, images, rng):
    """The gradient of the log-joint (2 steps, both objects on, relaxed presence) with respect to
    random decoder parameters, checked finite."""
    zw, zwhat = random_latents(config, rng, images.shape[0])
    latents = {"z_pres_logit": jnp.full((2, images.shape[0]), 2.0), "z_where": jnp.asarray(zw), "z_what": jnp.asarray(zwhat)}

    def log_joint(decoder):
        return log_density(model, (images, config), {}, {"decode$params": decoder, **latents})[0]

    grads = jax.grad(log_joint)(random_params(config, rng))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    return grads


def test_flag_validation_export_and_decoded_windows(rng):
    air, *_ = cli.configs_from_args(cli.build_parser().parse_args(["--preset", "tutorial", "--composition", "over"]))
    assert air.composition == "over" and air.decoder_channels == air.channels + 1
    assert cli.configs_from_args(cli.build_parser().parse_args([]))[0].composition == "add"
    with pytest.raises(ValueError, match="composition must be one of"):
        AIRConfig(composition="behind")
    with pytest.raises(ValueError, match="needs decoder_output_use_sigmoid"):
        AIRConfig(composition="over")
    with pytest.raises(ValueError, match='composition="over"'):
        pyro_state_dict_shapes(AIRConfig.tutorial(composition="over"))
    params = random_params(OVER, rng)
    z = rng.normal(size=(2, 3, 8)).astype(np.float32)
    windows = np.asarray(decode_windows({"decode$params": params}, jnp.asarray(z), OVER))
    raw = np_decode(jax.tree.map(np.asarray, params), z.reshape(-1, 8), OVER).reshape(2, 3, 10, 10, 4)
    assert windows.shape == (2, 3) + OVER.window_shape
    np.testing.assert_allclose(windows, raw[..., :3] * raw[..., 3:], atol=1e-5)
