"""Images/s of K independent seeds trained in one vmapped program (tutorial networks).

Usage:  python benchmarks/seeds.py [--seeds 1 2 4 8] [--batch-size 64] [--steps 30] [--warmup 3]
                                   [--device cpu|gpu|tpu] [--json]

For each K, times ``jax.vmap`` of ``numpyro_air.make_update`` (the SVI step
over K stacked states, each seed with its own (B, 50, 50) batch) and reports the median seconds
per step after warm-up, images/s (K * B / sec) and the efficiency K * t(1) / t(K) (1.0 = K seeds
cost the same as one), where t(1) is the plain single-seed training step (not vmapped).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_allocator_option, apply_allocator  # noqa: E402
from machine import cpu_model as _cpu_model
from machine import nproc as _nproc
from machine import pick_device as _pick_device


def time_seeds(k: int, batch: int, steps: int, warmup: int, device, seed: int = 0, vmapped: bool = True) -> dict:
    """Median step time of K vmapped seeds (``vmapped=False``, K = 1: the plain training step)."""
    from numpyro_air import AIRConfig
    from numpyro_air.train.recipes import OptimConfig
    from numpyro_air.train.svi import jit_update, make_svi, make_update

    cfg = AIRConfig.tutorial()
    rng = np.random.default_rng(seed)
    with jax.default_device(device):
        pool = [jax.device_put(rng.uniform(0, 1, (k, batch, 50, 50)).astype(np.float32), device) for _ in range(2)]
        svi = make_svi(cfg, OptimConfig(baseline_learning_rate=0.1))
        keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(k)])
        states = jax.block_until_ready(jax.jit(jax.vmap(svi.init, in_axes=(0, None)))(keys, pool[0][0]))
        step = jax.jit(jax.vmap(make_update(svi, cfg), in_axes=(0, 0, None)), donate_argnums=0)
        if not vmapped:
            states, pool = jax.tree.map(lambda a: a[0], states), [p[0] for p in pool]
            step = jit_update(svi, cfg)
        t0 = time.perf_counter()
        states, info = jax.block_until_ready(step(states, pool[0], jnp.asarray(1, jnp.int32)))
        compile_sec = time.perf_counter() - t0
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            states, info = jax.block_until_ready(step(states, pool[i % 2], jnp.asarray(i + 2, jnp.int32)))
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {
        "num_seeds": k,
        "sec_per_step": sec,
        "images_per_sec": k * batch / sec,
        "compile_sec": compile_sec,
        "finite": bool(np.all(np.isfinite(np.asarray(info.loss)))),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", choices=("cpu", "gpu", "tpu"))
    ap.add_argument("--json", action="store_true")
    add_allocator_option(ap)
    args = ap.parse_args(argv)
    allocator = apply_allocator(args.system_allocator)
    if min(args.seeds) < 1:
        ap.error("--seeds must all be >= 1")
    device = _pick_device(args.device)
    single = time_seeds(1, args.batch_size, args.steps, args.warmup, device, vmapped=False)
    rows = [time_seeds(k, args.batch_size, args.steps, args.warmup, device) for k in sorted(set(args.seeds))]
    for r in rows:
        # K x (one seed's plain, un-vmapped step) / (K-seed step): 1.0 = K seeds for the price of one
        r["efficiency"] = r["num_seeds"] * single["sec_per_step"] / r["sec_per_step"]
    res = {
        "single_seed_plain_step": single,
        "batch_size": args.batch_size,
        "device": str(device),
        "backend": device.platform,
        "device_kind": getattr(device, "device_kind", None),
        "cpu_model": _cpu_model(),
        "nproc": _nproc(),
        "allocator": allocator,
        "jax_version": jax.__version__,
        "steps": args.steps,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(f"device {res['device']} ({res['cpu_model']}, nproc {res['nproc']}), batch {args.batch_size} per seed")
        print(f"one seed, plain (un-vmapped) step: {single['sec_per_step']:.4f} s/step, {single['images_per_sec']:.0f} images/s")
        print(f"{'K':>3} {'s/step':>9} {'images/s':>9} {'efficiency':>10} {'compile s':>9}")
        for r in rows:
            print(
                f"{r['num_seeds']:>3} {r['sec_per_step']:>9.4f} {r['images_per_sec']:>9.0f} "
                f"{r['efficiency']:>10.2f} {r['compile_sec']:>9.1f}"
            )
    return res


if __name__ == "__main__":
    main()
