"""Mixed precision (``AIRConfig.compute_dtype="bfloat16"``): bfloat16 operands with float32
products in every dense layer and convolution, float32 parameters, optimiser state and ELBO,
and a loss and gradient that stay close to float32's on the same parameters and key."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL, make_scenes

from numpyro_air import AIRConfig
from numpyro_air.core.conv import patch_conv
from numpyro_air.core.nets import (
    ConvDecoder,
    ConvEmbed,
    bf16_matmul,
    conv_keywords,
    mixed_precision,
    to_bfloat16,
)
from numpyro_air.train.recipes import OptimConfig
from numpyro_air.train.svi import make_svi

CONV = dict(conv_encoder=(4,), conv_decoder=(4,), conv_embed=(4,), conv_embed_features=8)


def _dots(hlo: str) -> list:
    """(op, operand dtype, operand dtype, result dtype) of every dot_general / convolution in
    StableHLO text."""
    t = r"tensor<(?:\d+x)*(\w+)>"
    pattern = rf"stablehlo\.(dot_general|convolution)[^\n]*: \({t}, {t}\) -> {t}"
    return re.findall(pattern, hlo)


def _loss_and_grad(svi, config, images):
    loss = lambda p: svi.loss.loss(jax.random.PRNGKey(1), p, svi.model, svi.guide, images, config=config)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "conv"])
def test_bfloat16_operands_with_float32_products_and_state(conv):
    """Every dense layer and convolution of the training step multiplies bfloat16 operands into a
    float32 product (nothing is rounded to bfloat16 after a product); float32 config: float32
    only. Parameters and optimiser state (after an update) are float32 (traced, not compiled)."""
    f32 = AIRConfig.tutorial(**SMALL, **(CONV if conv else {}), presence_estimator="concrete")
    bf16 = f32.replace(compute_dtype="bfloat16")
    images = jnp.asarray(make_scenes(8, 20, seed=4))
    svi32, svi16 = make_svi(f32, OptimConfig()), make_svi(bf16, OptimConfig())
    state = jax.eval_shape(svi16.init, jax.random.PRNGKey(0), images)
    assert jax.tree.structure(state) == jax.tree.structure(jax.eval_shape(svi32.init, jax.random.PRNGKey(0), images))
    new_state, _ = jax.eval_shape(svi16.update, state, images)
    floats = [x for x in jax.tree.leaves(new_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    params = svi16.get_params(state)
    ops = _dots(_loss_and_grad(svi16, bf16, images).lower(params).as_text())
    low = [o for o in ops if o[1] == "bf16"]
    assert low and all(o[2:] == ("bf16", "f32") for o in low), ops  # bf16 x bf16 -> f32
    assert all(o[3] == "f32" for o in ops)  # no product is rounded to bfloat16
    # inside the steps' loop (encoder, decoder) convolutions run as matrix products; the embedding
    # of the image, once per step outside the loop, as XLA's convolution
    assert {o[0] for o in low} == ({"dot_general", "convolution"} if conv else {"dot_general"})
    ops32 = _dots(_loss_and_grad(svi32, f32, images).lower(params).as_text())
    assert ops32 and all(o[1:] == ("f32", "f32", "f32") for o in ops32)


def test_bfloat16_loss_and_gradient_stay_close_to_float32():
    """Same parameters, same key: the bfloat16 loss is within 1% of float32's (and not equal to
    it: it does compute in bfloat16), the gradients point the same way (cosine > 0.99)."""
    f32 = AIRConfig.tutorial(**SMALL, presence_estimator="concrete")
    bf16 = f32.replace(compute_dtype="bfloat16")
    images = jnp.asarray(make_scenes(8, 20, seed=4))
    svi32, svi16 = make_svi(f32, OptimConfig()), make_svi(bf16, OptimConfig())
    params = svi32.get_params(jax.jit(svi32.init)(jax.random.PRNGKey(0), images))
    (l32, g32), (l16, g16) = _loss_and_grad(svi32, f32, images)(params), _loss_and_grad(svi16, bf16, images)(params)
    assert l16.dtype == jnp.float32 and np.isfinite(l16)
    assert abs(float(l16) - float(l32)) < 1e-2 * abs(float(l32)), (l16, l32)
    assert float(l16) != float(l32)
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16)])
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(g16))
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99


def test_mixed_precision_keywords_and_validation():
    assert mixed_precision("float32") == {}
    assert conv_keywords("float32", in_loop=True) == {"conv_general_dilated": patch_conv}
    assert conv_keywords("float32", in_loop=False) == {"conv_general_dilated": jax.lax.conv_general_dilated}
    assert set(mixed_precision("bfloat16")) == {"promote_dtype", "dot_general"}
    assert mixed_precision("bfloat16")["dot_general"].__name__ == "_bf16_dot_general"
    in_loop, outside = conv_keywords("bfloat16", True), conv_keywords("bfloat16", False)
    assert set(in_loop) == set(outside) == {"promote_dtype", "conv_general_dilated"}
    assert in_loop["conv_general_dilated"].func is patch_conv  # with the dense layers' product
    assert set(in_loop["conv_general_dilated"].keywords) == {"dot_general"}
    assert in_loop["conv_general_dilated"].keywords["dot_general"].__name__ == "_bf16_dot_general"
    assert outside["conv_general_dilated"].func is jax.lax.conv_general_dilated
    assert outside["conv_general_dilated"].keywords == {"preferred_element_type": jnp.float32}
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        AIRConfig(compute_dtype="float16")
    # the convolutional modules keep float32 outputs
    x = jnp.ones((2, 16 * 16))
    embed = ConvEmbed(16, 16, 1, (4,), 8, compute_dtype="bfloat16")
    assert embed.apply(embed.init(jax.random.PRNGKey(0), x), x).dtype == jnp.float32
    dec = ConvDecoder(8, 1, (4,), 8, compute_dtype="bfloat16")
    z = jnp.ones((2, 3))
    assert dec.apply(dec.init(jax.random.PRNGKey(0), z), z).dtype == jnp.float32


def _rounded(a) -> np.ndarray:
    """``a`` rounded to bfloat16 by ``astype``, as float64."""
    return np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def test_to_bfloat16_rounds_as_astype():
    """The integer-op rounding gives ``astype``'s bits for normal, subnormal, huge (-> inf) and
    infinite values, keeps NaN a NaN of its sign, and differentiates like ``astype``."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=50_000) * 10.0 ** rng.integers(-45, 39, 50_000)).astype(np.float32)
    bits = np.array(
        [
            0x7FC00000,
            0xFFC00000,
            0x7F800001,
            0xFFFFFFFF,
            0x7F800000,
            0xFF800000,
            0x7F7FFFFF,
            1,
            0x80000001,
            0x3F808000,
            0x3F818000,
        ],
        np.uint32,
    )
    x = np.concatenate([x, bits.view(np.float32)])
    got = np.asarray(jax.jit(to_bfloat16)(jnp.asarray(x))).view(np.uint16)
    want = np.asarray(jnp.asarray(x).astype(jnp.bfloat16)).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.all((got[nan] & 0x7F80) == 0x7F80) and np.all(got[nan] & 0x7F) and np.all((got[nan] >> 15) == (want[nan] >> 15))
    g = jax.grad(lambda v: jnp.sum(to_bfloat16(v).astype(jnp.float32) ** 2))(jnp.asarray([1.5, -2.0]))
    assert g.dtype == jnp.float32 and np.allclose(g, [3.0, -4.0])


