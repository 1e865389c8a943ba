"""Flax (linen) networks of AIR: encoder, decoder, predict, embed, LSTM and baseline nets.

Linen is used (not NNX) because ``numpyro.contrib.module.flax_module`` keeps parameters as a
plain pytree named ``"<name>$params"`` and draws their initialisation from NumPyro's PRNG key:
``jax.vmap`` over ``svi.init`` keys then gives every seed its own initialisation, which NNX's
eagerly-built modules do not (their weights come from the module's own ``nnx.Rngs``).

Initialisation defaults to PyTorch's (``init="torch"``): Linear weight and bias
U(+-1/sqrt(fan_in)); LSTMCell weights and both biases U(+-1/sqrt(hidden)), as in Pyro's AIR.

Convolutional options, drop-in replacements of the MLPs on flat (channels-last, row-major)
tensors: :class:`ConvEncoder` (window (B, w*w*C) -> z_what loc, scale), :class:`ConvDecoder`
(z_what -> window (B, w*w*C)) and :class:`ConvEmbed` (image (B, H*W*C) -> features for the
guide's LSTM, so its image projection has F x 4*hidden weights instead of H*W*C x 4*hidden).
Every convolution has kernel 4, stride 2 and "SAME" padding (each halves the side, rounding up);
those inside the steps' loop run as slices and one matrix product (:func:`conv_keywords`).
:func:`encoder_module`, :func:`decoder_module` and :func:`embed_module` pick the kind a config asks for.

Mixed precision (``compute_dtype="bfloat16"``, every module's last field): each dense layer and
convolution rounds its input and kernel to bfloat16 and accumulates in float32 (the product is
float32); parameters, biases, non-linearities and everything downstream stay float32.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from .conv import patch_conv, transpose_padding

if TYPE_CHECKING:  # annotations only
    from .config import AIRConfig

_NL = {
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "selu": jax.nn.selu,
}


def non_linearity(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    try:
        return _NL[name]
    except KeyError:
        raise ValueError(f"unknown non-linearity {name!r}; choose from {sorted(_NL)}") from None


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@jax.custom_jvp
def to_bfloat16(x: jnp.ndarray) -> jnp.ndarray:
    """float32 -> bfloat16, rounded to nearest even (the same bits as ``x.astype(jnp.bfloat16)``;
    a NaN stays a NaN of the same sign), computed with integer operations on the float's bits
    (alone, faster than XLA:CPU's ``convert``; in the training step about as fast,
    ``benchmarks/README.md``). Differentiable: the
    tangent is rounded with ``astype``, so a cotangent returns as float32 as through ``astype``."""
    if x.dtype != jnp.float32:
        raise TypeError(f"to_bfloat16 rounds float32 values, got {x.dtype}")
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    rounded = ((bits + jnp.uint32(0x7FFF) + ((bits >> 16) & jnp.uint32(1))) >> 16).astype(jnp.uint16)
    quiet_nan = ((bits >> 16) | jnp.uint32(0x40)).astype(jnp.uint16)
    return jax.lax.bitcast_convert_type(jnp.where(jnp.isnan(x), quiet_nan, rounded), jnp.bfloat16)


@to_bfloat16.defjvp
def _to_bfloat16_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return to_bfloat16(x), t.astype(jnp.bfloat16)


def round_operand(x: jnp.ndarray, dtype) -> jnp.ndarray:
    """``x`` as a matmul operand of ``dtype``: float32 -> bfloat16 by :func:`to_bfloat16`,
    any other pair by ``astype``."""
    dtype = jnp.dtype(dtype)
    if x.dtype == jnp.float32 and dtype == jnp.bfloat16:
        return to_bfloat16(x)
    return x.astype(dtype)


def _bf16_product(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``a @ b`` of two bfloat16 matrices, accumulated and returned in float32."""
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def bf16_matmul(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """(..., K) @ (K, N) -> (..., N) float32 with bfloat16 operands and float32 accumulation in
    the forward product and both backward products: the output cotangent is rounded to bfloat16
    once, and the gradients of ``x`` and ``w`` come out of their products as float32 (through
    ``astype`` they would be rounded to bfloat16 and converted back, a round trip of every
    weight gradient).

    Both backward products are written in the forms XLA:CPU runs as bfloat16 products: ``dx``
    contracts the cotangent's last axis with the kernel's last axis (:func:`_input_gradient`),
    and ``dw`` multiplies a transposed copy of ``x`` by the cotangent (:func:`_weight_gradient`).
    Written as ``g @ w.T`` and ``x.T @ g``, XLA converts both operands back to float32 and
    multiplies in float32, 2-3 times slower alone on a CPU with bfloat16 instructions
    (``benchmarks/README.md``); the values are the same up to the order of the float32 sums.
    The residual kept for ``dw`` is therefore the float32 ``x``, not its rounded copy."""
    return _bf16_matmul_fwd(x, w)[0]


def _bf16_matmul_fwd(x, w):
    xb, wb = to_bfloat16(x), to_bfloat16(w)
    return _bf16_product(xb, wb), (x, wb)


def _input_gradient(gb: jnp.ndarray, wb: jnp.ndarray) -> jnp.ndarray:
    """g w^T (..., K) float32 from bfloat16 g (..., N) and w (K, N), contracting the last axes."""
    dims = (((gb.ndim - 1,), (1,)), ((), ()))
    return jax.lax.dot_general(gb, wb, dims, preferred_element_type=jnp.float32)


def _rounded_transpose(x: jnp.ndarray) -> jnp.ndarray:
    """x^T rounded to bfloat16, swapping the last two axes of float32 ``x`` (..., M, K) ->
    (..., K, M) as one element-wise pass, held as its own array: XLA would otherwise fold the
    transpose into the product, whose operands it then computes in float32."""
    return jax.lax.optimization_barrier(to_bfloat16(jnp.swapaxes(x, -1, -2)))


@jax.custom_batching.custom_vmap
def _weight_gradient(x: jnp.ndarray, gb: jnp.ndarray) -> jnp.ndarray:
    """x^T g (K, N) float32 from float32 x (M, K) (rounded here) and bfloat16 g (M, N). Its
    batching rule keeps the product a plain matrix product when only one operand is batched
    (XLA:CPU runs no bfloat16 product whose batched operand's free dimensions are split by the
    contracted one)."""
    return _bf16_product(_rounded_transpose(x), gb)


@_weight_gradient.def_vmap
def _weight_gradient_vmap(axis_size: int, in_batched, x, gb):
    x_batched, g_batched = in_batched
    if x_batched and g_batched:  # (S, M, K), (S, M, N): a batched product
        return _bf16_product(_rounded_transpose(x), gb), True
    if g_batched:  # x (M, K), g (S, M, N): one product with S * N columns
        S, M, N = gb.shape
        out = _bf16_product(_rounded_transpose(x), jnp.moveaxis(gb, 0, 1).reshape(M, S * N))  # (K, S * N)
        return jnp.moveaxis(out.reshape(-1, S, N), 1, 0), True
    if x_batched:  # x (S, M, K), g (M, N): one product with S * K rows
        S, M, K = x.shape
        out = _bf16_product(_rounded_transpose(x).reshape(S * K, M), gb)  # (S * K, N)
        return out.reshape(S, K, -1), True
    return _weight_gradient(x, gb), False


def _bf16_matmul_bwd(res, g):
    x, wb = res
    gb = to_bfloat16(g)
    dx = _input_gradient(gb, wb)
    dw = _weight_gradient(x.reshape(-1, x.shape[-1]), gb.reshape(-1, gb.shape[-1]))
    return dx, dw


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def _bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``nn.Dense``'s product (lhs (..., K) contracted with rhs (K, N), no batch dimensions) as
    :func:`bf16_matmul`."""
    if precision is not None or preferred_element_type is not None:
        raise ValueError("the bfloat16 dense product sets its own precision (bfloat16 operands, float32 product)")
    (contract_l, contract_r), batch = dimension_numbers
    if tuple(contract_l) != (lhs.ndim - 1,) or tuple(contract_r) != (0,) or any(batch) or rhs.ndim != 2:
        raise ValueError(f"bfloat16 dense product expects (..., K) @ (K, N), got {dimension_numbers}")
    return bf16_matmul(lhs, rhs)


def _keep_operands(inputs, kernel, *rest, dtype=None, inexact=True):
    """A Flax ``promote_dtype`` that leaves every operand as it is (float32 parameters)."""
    del dtype, inexact
    return (inputs, kernel, *rest)


def _low_precision_operands(dtype):
    """A Flax ``promote_dtype`` that rounds a layer's input and kernel to ``dtype``
    (:func:`round_operand`) and leaves the bias (and anything after it) in float32."""

    def promote(inputs, kernel, *rest, dtype=None, inexact=True):
        del dtype, inexact
        return (round_operand(inputs, low), round_operand(kernel, low), *rest)

    low = jnp.dtype(dtype)
    return promote


def mixed_precision(compute_dtype: str) -> dict:
    """Keyword arguments of ``nn.Dense`` for ``compute_dtype``: none for "float32"; for "bfloat16"
    (or any other float dtype name; :class:`AIRConfig` allows float32 and bfloat16 only), operands
    in that dtype with a float32 product (f32 accumulation)."""
    if compute_dtype == "float32":
        return {}
    if jnp.dtype(compute_dtype) == jnp.bfloat16:
        return {"promote_dtype": _keep_operands, "dot_general": _bf16_dot_general}
    f32 = jnp.float32
    return {
        "promote_dtype": _low_precision_operands(compute_dtype),
        "dot_general": partial(jax.lax.dot_general, preferred_element_type=f32),
    }


def conv_keywords(compute_dtype: str, in_loop: bool) -> dict:
    """Keyword arguments of ``nn.Conv``: the product is :func:`~numpyro_air.core.conv.patch_conv`
    for a convolution that runs inside the model's or guide's step loop (XLA:CPU's convolution
    gradients are an order of magnitude slower there), XLA's own convolution elsewhere (faster
    outside a loop); with a compute dtype other than float32, operands in that dtype
    and a float32 product (in the loop with bfloat16: the patches' product is the dense layers'
    :func:`bf16_matmul`, float32 operands rounded inside it, float32 gradients)."""
    conv = patch_conv if in_loop else jax.lax.conv_general_dilated
    if compute_dtype == "float32":
        return {"conv_general_dilated": conv}
    if in_loop and jnp.dtype(compute_dtype) == jnp.bfloat16:
        return {"promote_dtype": _keep_operands, "conv_general_dilated": partial(patch_conv, dot_general=_bf16_dot_general)}
    return {
        "promote_dtype": _low_precision_operands(compute_dtype),
        "conv_general_dilated": partial(conv, preferred_element_type=jnp.float32),
    }


def _dense(
    features: int,
    fan_in: int,
    init: str,
    name: Optional[str] = None,
    use_bias: bool = True,
    compute_dtype: str = "float32",
) -> nn.Dense:
    kw = mixed_precision(compute_dtype)
    if init == "torch":
        b = 1.0 / float(fan_in) ** 0.5
        kw |= {"kernel_init": _uniform(b), "bias_init": _uniform(b)}
    return nn.Dense(features, use_bias=use_bias, name=name, **kw)


class MLP(nn.Module):
    """Linear layers of sizes ``sizes`` with ``nl`` between them (and after the last if
    ``output_nl``). (B, in) -> (B, sizes[-1])."""

    sizes: Sequence[int]
    nl: str = "relu"
    output_nl: bool = False
    init_scheme: str = "torch"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        f = non_linearity(self.nl)
        for i, size in enumerate(self.sizes):
            x = _dense(size, x.shape[-1], self.init_scheme, name=f"Dense_{i}", compute_dtype=self.compute_dtype)(x)
            if i < len(self.sizes) - 1 or self.output_nl:
                x = f(x)
        return x


class Encoder(nn.Module):
    """Window (B, w*w) -> z_what loc (B, z) and scale (B, z) = softplus(.) (no minimum, as Pyro)."""

    hidden: Sequence[int]
    z_what_size: int
    nl: str = "relu"
    init_scheme: str = "torch"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
        out = MLP(
            tuple(self.hidden) + (2 * self.z_what_size,), self.nl, init_scheme=self.init_scheme, compute_dtype=self.compute_dtype
        )(x)
        return out[:, : self.z_what_size], jax.nn.softplus(out[:, self.z_what_size :])


def decoder_output(out: jnp.ndarray, output_bias: Optional[float], use_sigmoid: bool) -> jnp.ndarray:
    """A decoder's last layer's values (B, ...) plus ``output_bias`` (if given), then optionally a
    sigmoid (Pyro's ``--decoder-output-bias`` and ``--decoder-output-use-sigmoid``)."""
    if output_bias is not None:
        out = out + output_bias
    return jax.nn.sigmoid(out) if use_sigmoid else out


class Decoder(nn.Module):
    """z_what (B, z) -> window (B, w*w); adds ``output_bias`` then optionally a sigmoid."""

    hidden: Sequence[int]
    window_pixels: int
    output_bias: Optional[float] = None
    use_sigmoid: bool = False
    nl: str = "relu"
    init_scheme: str = "torch"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        out = MLP(
            tuple(self.hidden) + (self.window_pixels,), self.nl, init_scheme=self.init_scheme, compute_dtype=self.compute_dtype
        )(z)
        return decoder_output(out, self.output_bias, self.use_sigmoid)


class Predict(nn.Module):
    """LSTM state h (B, H) -> z_pres logit (B,), z_where loc offset (B, 3), z_where scale factor
    softplus(.) (B, 3). Pyro applies a sigmoid to output 0; we keep the logit (NaN-safe)."""

    hidden: Sequence[int]
    nl: str = "relu"
    init_scheme: str = "torch"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, h: jnp.ndarray):
        out = MLP(tuple(self.hidden) + (7,), self.nl, init_scheme=self.init_scheme, compute_dtype=self.compute_dtype)(h)
        return out[:, 0], out[:, 1:4], jax.nn.softplus(out[:, 4:7])


