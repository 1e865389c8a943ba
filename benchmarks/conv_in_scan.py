"""Convolutions inside ``lax.scan`` on the current backend: a 4-layer convolutional embedding
(3 -> 16 -> 32 -> 32 -> 64 maps, stride 2, as ``--conv-embed 16 32 32 64``) of a (64, 64, 64, 3)
batch, forward and gradient, applied 3 times in a ``lax.scan`` with ``unroll=1`` (a while loop)
and with ``unroll=3`` (straight-line code). Median of 5 calls after one warm-up each.

    python benchmarks/conv_in_scan.py
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

SHAPES = [(3, 3, 3, 16), (3, 3, 16, 32), (3, 3, 32, 32), (3, 3, 32, 64)]


def embed(kernels: list, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> scalar: the mean of the last layer's maps."""
    for k in kernels:
        x = jax.nn.relu(jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return x.mean()


def loss(kernels: list, x: jax.Array, unroll: int) -> jax.Array:
    def body(total, t):
        return total + embed(kernels, x * (1.0 - 0.1 * t)), None

    return jax.lax.scan(body, 0.0, jnp.arange(3.0), unroll=unroll)[0]


def main() -> dict:
    x = jax.random.uniform(jax.random.PRNGKey(0), (64, 64, 64, 3))
    kernels = [jax.random.normal(jax.random.PRNGKey(i), s) * 0.1 for i, s in enumerate(SHAPES)]
    medians = {}
    for unroll in (1, 3):
        grad = jax.jit(jax.grad(lambda k, u=unroll: loss(k, x, u)))
        jax.block_until_ready(grad(kernels))
        times = []
        for _ in range(5):
            t = time.perf_counter()
            jax.block_until_ready(grad(kernels))
            times.append(time.perf_counter() - t)
        medians[unroll] = statistics.median(times)
        print(f"unroll={unroll}: {medians[unroll] * 1e3:.1f} ms ({jax.devices()[0]})", flush=True)
    return medians


if __name__ == "__main__":
    main()
