"""Summarise a multi-seed run: per-seed held-out accuracy (one sample and most probable path),
ELBO and IWAE, thresholds reached, mean +- sd, speed, and one figure with every seed's curve.

    python experiments/summarize_seeds.py RUN_DIR --out experiments/results/seeds [--iwae-glob 'eval_iwae_seed*.json']

Reads ``RUN_DIR/metrics.jsonl`` (``eval`` rows of the 10,000-canvas held-out split, ``train`` rows)
and the per-seed JSON written by ``numpyro-air evaluate --iwae 100 --json`` (``eval_iwae_seed<N>.json``
in RUN_DIR: the seed is the one the JSON names, or, in files of older versions without it, the N-th
seed of the run); writes ``summary.json``, ``summary.md`` and ``accuracy.png``.
Every seed is reported, failed ones included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summarize_runs import run_summary  # noqa: E402

from numpyro_air.analysis import figures as viz  # noqa: E402

THRESHOLDS = (0.95, 0.98, 0.987)


def _iwae(run: Path, pattern: str, seeds: list) -> dict:
    """{seed: evaluate's JSON} from the per-checkpoint files: the seed evaluate recorded, or, in
    files of older versions without one, index k -> the k-th seed."""
    out = {}
    for f in sorted(run.glob(pattern)):
        k = int("".join(ch for ch in f.stem.rsplit("seed", 1)[-1] if ch.isdigit()))
        result = json.loads(f.read_text())
        if result.get("seed") is not None:
            out[result["seed"]] = result
        elif k < len(seeds):
            out[seeds[k]] = result
    return out


def _fmt(x, spec=".2%"):
    return "-" if x is None else format(x, spec)


def summarize(run: Path, pattern: str) -> dict:
    records = viz.read_jsonl(run / "metrics.jsonl")
    s = run_summary(records, steps=[], thresholds=THRESHOLDS)
    seeds = sorted(s["seeds"])
    iwae = _iwae(run, pattern, seeds)
    rows = {}
    for seed in seeds:
        v, ev = s["seeds"][seed], iwae.get(seed, {})
        rows[seed] = {
            "step": v["final_step"],
            "accuracy": v["final_accuracy"],
            "accuracy_greedy": v["final_accuracy_greedy"],
            "elbo_heldout": ev.get("elbo"),
            "iwae_heldout": ev.get("log_likelihood_iwae"),
            "iwae_samples": ev.get("iwae_samples"),
            "iwae_images": ev.get("iwae_images"),
            "steps_to": v["steps_to"],
        }
    stat = lambda key: (
        float(np.mean([r[key] for r in rows.values() if r[key] is not None] or [np.nan])),  # noqa: E731
        float(np.std([r[key] for r in rows.values() if r[key] is not None] or [np.nan], ddof=1))
        if sum(r[key] is not None for r in rows.values()) > 1
        else None,
    )
    trains = [r for r in records if r.get("kind") == "train"]
    last = max(trains, key=lambda r: r["wall_time"])
    first = min(trains, key=lambda r: r["wall_time"])
    summary = {
        "run": str(run),
        "seeds": rows,
        "mean_sd": {k: stat(k) for k in ("accuracy", "accuracy_greedy", "elbo_heldout", "iwae_heldout")},
        "seeds_reaching": {
            f"{t:.1%}".replace(".0%", "%"): {
                m: sum((r[k] or 0) >= t for r in rows.values())
                for m, k in (("one_sample", "accuracy"), ("greedy", "accuracy_greedy"))
            }
            for t in THRESHOLDS
        },
        "steps": last["step"],
        "wall_minutes_incl_eval": last["wall_time"] / 60,
        "steps_per_s_incl_eval": (last["step"] - first["step"]) / max(last["wall_time"] - first["wall_time"], 1e-9),
    }
    return summary


def markdown(s: dict) -> str:
    lines = [
        "| seed | step | held-out accuracy (one sample) | most probable path | ELBO | IWAE-100 | first eval >= 95% | >= 98% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, r in s["seeds"].items():
        lines.append(
            f"| {seed} | {r['step']} | {_fmt(r['accuracy'])} | {_fmt(r['accuracy_greedy'])} | "
            f"{_fmt(r['elbo_heldout'], '.1f')} | {_fmt(r['iwae_heldout'], '.1f')} | "
            f"{r['steps_to']['95%'] or '-'} | {r['steps_to']['98%'] or '-'} |"
        )
    m = s["mean_sd"]
    pm = lambda k, spec: f"{_fmt(m[k][0], spec)} +- {_fmt(m[k][1], spec)}"  # noqa: E731
    lines.append(
        f"| **mean +- sd** | | {pm('accuracy', '.2%')} | {pm('accuracy_greedy', '.2%')} | {pm('elbo_heldout', '.1f')} | "
        f"{pm('iwae_heldout', '.1f')} | | |"
    )
    reach = "; ".join(
        f">= {t}: {v['one_sample']} (one sample) / {v['greedy']} (most probable path)" for t, v in s["seeds_reaching"].items()
    )
    lines += [
        "",
        f"Seeds reaching {reach} of {len(s['seeds'])}.",
        f"{s['steps']} steps; {s['wall_minutes_incl_eval']:.1f} wall minutes including evaluations "
        f"({s['steps_per_s_incl_eval']:.2f} steps/s for all seeds together).",
    ]
    return "\n".join(lines) + "\n"


def figure(run: Path, out: Path, thresholds=THRESHOLDS, ylim=(0.5, 1.0)) -> Path:
    """``out/accuracy.png``: each seed's held-out accuracy during training (one sample, most
    probable path) from ``run/metrics.jsonl``, with dashed lines at ``thresholds``."""
    from matplotlib.figure import Figure

    evals = [r for r in viz.read_jsonl(run / "metrics.jsonl") if r.get("kind") == "eval"]
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, title in zip(axes, ("test_accuracy", "test_accuracy_greedy"), ("one guide sample", "most probable path")):
        for seed in sorted({r["seed"] for r in evals}):
            pts = sorted((r["step"], r[key]) for r in evals if r["seed"] == seed and r.get(key) is not None)
            ax.plot(*zip(*pts), lw=1.2, marker=".", label=f"seed {seed}")
        for t in thresholds:
            ax.axhline(t, color="gray", lw=0.6, ls="--")
        ax.set_title(f"held-out count accuracy, {title}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    return out / "accuracy.png"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--iwae-glob", default="eval_iwae_seed*.json")
    a = p.parse_args(argv)
    run, out = Path(a.run), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(run, a.iwae_glob)
    (out / "summary.json").write_text(json.dumps(s, indent=1))
    (out / "summary.md").write_text(markdown(s))
    figure(run, out)
    print(markdown(s))
    return s


if __name__ == "__main__":
    main()
