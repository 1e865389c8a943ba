"""Summarise training runs head to head: accuracy per seed at chosen steps, steps to thresholds,
final ELBO, speed; one figure with every seed's held-out accuracy curve, one colour per run.

    python experiments/summarize_runs.py NAME=RUN_DIR [NAME=RUN_DIR ...] --out DIR [--steps 1000 2000 4000 6000]

Reads each run's ``metrics.jsonl`` (``eval`` rows: ``test_accuracy`` per seed; ``train`` rows:
ELBO per image, wall time). Writes ``DIR/summary.json``, ``DIR/summary.md`` and ``DIR/accuracy.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from numpyro_air.analysis import figures as viz

THRESHOLDS = (0.90, 0.95)


def _pct(t: float) -> str:
    """0.95 -> "95%", 0.987 -> "98.7%"."""
    return f"{t:.1%}".replace(".0%", "%")


def run_summary(records: list, steps: Sequence[int], thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """Per-seed accuracy at ``steps``, first evaluated step reaching each threshold, last ELBO, speed."""
    evals = [r for r in records if r.get("kind") == "eval"]
    trains = [r for r in records if r.get("kind") == "train"]
    seeds = sorted({r["seed"] for r in evals})
    per_seed = {}
    for seed in seeds:
        rows = sorted((r for r in evals if r["seed"] == seed), key=lambda r: r["step"])
        acc = {r["step"]: r["test_accuracy"] for r in rows}
        per_seed[seed] = {
            "accuracy_at": {s: acc.get(s) for s in steps},
            "steps_to": {_pct(t): next((r["step"] for r in rows if r["test_accuracy"] >= t), None) for t in thresholds},
            "final_step": rows[-1]["step"],
            "final_accuracy": rows[-1]["test_accuracy"],
            "final_accuracy_greedy": rows[-1].get("test_accuracy_greedy"),
            "final_elbo": next((r["elbo"] for r in reversed(trains) if r["seed"] == seed), None),
        }
    last = max(trains, key=lambda r: r["wall_time"]) if trains else None
    return {
        "seeds": per_seed,
        "seeds_reaching_95%": sum(v["final_accuracy"] >= 0.95 for v in per_seed.values()),
        "mean_accuracy_at": {s: _mean([v["accuracy_at"][s] for v in per_seed.values()]) for s in steps},
        "last_step": last["step"] if last else None,
        "wall_minutes_incl_eval": last["wall_time"] / 60 if last else None,
    }


def _mean(xs: list) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def markdown(summaries: dict, steps: Sequence[int]) -> str:
    head = "| run | seed | " + " | ".join(f"acc @{s}" for s in steps) + " | to 90% | to 95% | final (step) | ELBO |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda x: "" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))  # noqa: E731
    for name, s in summaries.items():
        for seed, v in s["seeds"].items():
            accs = " | ".join(fmt(v["accuracy_at"][st]) for st in steps)
            lines.append(
                f"| {name} | {seed} | {accs} | {fmt(v['steps_to']['90%'])} | {fmt(v['steps_to']['95%'])} | "
                f"{fmt(v['final_accuracy'])} ({v['final_step']}) | {fmt(v['final_elbo'])} |"
            )
        means = " | ".join(fmt(s["mean_accuracy_at"][st]) for st in steps)
        lines.append(f"| {name} | mean | {means} | | | seeds >= 95%: {s['seeds_reaching_95%']} | |")
    return "\n".join(lines) + "\n"


def figure(runs: dict, out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for c, (name, records) in enumerate(runs.items()):
        evals = [r for r in records if r.get("kind") == "eval"]
        for i, seed in enumerate(sorted({r["seed"] for r in evals})):
            pts = sorted((r["step"], r["test_accuracy"]) for r in evals if r["seed"] == seed)
            ax.plot(*zip(*pts), color=colours[c % len(colours)], lw=1.2, label=name if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out count accuracy (one guide sample)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    return out / "accuracy.png"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 2000, 4000, 6000])
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for spec in args.runs:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"error: expected NAME=RUN_DIR, got {spec!r}")
        runs[name] = viz.read_jsonl(Path(path) / "metrics.jsonl")
    summaries = {name: run_summary(records, args.steps) for name, records in runs.items()}
    (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    (out / "summary.md").write_text(markdown(summaries, args.steps))
    figure(runs, out)
    print(markdown(summaries, args.steps))
    return summaries


if __name__ == "__main__":
    main()
