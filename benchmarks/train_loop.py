"""Steps/s of the training loop against the bare step it runs (tutorial networks, same machine).

Usage:  python benchmarks/train_loop.py [--batch-size 64] [--steps 200] [--warmup 10] [--num-seeds 1]
                                        [--num-images 6000] [--repeats 3] [--device cpu|gpu|tpu] [--json]

Three ways to run ``--steps`` optimisation steps of K = ``--num-seeds`` seeds (one step = K x B images):

(a) bare: the jitted update, ``jit_update(svi, config)`` (state donated) (K > 1: ``over_seeds`` of
    ``make_update``, the loop's vmap, over the stacked states), fed a batch already on the device (a pool of 4 random batches), as
    ``svi_step.py`` and ``seeds.py`` time it;
(b) step + BatchSource: the loop's own step ``numpyro_air.train.step.make_step(svi, config, K)`` with the uint8 data set
    (``--num-images`` random 50x50 canvases) on the device and each step's (K, B) indices from
    ``numpyro_air.train.step.BatchSource``: the host computes the indices and ships them, the step gathers
    and scales the batch on the device: exactly the loop's per-step call;
(c) train(): the real ``numpyro_air.train.loop.train`` on the same data set, evaluation, checkpoints,
    figures and the progress bar off. It writes a "train" row to ``metrics.jsonl`` every
    ``progress_every`` steps, after reading back that window's losses (a device sync), with the
    wall time since the run started. Steps/s = (last row's step - first row's step) / (difference
    of their wall times): compilation and warm-up (in the first window) and the final checkpoint,
    evaluation and figures (after the last row) fall outside. progress_every is 100 (the CLI's
    default) or ``--steps`` / 4 if smaller, and the run has one window more than ``--steps``.

(a) and (b) are timed the way the loop runs: after compilation and ``--warmup`` steps, ``--steps``
steps are dispatched back to back and the clock stops after one block at the end; the median of
``--repeats`` such runs, (a) and (b) alternating. Reported: steps/s, images/s and the ratios
loop / bare for (b) and (c).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_allocator_option, apply_allocator  # noqa: E402
from machine import cpu_model as _cpu_model
from machine import nproc as _nproc
from machine import pick_device as _pick_device


def _timed_run(step, state, args_of, start: int, steps: int):
    """Dispatch steps start .. start+steps-1 back to back, block once; (seconds, state)."""
    t0 = time.perf_counter()
    for i in range(start, start + steps):
        state, info = step(state, *args_of(i))
    jax.block_until_ready((state, info))
    return time.perf_counter() - t0, state


def bare_runner(svi, air, K: int, batch: int, device, seed: int):
    """(step, state, args_of) of the bare update fed a pool of 4 pre-placed batches."""
    from numpyro_air.train.step import over_seeds
    from numpyro_air.train.svi import jit_update, make_update

    rng = np.random.default_rng(seed)
    lead = (K,) if K > 1 else ()
    pool = [jax.device_put(rng.uniform(0, 1, lead + (batch, 50, 50)).astype(np.float32), device) for _ in range(4)]
    if K == 1:
        step, state = jit_update(svi, air), jax.jit(svi.init)(jax.random.PRNGKey(seed), pool[0])
    else:
        step = jax.jit(over_seeds(make_update(svi, air), K, sequential=air.uses_convolutions), donate_argnums=0)
        keys = jnp.stack([jax.random.PRNGKey(seed + k) for k in range(K)])
        state = jax.jit(jax.vmap(svi.init, in_axes=(0, None)))(keys, pool[0][0])
    state = jax.device_put(state, device)
    return step, state, lambda i: (pool[i % 4], jnp.asarray(i + 1, jnp.int32))


def loop_runner(svi, air, tcfg, images: np.ndarray):
    """(step, states, args_of) of the loop's step and its BatchSource (data set on the device)."""
    from numpyro_air.data import to_float
    from numpyro_air.train.loop import initial_states
    from numpyro_air.train.step import BatchSource, make_step

    batches = BatchSource(images, tcfg.batch_size, [tcfg.seed_of(k) for k in range(tcfg.num_seeds)])
    states, _, _, _ = initial_states(svi, tcfg, jnp.asarray(to_float(images[: tcfg.batch_size])))
    return make_step(svi, air, tcfg.num_seeds), states, lambda i: (batches(i), jnp.asarray(i + 1, jnp.int32))


def time_step_paths(svi, air, tcfg, images, device, steps: int, warmup: int, repeats: int) -> dict:
    """Median seconds of ``steps`` steps for (a) bare and (b) step + BatchSource, alternating."""
    runners = {
        "bare": bare_runner(svi, air, tcfg.num_seeds, tcfg.batch_size, device, tcfg.seed),
        "step_feeder": loop_runner(svi, air, tcfg, images),
    }
    states, pos, out = {}, {}, {name: {"runs_sec": []} for name in runners}
    for name, (step, state, args_of) in runners.items():
        t0 = time.perf_counter()
        state, _ = jax.block_until_ready(step(state, *args_of(0)))
        out[name]["compile_sec"] = time.perf_counter() - t0
        _, states[name] = _timed_run(step, state, args_of, 1, warmup)
        pos[name] = 1 + warmup
    for _ in range(repeats):
        for name, (step, _, args_of) in runners.items():
            sec, states[name] = _timed_run(step, states[name], args_of, pos[name], steps)
            pos[name] += steps
            out[name]["runs_sec"].append(sec)
    for r in out.values():
        r["steps_per_sec"] = steps / statistics.median(r["runs_sec"])
    return out


