"""Roofline of the AIR training step: its floor from this machine's matmul and memory speeds.

Usage:  python benchmarks/roofline.py [--batch-size 64] [--steps 30] [--warmup 5] [--min-time 0.05]
                                      [--repeats 3] [--stream-mb 256] [--device cpu|gpu|tpu]
                                      [--profile DIR] [--hlo-summary] [--json]
                                      [--compute-dtype float32|bfloat16]

Measures, in one process, with the tutorial networks (``AIRConfig.tutorial()``):

(a) matmul throughput (operands of ``--compute-dtype``) at every matmul shape of the training step (:func:`step_matmuls`):
    each forward product X (m x k) @ W (k x n) with its two gradient products dX = dY @ W^T
    (m x n)(n x k) and dW = X^T @ dY (k x m)(m x n). The gradients with respect to an image are
    listed but not counted (the image projections' dX, the crop's rows' dW: the image is data; the
    crop's dW was counted until 2026-12-08), as in ``svi_step.py --flops``, whose analytic total
    this list reproduces. A shape's time is the median over ``--repeats`` of a compiled loop of R products
    (R chosen so that one loop runs >= ``--min-time`` s; each product feeds one element of the
    next one's input, so XLA cannot hoist it), so dispatch costs are not counted;
(b) streaming memory bandwidth: a jitted ``a * 0.5 + b`` over float32 arrays of ``--stream-mb`` MB
    written back into ``a`` (donated, so no fresh pages), bytes = 2 reads + 1 write;
(c) the optimiser's traffic: Adam reads p, g, m, v and writes p, m, v: 7 x 4 bytes per parameter,
    the parameter count from the real params tree (``jax.eval_shape`` of ``svi.init``).

``--compute-dtype bfloat16`` measures the step of ``AIRConfig.compute_dtype="bfloat16"`` against a
floor whose dense products are timed as that step runs them (bfloat16 operands, float32 product,
``numpyro_air.core.nets.bf16_matmul``); the spatial transformer's products stay float32 at HIGHEST
precision, as in the model, and Adam's bytes are the same (float32 parameters and moments).

The step's floor = sum(count x FLOPs / FLOP/s measured at that shape) + Adam bytes / bandwidth,
printed beside the measured median time of the bare step ``jit_update(svi, cfg)`` (state donated) (timed as
``svi_step.py`` does: a pool of batches on the device, each step blocked) and the fraction
floor / measured. Element-wise work other than Adam (activations, log-probs, the STN's weights)
is not in the floor.

``--profile DIR`` writes a ``jax.profiler`` trace of a few compiled steps to DIR (open it with
TensorBoard's profile plugin or Perfetto); ``--hlo-summary`` counts the operations of the
compiled step's optimized HLO (``compiled.as_text()``) by opcode, in the entry computation, in
while-loop bodies and inside fusions, and lists the most frequent dot shapes.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_allocator_option, apply_allocator  # noqa: E402
from machine import cpu_model as _cpu_model
from machine import nproc as _nproc
from machine import pick_device as _pick_device


# ----------------------------------------------------------------------------- the step's matmuls
def _forward_products(cfg, B: int) -> list:
    """(name, (batch, m, k, n), count per step, data operand, highest) of the forward pass; the
    data operand ("x": the left, "w": the right, None) is an image, whose gradient the step does
    not compute."""
    if cfg.embed_net is not None:
        raise ValueError("step_matmuls covers configs without an embed net (the tutorial's)")
    T, H, w, P, z = cfg.num_steps, cfg.rnn_hidden_size, cfg.window_size, cfg.image_size, cfg.z_what_size
    nets = 2 if cfg.uses_baseline_nets else 1  # guide LSTM (+ baseline LSTM)
    lat = 3 + z + 1
    out = [
        (f"LSTM image projection x{nets}", (1, B, P * P, 4 * H), nets, "x", False),
        (f"LSTM latent input x{nets}", (1, B, lat, 4 * H), T * nets, None, False),
        (f"LSTM hidden x{nets}", (1, B, H, 4 * H), T * nets, None, False),
    ]

    def mlp(name, sizes):
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            out.append((f"{name} layer {i}", (1, B, a, b), T, None, False))

    mlp("predict", (H,) + tuple(cfg.predict_net) + (7,))
    if cfg.uses_baseline_nets:
        mlp("baseline predict", (H,) + tuple(cfg.bl_predict_net) + (1,))
    mlp("encoder", (w * w,) + tuple(cfg.encoder_net) + (2 * z,))
    mlp("decoder", (z,) + tuple(cfg.decoder_net) + (w * w,))
    # separable STN (numpyro_air.core.transform._sample): rows then columns, batched over images;
    # the crop's rows multiply the image (data). The crop runs as gathers of its taps since
    # 2026-11-26 (transform._sample_taps); its products stay here as the cost of the same sampling.
    out += [
        ("STN image->window rows", (B, w, P, P), T, "w", True),
        ("STN image->window cols", (B, w, P, w), T, None, True),
        ("STN window->image rows", (B, P, w, w), T, None, True),
        ("STN window->image cols", (B, P, w, P), T, None, True),
    ]
    return out


def step_matmuls(cfg, B: int) -> list:
    """Every matmul of one training step: forward, dX and dW of each forward product.

    Returns dicts with ``name``, ``pass`` ("fwd", "dX", "dW"), ``shape`` (batch, m, k, n) of an
    (m x k) @ (k x n) product repeated over ``batch``, ``count`` per step, ``counted`` (False for
    the gradient w.r.t. data, which the step does not compute), ``highest`` (the STN's matmuls
    run at HIGHEST precision) and ``flops`` = count x 2 x batch x m x k x n (0 if not counted).
    Backward = 2 x forward, except the products with an image operand (one gradient only: the
    image projections, the crop's rows), the convention of ``svi_step.py --flops``.
    """
    rows = []
    for name, (b, m, k, n), count, data, highest in _forward_products(cfg, B):
        for pss, shape, counted in (
            ("fwd", (b, m, k, n), True),
            ("dX", (b, m, n, k), data != "x"),
            ("dW", (b, k, m, n), data != "w"),
        ):
            flops = count * 2 * math.prod(shape) if counted else 0
            rows.append(
                {
                    "name": name,
                    "pass": pss,
                    "shape": shape,
                    "count": count,
                    "counted": counted,
                    "highest": highest,
                    "flops": flops,
                }
            )
    return rows


# ----------------------------------------------------------------------------- measurements
def _loop_of_products(highest: bool):
    """jit(x, w, reps) -> x after ``reps`` products x @ w (float32 products of operands in x's
    dtype), each writing tanh of one element of the product into x[0, ..., 0] (an O(1) in-place
    update that makes every product depend on the previous one)."""
    prec = jax.lax.Precision.HIGHEST if highest else None

    def body(_, x_w):
        x, w = x_w
        y = jnp.matmul(x, w, precision=prec, preferred_element_type=jnp.float32)
        corner = (0,) * x.ndim
        return x.at[corner].set(jnp.tanh(y[corner]).astype(x.dtype)), w

    return jax.jit(lambda x, w, reps: jax.lax.fori_loop(0, reps, body, (x, w))[0])


def matmul_seconds(shape, device, min_time: float, repeats: int, highest: bool = False, dtype: str = "float32") -> float:
    """Median seconds of one product of ``shape`` = (batch, m, k, n) on ``device``: operands in
    ``dtype`` (float32 or bfloat16), the product in float32."""
    b, m, k, n = shape
    rng = np.random.default_rng(0)
    lead = (b,) if b > 1 else ()
    x = jax.device_put(jnp.asarray(rng.standard_normal(lead + (m, k), np.float32), dtype), device)
    w = jax.device_put(jnp.asarray(rng.standard_normal(lead + (k, n), np.float32) / np.sqrt(k), dtype), device)
    run = _loop_of_products(highest)
    jax.block_until_ready(run(x, w, 1))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(run(x, w, 1))
    one = max(time.perf_counter() - t0, 1e-7)
    reps = int(min(max(1, math.ceil(min_time / one)), 1_000_000))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(x, w, reps))
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def stream_bandwidth(device, megabytes: float, repeats: int) -> dict:
    """Bytes/s of ``a * 0.5 + b`` over two float32 arrays of ``megabytes`` MB (read 2, write 1)."""
    n = max(1, int(megabytes * 1e6 / 4))
    a = jax.device_put(np.ones(n, np.float32), device)
    b = jax.device_put(np.full(n, 0.25, np.float32), device)
    f = jax.jit(lambda a, b: a * 0.5 + b, donate_argnums=0)
    a = jax.block_until_ready(f(a, b))  # compile + first touch
    times = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        a = jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"array_bytes": 4 * n, "bytes_moved": 3 * 4 * n, "sec": sec, "bytes_per_sec": 3 * 4 * n / sec}


def build_bare_step(batch: int, device, seed: int = 0, compute_dtype: str = "float32"):
    """(step_fn, state, pool, svi, cfg): the bare step ``jit_update(svi, cfg)`` (state donated) of
    the tutorial recipe (dense-layer operands in ``compute_dtype``), its state on ``device`` and 4
    random (B, 50, 50) batches already there, as ``svi_step.py`` builds them."""
    from numpyro_air import AIRConfig
    from numpyro_air.train.recipes import OptimConfig
    from numpyro_air.train.svi import jit_update, make_svi

    cfg = AIRConfig.tutorial(compute_dtype=compute_dtype)
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.image_size, cfg.image_size)
    with jax.default_device(device):
        pool = [jax.device_put(rng.uniform(0, 1, shape).astype(np.float32), device) for _ in range(4)]
        svi = make_svi(cfg, OptimConfig(learning_rate=1e-4, baseline_learning_rate=0.1))  # tutorial lrs
        state = jax.device_put(jax.jit(svi.init)(jax.random.PRNGKey(seed), pool[0]), device)
    return jit_update(svi, cfg), jax.block_until_ready(state), pool, svi, cfg


def time_bare_step(step_fn, state, pool, steps: int, warmup: int, device):
    """(per-step seconds of ``steps`` blocked steps after compile + ``warmup``, compile seconds, state)."""
    ids = [jax.device_put(np.int32(i), device) for i in range(1, steps + warmup + 2)]
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(step_fn(state, pool[0], ids[0]))
    compile_sec = time.perf_counter() - t0
    times = []
    for i in range(1, steps + warmup + 1):
        t0 = time.perf_counter()
        state, _ = jax.block_until_ready(step_fn(state, pool[i % 4], ids[i]))
        if i > warmup:
            times.append(time.perf_counter() - t0)
    return times, compile_sec, state


def param_count(svi, example) -> int:
    """Number of trained parameters (all leaves of the params tree)."""
    shapes = jax.eval_shape(lambda k, x: svi.get_params(svi.init(k, x)), jax.random.PRNGKey(0), example)
    return int(sum(math.prod(s.shape) for s in jax.tree.leaves(shapes)))


# ----------------------------------------------------------------------------- profile, HLO
def write_profile(step_fn, state, pool, device, out_dir: str, steps: int = 5) -> list:
    """A ``jax.profiler`` trace of ``steps`` compiled steps under ``out_dir``; returns its files."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    state, _ = jax.block_until_ready(step_fn(state, pool[0], jax.device_put(np.int32(1), device)))  # compiled
    with jax.profiler.trace(out_dir):
        for i in range(steps):
            with jax.profiler.StepTraceAnnotation("air_step", step_num=i):
                state, _ = jax.block_until_ready(step_fn(state, pool[i % 4], jax.device_put(np.int32(i + 2), device)))
    return sorted(str(p) for p in Path(out_dir).rglob("*") if p.is_file())


_OPCODE = re.compile(r"(?:^|\s)([a-z][a-z0-9\-_]*)\(")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_DEF = re.compile(r"^(?:ROOT\s+)?%?([\w.\-]+) = ([a-z]+\d*\[[\d,]*\])?")
_REFS = {"fusion": re.compile(r"calls=%?([\w.\-]+)"), "while": re.compile(r"body=%?([\w.\-]+)")}
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "f64": 8, "s64": 8, "u64": 8, "pred": 1, "u8": 1, "s8": 1}


