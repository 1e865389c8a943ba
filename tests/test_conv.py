"""Convolutional encoder, decoder and image embedding: shapes, parameter counts, what they read."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_air.core.conv import KERNEL, ConvDecoder, ConvEmbed, ConvEncoder, halved, param_count


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
