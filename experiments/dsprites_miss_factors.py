"""Which multi-dSprites scenes a model miscounts: accuracy by visibility and by colour contrast.

    python experiments/dsprites_miss_factors.py CHECKPOINT [CHECKPOINT ...] --data FILE [--per-count 500] [--seed 0]
        [--out FILE.json] [--figure FILE.png]

Regenerates the scenes of ``experiments/make_eval_set.py --dataset multi-dsprites`` (default
options; the same streams and balanced selection as ``dsprites_visibility.py``) with every
sprite's visible fraction and colour, checks them against the held-out file ``--data``, and
counts each scene with every checkpoint (most probable path). For the 2- and 3-sprite scenes
whose sprites' boxes intersect, it reports the count accuracy binned by

* the least visible fraction of a sprite in the scene (the sprites drawn after it cover the rest),
* the smallest colour distance (Euclidean RGB in [0, 1], at most sqrt(3)) between two sprites
  whose boxes intersect,

so that one can see whether the merged sprites are the hidden ones, the similar-coloured ones,
or neither. ``--figure`` draws both tables of the 3-sprite scenes, one line per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analyse_overlap import intersecting_pairs, overlapping  # noqa: E402
from dsprites_visibility import heldout_attributes  # noqa: E402

from numpyro_air.analysis.inference import infer_batched  # noqa: E402
from numpyro_air.data import DataError, load_eval_npz, to_float  # noqa: E402
from numpyro_air.train.checkpoint import load_params  # noqa: E402

VISIBLE_BINS = (0.0, 0.25, 0.5, 0.75)
COLOUR_BINS = (0.0, 0.2, 0.4, 0.6)


def closest_colours(boxes: np.ndarray, counts: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(N,) smallest RGB distance between two sprites whose boxes (N, K, 4) intersect; inf if none."""
    dist = np.linalg.norm(colours[:, :, None, :] - colours[:, None, :, :], axis=-1)
    return np.where(intersecting_pairs(boxes, counts), dist, np.inf).min(axis=(1, 2))


def binned(values: np.ndarray, correct: np.ndarray, edges: tuple[float, ...]) -> list[dict]:
    """Scenes and accuracy of ``correct`` (bool) per bin [edges[i], edges[i + 1]) of ``values``
    (the last bin has no upper end)."""
    rows = []
    for lo, hi in zip(edges, edges[1:] + (math.inf,)):
        m = (values >= lo) & ((values < hi) | (hi == math.inf))
        rows.append(
            {
                "at_least": lo,
                "below": None if hi == math.inf else hi,
                "scenes": int(m.sum()),
                "accuracy": float(correct[m].mean()) if m.any() else None,
            }
        )
    return rows


def factors(
    inferred: np.ndarray, counts: np.ndarray, overlap: np.ndarray, least_visible: np.ndarray, contrast: np.ndarray
) -> dict:
    """Per true count 2 and 3 (overlapping scenes only): accuracy by least visible fraction and by colour distance."""
    out = {}
    for c in (2, 3):
        sel = (counts == c) & overlap
        ok = inferred[sel] == c
        out[str(c)] = {
            "overlapping_scenes": int(sel.sum()),
            "accuracy": float(ok.mean()) if sel.any() else None,
            "by_least_visible_fraction": binned(least_visible[sel], ok, VISIBLE_BINS),
            "by_closest_colour_distance": binned(contrast[sel], ok, COLOUR_BINS),
        }
    return out


def bin_label(row: dict) -> str:
    return f"[{row['at_least']:g}, {row['below']:g})" if row["below"] is not None else f">= {row['at_least']:g}"


def plot(result: dict, path: str, count: str = "3") -> None:
    """Accuracy of the overlapping ``count``-sprite scenes against each factor, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (
        ("by_least_visible_fraction", "least visible fraction of a sprite"),
        ("by_closest_colour_distance", "closest colour distance (RGB)"),
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (key, title) in zip(axes, keys):
        for name, model in result["models"].items():
            rows = model[count][key]
            ax.plot(
                range(len(rows)),
                [100 * (r["accuracy"] or 0.0) for r in rows],
                marker="o",
                label=model.get("label", name),
            )
        rows = next(iter(result["models"].values()))[count][key]
        ax.set_xticks(range(len(rows)), [f"{bin_label(r)}\n{r['scenes']} scenes" for r in rows])
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("count accuracy (%)")
    fig.suptitle(f"{count}-sprite held-out scenes whose boxes overlap (most probable path)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", required=True, help="the held-out file of make_eval_set.py --dataset multi-dsprites")
    p.add_argument("--per-count", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the tables as JSON here")
    p.add_argument("--figure", help="draw the 3-sprite tables here (.png)")
    p.add_argument("--labels", nargs="+", help="one name per checkpoint, for the legend and the JSON")
    args = p.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        raise SystemExit(f"error: --labels: {len(args.labels)} names for {len(args.checkpoints)} checkpoints")
    try:
        return run(args)
    except (DataError, OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")


def run(args: argparse.Namespace) -> dict:
    """The tables (and figure) of the parsed command line."""
    ev = load_eval_npz(args.data)
    counts, vis, colours = heldout_attributes(args.per_count, args.seed)
    if not np.array_equal(np.asarray(ev.counts), counts):
        raise SystemExit(f"error: {args.data}: its counts differ from the regenerated scenes (other options or seed?)")
    boxes = np.asarray(ev.boxes)
    overlap = overlapping(boxes, counts)
    least_visible = np.nanmin(np.where(np.isnan(vis), np.inf, vis), axis=1)
    contrast = closest_colours(boxes, counts, colours)
    result = {"data": str(args.data), "models": {}}
    for ck, label in zip(args.checkpoints, args.labels or args.checkpoints):
        air, params = load_params(ck)
        res = infer_batched(params, to_float(ev.images), jax.random.PRNGKey(0), air, greedy=True, reconstruct=False)
        inferred = np.asarray(res["counts"])
        result["models"][str(ck)] = {"label": label, "count_accuracy": float(np.mean(inferred == counts))} | factors(
            inferred, counts, overlap, least_visible, contrast
        )
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.figure:
        plot(result, args.figure)
    return result


if __name__ == "__main__":
    main()