def _instructions(hlo_text: str) -> dict:
    """{computation: (is_entry, [(opcode, line)], {instruction name: array shape})} of HLO text."""
    comps, current = {}, None
    for line in hlo_text.splitlines():
        if not line.startswith((" ", "\t")):
            m = _HEADER.match(line)
            current = m.group(2) if m else None
            if current:
                comps[current] = (bool(m.group(1)), [], {})
            continue
        line = line.strip()
        if current and " = " in line:
            m = _OPCODE.search(line.split(" = ", 1)[1])
            if m:
                comps[current][1].append((m.group(1), line))
            d = _DEF.match(line)
            if d and d.group(2):
                comps[current][2][d.group(1)] = d.group(2)
    return comps


def _shape_bytes(shape: str) -> int:
    dtype, dims = shape.split("[", 1)
    return _BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.rstrip("]").split(",") if d)


def _dot_label(line: str, shapes: dict) -> str:
    """'f32[64,1024] = f32[64,2500] . f32[2500,1024] (AIRLSTM.step/hh)' from an HLO dot line."""
    d = _DEF.match(line)
    operands = re.search(r"dot\(([^)]*)\)", line)
    names = [o.strip().split()[-1].lstrip("%") for o in operands.group(1).split(",")] if operands else []
    ins = " . ".join(shapes.get(n, "?") for n in names[:2])
    op = re.search(r'op_name="([^"]*)"', line)
    where = "/".join(op.group(1).split("/")[-3:-1]) if op else ""
    return f"{d.group(2) if d else '?'} = {ins} ({where})"


