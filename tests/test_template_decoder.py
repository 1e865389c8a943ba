"""The template decoder (``AIRConfig.template_decoder``): a learned dictionary of shapes, mixed by
z_what and rotated about the window's centre.

Its windows at angle 0, 90 degrees (numpy's ``rot90``) and 45 degrees (the corners read the
outside value), the mixture against numpy, decoded windows with one colour per object, gradients
of the model's log-joint reaching the templates' codes and MLP, choice and rotation, its size, the CLI flag,
validation and the Pyro export's refusal.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL
from test_canvas import colour_scenes
from test_composition import decoder_grads, random_params

from numpyro_air import AIRConfig
from numpyro_air.analysis.inference import decode_windows
from numpyro_air.cli import train as cli
from numpyro_air.core.nets import TEMPLATE_OUTSIDE, TemplateDecoder, decoder_module, param_count, rotate_bilinear
from numpyro_air.pyro_compat import pyro_state_dict_shapes

H, W, C, K = 20, 28, 3, 4
TEMPLATE = AIRConfig.tutorial(
    **(SMALL | {"decoder_net": (200,)}),
    image_width=W,
    channels=C,
    num_steps=3,
    object_colour="single",
    composition="over",
    template_decoder=K,
)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def fixed_params(ws: int, rng, choice_bias, angle: float, z_size: int = 5):
    """A TemplateDecoder whose choice and angle do not depend on z, and whose template bank
    (K, ws*ws) is a random matrix: the codes and the MLP's first layer make its hidden layer the
    identity, so the bank is the second layer's kernel. Returns (module, params, bank)."""
    module = TemplateDecoder(ws, K, hidden=(K,), output_bias=-1.0, use_sigmoid=True)
    params = jax.tree.map(jnp.zeros_like, module.init(jax.random.PRNGKey(0), jnp.zeros((1, z_size)))["params"])
    bank = rng.normal(0, 2.0, (K, ws * ws)).astype(np.float32)
    mlp = params["Templates"]["MLP_0"]
    params["codes"] = jnp.eye(K, z_size, dtype=jnp.float32)
    mlp["Dense_0"]["kernel"] = jnp.eye(z_size, K, dtype=jnp.float32)
    mlp["Dense_1"]["kernel"] = jnp.asarray(bank)
    params["Choice"]["bias"] = jnp.asarray(choice_bias, jnp.float32)
    params["Rotation"]["bias"] = jnp.asarray([math.cos(angle), math.sin(angle)], jnp.float32) * 3.0
    return module, params, bank


def test_one_template_at_zero_and_right_angles(rng):
    ws = 7
    z = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    for angle, turns in ((0.0, 0), (math.pi / 2, 1), (math.pi, 2)):
        module, params, bank = fixed_params(ws, rng, [0.0, 40.0, 0.0, 0.0], angle)
        out = np.asarray(jax.jit(module.apply)({"params": params}, z)).reshape(3, ws, ws)
        template = bank[1].reshape(ws, ws)
        expected = sigmoid(np.rot90(template, turns) - 1.0)
        np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)
    assert not np.allclose(template, np.rot90(template))


def test_starts_unrotated(rng):
    """A fresh decoder reads every template at angle 0, whatever z (templates read at random
    angles would average to round blobs)."""
    module = TemplateDecoder(7, K, hidden=(K,), output_bias=-1.0, use_sigmoid=True)
    params = module.init(jax.random.PRNGKey(3), jnp.zeros((1, 5)))["params"]
    z = rng.normal(size=(4, 5)).astype(np.float32)
    out = np.asarray(module.apply({"params": params}, jnp.asarray(z)))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    mlp = p["Templates"]["MLP_0"]
    hidden = np.maximum(p["codes"] @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"], 0.0)
    bank = hidden @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]  # (K, 49)
    logits = z @ p["Choice"]["kernel"] + p["Choice"]["bias"]
    choice = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(out, sigmoid(choice @ bank - 1.0), atol=1e-5)
    assert bank.std() > 0.05 and np.ptp(choice, axis=0).max() > 1e-3


