"""The spatial broadcast decoder (``AIRConfig.broadcast_decoder``): one MLP of z_what and the
pixel's position in the window, applied at every window pixel.

Its windows against numpy (float64; float32 and bfloat16 products), the pixel order of the
positions, decoded windows with occlusion and with one colour per object, gradients of the
model's log-joint reaching every layer, its size, the CLI flag, validation and the Pyro
export's refusal.
"""

from __future__ import annotations

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
from numpyro_air.core.nets import BroadcastDecoder, SingleColourDecoder, decoder_module, param_count
from numpyro_air.pyro_compat import pyro_state_dict_shapes

H, W, C = 20, 28, 3
BROADCAST = AIRConfig.tutorial(
    **(SMALL | {"decoder_net": (200,)}), image_width=W, channels=C, num_steps=3, broadcast_decoder=(6, 5)
)


def np_positions(ws: int) -> np.ndarray:
    """(ws*ws, 2) window positions in row-major pixel order: (column centre, row centre) in [-1, 1]."""
    centre = (2.0 * np.arange(ws) + 1.0) / ws - 1.0
    return np.array([(centre[j], centre[i]) for i in range(ws) for j in range(ws)])


def np_broadcast(params, z, config) -> np.ndarray:
    """numpy (float64) broadcast decoder: (B, z) -> (B, ws*ws*C'), channels last."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    code = np.asarray(z, np.float64) @ p["Code"]["kernel"] + p["Code"]["bias"]  # (B, h)
    h = relu(code[:, None, :] + np_positions(config.window_size) @ p["Position"]["kernel"])
    for i in range(len(config.broadcast_decoder) - 1):
        h = relu(h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"])
    out = (h @ p["Out"]["kernel"] + p["Out"]["bias"]).reshape(z.shape[0], -1)
    out = out + config.decoder_output_bias
    return 1.0 / (1.0 + np.exp(-out))


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_windows_match_numpy(dtype, atol, rng):
    config = BROADCAST.replace(compute_dtype=dtype)
    params = random_params(config, rng, sd=0.6)
    z = rng.normal(size=(5, config.z_what_size)).astype(np.float32)
    out = np.asarray(decoder_module(config).apply({"params": params}, jnp.asarray(z)))
    expected = np_broadcast(params, z, config)
    assert out.shape == (5, config.window_size**2 * C)
    np.testing.assert_allclose(out, expected, atol=atol)
    assert expected.std() > 0.02  # not a flat window


def test_positions_are_column_then_row_in_pixel_order(rng):
    """A decoder that outputs its first position input draws each window column's centre; the
    second input, each row's; the code does not move them."""
    ws = 7
    module = BroadcastDecoder(ws, 1, hidden=(2,), nl="relu")
    params = jax.tree.map(jnp.zeros_like, module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"])
    params["Position"]["kernel"] = jnp.eye(2)
    params["Code"]["bias"] = jnp.array([2.0, 2.0])  # keeps both units in ReLU's linear part
    for unit, expected in ((0, np.tile(np_positions(ws)[:ws, 0], ws)), (1, np.repeat(np_positions(ws)[::ws, 1], ws))):
        params["Out"]["kernel"] = jnp.eye(2)[:, unit : unit + 1]
        params["Out"]["bias"] = jnp.array([-2.0])
        z = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
        out = np.asarray(module.apply({"params": params}, z))
        np.testing.assert_allclose(out, np.broadcast_to(expected, (3, ws * ws)), atol=1e-6)
    assert not np.allclose(expected, expected.reshape(ws, ws).T.ravel())


@pytest.mark.parametrize("colour", ["pixel", "single"])
def test_decoded_windows_over_and_single_colour(colour, rng):
    config = BROADCAST.replace(composition="over", object_colour=colour)
    params = random_params(config, rng, sd=0.6)
    z = rng.normal(size=(2, 3, config.z_what_size)).astype(np.float32)
    windows = np.asarray(decode_windows({"decode$params": params}, jnp.asarray(z), config))
    w = config.window_size
    assert windows.shape == (2, 3, w, w, C)
    if colour == "single":
        assert isinstance(decoder_module(config), SingleColourDecoder)
        shape = np_broadcast(params["shape"], z.reshape(6, -1), config).reshape(2, 3, w, w, 1)
        k, b = (np.asarray(params["Colour"][n], np.float64) for n in ("kernel", "bias"))
        expected = shape / (1.0 + np.exp(-(z @ k + b)))[:, :, None, None, :]
    else:
        raw = np_broadcast(params, z.reshape(6, -1), config).reshape(2, 3, w, w, C + 1)
        expected = raw[..., :C] * raw[..., C:]
    np.testing.assert_allclose(windows, expected, atol=1e-5)


def test_gradients_reach_every_layer(rng):
    config = BROADCAST.replace(num_steps=2, composition="over", presence_estimator="concrete")
    grads = decoder_grads(config, jnp.asarray(colour_scenes(4, config.image_shape, seed=2)), rng)
    for layer, name in (("Code", "kernel"), ("Position", "kernel"), ("Dense_0", "kernel"), ("Out", "bias")):
        assert np.abs(np.asarray(grads[layer][name])).max() > 1e-3, layer


def test_size_flag_and_refusals():
    z, (h1, h2), D = BROADCAST.z_what_size, BROADCAST.broadcast_decoder, C
    assert param_count(decoder_module(BROADCAST), z) == z * h1 + h1 + 2 * h1 + h1 * h2 + h2 + h2 * D + D
    args = ["--dataset", "multi-dsprites", "--broadcast-decoder", "32", "32"]
    air, *_ = cli.configs_from_args(cli.build_parser().parse_args(args))
    assert air.broadcast_decoder == (32, 32) and air.conv_decoder is None
    assert cli.configs_from_args(cli.build_parser().parse_args([]))[0].broadcast_decoder is None
    assert AIRConfig.from_dict(BROADCAST.to_dict()) == BROADCAST
    with pytest.raises(ValueError, match="different decoders"):
        BROADCAST.replace(conv_decoder=(8,))
    with pytest.raises(ValueError, match="--decoder-net"):
        cli.configs_from_args(cli.build_parser().parse_args(args + ["--decoder-net", "400"]))
    with pytest.raises(ValueError, match="non-empty"):
        BROADCAST.replace(broadcast_decoder=())
    with pytest.raises(ValueError, match="decoder_net"):  # the MLP's sizes would be unused
        BROADCAST.replace(decoder_net=(400,))
    with pytest.raises(ValueError, match="broadcast_decoder"):
        pyro_state_dict_shapes(AIRConfig.tutorial(broadcast_decoder=(8,)))
