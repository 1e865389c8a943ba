"""Convolutional encoder, decoder and image embedding: shapes, parameter counts, what they read."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_air.core.nets import KERNEL, ConvDecoder, ConvEmbed, ConvEncoder, halved, param_count


def _conv_params(channels_in: int, channels: tuple) -> int:
    total, cin = 0, channels_in
    for c in channels:
        total += KERNEL * KERNEL * cin * c + c
        cin = c
    return total


def _dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


@pytest.mark.parametrize("ws,C", [(28, 1), (20, 3), (13, 3)])
def test_encoder_shapes_and_parameter_count(ws, C):
    enc = ConvEncoder(ws, C, z_what_size=8, channels=(4, 8), hidden=16)
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, ws * ws * C))
    params = enc.init(jax.random.PRNGKey(1), x)
    loc, scale = enc.apply(params, x)
    assert loc.shape == scale.shape == (3, 8) and bool(jnp.all(scale > 0))
    side = halved(ws, 2)
    want = _conv_params(C, (4, 8)) + _dense(side * side * 8, 16) + _dense(16, 16)
    assert param_count(enc, ws * ws * C) == want


@pytest.mark.parametrize("ws,C", [(28, 1), (20, 3), (13, 3)])
def test_decoder_draws_a_full_window_of_every_channel(ws, C):
    dec = ConvDecoder(ws, C, channels=(8, 4), hidden=16, output_bias=-2.0, use_sigmoid=True, nl="tanh")
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
    params = dec.init(jax.random.PRNGKey(1), z)
    out = dec.apply(params, z)
    assert out.shape == (3, ws * ws * C) and bool(jnp.all((out > 0) & (out < 1)))
    base = halved(ws, 2)
    want = _dense(5, 16) + _dense(16, base * base * 8) + (KERNEL * KERNEL * 8 * 4 + 4) + (KERNEL * KERNEL * 4 * C + C)
    assert param_count(dec, 5) == want
    # every output pixel and channel depends on z (no dead corner from the crop; tanh: no dead units)
    jac = jax.jacobian(lambda zz: dec.apply(params, zz[None])[0])(z[0])
    assert bool(jnp.all(jnp.any(jac != 0, axis=1)))


@pytest.mark.parametrize("H,W,C", [(20, 28, 3), (50, 50, 1)])
def test_embedding_reads_channels_last_images(H, W, C):
    emb = ConvEmbed(H, W, C, channels=(4, 8), features=12)
    img = jax.random.uniform(jax.random.PRNGKey(0), (2, H, W, C))
    params = emb.init(jax.random.PRNGKey(1), img.reshape(2, -1))
    out = emb.apply(params, img.reshape(2, -1))
    assert out.shape == (2, 12)
    want = _conv_params(C, (4, 8)) + _dense(halved(H, 2) * halved(W, 2) * 8, 12)
    assert param_count(emb, H * W * C) == want
    # the flat input is read as (H, W, C): moving one pixel's channel value moves the features
    # exactly as moving it in the (H, W, C) image would
    grads = jax.grad(lambda x: jnp.sum(emb.apply(params, x.reshape(1, -1))))(img[0])
    assert grads.shape == (H, W, C) and bool(jnp.any(grads[..., -1] != 0))


def test_embedding_is_much_smaller_than_the_dense_projection():
    """The point of the option: at 128x128 RGB the dense LSTM projection alone has 49152 x 1024
    weights; the default embedding has ~1.1M parameters and feeds F = 256 features."""
    n = 128 * 128 * 3
    assert param_count(ConvEmbed(128, 128, 3), n) < n * 1024 / 40
    np.testing.assert_equal(halved(128, 4), 8)


def test_config_selects_the_conv_nets_and_traces_an_rgb_step():
    """An RGB, non-square config with all three conv options: model and guide register the conv
    modules (their parameter counts), the LSTM projects conv_embed_features values, and one SVI
    step runs with finite loss."""
    from numpyro_air import AIRConfig, make_svi
    from numpyro_air.core.nets import decoder_module, embed_module, encoder_module
    from numpyro_air.train.svi import make_update

    cfg = AIRConfig(
        image_size=20, image_width=24, channels=3, window_size=8, z_what_size=6, rnn_hidden_size=16,
        encoder_net=(16,), decoder_net=(16,), conv_encoder=(4, 8), conv_decoder=(8, 4), conv_embed=(4, 8),
        conv_embed_features=12,
    )  # fmt: skip
    assert isinstance(encoder_module(cfg), ConvEncoder) and isinstance(decoder_module(cfg), ConvDecoder)
    assert isinstance(embed_module(cfg)[0], ConvEmbed) and cfg.rnn_input_size == 12 + 3 + 6 + 1
    svi = make_svi(cfg)
    images = jax.random.uniform(jax.random.PRNGKey(0), (4, 20, 24, 3))
    state = jax.jit(svi.init)(jax.random.PRNGKey(1), images)
    params = svi.get_params(state)
    count = lambda tree: sum(a.size for a in jax.tree.leaves(tree))  # noqa: E731
    assert count(params["encode$params"]) == param_count(encoder_module(cfg), 8 * 8 * 3)
    assert count(params["decode$params"]) == param_count(decoder_module(cfg), 6)
    assert count(params["embed$params"]) == param_count(embed_module(cfg)[0], 20 * 24 * 3)
    assert params["rnn$params"]["img"]["kernel"].shape == (12, 4 * 16)  # projects the embedding, not 1440 pixels
    new, info = jax.jit(make_update(svi, cfg))(state, images, jnp.asarray(1))
    assert bool(jnp.isfinite(info.loss)) and not bool(info.skipped)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(conv_encoder=()), "conv_encoder"),
        (dict(conv_decoder=(8, 0)), "conv_decoder"),
        (dict(conv_encoder=(8,), encoder_net=(16, 16)), "encoder_net must hold one size"),
        (dict(conv_embed=(8,), embed_net=(32,)), "two image embeddings"),
        (dict(conv_embed_features=0), "conv_embed_features"),
    ],
)
def test_conv_options_are_validated(kw, match):
    from numpyro_air import AIRConfig

    with pytest.raises(ValueError, match=match):
        AIRConfig(**kw)


def test_pyro_conversion_refuses_what_pyro_cannot_hold():
    from numpyro_air import AIRConfig
    from numpyro_air.pyro_compat import pyro_state_dict_shapes

    dair = AIRConfig(guide_input="difference")
    cfgs = (
        AIRConfig(conv_encoder=(8,)),
        AIRConfig(channels=3),
        AIRConfig(image_width=60),
        dair,
        dair.replace(glimpse_input="both"),
    )
    for cfg in cfgs:
        with pytest.raises(ValueError, match="Pyro's AIR has square grayscale canvases, added objects, AIR's guide and MLPs"):
            pyro_state_dict_shapes(cfg)


def test_cli_flags_set_the_conv_options():
    from numpyro_air.cli.train import build_parser, configs_from_args

    argv = [
        "--conv-encoder",
        "32",
        "64",
        "--conv-decoder",
        "64",
        "32",
        "--conv-embed",
        "16",
        "32",
        "--conv-embed-features",
        "128",
    ]
    air = configs_from_args(build_parser().parse_args(argv))[0]
    assert (air.conv_encoder, air.conv_decoder, air.conv_embed, air.conv_embed_features) == ((32, 64), (64, 32), (16, 32), 128)
    plain = configs_from_args(build_parser().parse_args([]))[0]
    assert (plain.conv_encoder, plain.conv_decoder, plain.conv_embed) == (None, None, None)