class BaselinePredict(nn.Module):
    """Baseline LSTM state (B, H) -> baseline value (B,)."""

    hidden: Sequence[int]
    nl: str = "relu"
    init_scheme: str = "torch"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        return MLP(tuple(self.hidden) + (1,), self.nl, init_scheme=self.init_scheme, compute_dtype=self.compute_dtype)(h)[:, 0]


class AIRLSTM(nn.Module):
    """PyTorch-equivalent ``LSTMCell(image_features + latent_features, hidden)``, with the input
    weight split into an image block and a latent block.

    ``W_ih [x_img; x_lat] = W_img x_img + W_lat x_lat``, so the image block (the dominant
    cost: image_features x 4H per image) is applied **once per image** by ``project_image``
    and reused at every step by ``step``. (DAIR's input, the residual image, changes every step,
    so there ``project_image`` runs at every step.) Gate order (i, f, g, o) as torch.
    """

    hidden: int
    init_scheme: str = "torch"
    compute_dtype: str = "float32"

    def setup(self) -> None:
        kw = mixed_precision(self.compute_dtype)
        if self.init_scheme == "torch":
            u = _uniform(1.0 / float(self.hidden) ** 0.5)
            kw |= dict(kernel_init=u, bias_init=u)
        self.img = nn.Dense(4 * self.hidden, name="img", **kw)  # W_ih image block + b_ih
        self.lat = nn.Dense(4 * self.hidden, use_bias=False, name="lat", **kw)  # W_ih latent block
        self.hh = nn.Dense(4 * self.hidden, name="hh", **kw)  # W_hh + b_hh

    def project_image(self, x_img: jnp.ndarray) -> jnp.ndarray:
        """(B, image_features) -> (B, 4H): the step-invariant part of the gate pre-activations."""
        return self.img(x_img)

    def step(self, img_proj: jnp.ndarray, x_lat: jnp.ndarray, carry):
        """One LSTM step from the projected image (B, 4H), latents (B, L) and (h, c) (B, H)."""
        h, c = carry
        gates = img_proj + self.lat(x_lat) + self.hh(h)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c

    def __call__(self, x_img: jnp.ndarray, x_lat: jnp.ndarray, carry):
        return self.step(self.project_image(x_img), x_lat, carry)


