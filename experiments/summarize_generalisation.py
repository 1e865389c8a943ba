"""Table of AIR vs DAIR runs: held-out accuracy on 0-2 digits, per-count accuracy on a 0-3-digit
set, localisation, from the JSON files of ``numpyro-air evaluate --json``.

    python experiments/summarize_generalisation.py AIR=runs/air15k DAIR=runs/dair15k [--out table.md]

Reads ``RUN/eval_heldout_seed<k>.json`` (the 10,000-canvas 0-2-digit held-out split) and
``RUN/eval_0to3_seed<k>.json`` (1,000 held-out scenes of each count 0-3) for every k present, and
the seed numbers from ``RUN/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from numpyro_air import viz


def rows(name: str, run: Path) -> list:
    seeds = sorted({r["seed"] for r in viz.read_jsonl(run / "metrics.jsonl") if "seed" in r})
    out = []
    for k, seed in enumerate(seeds):
        h, g = run / f"eval_heldout_seed{k}.json", run / f"eval_0to3_seed{k}.json"
        if not (h.is_file() and g.is_file()):
            continue
        h, g = json.loads(h.read_text()), json.loads(g.read_text())
        per = " / ".join(f"{100 * g['accuracy_by_count'][c]['accuracy']:.1f}" for c in ("0", "1", "2"))
        loc = g["localisation"]
        out.append(f"| {name} | {seed} | {h['step']} | {100 * h['count_accuracy']:.2f}% | "
                   f"{100 * h['count_accuracy_greedy']:.2f}% | "
                   f"{per} / **{100 * g['accuracy_by_count']['3']['accuracy']:.1f}%** | "
                   f"{100 * g['accuracy_by_count_greedy']['3']['accuracy']:.1f}% | {loc['mean_centre_error']:.2f} | "
                   f"{100 * loc['matched_within_radius']:.1f}% | {loc['mean_iou']:.3f} |")
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    lines = ["| model | seed | step | 0-2 held-out (10k) | greedy | 0-3 set: 0 / 1 / 2 / **3** digits | 3 digits, greedy "
             "| centre error (px) | matched within 3 px | mean IoU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for spec in a.runs:
        name, _, path = spec.partition("=")
        lines += rows(name, Path(path))
    text = "\n".join(lines) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