def _roles(comps: dict) -> dict:
    """{computation: "fusion bodies" | "while bodies"} for the computations that fusions / whiles call."""
    role = {}
    for _, instrs, _ in comps.values():
        for op, line in instrs:
            m = _REFS[op].search(line) if op in _REFS else None
            if m:
                role[m.group(1)] = "fusion bodies" if op == "fusion" else "while bodies"
    return role


def hlo_summary(hlo_text: str, top: int = 12) -> dict:
    """Opcode counts of the optimized HLO by where they run: the entry computation, while-loop
    bodies (the scan over object steps, the RNG's loops), fusion bodies; bytes copied by ``copy``
    ops; fusion kinds; the most frequent dots with their shapes and source op."""
    comps = _instructions(hlo_text)
    counts = {"entry": Counter(), "while bodies": Counter(), "fusion bodies": Counter()}
    role = _roles(comps)
    fusion_kinds, dots, copy_bytes = Counter(), Counter(), Counter()
    for name, (is_entry, instrs, shapes) in comps.items():
        where = "entry" if is_entry else role.get(name)
        if where is None:
            continue  # reduction helpers, loop conditions, ...
        for op, line in instrs:
            counts[where][op] += 1
            if op == "fusion":
                kind = re.search(r"kind=(k\w+)", line)
                custom = re.search(r'"kind":"([^"]+)"', line)
                fusion_kinds[(kind.group(1) if kind else "?") + (f"({custom.group(1)})" if custom else "")] += 1
            elif op == "dot":
                dots[f"{where}: {_dot_label(line, shapes)}"] += 1
            elif op == "copy" and _DEF.match(line).group(2):
                copy_bytes[where] += _shape_bytes(_DEF.match(line).group(2))
    categories = (
        "dot",
        "fusion",
        "while",
        "copy",
        "transpose",
        "custom-call",
        "reduce",
        "broadcast",
        "dynamic-slice",
        "dynamic-update-slice",
        "gather",
        "scatter",
        "convolution",
    )
    table = {
        w: {c: n.get(c, 0) for c in categories}
        | {"other": sum(v for k, v in n.items() if k not in categories), "total": sum(n.values())}
        for w, n in counts.items()
    }
    return {
        "by_location": table,
        "copy_bytes": dict(copy_bytes),
        "fusion_kinds": dict(fusion_kinds),
        "top_dots": dots.most_common(top),
        "computations": len(comps),
        "hlo_chars": len(hlo_text),
    }


