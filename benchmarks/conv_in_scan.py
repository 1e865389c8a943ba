"""Convolutions inside ``lax.scan`` on the current backend: a 4-layer convolutional embedding
(3 -> 16 -> 32 -> 32 -> 64 maps, kernel 4, stride 2, as ``--conv-embed 16 32 32 64``) of a
(64, 64, 64, 3) batch, forward and gradient, applied 3 times in a ``lax.scan`` with ``unroll=1``
(a while loop) and with ``unroll=3`` (straight-line code), each with XLA's convolution
(``jax.lax.conv_general_dilated``) and with the package's slices-and-product form
(``numpyro_air.core.conv.patch_conv``). Median of 5 calls after one warm-up each.

    python benchmarks/conv_in_scan.py [--json]   # --json: results/<device>_conv_in_scan.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from numpyro_air.core.conv import CHANNELS_LAST, patch_conv

SHAPES = [(4, 4, 3, 16), (4, 4, 16, 32), (4, 4, 32, 32), (4, 4, 32, 64)]
CONVS = {"xla": jax.lax.conv_general_dilated, "patch_conv": patch_conv}


def embed(conv, kernels: list, x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> scalar: the mean of the last layer's maps."""
    for k in kernels:
        x = jax.nn.relu(conv(x, k, (2, 2), "SAME", dimension_numbers=CHANNELS_LAST))
    return x.mean()


def loss(conv, kernels: list, x: jax.Array, unroll: int) -> jax.Array:
    def body(total, t):
        return total + embed(conv, kernels, x * (1.0 - 0.1 * t)), None

    return jax.lax.scan(body, 0.0, jnp.arange(3.0), unroll=unroll)[0]


def median_ms(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    x = jax.random.uniform(jax.random.PRNGKey(0), (64, 64, 64, 3))
    kernels = [jax.random.normal(jax.random.PRNGKey(i), s) * 0.1 for i, s in enumerate(SHAPES)]
    medians = {}
    for name, conv in CONVS.items():
        for unroll in (1, 3):
            grad = jax.jit(jax.grad(lambda k, c=conv, u=unroll: loss(c, k, x, u)))
            medians[f"{name}/unroll={unroll}"] = ms = median_ms(grad, kernels)
            print(f"{name:10s} unroll={unroll}: {ms:.1f} ms ({jax.devices()[0]})", flush=True)
    if a.json:
        path = Path(__file__).resolve().parent / "results" / f"{jax.default_backend()}_conv_in_scan.json"
        record = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": str(jax.devices()[0]), "median_ms": medians}
        path.write_text(json.dumps(record, indent=1))
        print(f"wrote {path}")
    return medians


if __name__ == "__main__":
    main()