# ----------------------------------------------------------------------------- convolutional
KERNEL = 4
STRIDE = 2


def halved(side: int, times: int) -> int:
    """Side of a map after ``times`` stride-2 "SAME" convolutions (ceil at each step)."""
    for _ in range(times):
        side = -(-side // STRIDE)
    return side


def _conv_transpose(features: int, name: str, kw: dict) -> nn.Conv:
    """A stride-2 "SAME" transposed convolution (output side = 2 x input side), the same map and
    parameters (``kernel`` (K, K, in, out), ``bias``; same initialisation) as Flax's
    ``nn.ConvTranspose(features, (K, K), strides=(2, 2), padding="SAME")``, written as an
    ``nn.Conv`` with input dilation so that it runs as :func:`~numpyro_air.core.conv.patch_conv`."""
    pad = transpose_padding(KERNEL, STRIDE)
    return nn.Conv(features, (KERNEL, KERNEL), padding=(pad, pad), input_dilation=(STRIDE, STRIDE), name=name, **kw)


class ConvStack(nn.Module):
    """Stride-2 convolutions with ``nl`` after each: (B, H, W, C) -> (B, H', W', channels[-1]);
    ``in_loop``: it runs inside the steps' loop (see :func:`conv_keywords`)."""

    channels: Sequence[int]
    nl: str = "relu"
    compute_dtype: str = "float32"
    in_loop: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        f = non_linearity(self.nl)
        kw = conv_keywords(self.compute_dtype, self.in_loop)
        for i, c in enumerate(self.channels):
            x = f(nn.Conv(c, (KERNEL, KERNEL), strides=(STRIDE, STRIDE), padding="SAME", name=f"Conv_{i}", **kw)(x))
        return x


class ConvEncoder(nn.Module):
    """Window (B, ws*ws*C) -> z_what loc (B, z) and scale (B, z) = softplus(.)."""

    window_size: int
    image_channels: int
    z_what_size: int
    channels: Sequence[int] = (32, 64)
    hidden: int = 256
    nl: str = "relu"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
        ws, C, kw = self.window_size, self.image_channels, mixed_precision(self.compute_dtype)
        h = ConvStack(self.channels, self.nl, self.compute_dtype)(x.reshape(x.shape[0], ws, ws, C))
        h = non_linearity(self.nl)(nn.Dense(self.hidden, name="Dense_0", **kw)(h.reshape(h.shape[0], -1)))
        out = nn.Dense(2 * self.z_what_size, name="Dense_1", **kw)(h)
        return out[:, : self.z_what_size], jax.nn.softplus(out[:, self.z_what_size :])


class ConvDecoder(nn.Module):
    """z_what (B, z) -> window (B, ws*ws*C): a dense layer to a small map, stride-2 transposed
    convolutions up to (at least) ws, cropped to ws; adds ``output_bias``, then optionally a sigmoid."""

    window_size: int
    image_channels: int
    channels: Sequence[int] = (64, 32)
    hidden: int = 256
    output_bias: Optional[float] = None
    use_sigmoid: bool = False
    nl: str = "relu"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        f = non_linearity(self.nl)
        ws, C, n = self.window_size, self.image_channels, len(self.channels)
        base = halved(ws, n)
        kw, kw_c = mixed_precision(self.compute_dtype), conv_keywords(self.compute_dtype, in_loop=True)
        h = f(nn.Dense(self.hidden, name="Dense_0", **kw)(z))
        h = f(nn.Dense(base * base * self.channels[0], name="Dense_1", **kw)(h))
        h = h.reshape(z.shape[0], base, base, self.channels[0])
        outs = list(self.channels[1:]) + [C]
        for i, c in enumerate(outs):
            h = _conv_transpose(c, f"ConvT_{i}", kw_c)(h)
            if i < len(outs) - 1:
                h = f(h)
        out = h[:, :ws, :ws, :].reshape(z.shape[0], ws * ws * C)
        return decoder_output(out, self.output_bias, self.use_sigmoid)


class BroadcastDecoder(nn.Module):
    """z_what (B, z) -> window (B, ws*ws*C): the spatial broadcast decoder (Watters et al., 2019)
    with 1x1 convolutions, i.e. one MLP applied at every window pixel to the code and the pixel's
    position (u, v) in [-1, 1]^2. Its first layer is split, Dense(z) (B, h) + Dense(u, v) (ws*ws,
    h), so the code's product is computed once per window. Adds ``output_bias``, then optionally
    a sigmoid; Flax's default initialisation (as the convolutional networks)."""

    window_size: int
    image_channels: int
    hidden: Sequence[int] = (64, 64)
    output_bias: Optional[float] = None
    use_sigmoid: bool = False
    nl: str = "relu"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        f, kw, ws = non_linearity(self.nl), mixed_precision(self.compute_dtype), self.window_size
        centres = (2.0 * jnp.arange(ws, dtype=z.dtype) + 1.0) / ws - 1.0  # pixel centres, as the transformer's
        rows, cols = jnp.meshgrid(centres, centres, indexing="ij")
        position = jnp.stack([cols.ravel(), rows.ravel()], axis=-1)  # (ws*ws, 2): (u, v) = (column, row)
        code = nn.Dense(self.hidden[0], name="Code", **kw)(z)  # (B, h)
        h = f(code[:, None, :] + nn.Dense(self.hidden[0], use_bias=False, name="Position", **kw)(position))
        for i, n in enumerate(self.hidden[1:]):
            h = f(nn.Dense(n, name=f"Dense_{i}", **kw)(h))
        out = nn.Dense(self.image_channels, name="Out", **kw)(h).reshape(z.shape[0], ws * ws * self.image_channels)
        return decoder_output(out, self.output_bias, self.use_sigmoid)


#: The template decoder's logit outside its templates (before ``output_bias``): empty window.
TEMPLATE_OUTSIDE = -10.0


def rotate_bilinear(window: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray, outside: float) -> jnp.ndarray:
    """Windows (B, w, w) rotated about their centre by the angle of (cos, sin) (B,) each: output
    pixel (u, v) (column, row centres in [-1, 1]) reads the input bilinearly at (cos u - sin v,
    sin u + cos v); beyond the window the value is ``outside``. Returns (B, w, w)."""
    B, w = window.shape[0], window.shape[-1]
    centres = (2.0 * jnp.arange(w, dtype=window.dtype) + 1.0) / w - 1.0
    v, u = jnp.meshgrid(centres, centres, indexing="ij")  # (w, w): row, column
    c, s = cos[:, None, None], sin[:, None, None]
    to_pixel = lambda t: (t + 1.0) * (w / 2.0) - 0.5 + 1.0  # noqa: E731 (index in the padded window)
    x = jnp.clip(to_pixel(c * u - s * v), 0.0, w + 1.0)
    y = jnp.clip(to_pixel(s * u + c * v), 0.0, w + 1.0)
    x0 = jnp.minimum(jnp.floor(x), w).astype(jnp.int32)
    y0 = jnp.minimum(jnp.floor(y), w).astype(jnp.int32)
    fx, fy = x - x0, y - y0
    padded = jnp.pad(window, ((0, 0), (1, 1), (1, 1)), constant_values=outside).reshape(B, -1)

    def tap(yi, xi):  # (B, w, w): the padded window at rows yi, columns xi
        return jnp.take_along_axis(padded, (yi * (w + 2) + xi).reshape(B, -1), axis=1).reshape(B, w, w)

    top = (1.0 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1)
    bottom = (1.0 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)
    return (1.0 - fy) * top + fy * bottom


class TemplateDecoder(nn.Module):
    """z_what (B, z) -> shape window (B, ws*ws): a learned dictionary of ``templates`` shapes (a
    sprite dictionary, as MarioNette's), mixed by softmax(Dense(z)) (B, K) and rotated about the
    window's centre by the angle of Dense(z) (B, 2) normalised to (cos, sin), read bilinearly
    (:data:`TEMPLATE_OUTSIDE` beyond the template); that layer starts at angle 0 for every z (zero
    kernel), since templates read at random angles average to round blobs and stay there. The K
    templates (K, ws*ws) of logits are the MLP decoder (``hidden``) applied to K learned codes
    (K, z), so they learn at the MLP decoder's pace (a free parameter per template pixel moves by
    about Adam's learning rate per step). Scale and position come from z_where, so one window
    draws one rotated blend of templates: a shape, not two sprites side by side. Adds
    ``output_bias``, then optionally a sigmoid. One channel: the shape of
    ``object_colour="single"``."""

    window_size: int
    templates: int
    hidden: Sequence[int] = (200,)
    output_bias: Optional[float] = None
    use_sigmoid: bool = False
    nl: str = "relu"
    init_scheme: str = "torch"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        B, ws, kw = z.shape[0], self.window_size, mixed_precision(self.compute_dtype)
        codes = self.param("codes", nn.initializers.normal(1.0), (self.templates, z.shape[-1]), jnp.float32)
        bank = Decoder(self.hidden, ws * ws, None, False, self.nl, self.init_scheme, self.compute_dtype, name="Templates")
        choice = jax.nn.softmax(nn.Dense(self.templates, name="Choice", **kw)(z), axis=-1)  # (B, K)
        mixed = (choice @ bank(codes)).reshape(B, ws, ws)
        identity = lambda key, shape, dtype=jnp.float32: jnp.array([1.0, 0.0], dtype)  # noqa: E731 (angle 0)
        rotation = nn.Dense(2, kernel_init=nn.initializers.zeros, bias_init=identity, name="Rotation", **kw)
        direction = rotation(z)  # (B, 2)
        norm = jnp.sqrt(jnp.sum(direction**2, axis=-1) + 1e-8)
        out = rotate_bilinear(mixed, direction[:, 0] / norm, direction[:, 1] / norm, TEMPLATE_OUTSIDE)
        return decoder_output(out.reshape(B, ws * ws), self.output_bias, self.use_sigmoid)


class SingleColourDecoder(nn.Module):
    """z_what (B, z) -> (B, w*w + C): ``shape``'s one-channel window (B, w*w), then one colour per
    object, sigmoid(Dense(z)) (B, C) in (0, 1) (``AIRConfig.object_colour="single"``). The colour
    layer takes Flax's default initialisation (as the convolutional networks do), not
    ``AIRConfig.init``."""

    shape: nn.Module
    colours: int
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        colour = nn.Dense(self.colours, name="Colour", **mixed_precision(self.compute_dtype))(z)
        return jnp.concatenate([self.shape(z), jax.nn.sigmoid(colour)], axis=-1)


class ConvEmbed(nn.Module):
    """Image (B, H*W*C) -> features (B, features) after ``nl``: stride-2 convolutions, then one
    dense layer of the flattened maps. ``in_loop``: applied at every step (DAIR's residual), not
    once per image (see :func:`conv_keywords`)."""

    height: int
    width: int
    image_channels: int
    channels: Sequence[int] = (16, 32, 32, 64)
    features: int = 256
    nl: str = "relu"
    compute_dtype: str = "float32"
    in_loop: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        image = x.reshape(x.shape[0], self.height, self.width, self.image_channels)
        h = ConvStack(self.channels, self.nl, self.compute_dtype, self.in_loop)(image)
        dense = nn.Dense(self.features, name="Dense_0", **mixed_precision(self.compute_dtype))
        return non_linearity(self.nl)(dense(h.reshape(h.shape[0], -1)))


def param_count(module: nn.Module, input_size: int) -> int:
    """Number of parameters of ``module`` applied to a (1, input_size) input."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, input_size)))
    return int(sum(math.prod(a.shape) for a in jax.tree.leaves(shapes)))


def flops_per_example(module: nn.Module, input_size: int, batch: int = 64) -> float:
    """Forward FLOPs per example of ``module`` as XLA counts them (``cost_analysis``), at ``batch``."""
    x = jnp.zeros((batch, input_size))
    params = jax.eval_shape(module.init, jax.random.PRNGKey(0), x[:1])
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    cost = jax.jit(module.apply).lower(params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) / batch


# ----------------------------------------------------------------------------- choice by config
def encoder_module(config: AIRConfig) -> nn.Module:
    """The glimpse encoder ``config`` asks for: window (B, w*w*C') -> z_what loc, scale (B, z), with
    C' = ``config.glimpse_channels``."""
    if config.conv_encoder is None:
        return Encoder(config.encoder_net, config.z_what_size, config.non_linearity, config.init, config.compute_dtype)
    return ConvEncoder(
        config.window_size,
        config.glimpse_channels,
        config.z_what_size,
        config.conv_encoder,
        config.encoder_net[-1],
        config.non_linearity,
        config.compute_dtype,
    )


def decoder_module(config: AIRConfig) -> nn.Module:
    """The decoder ``config`` asks for: z_what (B, z) -> window (B, w*w*C'), channels last, with
    C' = ``config.decoder_channels`` (the colour channels, then the opacity with "over"), followed
    by the object's C colours with ``object_colour="single"`` (``config.decoder_output_size``)."""
    w, C = config.window_size, config.decoder_channels
    bias, sigmoid, nl = config.decoder_output_bias, config.decoder_output_use_sigmoid, config.non_linearity
    if config.template_decoder is not None:
        k, hidden = config.template_decoder, config.decoder_net
        pixels = TemplateDecoder(w, k, hidden, bias, sigmoid, nl, config.init, config.compute_dtype)
    elif config.broadcast_decoder is not None:
        pixels = BroadcastDecoder(w, C, config.broadcast_decoder, bias, sigmoid, nl, config.compute_dtype)
    elif config.conv_decoder is None:
        pixels = Decoder(config.decoder_net, w * w * C, bias, sigmoid, nl, config.init, config.compute_dtype)
    else:
        pixels = ConvDecoder(w, C, config.conv_decoder, config.decoder_net[-1], bias, sigmoid, nl, config.compute_dtype)
    if config.object_colour == "single":
        return SingleColourDecoder(pixels, config.object_colours, config.compute_dtype)
    return pixels


def embed_module(config: AIRConfig) -> Tuple[Optional[nn.Module], int]:
    """The guide's image embedding ``config`` asks for and its output size: image (B, H*W*C) ->
    (B, F); ``(None, H*W*C)`` without one (the LSTM projects the image itself)."""
    if config.conv_embed is not None:
        module = ConvEmbed(
            config.height,
            config.width,
            config.channels,
            config.conv_embed,
            config.conv_embed_features,
            config.non_linearity,
            config.compute_dtype,
            in_loop=config.guide_input == "difference",
        )
        return module, config.conv_embed_features
    if config.embed_net is not None:
        mlp = MLP(config.embed_net, config.non_linearity, True, config.init, config.compute_dtype)
        return mlp, config.embed_net[-1]
    return None, config.num_pixels
