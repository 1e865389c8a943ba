"""Convolutional networks for AIR, drop-in replacements of the MLPs on flattened tensors.

- :class:`ConvEncoder`: glimpse window (B, ws*ws*C) -> z_what loc and scale (B, z), as
  :class:`~numpyro_air.core.nets.Encoder`;
- :class:`ConvDecoder`: z_what (B, z) -> window (B, ws*ws*C), as
  :class:`~numpyro_air.core.nets.Decoder` (output bias, optional sigmoid);
- :class:`ConvEmbed`: image (B, H*W*C) -> features (B, F) for the guide's LSTM, so that the LSTM's
  image projection has F x 4*hidden weights instead of H*W*C x 4*hidden.

Inputs and outputs stay flat (channels last, row-major, as ``reshape(B, H, W, C)``) so the model
and guide treat both kinds of network alike. Every convolution has kernel 4, stride 2 and padding
"SAME" (each halves the side, rounding up); ``channels`` lists the feature maps of each.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from .nets import non_linearity

KERNEL = 4
STRIDE = 2


def halved(side: int, times: int) -> int:
    """Side of a map after ``times`` stride-2 "SAME" convolutions (ceil at each step)."""
    for _ in range(times):
        side = -(-side // STRIDE)
    return side


class ConvStack(nn.Module):
    """Stride-2 convolutions with ``nl`` after each: (B, H, W, C) -> (B, H', W', channels[-1])."""

    channels: Sequence[int]
    nl: str = "relu"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        f = non_linearity(self.nl)
        for i, c in enumerate(self.channels):
            x = f(nn.Conv(c, (KERNEL, KERNEL), strides=(STRIDE, STRIDE), padding="SAME", name=f"Conv_{i}")(x))
        return x


class ConvEncoder(nn.Module):
    """Window (B, ws*ws*C) -> z_what loc (B, z) and scale (B, z) = softplus(.)."""

    window_size: int
    image_channels: int
    z_what_size: int
    channels: Sequence[int] = (32, 64)
    hidden: int = 256
    nl: str = "relu"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
        ws, C = self.window_size, self.image_channels
        h = ConvStack(self.channels, self.nl)(x.reshape(x.shape[0], ws, ws, C))
        h = non_linearity(self.nl)(nn.Dense(self.hidden, name="Dense_0")(h.reshape(h.shape[0], -1)))
        out = nn.Dense(2 * self.z_what_size, name="Dense_1")(h)
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

    @nn.compact
    def __call__(self, z: jnp.ndarray) -> jnp.ndarray:
        f = non_linearity(self.nl)
        ws, C, n = self.window_size, self.image_channels, len(self.channels)
        base = halved(ws, n)
        h = f(nn.Dense(self.hidden, name="Dense_0")(z))
        h = f(nn.Dense(base * base * self.channels[0], name="Dense_1")(h))
        h = h.reshape(z.shape[0], base, base, self.channels[0])
        outs = list(self.channels[1:]) + [C]
        for i, c in enumerate(outs):
            h = nn.ConvTranspose(c, (KERNEL, KERNEL), strides=(STRIDE, STRIDE), padding="SAME", name=f"ConvT_{i}")(h)
            if i < len(outs) - 1:
                h = f(h)
        out = h[:, :ws, :ws, :].reshape(z.shape[0], ws * ws * C)
        if self.output_bias is not None:
            out = out + self.output_bias
        return jax.nn.sigmoid(out) if self.use_sigmoid else out


class ConvEmbed(nn.Module):
    """Image (B, H*W*C) -> features (B, features) after ``nl``: stride-2 convolutions, then one
    dense layer of the flattened maps."""

    height: int
    width: int
    image_channels: int
    channels: Sequence[int] = (16, 32, 32, 64)
    features: int = 256
    nl: str = "relu"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = ConvStack(self.channels, self.nl)(x.reshape(x.shape[0], self.height, self.width, self.image_channels))
        return non_linearity(self.nl)(nn.Dense(self.features, name="Dense_0")(h.reshape(h.shape[0], -1)))


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
