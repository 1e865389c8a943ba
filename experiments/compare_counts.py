"""Held-out count accuracy per true count against step, several runs side by side.

Reads each run's ``metrics.jsonl`` (the ``eval`` rows' confusion matrices of the test split, most
probable path by default) and draws one panel per true count, one line per run; prints the same
numbers as a Markdown table. Example::

    python experiments/compare_counts.py runs/a runs/b --labels "from the shipped weights" "from scratch" \\
        --out experiments/results/init_from/accuracy_by_count.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def per_count_curves(run_dir: Path, key: str) -> Dict[int, List[tuple]]:
    """{true count: [(step, accuracy), ...]} from the ``eval`` rows' ``key`` confusion matrices."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such file (a run directory of numpyro-air train?)")
    curves: Dict[int, List[tuple]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") != "eval" or key not in row:
            continue
        for n, counts in enumerate(row[key]):
            if sum(counts):
                curves.setdefault(n, []).append((row["step"], counts[n] / sum(counts)))
    if not curves:
        raise SystemExit(f"error: {path}: no eval rows with {key}")
    return curves


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--labels", nargs="+", help="one per run (default: the directory names)")
    p.add_argument("--key", default="test_confusion_greedy", help="test_confusion_greedy (default) or test_confusion")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args(argv)
    labels = args.labels or [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"error: {len(args.runs)} runs but {len(labels)} labels")
    curves = [per_count_curves(r, args.key) for r in args.runs]
    counts = sorted({n for c in curves for n in c})
    fig, axes = plt.subplots(1, len(counts), figsize=(3.2 * len(counts), 3.2), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], counts):
        for label, c in zip(labels, curves):
            if n in c:
                ax.plot(*zip(*c[n]), marker=".", label=label)
        ax.set_title(f"{n} object{'s' if n != 1 else ''}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out count accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"| run | step | {' | '.join(f'true {n}' for n in counts)} |")
    print("|---|---|" + "---|" * len(counts))
    for label, c in zip(labels, curves):
        steps = sorted({s for pts in c.values() for s, _ in pts})
        for step in steps:
            acc = {n: dict(c[n]).get(step) for n in counts if n in c}
            cells = " | ".join("-" if acc.get(n) is None else f"{100 * acc[n]:.1f}%" for n in counts)
            print(f"| {label} | {step} | {cells} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
