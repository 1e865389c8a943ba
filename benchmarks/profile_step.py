"""Per-operation profile of the compiled training step, summarised by kind of work.

Usage:  python benchmarks/profile_step.py [--batch-size 64] [--steps 20] [--device cpu|gpu|tpu]
                                          [--top 15] [--trace-dir DIR] [--infer] [--json]
                                          [--compute-dtype float32|bfloat16]

Runs the bare step ``jit_update(svi, cfg)`` (state donated) of the tutorial recipe (as ``roofline.py`` and
``svi_step.py`` build it) under ``jax.profiler.trace`` for ``--steps`` steps after compilation,
reads the trace's events back, keeps the events whose name is an instruction of the compiled
step's optimized HLO, computes each event's *self* time (its duration minus the events nested in
it on the same thread: a ``while`` thunk contains its body's thunks) and sums them per step into:

- ``matmul``: ``dot`` instructions and library fusions (XNNPACK/YNNPACK, oneDNN) that hold a dot;
- ``optimiser``: element-wise work after the gradient (instructions whose source op is neither
  under ``jvp(...)`` nor ``transpose(...)``): Adam's moments and update, with the NaN guard's
  select of the new state fused into them (it cannot be timed apart);
- ``NaN guard (gradient sums)``: the guard's own reductions after the gradient (the sum of every
  gradient, the finiteness test);
- ``element-wise (forward/backward)``: the remaining fusions and element-wise ops of the ELBO and
  its gradient (activations, log-probabilities, the STN's interpolation weights, ...);
- ``dtype conversions``: converts alone or fused only with data movement (the bfloat16 operands
  of ``--compute-dtype bfloat16``);
- ``reductions``, ``copies / transposes / slices``, ``RNG`` (threefry), ``scan loop`` (the while
  thunks' own time: loop control, not their bodies), ``other``.

The total of self times can exceed the wall time per step when the runtime runs independent
thunks concurrently on the two cores; both are printed. Profiling adds a little overhead per
thunk, so the wall time here is above ``svi_step.py``'s.

``--infer`` profiles guide-only inference instead (``infer(..., reconstruct=False)`` with the
pretrained weights on held-out scenes, batch ``--batch-size``, e.g. 1000): there is no gradient,
so the "optimiser" category is empty and every element-wise fusion counts as forward work.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_allocator_option, apply_allocator, cpu_model, nproc, pick_device  # noqa: E402
from roofline import build_bare_step  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.+?) ([a-z][a-z0-9\-_]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
CATEGORIES = (
    "matmul",
    "optimiser (+ fused NaN-guard select)",
    "NaN guard (gradient sums)",
    "element-wise (forward/backward)",
    "reductions",
    "copies / transposes / slices",
    "dtype conversions",
    "RNG",
    "scan loop",
    "other",
)


def hlo_instructions(hlo_text: str) -> dict:
    """{instruction name: {"op", "shape", "op_name", "calls", "body_ops"}} of optimized HLO text;
    ``body_ops`` are the opcodes inside a fusion's called computation."""
    instrs, bodies, current = {}, defaultdict(set), None
    for line in hlo_text.splitlines():
        if not line.startswith((" ", "\t")):
            m = _HEADER.match(line)
            current = m.group(1) if m else None
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, op = m.groups()
        if current:
            bodies[current].add(op)
        src = re.search(r'op_name="([^"]*)"', line)
        calls = _CALLS.search(line)
        kind = re.search(r'"kind":"([^"]+)"', line)
        instrs[name] = {
            "op": op,
            "shape": shape,
            "op_name": src.group(1) if src else "",
            "calls": calls.group(1) if calls else None,
            "kind": kind.group(1) if kind else "",
        }
    for v in instrs.values():
        v["body_ops"] = sorted(bodies.get(v["calls"], ())) if v["calls"] else []
    return instrs


# ops that only move, reshape or select data
_MOVES = {
    "copy",
    "transpose",
    "bitcast",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
    "concatenate",
    "broadcast",
    "reshape",
    "parameter",
    "tuple",
    "get-tuple-element",
    "pad",
    "reverse",
    "fusion",
    "constant",
    "iota",
}