def test_bf16_matmul_gradients_are_float32_products():
    """Forward: the float32 product of the rounded operands. Backward: the cotangent is rounded
    to bfloat16 once and each gradient is a float32 product (not rounded to bfloat16 after it,
    as differentiating through ``astype`` does): checked against float64 to 1e-5."""
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(3, 16, 300)).astype(np.float32), rng.normal(size=(300, 40)).astype(np.float32)
    ct = rng.normal(size=(3, 16, 40)).astype(np.float32)
    out, vjp = jax.vjp(bf16_matmul, jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(ct))
    np.testing.assert_allclose(out, _rounded(x) @ _rounded(w), rtol=1e-5, atol=1e-4)
    want_dx, want_dw = _rounded(ct) @ _rounded(w).T, np.einsum("bik,bin->kn", _rounded(x), _rounded(ct))
    assert dx.dtype == dw.dtype == jnp.float32
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-3)
    assert np.abs(np.asarray(dw) - _rounded(want_dw)).max() > 1e-3  # a bfloat16-rounded gradient differs


@pytest.mark.parametrize("in_axes", [(None, 0), (0, None), (0, 0)], ids=["weights-batched", "inputs-batched", "both"])
def test_bf16_matmul_primal_and_vmapped_gradients(in_axes):
    """The primal (no VJP: inference) is the float32 product of the rounded operands; the
    gradients under ``jax.vmap`` with either operand or both batched (seeds sharing images, or
    not) run on the CPU and equal each unbatched gradient."""
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(2, 5, 24)).astype(np.float32), rng.normal(size=(2, 24, 6)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(bf16_matmul)(x[0], w[0]), _rounded(x[0]) @ _rounded(w[0]), rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda a, b: jnp.sum(jnp.sin(bf16_matmul(a, b))), argnums=(0, 1))
    args = [a if ax == 0 else a[0] for a, ax in zip((x, w), in_axes)]
    dx, dw = jax.jit(jax.vmap(grad, in_axes=in_axes))(*args)
    for k in range(2):
        one = grad(*[a[k] if ax == 0 else a for a, ax in zip(args, in_axes)])
        np.testing.assert_allclose(dx[k], one[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dw[k], one[1], rtol=1e-5, atol=1e-6)


def _compiled_dot_operand_dtypes(fn, *args) -> list:
    """Operand dtypes of every ``dot`` in ``fn``'s compiled (optimised) HLO on the CPU: those XLA
    runs as bfloat16 products keep bfloat16 operands; a product it upcasts reads float32 ones."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    dtype_of = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", text))
    dots = re.findall(r"= \w+\[[^\]]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)", text)
    return [(dtype_of[a], dtype_of[b]) for a, b in dots]


@pytest.mark.parametrize(
    "in_axes", [None, (0, 0), (None, 0), (0, None)], ids=["one", "both-batched", "weights-batched", "inputs-batched"]
)
def test_bf16_matmul_backward_products_stay_bfloat16(in_axes):
    """The gradient's two products run as bfloat16 products wherever XLA:CPU runs the forward
    one so, alone and under ``jax.vmap`` (seeds): written as ``g @ w.T`` and ``x.T @ g`` they
    converted their operands to float32."""
    x, w = jnp.ones((2, 64, 96), jnp.float32), jnp.ones((2, 96, 128), jnp.float32)
    forward = _compiled_dot_operand_dtypes(
        lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32), x[0].astype(jnp.bfloat16), w[0].astype(jnp.bfloat16)
    )
    if forward != [("bf16", "bf16")]:
        pytest.skip(f"this CPU backend multiplies bfloat16 operands as {forward}")
    grad = jax.grad(lambda a, b: jnp.sum(jnp.sin(bf16_matmul(a, b))), argnums=(0, 1))
    if in_axes is None:
        grads = _compiled_dot_operand_dtypes(grad, x[0], w[0])
    else:
        args = [a if ax == 0 else a[0] for a, ax in zip((x, w), in_axes)]
        grads = _compiled_dot_operand_dtypes(jax.vmap(grad, in_axes=in_axes), *args)
    assert len(grads) == 3 and all(d == ("bf16", "bf16") for d in grads), grads
