"""Compile time and step time of the training step under different XLA flags, fresh processes
interleaved.

    python benchmarks/xla_flags.py --flags= --flags=--xla_cpu_use_fusion_emitters=false \\
        [--batch-sizes 64 256] [--rounds 3] [--steps 30] [--json NAME]

Each measurement is a fresh ``python benchmarks/svi_step.py --json`` process (tutorial networks,
NVIL step as the training loop compiles it) with ``XLA_FLAGS`` set to one entry of ``--flags``
("" = XLA's defaults; one ``--flags=SETTING`` per setting, written with ``=`` since a setting
starts with ``--``); one process per flag setting per round, in turn. Prints each process's
compile time (trace + lower + XLA) and median step, and per setting the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import cpu_model, nproc  # noqa: E402


def one(flags: str, batch: int, steps: int) -> dict:
    """``svi_step.py --json``'s result in a fresh process with ``XLA_FLAGS=flags``."""
    env = dict(os.environ, XLA_FLAGS=flags)
    cmd = [sys.executable, str(HERE / "svi_step.py"), "--batch-size", str(batch), "--steps", str(steps), "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--flags",
        action="append",
        metavar="SETTING",
        help="one XLA_FLAGS setting, as --flags=SETTING (repeat for each; --flags= is XLA's defaults; "
        "default: XLA's defaults and --xla_cpu_use_fusion_emitters=false)",
    )
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json", metavar="NAME", help="also write results/NAME")
    args = ap.parse_args()
    args.flags = args.flags or ["", "--xla_cpu_use_fusion_emitters=false"]
    if args.rounds < 1 or args.steps < 1:
        ap.error("--rounds and --steps must be at least 1")
    rows = []
    for batch in args.batch_sizes:
        for r in range(args.rounds):
            for flags in args.flags:
                res = one(flags, batch, args.steps)
                row = {
                    "batch_size": batch,
                    "round": r,
                    "xla_flags": flags,
                    "compile_sec": res["compile_sec"],
                    "trace_sec": res["trace_sec"],
                    "ms_per_step": 1000 * res["sec_per_step"],
                    "ms_per_step_min": 1000 * res["sec_per_step_min"],
                    "loss_per_image_last": res["loss_per_image_last"],
                }
                rows.append(row)
                print(
                    f"batch {batch} round {r} XLA_FLAGS={flags!r}: compile {row['compile_sec']:.2f} s "
                    f"(trace {row['trace_sec']:.2f} s), step {row['ms_per_step']:.2f} ms (min {row['ms_per_step_min']:.2f})",
                    flush=True,
                )
    summary = []
    for batch in args.batch_sizes:
        for flags in args.flags:
            mine = [r for r in rows if r["batch_size"] == batch and r["xla_flags"] == flags]
            s = {
                "batch_size": batch,
                "xla_flags": flags,
                "compile_sec_median": statistics.median(r["compile_sec"] for r in mine),
                "ms_per_step_median": statistics.median(r["ms_per_step"] for r in mine),
            }
            summary.append(s)
            print(
                f"batch {batch}, XLA_FLAGS={flags!r}: compile {s['compile_sec_median']:.2f} s, "
                f"step {s['ms_per_step_median']:.2f} ms (medians of {len(mine)} processes)"
            )
    if args.json:
        out = {"cpu_model": cpu_model(), "nproc": nproc(), "steps": args.steps, "rows": rows, "summary": summary}
        (HERE / "results" / args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