# ----------------------------------------------------------------------------- main
def measure_matmuls(rows: list, device, min_time: float, repeats: int, dtype: str = "float32") -> dict:
    """Seconds per product for each distinct (shape, precision) in ``rows``: the HIGHEST-precision
    products (the spatial transformer's) in float32, the others with ``dtype`` operands."""
    out = {}
    for r in rows:
        key = (r["shape"], r["highest"])
        if key not in out:
            operands = "float32" if r["highest"] else dtype
            out[key] = matmul_seconds(r["shape"], device, min_time, repeats, r["highest"], operands)
    return out


def floor_report(rows: list, seconds: dict, params: int, bandwidth: float) -> dict:
    """Per-matmul floor times and the step's total floor."""
    for r in rows:
        sec = seconds[(r["shape"], r["highest"])]
        r["sec_per_product"] = sec
        r["gflops_per_sec"] = 2 * math.prod(r["shape"]) / sec / 1e9
        r["floor_sec"] = r["count"] * sec if r["counted"] else 0.0
        r["shape"] = list(r["shape"])
    matmul_floor = sum(r["floor_sec"] for r in rows)
    adam_bytes = 7 * 4 * params
    return {
        "matmul_flops_per_step": sum(r["flops"] for r in rows),
        "matmul_floor_sec": matmul_floor,
        "adam_bytes_per_step": adam_bytes,
        "adam_floor_sec": adam_bytes / bandwidth,
        "floor_sec": matmul_floor + adam_bytes / bandwidth,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="timed steps of the bare step (median reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps after compilation")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds of one timed loop of matmuls")
    ap.add_argument("--repeats", type=int, default=3, help="timed loops per matmul shape (median)")
    ap.add_argument("--stream-mb", type=float, default=256.0, help="MB per array of the bandwidth test")
    ap.add_argument("--device", choices=("cpu", "gpu", "tpu"), default=None, help="default: JAX's default backend")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", metavar="DIR", help="write a jax.profiler trace of a few compiled steps to DIR")
    ap.add_argument("--hlo-summary", action="store_true", help="summarise the compiled step's optimized HLO")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the step's dense-layer operands, and those of the floor's dense products",
    )
    add_allocator_option(ap)
    args = ap.parse_args(argv)
    allocator = apply_allocator(args.system_allocator)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.repeats < 1 or args.min_time <= 0:
        ap.error("--batch-size, --steps, --repeats must be >= 1, --warmup >= 0, --min-time > 0")

    from svi_step import flops_report

    device = _pick_device(args.device)
    B = args.batch_size
    step_fn, state, pool, svi, cfg = build_bare_step(B, device, args.seed, args.compute_dtype)
    rows = step_matmuls(cfg, B)
    with jax.default_device(device):
        seconds = measure_matmuls(rows, device, args.min_time, args.repeats, args.compute_dtype)
        stream = stream_bandwidth(device, args.stream_mb, args.repeats)
        params = param_count(svi, pool[0])
        times, compile_sec, state = time_bare_step(step_fn, state, pool, args.steps, args.warmup, device)
    res = {
        "batch_size": B,
        "config": "AIRConfig.tutorial()",
        "compute_dtype": args.compute_dtype,
        "device": str(device),
        "backend": device.platform,
        "device_kind": getattr(device, "device_kind", None),
        "cpu_model": _cpu_model(),
        "allocator": allocator,
        "nproc": _nproc(),
        "jax_version": jax.__version__,
        "param_count": params,
        "stream": stream,
        "matmuls": rows,
    }
    res |= floor_report(rows, seconds, params, stream["bytes_per_sec"])
    sec = statistics.median(times)
    res |= {
        "step_sec_median": sec,
        "step_sec_min": min(times),
        "step_compile_sec": compile_sec,
        "steps": args.steps,
        "warmup": args.warmup,
        "fraction_of_floor_reached": res["floor_sec"] / sec,
        "achieved_matmul_gflops_per_sec": res["matmul_flops_per_step"] / sec / 1e9,
        "svi_step_analytic_train_flops": flops_report(cfg, B)["analytic_train_flops_per_step"],
    }
    if args.hlo_summary:
        res["hlo_summary"] = hlo_summary(step_fn.lower(state, pool[0], jnp.int32(1)).compile().as_text())
    if args.profile:
        res["profile_files"] = write_profile(step_fn, state, pool, device, args.profile)
    print(json.dumps(res) if args.json else _text(res))
    return res