def test_mixture_and_outside_corners(rng):
    ws = 9
    logits = np.array([0.5, -1.0, 2.0, 0.0])
    module, params, bank = fixed_params(ws, rng, logits, 0.0)
    z = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
    out = np.asarray(jax.jit(module.apply)({"params": params}, z)).reshape(2, ws, ws)
    p = np.exp(logits) / np.exp(logits).sum()
    expected = sigmoid(p @ bank.astype(np.float64) - 1.0).reshape(ws, ws)
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    module, params, _ = fixed_params(ws, rng, logits, math.pi / 4)
    out = np.asarray(jax.jit(module.apply)({"params": params}, z)).reshape(2, ws, ws)
    outside = sigmoid(TEMPLATE_OUTSIDE - 1.0)
    for i, j in ((0, 0), (0, ws - 1), (ws - 1, 0), (ws - 1, ws - 1)):
        np.testing.assert_allclose(out[:, i, j], outside, atol=1e-7)
    assert np.all(np.abs(out[:, ws // 2, ws // 2] - outside) > 1e-3)  # the centre reads the template


def test_rotation_interpolates_bilinearly():
    """A ramp along the columns, rotated by a small angle, reads the ramp at the rotated point."""
    ws, angle = 8, 0.3
    centres = (2.0 * np.arange(ws) + 1.0) / ws - 1.0
    ramp = np.tile(np.arange(ws, dtype=np.float32), (ws, 1))  # value = column index
    out = np.asarray(rotate_bilinear(jnp.asarray(ramp)[None], jnp.array([math.cos(angle)]), jnp.array([math.sin(angle)]), 0.0))
    v, u = np.meshgrid(centres, centres, indexing="ij")
    x = (math.cos(angle) * u - math.sin(angle) * v + 1.0) * ws / 2.0 - 0.5  # column read
    inside = (x >= 0) & (x <= ws - 1) & (np.abs(math.sin(angle) * u + math.cos(angle) * v) <= 1.0 - 1.0 / ws)
    assert inside.sum() > ws * ws / 2
    np.testing.assert_allclose(out[0][inside], x[inside], atol=1e-5)


def test_decoded_windows_single_colour(rng):
    config = TEMPLATE
    params = random_params(config, rng, sd=0.6)
    z = rng.normal(size=(2, 3, config.z_what_size)).astype(np.float32)
    windows = np.asarray(decode_windows({"decode$params": params}, jnp.asarray(z), config))
    w = config.window_size
    assert windows.shape == (2, 3, w, w, C)
    shape = np.asarray(
        TemplateDecoder(w, K, config.decoder_net, config.decoder_output_bias, True).apply(
            {"params": params["shape"]}, jnp.asarray(z.reshape(6, -1))
        )
    )
    k, b = (np.asarray(params["Colour"][n], np.float64) for n in ("kernel", "bias"))
    expected = shape.reshape(2, 3, w, w, 1) / (1.0 + np.exp(-(z @ k + b)))[:, :, None, None, :]
    np.testing.assert_allclose(windows, expected, atol=1e-5)
    assert shape.std() > 0.02


def test_gradients_reach_templates_choice_and_rotation(rng):
    config = TEMPLATE.replace(num_steps=2, presence_estimator="concrete")
    grads = decoder_grads(config, jnp.asarray(colour_scenes(4, config.image_shape, seed=2)), rng)
    shape = grads["shape"]
    mlp = shape["Templates"]["MLP_0"]
    leaves = (shape["codes"], mlp["Dense_0"]["kernel"], mlp["Dense_1"]["kernel"], shape["Choice"]["kernel"])
    for leaf in leaves + (shape["Rotation"]["kernel"], grads["Colour"]["kernel"]):
        assert np.abs(np.asarray(leaf)).max() > 1e-4


def test_size_flag_and_refusals():
    z, w, (h,) = TEMPLATE.z_what_size, TEMPLATE.window_size, TEMPLATE.decoder_net
    mlp = z * h + h + h * w * w + w * w
    assert param_count(decoder_module(TEMPLATE), z) == K * z + mlp + (z * K + K) + (z * 2 + 2) + (z * C + C)
    args = ["--dataset", "multi-dsprites", "--object-colour", "single", "--template-decoder", "8"]
    air, *_ = cli.configs_from_args(cli.build_parser().parse_args(args))
    assert air.template_decoder == 8 and air.broadcast_decoder is None
    assert cli.configs_from_args(cli.build_parser().parse_args([]))[0].template_decoder is None
    assert AIRConfig.from_dict(TEMPLATE.to_dict()) == TEMPLATE
    with pytest.raises(ValueError, match="different decoders"):
        TEMPLATE.replace(broadcast_decoder=(8,))
    air, *_ = cli.configs_from_args(cli.build_parser().parse_args(args + ["--decoder-net", "64"]))
    assert air.decoder_net == (64,)  # the templates' MLP
    with pytest.raises(ValueError, match="positive number of templates"):
        TEMPLATE.replace(template_decoder=0)
    with pytest.raises(ValueError, match='object_colour="single"'):
        TEMPLATE.replace(object_colour="pixel")
    with pytest.raises(ValueError, match="template_decoder"):
        pyro_state_dict_shapes(AIRConfig.tutorial(object_colour="single", template_decoder=8))