def categorize(ins: dict, forward_only: bool = False) -> str:
    """One of :data:`CATEGORIES` for an instruction of :func:`hlo_instructions`; with
    ``forward_only`` (a program without a gradient) nothing is optimiser or NaN-guard work."""
    op, src, body = ins["op"], ins["op_name"], set(ins["body_ops"]) | {ins["op"]}
    if op == "while":
        return "scan loop"
    if "dot" in body or "convolution" in body or "ynn" in ins["kind"] or "xnn" in ins["kind"] or "onednn" in ins["kind"]:
        return "matmul"
    if "threefry" in src or body & {"rng-bit-generator", "rng"}:
        return "RNG"
    if "convert" in body and body <= _MOVES | {"convert"}:
        return "dtype conversions"
    if body <= _MOVES:
        return "copies / transposes / slices"
    after_grad = not forward_only and bool(src) and "jvp(" not in src and "transpose(" not in src
    if after_grad and ("reduce" in body or "is_finite" in src):
        return "NaN guard (gradient sums)"
    if "reduce" in body and not body & {"select", "add", "multiply", "subtract", "divide", "sqrt"} - {"reduce"}:
        return "reductions"
    if after_grad:
        return "optimiser (+ fused NaN-guard select)"
    if op in ("reduce",):
        return "reductions"
    if op in (
        "fusion",
        "add",
        "multiply",
        "select",
        "subtract",
        "divide",
        "exponential",
        "log",
        "tanh",
        "maximum",
        "minimum",
        "compare",
        "negate",
        "logistic",
        "sqrt",
        "rsqrt",
        "power",
        "convert",
        "and",
        "or",
        "not",
    ):
        return "element-wise (forward/backward)"
    return "other"


def self_times(events: list) -> Counter:
    """{event name: summed self time in microseconds} of complete ("X") trace events, nesting per thread."""
    by_thread = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            by_thread[(e.get("pid"), e.get("tid"))].append((float(e["ts"]), float(e["dur"]), e["name"]))
    out = Counter()
    for evs in by_thread.values():
        evs.sort(key=lambda x: (x[0], -x[1]))
        stack = []  # (end, name) of the enclosing events
        for ts, dur, name in evs:
            while stack and stack[-1][0] <= ts + 1e-3:
                stack.pop()
            if stack:
                out[stack[-1][1]] -= dur  # the parent's self time excludes its children
            out[name] += dur
            stack.append((ts + dur, name))
    return out


