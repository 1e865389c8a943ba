"""Table of AIR vs DAIR runs: held-out accuracy on 0-2 digits, per-count accuracy on a 0-3-digit
set, localisation, from the JSON files of ``numpyro-air evaluate --json``.

    python experiments/summarize_generalisation.py AIR=runs/air15k DAIR=runs/dair15k [--out table.md]

Reads ``RUN/eval_heldout_seed<N>.json`` (the 10,000-canvas 0-2-digit held-out split) and
``RUN/eval_0to3_seed<N>.json`` (1,000 held-out scenes of each count 0-3) of every seed of
``RUN/metrics.jsonl``: N is the seed, or, for the JSON of older versions (no ``seed`` in it), the
index of the seed in the run. With ``evaluate --importance K`` in the 0-3 JSON, the last column
is the 0 / 1 / 2 / 3-digit accuracy of the count posterior's argmax (else "-"). ``--posterior K
...`` adds a table of the count posterior with K draws from ``RUN/eval_heldout_imp<K>_seed<N>.json``
and ``RUN/eval_0to3_imp<K>_seed<N>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from numpyro_air.analysis import figures as viz


def evaluation(run: Path, split: str, seed: int, k: int):
    """evaluate's JSON of ``seed`` (the k-th seed of the run) on ``split``, or None."""
    for n in dict.fromkeys((seed, k)):
        path = run / f"eval_{split}_seed{n}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if result.get("seed", seed if n == k else None) == seed:  # older JSON: named by index, no seed
                return result
    return None


def seeds_of(run: Path) -> list:
    """The seeds of a run, in order, from its ``metrics.jsonl``."""
    return sorted({r["seed"] for r in viz.read_jsonl(run / "metrics.jsonl") if "seed" in r})


def rows(name: str, run: Path) -> list:
    seeds = seeds_of(run)
    out = []
    for k, seed in enumerate(seeds):
        h, g = evaluation(run, "heldout", seed, k), evaluation(run, "0to3", seed, k)
        if h is None or g is None:
            continue
        per = " / ".join(f"{100 * g['accuracy_by_count'][c]['accuracy']:.1f}" for c in ("0", "1", "2"))
        loc = g["localisation"]
        imp = g.get("accuracy_by_count_importance")
        post = " / ".join(f"{100 * imp[c]['accuracy']:.1f}" for c in ("0", "1", "2", "3")) if imp else "-"
        out.append(
            f"| {name} | {seed} | {h['step']} | {100 * h['count_accuracy']:.2f}% | "
            f"{100 * h['count_accuracy_greedy']:.2f}% | "
            f"{per} / **{100 * g['accuracy_by_count']['3']['accuracy']:.1f}%** | "
            f"{100 * g['accuracy_by_count_greedy']['3']['accuracy']:.1f}% | {loc['mean_centre_error']:.2f} | "
            f"{100 * loc['matched_within_radius']:.1f}% | {loc['mean_iou']:.3f} | {post} |"
        )
    return out


def posterior_rows(name: str, run: Path, draws: int) -> list:
    """Rows of the count posterior with ``draws`` guide draws (``evaluate --importance K``, files
    ``eval_heldout_imp<K>_seed<N>.json`` and ``eval_0to3_imp<K>_seed<N>.json``; "-" where absent)."""
    seeds = seeds_of(run)
    out = []
    for k, seed in enumerate(seeds):
        h, g = (evaluation(run, f"{split}_imp{draws}", seed, k) for split in ("heldout", "0to3"))
        if g is None:
            continue
        held = f"{100 * h['count_accuracy_importance']:.2f}%" if h else "-"
        per = g["accuracy_by_count_importance"]
        counts = " / ".join(f"{100 * per[c]['accuracy']:.1f}" for c in ("0", "1", "2"))
        out.append(f"| {name} | {seed} | {g['step']} | {draws} | {held} | {counts} / **{100 * per['3']['accuracy']:.1f}%** |")
    return out


def posterior_table(runs: list, draws: list) -> list:
    lines = [
        "| model | seed | step | guide draws K | 0-2 held-out (10k) | 0-3 set: 0 / 1 / 2 / **3** digits |",
        "|---|---|---|---|---|---|",
    ]
    for k in draws:
        for name, path in runs:
            lines += posterior_rows(name, Path(path), k)
    return lines


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--out")
    ap.add_argument(
        "--posterior", type=int, nargs="+", default=[], metavar="K", help="also a table of the count posterior with K draws"
    )
    a = ap.parse_args(argv)
    lines = [
        "| model | seed | step | 0-2 held-out (10k) | greedy | 0-3 set: 0 / 1 / 2 / **3** digits | 3 digits, greedy "
        "| centre error (px) | matched within 3 px | mean IoU | count posterior: 0 / 1 / 2 / 3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    runs = [spec.partition("=")[::2] for spec in a.runs]
    for name, path in runs:
        lines += rows(name, Path(path))
    if a.posterior:
        lines += [""] + posterior_table(runs, a.posterior)
    text = "\n".join(lines) + "\n"
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
