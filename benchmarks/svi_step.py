"""Time the jitted AIR training step (NVIL ELBO + two-group Adam) for the tutorial recipe.

Usage:  python benchmarks/svi_step.py [--batch-size 64] [--steps 50] [--warmup 5]
                                      [--device cpu|gpu|tpu] [--flops] [--json]

Builds ``AIRConfig.tutorial()`` (50x50 images, 28x28 window, LSTM 256, z_what 50, predict and
baseline MLPs of 200) with ``make_svi`` / ``jit_update(svi, cfg)`` (state donated), feeds
random images in [0, 1] of shape (B, 50, 50) (a pool of 4 batches already on the device, so no
host transfer is timed), and reports:

- ``compile_sec``: tracing + lowering + XLA compilation of the step (``lower().compile()``);
- ``sec_per_step``: the median wall time of one step over ``--steps`` steps after ``--warmup``
  (each step blocked with ``jax.block_until_ready``), and ``images_per_sec`` = B / that;
- with ``--flops``: XLA's FLOP count of the compiled step (``cost_analysis()``) and an analytic
  per-component count that shows the image projections (both LSTMs' input weights on the
  2500-pixel image) dominate and are computed once per image, not once per step.

``--json`` prints a single JSON object instead of text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_allocator_option, apply_allocator  # noqa: E402
from machine import cpu_model as _cpu_model
from machine import nproc as _nproc
from machine import pick_device as _pick_device


# ----------------------------------------------------------------------------- analytic FLOPs
def _mlp_macs(sizes) -> int:
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def analytic_macs(cfg) -> dict:
    """Multiply-accumulates of one forward pass, per image, by component.

    Returns {component: (macs, how_often)} where how_often is "once" (per image) or "per step"
    (already multiplied by num_steps). Element-wise work (activations, gates, log-probs, the
    STN's hat weights) is left out; it is a few percent.
    """
    T, H, w, P, z = cfg.num_steps, cfg.rnn_hidden_size, cfg.window_size, cfg.image_size, cfg.z_what_size
    pixels = P * P
    feat = pixels if cfg.embed_net is None else cfg.embed_net[-1]
    lat = 3 + z + 1
    nets = 2 if cfg.use_baselines else 1  # guide LSTM (+ baseline LSTM)
    out = {}
    if cfg.embed_net is not None:
        out["embed MLP (image -> features)"] = (nets * _mlp_macs((pixels,) + tuple(cfg.embed_net)), "once")
    out[f"LSTM image projection ({feat} x 4H) x{nets}"] = (nets * feat * 4 * H, "once")
    out[f"LSTM latent input ({lat} x 4H) x{nets}"] = (T * nets * lat * 4 * H, "per step")
    out[f"LSTM hidden ({H} x 4H) x{nets}"] = (T * nets * H * 4 * H, "per step")
    out["predict MLP"] = (T * _mlp_macs((H,) + tuple(cfg.predict_net) + (7,)), "per step")
    if cfg.use_baselines:
        out["baseline predict MLP"] = (T * _mlp_macs((H,) + tuple(cfg.bl_predict_net) + (1,)), "per step")
    out["encoder MLP (window -> z_what)"] = (T * _mlp_macs((w * w,) + tuple(cfg.encoder_net) + (2 * z,)), "per step")
    out["decoder MLP (z_what -> window)"] = (T * _mlp_macs((z,) + tuple(cfg.decoder_net) + (w * w,)), "per step")
    # separable STN: rows (out x in x in) then columns (out x in x out), both directions
    out["STN image -> window (guide)"] = (T * w * P * (P + w), "per step")
    out["STN window -> image (model)"] = (T * P * w * (w + P), "per step")
    return out


def crop_rows_macs(cfg) -> int:
    """Multiply-accumulates per image of the crop's row products (window rows x image rows x image
    columns, each step): one of their operands is the image, whose gradient the step does not take."""
    return cfg.num_steps * cfg.window_size * cfg.image_size * cfg.image_size


def flops_report(cfg, batch: int) -> dict:
    comps = analytic_macs(cfg)
    fwd_macs = sum(m for m, _ in comps.values())
    proj = {k: m for k, (m, how) in comps.items() if how == "once"}
    proj_macs = sum(proj.values())
    # training ~ forward + backward; backward ~ 2x forward (input and weight gradients), except
    # for the products with an image operand (the image projections, the crop's rows: 1x)
    crop = crop_rows_macs(cfg)
    train_flops_per_image = 2 * (3 * fwd_macs - proj_macs - crop)
    T = cfg.num_steps
    per_step_macs = fwd_macs - proj_macs
    # XLA's cost_analysis counts a while loop's body (the scan over steps) once, not T times
    xla_like = 2 * (3 * (proj_macs + per_step_macs / T) - proj_macs - crop / T)
    return {
        "components_fwd_macs_per_image": {k: m for k, (m, _) in comps.items()},
        "components_frequency": {k: how for k, (_, how) in comps.items()},
        "fwd_macs_per_image": fwd_macs,
        "image_projection_macs_per_image": proj_macs,
        "image_projection_share_of_fwd": proj_macs / fwd_macs,
        "fwd_macs_per_image_if_projection_recomputed_each_step": fwd_macs + (T - 1) * proj_macs,
        "analytic_train_flops_per_step": train_flops_per_image * batch,
        "analytic_train_flops_per_step_if_recomputed": (train_flops_per_image + 2 * 2 * (T - 1) * proj_macs) * batch,
        "analytic_train_flops_per_step_scan_body_once": xla_like * batch,
    }


def _xla_flops(compiled):
    try:
        ca = compiled.cost_analysis()
    except Exception as e:  # noqa: BLE001 (backend-specific; report, don't fail)
        return None, f"cost_analysis unavailable: {type(e).__name__}: {e}"
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None, "cost_analysis returned no 'flops'"
    return float(ca["flops"]), None


# ----------------------------------------------------------------------------- main
def _minor_faults() -> int:
    """Minor page faults of this process so far (fresh pages touched: a freed and re-mapped
    buffer costs one per 4 KiB page when it is written again)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--estimator",
        choices=("nvil", "nvil-normalised", "vimco", "rws", "concrete"),
        default="nvil",
        help="z_pres estimator of the step (tutorial networks otherwise)",
    )
    ap.add_argument("--dair", action="store_true", help="DAIR guide input (image minus reconstruction so far)")
    ap.add_argument("--residual-glimpse", action="store_true", help="with --dair: the glimpse encoder crops the residual")
    ap.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="operands of the dense layers (AIRConfig.compute_dtype; products stay float32)",
    )
    ap.add_argument(
        "--particles", type=int, default=None, help="ELBO particles (the K of VIMCO and RWS; default: the estimator's)"
    )
    ap.add_argument("--steps", type=int, default=50, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps after compilation")
    ap.add_argument("--device", choices=("cpu", "gpu", "tpu"), default=None, help="default: JAX's default backend")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flops", action="store_true", help="also report XLA's and an analytic FLOP count")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    add_allocator_option(ap)
    args = ap.parse_args(argv)
    allocator = apply_allocator(args.system_allocator)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--batch-size and --steps must be >= 1, --warmup >= 0")

    from numpyro_air import AIRConfig
    from numpyro_air.train.recipes import OptimConfig
    from numpyro_air.train.svi import jit_update, make_svi

    device = _pick_device(args.device)
    est = args.estimator.replace("-normalised", "")
    cfg = AIRConfig.tutorial(
        presence_estimator=est,
        guide_input="difference" if args.dair else "image",
        glimpse_input="residual" if args.residual_glimpse else "image",
        compute_dtype=args.compute_dtype,
    )
    particles = OptimConfig(num_particles=args.particles).for_estimator(est).num_particles
    B = args.batch_size
    rng = np.random.default_rng(args.seed)
    with jax.default_device(device):
        shape = (B, cfg.image_size, cfg.image_size)
        pool = [jax.device_put(rng.uniform(0, 1, shape).astype(np.float32), device) for _ in range(4)]
        n_total = 1 + args.warmup + args.steps
        step_ids = [jax.device_put(np.int32(i), device) for i in range(1, n_total + 1)]
        optim = OptimConfig(
            learning_rate=1e-4,
            baseline_learning_rate=0.1,
            num_particles=particles,
            normalize_signal=args.estimator == "nvil-normalised",
        )  # tutorial lrs
        svi = make_svi(cfg, optim)
        # commit the state to the device like the step's outputs, so the jit dispatch cache keeps
        # one entry (an uncommitted first state adds a second entry, though no retrace)
        state = jax.device_put(jax.jit(svi.init)(jax.random.PRNGKey(args.seed), pool[0]), device)
        jax.block_until_ready(state)
        step_fn = jit_update(svi, cfg)  # the bare step, state donated (the loop adds the on-device batch gather)

        t0 = time.perf_counter()
        lowered = step_fn.lower(state, pool[0], step_ids[0])
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        trace_sec, compile_sec = t1 - t0, t2 - t0
        # first call through the jitted function (retraces, reuses the compiled executable)
        t0 = time.perf_counter()
        state, info = jax.block_until_ready(step_fn(state, pool[0], step_ids[0]))
        first_call_sec = time.perf_counter() - t0

        for i in range(args.warmup):
            state, info = jax.block_until_ready(step_fn(state, pool[(1 + i) % 4], step_ids[1 + i]))
        times, skipped, losses = [], 0, []
        faults0 = _minor_faults()
        for i in range(args.steps):
            k = 1 + args.warmup + i
            t0 = time.perf_counter()
            state, info = jax.block_until_ready(step_fn(state, pool[k % 4], step_ids[k]))
            times.append(time.perf_counter() - t0)
            skipped += int(info.skipped)
            losses.append(float(info.loss))
        faults_per_step = (_minor_faults() - faults0) / args.steps
        cache_entries = step_fn._cache_size()

    sec = statistics.median(times)
    res = {
        "compile_sec": compile_sec,
        "sec_per_step": sec,
        "images_per_sec": B / sec,
        "batch_size": B,
        "estimator": args.estimator,
        "guide_input": cfg.guide_input,
        "glimpse_input": cfg.glimpse_input,
        "compute_dtype": cfg.compute_dtype,
        "particles": particles,
        "device": str(device),
        "device_kind": getattr(device, "device_kind", None),
        "backend": device.platform,
        "trace_sec": trace_sec,
        "first_call_sec": first_call_sec,
        "sec_per_step_mean": statistics.fmean(times),
        "sec_per_step_min": min(times),
        "sec_per_step_max": max(times),
        "minor_page_faults_per_step": faults_per_step,
        "steps": args.steps,
        "warmup": args.warmup,
        "skipped_steps": skipped,
        "jit_cache_entries": cache_entries,
        "loss_per_image_last": losses[-1],
        "config": "AIRConfig.tutorial()",
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "allocator": allocator,
        "nproc": _nproc(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if args.flops:
        xla, why = _xla_flops(compiled)
        rep = flops_report(cfg, B)
        res["xla_flops_per_step"] = xla
        if why:
            res["xla_flops_note"] = why
        res.update(rep)
        res["analytic_scan_body_once_over_xla"] = rep["analytic_train_flops_per_step_scan_body_once"] / xla if xla else None
        res["achieved_gflops_analytic"] = rep["analytic_train_flops_per_step"] / sec / 1e9

    if args.json:
        print(json.dumps(res))
    else:
        _print_text(res, cfg)
    return res


def _print_text(r: dict, cfg) -> None:
    print(
        f"device: {r['device']} ({r['backend']}), cpu: {r['cpu_model']}, nproc {r['nproc']}, "
        f"load {r['loadavg_1min']}, jax {r['jax_version']}, allocator {r['allocator']}"
    )
    print(f"AIR step, tutorial config, batch {r['batch_size']}:")
    print(f"  compile (trace {r['trace_sec']:.2f} s + XLA): {r['compile_sec']:.2f} s; first call {r['first_call_sec']:.2f} s")
    print(
        f"  median {r['sec_per_step'] * 1e3:.1f} ms/step over {r['steps']} steps (min {r['sec_per_step_min'] * 1e3:.1f}, "
        f"max {r['sec_per_step_max'] * 1e3:.1f}) -> {r['images_per_sec']:.0f} images/s; "
        f"skipped {r['skipped_steps']}, jit cache entries {r['jit_cache_entries']}, "
        f"{r['minor_page_faults_per_step']:.0f} minor page faults per step"
    )
    if "fwd_macs_per_image" in r:
        T = cfg.num_steps
        fwd = r["fwd_macs_per_image"]
        print(f"  analytic forward MACs per image (T = {T}):")
        for k, m in r["components_fwd_macs_per_image"].items():
            print(f"    {k:<42s} {m / 1e6:8.3f} M  {100 * m / fwd:5.1f}%  ({r['components_frequency'][k]})")
        print(f"    {'total':<42s} {fwd / 1e6:8.3f} M")
        print(
            f"  image projection: {100 * r['image_projection_share_of_fwd']:.0f}% of the forward pass, once per image; "
            f"recomputed at each of the {T} steps the forward would be "
            f"{r['fwd_macs_per_image_if_projection_recomputed_each_step'] / 1e6:.2f} M MACs "
            f"({r['fwd_macs_per_image_if_projection_recomputed_each_step'] / fwd:.2f}x)"
        )
        xla = r["xla_flops_per_step"]
        print(
            f"  train FLOPs per step: analytic ~{r['analytic_train_flops_per_step'] / 1e9:.2f} G "
            f"(~{r['analytic_train_flops_per_step_if_recomputed'] / 1e9:.2f} G if recomputed T times); "
            f"achieved ~{r['achieved_gflops_analytic']:.1f} GFLOP/s"
        )
        if xla:
            print(
                f"  XLA cost_analysis: {xla / 1e9:.2f} G per step; it counts the scan body once, not {T} times: "
                f"the analytic count done the same way is {r['analytic_train_flops_per_step_scan_body_once'] / 1e9:.2f} G "
                f"(ratio {r['analytic_scan_body_once_over_xla']:.2f}; the analytic count leaves out element-wise work and "
                f"Adam's per-parameter update, and XLA's count is backend-dependent)"
            )
        else:
            print(f"  XLA cost_analysis: {r.get('xla_flops_note', 'n/a')}")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
