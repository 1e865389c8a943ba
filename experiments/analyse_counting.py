"""Why does a model trained on 0-2 digits miscount 3-digit scenes? Per-step presence and what is
left unexplained, by true count.

    python experiments/analyse_counting.py NAME=CHECKPOINT [NAME=CHECKPOINT ...] --data runs/test_0to3.npz \
        [--out experiments/results/dair/counting_analysis.json]

For each checkpoint, on the evaluation file (most probable path, so the numbers are deterministic):

- mean presence probability q(z_pres_t = 1) of each step t (the guide's, given the earlier steps
  were present), per true count;
- the inferred-count histogram per true count;
- the unexplained fraction of the image, sum(relu(x - reconstruction)) / sum(x), per true count and,
  for scenes with the most digits, split into correctly counted and undercounted ones: a large
  value for undercounted scenes means a digit is left in the residual (a missed object), a small
  one that the objects found cover it (e.g. one window spans two digits);
- for undercounted scenes, how many true digits have an inferred box centre within 3 pixels
  (Hungarian matching, as ``evaluate``'s localisation) and the side (pixels) of the largest inferred window.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from numpyro_air.analysis.inference import infer_batched
from numpyro_air.analysis.metrics import box_centres, box_iou, localisation
from numpyro_air.data import load_eval_npz
from numpyro_air.train.checkpoint import load_params


def crowding(boxes: np.ndarray) -> dict:
    """How crowded scenes are: mean smallest distance between true digit centres (pixels) and the
    fraction of scenes where two true digit boxes overlap. ``boxes`` (N, K, 4), all K present."""
    c = box_centres(boxes)
    k = boxes.shape[1]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    dist = np.stack([np.linalg.norm(c[:, i] - c[:, j], axis=-1) for i, j in pairs], 1)
    overlap = np.stack([box_iou(boxes[:, i], boxes[:, j]) > 0 for i, j in pairs], 1)
    return {"min_centre_distance_mean": float(dist.min(1).mean()), "scenes_with_overlapping_digits": float(overlap.any(1).mean())}


def analyse(params, config, images: np.ndarray, counts: np.ndarray, boxes, key) -> dict:
    res = infer_batched(params, images, key, config, greedy=True, batch_size=500, reconstruct=True)
    unexplained = np.maximum(images - res["reconstruction"], 0).sum((1, 2)) / np.maximum(images.sum((1, 2)), 1e-6)
    out = {"by_true_count": {}}
    T = config.num_steps
    for c in sorted(set(counts.tolist())):
        m = counts == c
        pres = res["pres_prob"][m]
        out["by_true_count"][str(c)] = {
            "images": int(m.sum()),
            "inferred_count_histogram": np.bincount(res["counts"][m], minlength=T + 1).tolist(),
            "mean_presence_prob_per_step": pres.mean(0).round(4).tolist(),
            "unexplained_fraction_mean": float(unexplained[m].mean()),
        }
    top = counts.max()
    under = (counts == top) & (res["counts"] < top)
    exact = (counts == top) & (res["counts"] == top)
    out["most_digits"] = int(top)
    out["undercounted"] = {
        "images": int(under.sum()),
        "unexplained_fraction_mean": float(unexplained[under].mean()) if under.any() else None,
    }
    out["counted_correctly"] = {
        "images": int(exact.sum()),
        "unexplained_fraction_mean": float(unexplained[exact].mean()) if exact.any() else None,
    }
    if boxes is not None and under.any():
        within = []
        for i in np.flatnonzero(under):
            loc = localisation(boxes[i : i + 1], counts[i : i + 1], res["boxes"][i : i + 1], res["z_pres"][i : i + 1] > 0)
            within.append(int(round(loc["matched_within_radius"] * counts[i])))
        out["undercounted"]["true_digits_found_within_3px"] = np.bincount(within, minlength=top + 1).tolist()
        out["undercounted"]["largest_window_pixels_mean"] = float(
            np.where(res["z_pres"][under] > 0, res["boxes"][under][..., 2], 0).max(1).mean()
        )
    if boxes is not None:
        for name, m in (("undercounted", under), ("counted_correctly", exact)):
            if m.any():
                out[name] |= crowding(boxes[m, :top])
    out["counted_correctly_largest_window_pixels_mean"] = (
        float(np.where(res["z_pres"][exact] > 0, res["boxes"][exact][..., 2], 0).max(1).mean()) if exact.any() else None
    )
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="NAME=CHECKPOINT")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    ev = load_eval_npz(a.data)
    images = np.asarray(ev.images, np.float32)
    result = {}
    for spec in a.checkpoints:
        name, _, path = spec.partition("=")
        config, params = load_params(path)
        result[name] = analyse(params, config, images, ev.counts, ev.boxes, jax.random.PRNGKey(0))
        print(name, json.dumps(result[name]))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