def read_trace(trace_dir: str) -> list:
    files = sorted(Path(trace_dir).rglob("*.trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: did the profiler write a trace?")
    with gzip.open(files[-1]) as f:
        return json.load(f)["traceEvents"]


def summarize(events: list, instrs: dict, steps: int, top: int, forward_only: bool = False) -> dict:
    """Per-step milliseconds by category and the ``top`` instructions by self time."""
    st = self_times(events)
    per_cat, per_op = Counter(), []
    for name, us in st.items():
        if name in instrs:
            cat = categorize(instrs[name], forward_only)
            per_cat[cat] += us / 1e3 / steps
            per_op.append((us / 1e3 / steps, name, cat, instrs[name]["shape"], instrs[name]["op_name"]))
    per_op.sort(reverse=True)
    steps_ev = [e["dur"] for e in events if e.get("ph") == "X" and e.get("name") == "air_step"]
    return {
        "wall_ms_per_step": float(np.median(steps_ev)) / 1e3 if steps_ev else None,
        "self_ms_per_step": round(sum(per_cat.values()), 3),
        "by_category_ms": {c: round(per_cat.get(c, 0.0), 3) for c in CATEGORIES},
        "top_ops": [
            {"ms": round(ms, 3), "name": n, "category": c, "shape": s, "source": src[-90:]} for ms, n, c, s, src in per_op[:top]
        ],
    }


def build_infer(batch: int, device):
    """``(call, params, pool)``: jitted ``call(params, images, i)`` = guide-only inference of the
    pretrained weights on held-out scenes (``pool``: four batches), key folded with ``i``."""
    from numpyro_air import heldout_scenes, infer, pretrained

    config, params = pretrained()
    images = np.asarray(heldout_scenes(4 * batch).images, np.float32) / 255.0
    pool = [jax.device_put(images[k * batch : (k + 1) * batch], device) for k in range(4)]
    params = jax.device_put(params, device)
    key = jax.random.PRNGKey(0)

    @jax.jit
    def call(params, images, i):
        return infer(params, images, jax.random.fold_in(key, i), config, reconstruct=False)

    return call, params, pool


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="profiled steps (after compilation and 3 warm-up steps)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "gpu", "tpu"))
    ap.add_argument("--top", type=int, default=15, help="instructions listed by self time")
    ap.add_argument("--trace-dir", help="keep the trace here (default: a temporary directory)")
    ap.add_argument("--infer", action="store_true", help="profile infer(..., reconstruct=False) instead of the step")
    ap.add_argument(
        "--compute-dtype", choices=("float32", "bfloat16"), default="float32", help="the step's AIRConfig.compute_dtype"
    )
    ap.add_argument("--json", action="store_true", help="also write results/<device>_profile[_infer]_b<B>.json")
    ap.add_argument("--json-name", help="file name under results/ for --json (default: the name above)")
    add_allocator_option(ap)
    a = ap.parse_args(argv)
    allocator = apply_allocator(a.system_allocator)
    if a.batch_size < 1 or a.steps < 1:
        ap.error("--batch-size and --steps must be >= 1")
    device = pick_device(a.device)
    ids = [jax.device_put(np.int32(i), device) for i in range(a.steps + 5)]
    if a.infer:
        fn, state, pool = build_infer(a.batch_size, device)
        step = lambda params, images, i: (params, fn(params, images, i))  # noqa: E731  (the step's signature)
    else:
        fn, state, pool, _, _ = build_bare_step(a.batch_size, device, compute_dtype=a.compute_dtype)
        step = fn
    hlo = fn.lower(state, pool[0], ids[0]).compile().as_text()
    for i in range(3):
        state, _ = jax.block_until_ready(step(state, pool[i % 4], ids[i]))
    trace_dir = a.trace_dir or tempfile.mkdtemp(prefix="air_profile_")
    with jax.profiler.trace(trace_dir):
        for i in range(a.steps):
            with jax.profiler.StepTraceAnnotation("air_step", step_num=i):
                state, _ = jax.block_until_ready(step(state, pool[i % 4], ids[i + 3]))
    out = summarize(read_trace(trace_dir), hlo_instructions(hlo), a.steps, a.top, forward_only=a.infer)
    out.update(
        {
            "what": "infer(reconstruct=False)" if a.infer else "training step",
            "batch_size": a.batch_size,
            "compute_dtype": a.compute_dtype,
            "steps": a.steps,
            "device": str(device),
            "cpu": cpu_model(),
            "cores": nproc(),
            "allocator": allocator,
            "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
    )
    print(
        f"{out['what']}: {out['device']} ({out['cpu']}, {out['cores']} cores), batch {a.batch_size}, "
        f"{a.steps} profiled calls, allocator {allocator}"
    )
    wall, total = out["wall_ms_per_step"], out["self_ms_per_step"]
    print(f"wall per step (profiled) {wall or float('nan'):.1f} ms; summed self time of HLO ops {total:.1f} ms")
    for c, ms in out["by_category_ms"].items():
        print(f"  {c:34s} {ms:7.2f} ms  {100 * ms / max(out['self_ms_per_step'], 1e-9):5.1f}%")
    print("top instructions by self time:")
    for r in out["top_ops"]:
        print(f"  {r['ms']:6.2f} ms  {r['name']:28s} {r['category']:32s} {r['shape']:22s} {r['source']}")
    if a.json:
        name = a.json_name or (
            f"{a.device}_profile{'_infer' if a.infer else ''}_b{a.batch_size}"
            f"{'' if a.compute_dtype == 'float32' else '_' + a.compute_dtype}.json"
        )
        p = Path(__file__).resolve().parent / "results" / name
        p.write_text(json.dumps(out, indent=1))
        print(f"wrote {p}")
    return out


if __name__ == "__main__":
    main()
