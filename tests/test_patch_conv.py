"""Convolution as slices and one matrix product (numpyro_air.core.conv): equal to XLA's
convolution in values and gradients, the decoder's transposed convolution equal to Flax's, and
the step loop's convolutions all written as products."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_air.core.conv import CHANNELS_LAST, patch_conv, transpose_padding
from numpyro_air.core.nets import KERNEL, STRIDE, ConvDecoder

CASES = {
    "k4-s2-same-odd": ((2, 13, 11, 3), (4, 4, 3, 5), (2, 2), "SAME", None),
    "k3-s1-valid": ((2, 9, 8, 2), (3, 3, 2, 4), (1, 1), "VALID", None),
    "k5-s3-same": ((1, 14, 10, 2), (5, 5, 2, 3), (3, 3), "SAME", None),
    "k3-s2x1-explicit": ((2, 9, 9, 2), (3, 2, 2, 3), (2, 1), ((1, 2), (0, 3)), None),
    "negative-padding": ((1, 10, 10, 1), (3, 3, 1, 2), (2, 2), ((-1, 1), (2, -2)), None),
    "input-dilation": ((2, 5, 6, 3), (4, 4, 3, 2), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    "dilation-3x2-asymmetric": ((2, 4, 5, 2), (2, 3, 2, 3), (1, 1), ((0, 1), (3, 0)), (3, 2)),
    "dilation-negative-padding": ((1, 6, 5, 2), (4, 4, 2, 2), (1, 1), ((-1, 2), (1, -2)), (2, 2)),
    "dilation-kernel-1": ((1, 3, 3, 2), (1, 1, 2, 2), (1, 1), ((0, 0), (1, 1)), (2, 2)),
    "dilation-and-stride": ((1, 6, 5, 2), (3, 3, 2, 2), (2, 2), ((1, 2), (0, 1)), (3, 2)),
}


def _reference(x, k, strides, padding, dilation):
    return jax.lax.conv_general_dilated(x, k, strides, padding, lhs_dilation=dilation, dimension_numbers=CHANNELS_LAST)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_patch_conv_equals_xla_convolution_and_its_gradients(case):
    """Values and both gradients (random cotangent) within float32 rounding of XLA's convolution;
    the output shape is XLA's (strides, padding strings, explicit and negative padding, input dilation)."""
    xs, ks, strides, padding, dilation = CASES[case]
    x = jax.random.normal(jax.random.PRNGKey(0), xs)
    k = jax.random.normal(jax.random.PRNGKey(1), ks)
    want, vjp_want = jax.vjp(lambda a, b: _reference(a, b, strides, padding, dilation), x, k)
    got, vjp_got = jax.vjp(lambda a, b: patch_conv(a, b, strides, padding, lhs_dilation=dilation), x, k)
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.PRNGKey(2), want.shape)
    for a, b in zip(vjp_got(g), vjp_want(g)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)


def test_patch_conv_bfloat16_operands_give_a_float32_product():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3)).astype(jnp.bfloat16)
    k = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 3, 4)).astype(jnp.bfloat16)
    got = patch_conv(x, k, (2, 2), "SAME", preferred_element_type=jnp.float32)
    want = _reference(x.astype(jnp.float32), k.astype(jnp.float32), (2, 2), "SAME", None)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)  # exact bf16 products, f32 sums


@pytest.mark.parametrize("dilation", [None, (2, 2)], ids=["strided", "transposed"])
def test_patch_conv_bfloat16_gradients_are_float32_sums(dilation):
    """bfloat16 operands, float32 product: both gradients within bfloat16 rounding of the float32
    convolution's (relative error < 0.4%; before the taps were summed in float32 it was 0.31-0.42%):
    the input's gradient is summed over the taps in float32 before its rounding to bfloat16."""
    strides, padding = ((2, 2), "SAME") if dilation is None else ((1, 1), ((2, 1), (2, 1)))
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 16, 16, 16)).astype(jnp.bfloat16)
    k = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 16, 8)).astype(jnp.bfloat16)
    f32 = lambda a, b: _reference(a, b, strides, padding, dilation)  # noqa: E731
    want, vjp_want = jax.vjp(f32, x.astype(jnp.float32), k.astype(jnp.float32))
    conv = lambda a, b: patch_conv(a, b, strides, padding, lhs_dilation=dilation, preferred_element_type=jnp.float32)  # noqa: E731
    got, vjp_got = jax.vjp(conv, x, k)
    g = jax.random.normal(jax.random.PRNGKey(2), want.shape)
    for a, b in zip(vjp_got(g), vjp_want(g)):
        assert a.dtype == jnp.bfloat16
        err = float(jnp.linalg.norm(a.astype(jnp.float32) - b) / jnp.linalg.norm(b))
        assert 0 < err < 4e-3, err


def _interior_pads(strides, x, k, pad) -> int:
    """Number of pads with interior padding (a dilated copy) in the gradient of patch_conv."""
    f = lambda a, b: patch_conv(a, b, strides, (pad, pad), lhs_dilation=(2, 2)).sum()  # noqa: E731
    eqns = jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(x, k).jaxpr.eqns
    return sum(e.primitive.name == "pad" and any(c[2] for c in e.params["padding_config"]) for e in eqns)


