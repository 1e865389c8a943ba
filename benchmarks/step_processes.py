"""The training step's time across fresh processes (it differs between processes on the 2-core
CPU), optionally against another source tree, interleaved.

    python benchmarks/step_processes.py [--processes 6] [--steps 40] [--batch-size 64]
                                        [--baseline-src DIR] [--compute-dtypes float32 bfloat16]
                                        [--estimator nvil] [--allocators retain system] [--json]

Each measurement is a fresh ``python benchmarks/svi_step.py --json`` process (compile, warm-up,
median of ``--steps`` blocked steps; the JSON also keeps each process's compile time). With
``--baseline-src DIR`` (e.g. a ``git worktree`` of an older commit) that tree's own
``benchmarks/svi_step.py`` is run with ``PYTHONPATH=DIR`` so that ``numpyro_air`` is imported
from there, alternating with the current tree. Prints every process's median, the median over
processes and the fastest process, per tree. ``--compute-dtypes float32 bfloat16`` times each
listed ``AIRConfig.compute_dtype`` of the current tree, interleaved the same way (one process of
each per round); with ``--baseline-src`` as well, the baseline tree runs each dtype of
``--baseline-compute-dtypes`` (default: the same list) in the same rounds. ``--allocators retain
system`` times the current tree both ways (``svi_step.py`` without and with
``--system-allocator``), interleaved the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import cpu_model, nproc  # noqa: E402


def one(batch: int, steps: int, src: str | None, extra: tuple = ()) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    # each tree is timed by its own svi_step.py (the API it calls may differ between versions)
    script = Path(src) / "benchmarks" / "svi_step.py" if src else HERE / "svi_step.py"
    cmd = [sys.executable, str(script), "--batch-size", str(batch), "--steps", str(steps), "--json", *extra]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--baseline-src", help="source tree imported for the baseline (PYTHONPATH)")
    ap.add_argument("--compute-dtypes", nargs="+", choices=("float32", "bfloat16"), help="time these compute dtypes")
    ap.add_argument(
        "--baseline-compute-dtypes",
        nargs="+",
        choices=("float32", "bfloat16"),
        help="with --compute-dtypes and --baseline-src: the dtypes the baseline tree runs (default: --compute-dtypes)",
    )
    ap.add_argument("--estimator", default="nvil", help="svi_step.py's --estimator (default nvil: Pyro's tutorial step)")
    ap.add_argument(
        "--allocators",
        nargs="+",
        choices=("retain", "system"),
        help="time the current tree with each (svi_step.py's default, and with --system-allocator)",
    )
    ap.add_argument("--json", action="store_true", help="also write results/cpu_step_processes_b<B>.json")
    ap.add_argument("--json-name", help="file name under results/ for --json (default cpu_step_processes_b<B>.json)")
    a = ap.parse_args(argv)
    if a.baseline_compute_dtypes and not (a.compute_dtypes and a.baseline_src):
        ap.error("--baseline-compute-dtypes needs --compute-dtypes and --baseline-src")
    est = ("--estimator", a.estimator)
    if a.compute_dtypes:
        runs = {dt: (None, (*est, "--compute-dtype", dt)) for dt in a.compute_dtypes}
        if a.baseline_src:
            dtypes = a.baseline_compute_dtypes or a.compute_dtypes
            runs |= {f"baseline {dt}": (a.baseline_src, (*est, "--compute-dtype", dt)) for dt in dtypes}
    else:
        runs = {"current": (None, est)} | ({"baseline": (a.baseline_src, est)} if a.baseline_src else {})
    if a.allocators:
        flags = {"retain": (), "system": ("--system-allocator",)}
        current = {k: v for k, v in runs.items() if v[0] is None}
        runs = {f"{k} {al}": (None, extra + flags[al]) for k, (_, extra) in current.items() for al in a.allocators} | {
            k: v for k, v in runs.items() if v[0] is not None
        }
    trees = {name: src for name, (src, _) in runs.items()}
    times, compiles = {k: [] for k in trees}, {k: [] for k in trees}
    for i in range(a.processes):
        for name, (src, extra) in runs.items():
            r = one(a.batch_size, a.steps, src, extra)
            times[name].append(r["sec_per_step"])
            compiles[name].append(r.get("compile_sec"))
            print(f"process {i + 1}/{a.processes} {name:16s} {1e3 * times[name][-1]:6.1f} ms", flush=True)
    out = {
        "batch_size": a.batch_size,
        "steps": a.steps,
        "estimator": a.estimator,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_model": cpu_model(),
        "nproc": nproc(),
        "trees": {
            k: {
                "src": trees[k] or "this checkout",
                "ms_per_process": [round(1e3 * t, 2) for t in v],
                "median_ms": round(1e3 * statistics.median(v), 2),
                "best_ms": round(1e3 * min(v), 2),
                "compile_sec_per_process": [None if c is None else round(c, 2) for c in compiles[k]],
            }
            for k, v in times.items()
        },
    }
    for k, v in out["trees"].items():
        print(f"{k}: median over processes {v['median_ms']} ms, fastest process {v['best_ms']} ms; all {v['ms_per_process']}")
    if a.json:
        name = a.json_name or f"cpu_step_processes_b{a.batch_size}.json"
        (HERE / "results" / name).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