def _text(r: dict) -> str:
    out = [
        f"device {r['device']} ({r['backend']}), cpu {r['cpu_model']}, nproc {r['nproc']}, jax {r['jax_version']}",
        f"AIR training step, tutorial config, batch {r['batch_size']}, {r['compute_dtype']} dense operands: "
        "every matmul at its measured speed",
        f"{'matmul':<30} {'pass':<4} {'shape (batch x m x k x n)':<26} {'count':>5} {'GFLOP':>7} {'GFLOP/s':>8} {'floor ms':>8}",
    ]
    for m in r["matmuls"]:
        shape = " x ".join(map(str, m["shape"]))
        gf = f"{m['flops'] / 1e9:7.3f}" if m["counted"] else "  (data)"
        out.append(
            f"{m['name']:<30} {m['pass']:<4} {shape:<26} {m['count']:>5} {gf:>7} {m['gflops_per_sec']:>8.1f} "
            f"{m['floor_sec'] * 1e3:>8.2f}"
        )
    s = r["stream"]
    out += [
        f"matmuls: {r['matmul_flops_per_step'] / 1e9:.2f} GFLOP per step (svi_step.py analytic: "
        f"{r['svi_step_analytic_train_flops'] / 1e9:.2f}), floor {r['matmul_floor_sec'] * 1e3:.1f} ms",
        f"bandwidth: {s['bytes_per_sec'] / 1e9:.1f} GB/s (a*0.5+b, {s['array_bytes'] / 1e6:.0f} MB arrays); Adam over "
        f"{r['param_count'] / 1e6:.2f} M params moves {r['adam_bytes_per_step'] / 1e6:.0f} MB: "
        f"floor {r['adam_floor_sec'] * 1e3:.1f} ms",
        f"step floor {r['floor_sec'] * 1e3:.1f} ms; measured bare step median {r['step_sec_median'] * 1e3:.1f} ms "
        f"(min {r['step_sec_min'] * 1e3:.1f}, {r['steps']} steps): {100 * r['fraction_of_floor_reached']:.0f}% of the "
        f"floor's speed; matmuls run at {r['achieved_matmul_gflops_per_sec']:.1f} GFLOP/s over the whole step",
    ]
    if "hlo_summary" in r:
        out += _hlo_text(r["hlo_summary"])
    if "profile_files" in r:
        out.append("profile: " + ", ".join(r["profile_files"]))
    return "\n".join(out)


def _hlo_text(h: dict) -> list:
    cols = list(h["by_location"])
    cats = [c for c in next(iter(h["by_location"].values())) if any(h["by_location"][w][c] for w in cols)]
    out = [
        "optimized HLO of the step: operations by opcode and where they sit",
        f"{'opcode':<22}" + "".join(f"{w:>15}" for w in cols),
    ]
    out += [f"{c:<22}" + "".join(f"{h['by_location'][w][c]:>15}" for w in cols) for c in cats]
    out.append("bytes written by copy ops: " + ", ".join(f"{w} {b / 1e6:.2f} MB" for w, b in h["copy_bytes"].items()))
    out.append("fusion kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(h["fusion_kinds"].items())))
    out.append("most frequent dots:")
    out += [f"  {n:>3} x {sig}" for sig, n in h["top_dots"]]
    return out


if __name__ == "__main__":
    main()