def test_transposed_convolution_never_forms_the_dilated_input():
    """A unit-stride, input-dilated convolution is computed per output phase: its program and its
    gradient's hold no pad with interior padding (no dilated copy of the input), where the strided
    fallback does."""
    x, k = jnp.ones((2, 5, 5, 3)), jnp.ones((4, 4, 3, 2))
    pad = transpose_padding(4, 2)
    assert _interior_pads((1, 1), x, k, pad) == 0
    assert _interior_pads((2, 2), x, k, pad) >= 1


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(rhs_dilation=(2, 2)), "kernel dilation"),
        (dict(feature_group_count=3), "groups"),
        (dict(dimension_numbers=("NCHW", "OIHW", "NCHW")), "channels last"),
        (dict(lhs_dilation=(2, 2)), "explicit padding"),
    ],
)
def test_patch_conv_refuses_what_it_does_not_compute(kw, match):
    x, k = jnp.ones((1, 6, 6, 3)), jnp.ones((3, 3, 3, 3))
    with pytest.raises(ValueError, match=match):
        patch_conv(x, k, (1, 1), "SAME", **kw)
    with pytest.raises(ValueError, match="does not fit"):
        patch_conv(jnp.ones((1, 2, 2, 3)), k, (1, 1), "VALID")
    with pytest.raises(ValueError, match="channels, the kernel expects"):
        patch_conv(jnp.ones((1, 6, 6, 2)), k, (1, 1), "SAME")


@pytest.mark.parametrize("side", [3, 4, 7])
def test_decoder_transposed_convolution_equals_flax_conv_transpose(side):
    """The decoder's stride-2 layer (an input-dilated ``nn.Conv``) has Flax's ``nn.ConvTranspose``
    parameters (same names, shapes and initial values) and computes the same map."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, side, side, 6))
    flax_t = nn.ConvTranspose(4, (KERNEL, KERNEL), strides=(STRIDE, STRIDE), padding="SAME")
    pad = transpose_padding(KERNEL, STRIDE)
    ours = nn.Conv(4, (KERNEL, KERNEL), padding=(pad, pad), input_dilation=(STRIDE, STRIDE), conv_general_dilated=patch_conv)
    params = flax_t.init(jax.random.PRNGKey(3), x)
    ours_params = ours.init(jax.random.PRNGKey(3), x)
    assert jax.tree.structure(params) == jax.tree.structure(ours_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ours_params)):
        np.testing.assert_array_equal(a, b)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
    want = flax_t.apply(params, x)
    assert want.shape == (2, 2 * side, 2 * side, 4)
    np.testing.assert_allclose(ours.apply(params, x), want, rtol=1e-5, atol=1e-5)


def test_decoder_keeps_its_parameter_names():
    """Checkpoints of the convolutional decoder stay loadable: Dense_0, Dense_1, then ConvT_i with
    (K, K, in, out) kernels."""
    dec = ConvDecoder(12, 3, channels=(8, 4), hidden=16)
    params = dec.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))["params"]
    assert sorted(params) == ["ConvT_0", "ConvT_1", "Dense_0", "Dense_1"]
    assert params["ConvT_0"]["kernel"].shape == (KERNEL, KERNEL, 8, 4)
    assert params["ConvT_1"]["kernel"].shape == (KERNEL, KERNEL, 4, 3)


def test_no_xla_convolution_inside_the_step_loops():
    """With DAIR (the embedding applied at every step) and convolutional encoder, decoder and
    embedding, the training loss and its gradient hold no XLA convolution at all: every one of them
    runs inside the model's or the guide's scan. With AIR the embedding runs once, outside, as XLA's."""
    from numpyro_air import AIRConfig, make_svi

    cfg = AIRConfig(
        image_size=12, channels=3, window_size=6, z_what_size=4, rnn_hidden_size=8, encoder_net=(8,),
        decoder_net=(8,), conv_encoder=(4,), conv_decoder=(4,), conv_embed=(4,), conv_embed_features=8,
        presence_estimator="concrete",
    )  # fmt: skip
    images = jax.random.uniform(jax.random.PRNGKey(0), (2, 12, 12, 3))
    for guide_input, convolutions in (("difference", 0), ("image", 1)):
        c = cfg.replace(guide_input=guide_input)
        svi = make_svi(c)
        params = svi.get_params(jax.eval_shape(svi.init, jax.random.PRNGKey(1), images))
        loss = lambda p, c=c, svi=svi: svi.loss.loss(jax.random.PRNGKey(2), p, svi.model, svi.guide, images, config=c)  # noqa: E731
        text = jax.jit(jax.value_and_grad(loss)).lower(params).as_text()
        # forward: the embedding's one layer; gradient: its kernel's (its input is the data)
        assert text.count("stablehlo.convolution") == 2 * convolutions, guide_input
