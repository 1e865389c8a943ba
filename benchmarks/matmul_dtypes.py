"""bfloat16 against float32 matmuls on this machine: the image projection of the guide's LSTM
(B x H*W) @ (H*W x 4*hidden) and the decoder's output layer at the tutorial sizes, timed as
jitted single ops (median of repeated calls after warm-up), float32 operands against bfloat16
operands with a float32 product (what ``AIRConfig.compute_dtype="bfloat16"`` runs).

    python benchmarks/matmul_dtypes.py [--batch-sizes 64 256] [--repeats 50] [--json]

Also prints the optimised HLO op that XLA runs for the bfloat16 product (which kernel it uses).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, median_times, nproc  # noqa: E402

SHAPES = {"image projection": (2500, 1024), "decoder output": (200, 784), "LSTM recurrent": (256, 1024)}


def _median_ms(f, *args, repeats: int) -> float:
    """Median milliseconds of ``repeats`` blocked calls of ``f(*args)`` after a first call and 3 more."""
    return 1e3 * median_times(lambda: jax.block_until_ready(f(*args)), repeats, 3)["sec_median"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    f32 = jax.jit(lambda x, w: x @ w)
    bf16 = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32))
    rows = []
    rng = np.random.default_rng(0)
    for b in a.batch_sizes:
        for name, (k, n) in SHAPES.items():
            x, w = rng.uniform(size=(b, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
            xb, wb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)
            t32 = _median_ms(f32, jnp.asarray(x), jnp.asarray(w), repeats=a.repeats)
            t16 = _median_ms(bf16, xb, wb, repeats=a.repeats)
            gflop = 2 * b * k * n / 1e9
            rows.append(
                {
                    "matmul": name,
                    "shape": [b, k, n],
                    "float32_ms": round(t32, 4),
                    "bfloat16_ms": round(t16, 4),
                    "float32_gflops": round(gflop / t32 * 1e3, 1),
                    "bfloat16_gflops": round(gflop / t16 * 1e3, 1),
                }
            )
            print(
                f"{name:17s} B={b:4d} ({k}x{n}): float32 {t32:7.3f} ms ({rows[-1]['float32_gflops']:6.1f} GFLOP/s), "
                f"bfloat16 {t16:7.3f} ms ({rows[-1]['bfloat16_gflops']:6.1f} GFLOP/s)",
                flush=True,
            )
    hlo = bf16.lower(jnp.zeros((64, 2500), jnp.bfloat16), jnp.zeros((2500, 1024), jnp.bfloat16)).compile().as_text()
    kernel = [
        line.strip()
        for line in hlo.splitlines()
        if "ROOT" in line and ("fusion" in line or "dot" in line or "custom-call" in line)
    ]
    print("bfloat16 product runs as:", kernel[-1][:300] if kernel else "?")
    out = {
        "rows": rows,
        "bfloat16_op": kernel[-1] if kernel else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_model": cpu_model(),
        "nproc": nproc(),
        "jax_version": jax.__version__,
    }
    if a.json:
        (Path(__file__).resolve().parent / "results" / f"cpu_matmul_dtypes_{time.strftime('%Y-%m-%d')}.json").write_text(
            json.dumps(out, indent=1)
        )
    return out


if __name__ == "__main__":
    main()