def time_train(air, opt, tcfg, images: np.ndarray, steps: int) -> dict:
    """Steps/s of ``numpyro_air.train.loop.train`` between its first and last "train" log rows."""
    from numpyro_air.train.loop import train

    every = max(1, min(100, steps // 4))
    windows = -(-steps // every)  # ceil
    tcfg = dataclasses.replace(
        tcfg,
        num_steps=every * (windows + 1),
        progress_every=every,
        eval_every=0,
        save_every=0,
        viz_every=0,
        eval_train_images=min(len(images), 256),
        eval_batch_size=256,
    )
    data = SimpleNamespace(images=images, counts=np.zeros(len(images), np.int32))
    with tempfile.TemporaryDirectory(prefix="train_loop_") as out:
        t0 = time.perf_counter()
        train(air, opt, tcfg, data, None, out, progress=False, log=lambda msg: None)
        total = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("kind") == "train" and r.get("seed") == tcfg.seed_of(0)]
    first, last = rows[0], rows[-1]
    timed = last["step"] - first["step"]
    return {
        "num_steps": tcfg.num_steps,
        "progress_every": every,
        "timed_steps": timed,
        "timed_sec": last["wall_time"] - first["wall_time"],
        "first_window_sec": first["wall_time"],
        "steps_per_sec": timed / (last["wall_time"] - first["wall_time"]),
        "total_call_sec": total,
        "skipped_steps": int(sum(r.get("skipped", 0) for r in rows)),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps after compilation ((a), (b))")
    ap.add_argument("--num-seeds", type=int, default=1, help="K seeds per step (vmapped when > 1)")
    ap.add_argument("--num-images", type=int, default=6000, help="synthetic uint8 50x50 canvases")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of (a) and (b) (median)")
    ap.add_argument("--device", choices=("cpu", "gpu", "tpu"), default=None, help="default: JAX's default backend")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    add_allocator_option(ap)
    args = ap.parse_args(argv)
    allocator = apply_allocator(args.system_allocator)
    if min(args.batch_size, args.steps, args.num_seeds, args.repeats) < 1 or args.warmup < 0:
        ap.error("--batch-size, --steps, --num-seeds, --repeats must be >= 1, --warmup >= 0")
    if args.num_images < args.batch_size:
        ap.error("--num-images must be >= --batch-size")

    from numpyro_air import Recipe, make_svi
    from numpyro_air.train.loop import TrainConfig

    device = _pick_device(args.device)
    recipe = Recipe.tutorial()
    tcfg = TrainConfig(batch_size=args.batch_size, seed=args.seed, num_seeds=args.num_seeds)
    images = np.random.default_rng(args.seed).integers(0, 256, (args.num_images, 50, 50), dtype=np.uint8)
    with jax.default_device(device):
        paths = time_step_paths(make_svi(recipe), recipe.air, tcfg, images, device, args.steps, args.warmup, args.repeats)
        paths["train"] = time_train(recipe.air, recipe.optim, tcfg, images, args.steps)
    bare = paths["bare"]["steps_per_sec"]
    for r in paths.values():
        r["images_per_sec"] = r["steps_per_sec"] * args.batch_size * args.num_seeds
        r["ratio_to_bare"] = r["steps_per_sec"] / bare
    res = {
        "paths": paths,
        "batch_size": args.batch_size,
        "num_seeds": args.num_seeds,
        "num_images": args.num_images,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "config": "Recipe.tutorial()",
        "device": str(device),
        "backend": device.platform,
        "device_kind": getattr(device, "device_kind", None),
        "cpu_model": _cpu_model(),
        "nproc": _nproc(),
        "allocator": allocator,
        "jax_version": jax.__version__,
    }
    print(json.dumps(res) if args.json else _text(res))
    return res


def _text(r: dict) -> str:
    names = {"bare": "(a) bare step, pre-placed batch", "step_feeder": "(b) make_step + BatchSource", "train": "(c) train() loop"}
    out = [
        f"device {r['device']} ({r['backend']}), cpu {r['cpu_model']}, nproc {r['nproc']}, jax {r['jax_version']}",
        f"tutorial recipe, batch {r['batch_size']} x {r['num_seeds']} seed(s), {r['num_images']} synthetic images, "
        f"{r['steps']} timed steps",
        f"{'path':<34} {'steps/s':>8} {'images/s':>9} {'ms/step':>8} {'vs bare':>8}",
    ]
    for key, p in r["paths"].items():
        out.append(
            f"{names[key]:<34} {p['steps_per_sec']:>8.2f} {p['images_per_sec']:>9.0f} "
            f"{1e3 / p['steps_per_sec']:>8.1f} {p['ratio_to_bare']:>8.2f}"
        )
    t = r["paths"]["train"]
    out.append(
        f"train(): {t['timed_steps']} steps between its first and last log rows (every {t['progress_every']}); "
        f"first window incl. compile {t['first_window_sec']:.1f} s, whole call {t['total_call_sec']:.1f} s"
    )
    return "\n".join(out)


if __name__ == "__main__":
    main()
