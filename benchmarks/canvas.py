"""Speed and memory of the training step on other canvases: gray 50x50 (MLP and conv), RGB 64x64
and RGB 128x128 (conv embedding), each in a fresh process.

    python benchmarks/canvas.py [--batch-size 64] [--steps 10] [--only NAME ...] [--compute-dtype D] [--json]

For each case: the tutorial recipe (NVIL, LSTM 256, z_what 50, 3 steps) on random images in [0, 1]
of that canvas, ``jit_update(svi, config)`` (state donated) compiled, 3 warm-up steps, then the median of
``--steps`` blocked steps; the process's peak resident memory (``ru_maxrss``) after the last step;
the parameter count; and the forward FLOPs per image of the networks that the conv options replace
(``core.nets.flops_per_example``: encoder, decoder, image embedding or the LSTMs' image projection).
``--compute-dtype bfloat16`` runs every case with bfloat16 products (``AIRConfig.compute_dtype``).
``--json`` writes ``results/cpu_canvas_b<B>.json`` (``..._bfloat16.json`` with bfloat16 products).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONV = dict(conv_encoder=(32, 64), conv_decoder=(64, 32), conv_embed=(16, 32, 32, 64), conv_embed_features=256)
EMBED = dict(conv_embed=(16, 32, 32, 64), conv_embed_features=256)
CASES = {
    "gray50-mlp": dict(),
    "gray50-conv": dict(CONV),
    "rgb64-mlp": dict(image_size=64, channels=3, window_size=32),
    "rgb64-conv": dict(image_size=64, channels=3, window_size=32, **CONV),
    "rgb128-mlp": dict(image_size=128, channels=3, window_size=48),
    "rgb128-conv": dict(image_size=128, channels=3, window_size=48, **CONV),
    # the conv embedding alone (encoder and decoder stay MLPs)
    "gray50-embed": dict(EMBED),
    "rgb64-embed": dict(image_size=64, channels=3, window_size=32, **EMBED),
    "rgb128-embed": dict(image_size=128, channels=3, window_size=48, **EMBED),
}


def measure(name: str, batch: int, steps: int, compute_dtype: str = "float32") -> dict:
    """One case, in this process."""
    import jax
    import jax.numpy as jnp

    from numpyro_air import AIRConfig, make_svi
    from numpyro_air.core.nets import decoder_module, embed_module, encoder_module, flops_per_example
    from numpyro_air.train.recipes import OptimConfig
    from numpyro_air.train.svi import jit_update

    cfg = AIRConfig.tutorial(**CASES[name], compute_dtype=compute_dtype)
    svi = make_svi(cfg, OptimConfig.tutorial())
    images = jax.random.uniform(jax.random.PRNGKey(0), (batch,) + tuple(cfg.image_shape))
    state = svi.init(jax.random.PRNGKey(1), images)
    step = jit_update(svi, cfg)
    t0 = time.perf_counter()
    compiled = step.lower(state, images, jnp.asarray(1)).compile()
    compile_sec = time.perf_counter() - t0
    for i in range(3):
        state, info = compiled(state, images, jnp.asarray(i + 1))
    jax.block_until_ready(state)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, info = compiled(state, images, jnp.asarray(i + 4))
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    embed, features = embed_module(cfg)
    w = cfg.window_size**2 * cfg.channels
    flops = {
        "encoder": flops_per_example(encoder_module(cfg), w),
        "decoder": flops_per_example(decoder_module(cfg), cfg.z_what_size),
        "image projection (both LSTMs)": 2.0 * 2 * features * 4 * cfg.rnn_hidden_size,
    }
    if embed is not None:
        flops["image embedding (both LSTMs)"] = 2 * flops_per_example(embed, cfg.num_pixels)
    return {
        "case": name,
        "canvas": list(cfg.image_shape),
        "window": cfg.window_size,
        "compute_dtype": compute_dtype,
        "batch_size": batch,
        "sec_per_step": statistics.median(times),
        "steps_per_sec": 1.0 / statistics.median(times),
        "compile_sec": compile_sec,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "params": int(sum(a.size for a in jax.tree.leaves(svi.get_params(state)))),
        "forward_flops_per_image": {k: round(v) for k, v in flops.items()},
        "loss_finite": bool(jnp.isfinite(info.loss)),
    }


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--only", nargs="+", choices=sorted(CASES), help="run these cases only")
    ap.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.child, a.batch_size, a.steps, a.compute_dtype)))
        return []
    out = []
    for name in a.only or CASES:
        cmd = [sys.executable, __file__, "--child", name, "--batch-size", str(a.batch_size), "--steps", str(a.steps)]
        cmd += ["--compute-dtype", a.compute_dtype]
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if res.returncode != 0:
            row = {"case": name, "error": (res.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            row = json.loads(res.stdout.strip().splitlines()[-1])
        out.append(row)
        if "error" in row:
            print(f"{name:12s} failed: {row['error']}", flush=True)
        else:
            print(
                f"{name:12s} {row['steps_per_sec']:6.2f} steps/s  {1e3 * row['sec_per_step']:7.1f} ms  "
                f"peak {row['peak_rss_mb']:7.0f} MB  params {row['params'] / 1e6:6.2f} M  compile {row['compile_sec']:.0f} s",
                flush=True,
            )
    if a.json:  # merged into the file of earlier runs, case by case
        suffix = "" if a.compute_dtype == "float32" else f"_{a.compute_dtype}"
        path = HERE / "results" / f"cpu_canvas_b{a.batch_size}{suffix}.json"
        old = json.loads(path.read_text())["cases"] if path.exists() else []
        cases = {r["case"]: r for r in old} | {r["case"]: r for r in out}
        path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "cases": list(cases.values())}, indent=1))
    return out


if __name__ == "__main__":
    main()
