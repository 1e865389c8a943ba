"""Steps per second of each benchmark's recipe (``numpyro-air train --dataset NAME``), the way the
training loop runs it: ``make_step`` with K seeds, each case in a fresh process.

    python benchmarks/dataset_recipes.py [--seeds 1 4] [--steps 20] [--only NAME ...] [--dair]
        [--conv-decoder C ...] [--broadcast-decoder H ...] [--template-decoder K]
        [--object-colour pixel|single] [--estimator E] [--num-particles K] [--system-allocator]
        [--compute-dtype float32|bfloat16] [--device cpu] [--json]

For each dataset of ``DATASET_RECIPES`` and each K of ``--seeds``: the recipe's model on random
scenes of its canvas (batch 64), the compiled step, 3 warm-up steps, then the median of
``--steps`` blocked steps; XLA's FLOP count of the compiled step (``cost_analysis``), the
process's peak resident memory, and the time 100,000 steps would take at the measured rate.
``--dair`` times each recipe with DAIR's guide input (``guide_input="difference"``, as ``--dair``).
``--conv-decoder 64 32 16`` replaces the decoder with a convolutional one, ``--broadcast-decoder
64 64`` with a spatial broadcast one, ``--template-decoder 8`` with a template decoder (with
``--object-colour single``), ``--object-colour`` sets the decoder's colour, ``--compute-dtype``
the operands of the dense layers and convolutions (all as the CLI flags); ``--estimator vimco
--num-particles 4`` times another z_pres estimator. Each child sets
the allocator as ``numpyro-air train`` does (``--system-allocator``: glibc's defaults).
``--json`` writes ``results/<device>_dataset_recipes.json`` (``..._dair`` with ``--dair``,
``..._convdec`` with ``--conv-decoder``, ``..._broadcast`` with ``--broadcast-decoder``,
``..._template`` with ``--template-decoder``, ``..._colour_<C>`` with ``--object-colour C``,
``..._<E><K>`` with ``--estimator E --num-particles K``, ``..._<D>`` with ``--compute-dtype D``,
``..._system_allocator`` with
``--system-allocator``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import add_allocator_option, apply_allocator  # noqa: E402

NAMES = ("multi-mnist", "multi-dsprites", "scattered-mnist")


def measure(
    name: str,
    seeds: int,
    steps: int,
    dair: bool = False,
    options: dict | None = None,
    particles: int | None = None,
    allocator: str = "system",
) -> dict:
    """One (dataset, K seeds) case, in this process (DAIR's guide input if ``dair``; ``options``:
    AIRConfig fields that replace the recipe's, e.g. ``{"conv_decoder": (64, 32)}``; ``particles``:
    the optimiser's ``num_particles``, e.g. VIMCO's K; ``allocator``: what ``apply_allocator`` set,
    recorded)."""
    import jax
    import jax.numpy as jnp

    from numpyro_air import DATASET_RECIPES, make_svi
    from numpyro_air.train.step import DeviceRows, make_step

    recipe = DATASET_RECIPES[name].recipe
    air, batch = (recipe.air.replace(guide_input="difference") if dair else recipe.air), 64
    air = air.replace(**(options or {}))
    optim = recipe.optim if particles is None else dataclasses.replace(recipe.optim, num_particles=particles)
    svi = make_svi(air, optim)
    data = jax.random.randint(jax.random.PRNGKey(0), (1024,) + tuple(air.image_shape), 0, 256).astype(jnp.uint8)
    first = data[:batch].astype(jnp.float32) / 255.0
    states = jax.vmap(svi.init, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(1), seeds), first)
    step = make_step(svi, air, seeds)
    rows = lambda i: DeviceRows(data, (jnp.arange(seeds * batch, dtype=jnp.int32).reshape(seeds, batch) + i) % 1024)  # noqa: E731
    t0 = time.perf_counter()
    compiled = step.lower(states, rows(0), jnp.asarray(1)).compile()
    compile_sec = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    for i in range(3):
        states, _ = compiled(states, rows(i), jnp.asarray(i + 1))
    jax.block_until_ready(states)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        states, info = compiled(states, rows(i), jnp.asarray(i + 4))
        jax.block_until_ready(states)
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    return {
        "dataset": name,
        "guide_input": air.guide_input,
        "conv_decoder": air.conv_decoder,
        "broadcast_decoder": air.broadcast_decoder,
        "template_decoder": air.template_decoder,
        "object_colour": air.object_colour,
        "compute_dtype": air.compute_dtype,
        "estimator": air.presence_estimator,
        "particles": optim.for_estimator(air.presence_estimator).num_particles,
        "allocator": allocator,
        "seeds": seeds,
        "canvas": list(air.image_shape),
        "model_steps": air.num_steps,
        "batch_size": batch,
        "sec_per_step": sec,
        "steps_per_sec": 1.0 / sec,
        "hours_for_100k_steps": 1e5 * sec / 3600,
        "compile_sec": compile_sec,
        "gflop_per_step": float(cost.get("flops", float("nan"))) / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(jax.devices()[0]),
    }


def label(r: dict) -> str:
    """What was timed: AIR or DAIR, and the options that differ from the recipe's networks."""
    parts = ["DAIR" if r["guide_input"] == "difference" else "AIR "]
    parts += [f"conv-decoder {' '.join(map(str, r['conv_decoder']))}"] if r["conv_decoder"] else []
    parts += [f"broadcast-decoder {' '.join(map(str, r['broadcast_decoder']))}"] if r.get("broadcast_decoder") else []
    parts += [f"template-decoder {r['template_decoder']}"] if r.get("template_decoder") else []
    parts += [f"object-colour {r['object_colour']}"] if r.get("object_colour", "pixel") != "pixel" else []
    parts += [r["compute_dtype"]] if r.get("compute_dtype", "float32") != "float32" else []
    return ", ".join(parts)


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--only", nargs="+", choices=NAMES)
    ap.add_argument("--device", choices=["cpu", "gpu", "tpu"], default="cpu")
    ap.add_argument("--dair", action="store_true", help="DAIR's guide input (the image minus the reconstruction)")
    ap.add_argument(
        "--conv-decoder", type=int, nargs="+", default=[], metavar="C", help="a convolutional decoder (as the CLI flag)"
    )
    ap.add_argument("--broadcast-decoder", type=int, nargs="+", default=[], metavar="H", help="as the CLI flag")
    ap.add_argument("--template-decoder", type=int, metavar="K", help="as the CLI flag")
    ap.add_argument("--object-colour", choices=["pixel", "single"], help="as the CLI flag (default: the recipe's)")
    ap.add_argument("--estimator", choices=["nvil", "vimco", "rws", "concrete"], help="as the CLI flag (default: the recipe's)")
    ap.add_argument("--num-particles", type=int, help="as the CLI flag (default: the estimator's)")
    ap.add_argument("--compute-dtype", choices=["float32", "bfloat16"], help="as the CLI flag (default: the recipe's)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    add_allocator_option(ap)
    a = ap.parse_args(argv)
    if a.child:
        os.environ["JAX_PLATFORMS"] = {"gpu": "cuda"}.get(a.device, a.device)
        allocator = apply_allocator(a.system_allocator)
        options = {
            "conv_decoder": tuple(a.conv_decoder),
            "broadcast_decoder": tuple(a.broadcast_decoder),
            "template_decoder": a.template_decoder,
            "object_colour": a.object_colour,
            "presence_estimator": a.estimator,
            "compute_dtype": a.compute_dtype,
        }
        options = {k: v for k, v in options.items() if v}
        print(json.dumps(measure(a.child[0], int(a.child[1]), a.steps, a.dair, options, a.num_particles, allocator)))
        return []
    results = []
    for name in a.only or NAMES:
        for k in a.seeds:
            cmd = [sys.executable, __file__, "--child", name, str(k), "--steps", str(a.steps), "--device", a.device]
            cmd += ["--dair"] if a.dair else []
            cmd += ["--conv-decoder", *map(str, a.conv_decoder)] if a.conv_decoder else []
            cmd += ["--broadcast-decoder", *map(str, a.broadcast_decoder)] if a.broadcast_decoder else []
            cmd += ["--template-decoder", str(a.template_decoder)] if a.template_decoder else []
            cmd += ["--object-colour", a.object_colour] if a.object_colour else []
            cmd += ["--estimator", a.estimator] if a.estimator else []
            cmd += ["--num-particles", str(a.num_particles)] if a.num_particles else []
            cmd += ["--compute-dtype", a.compute_dtype] if a.compute_dtype else []
            cmd += ["--system-allocator"] if a.system_allocator else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            results.append(r)
            print(
                f"{name:16s} {label(r)} K={k}: {r['steps_per_sec']:.2f} steps/s ({r['sec_per_step'] * 1e3:.0f} ms), "
                f"{r['gflop_per_step']:.1f} GFLOP/step, 100k steps {r['hours_for_100k_steps']:.1f} h, "
                f"compile {r['compile_sec']:.0f} s, peak {r['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    if a.json:
        suffix = ("_dair" if a.dair else "") + ("_convdec" if a.conv_decoder else "")
        suffix += "_broadcast" if a.broadcast_decoder else ""
        suffix += "_template" if a.template_decoder else ""
        suffix += f"_colour_{a.object_colour}" if a.object_colour else ""
        suffix += f"_{a.estimator}{a.num_particles or ''}" if a.estimator else ""
        suffix += f"_{a.compute_dtype}" if a.compute_dtype else ""
        suffix += "_system_allocator" if a.system_allocator else ""
        path = HERE / "results" / f"{a.device}_dataset_recipes{suffix}.json"
        path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "cases": results}, indent=1))
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
