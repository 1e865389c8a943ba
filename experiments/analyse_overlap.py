"""Count accuracy of scenes whose objects overlap against scenes whose objects are apart.

    python experiments/analyse_overlap.py CHECKPOINT --data FILE [--model-steps T] [--out FILE.json]

On an evaluation file with ``boxes`` (most probable path, deterministic): for each true count,
the number of scenes and the count accuracy of those where two true boxes intersect ("overlap")
and of the others ("apart"), and the share of the miscounted scenes that overlap. The generators
allow overlap (scattered MNIST up to SPAIR's bound, or while no summed pixel exceeds 255 with
``--max-overlap none``; sprites are drawn over each other), so this separates what crowding
costs from what the model misses elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from numpyro_air.analysis.inference import infer_batched
from numpyro_air.data import load_eval_npz, to_float
from numpyro_air.train.checkpoint import load_params


def intersecting_pairs(boxes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N, K, K) bool: boxes i != j among the first ``counts[n]`` boxes (N, K, 4) ``(x0, y0, w, h)``
    share an area."""
    x0, y0 = boxes[..., 0], boxes[..., 1]
    x1, y1 = x0 + boxes[..., 2], y0 + boxes[..., 3]
    ix = np.minimum(x1[:, :, None], x1[:, None, :]) - np.maximum(x0[:, :, None], x0[:, None, :])
    iy = np.minimum(y1[:, :, None], y1[:, None, :]) - np.maximum(y0[:, :, None], y0[:, None, :])
    k = boxes.shape[1]
    present = np.arange(k)[None, :] < counts[:, None]
    pair = present[:, :, None] & present[:, None, :] & ~np.eye(k, dtype=bool)[None]
    return pair & (ix > 0) & (iy > 0)


def overlapping(boxes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N,) bool: two of the first ``counts[n]`` boxes (N, K, 4) ``(x0, y0, w, h)`` intersect."""
    return np.any(intersecting_pairs(boxes, counts), axis=(1, 2))


def analyse(true_counts: np.ndarray, inferred: np.ndarray, overlap: np.ndarray) -> dict:
    """Per true count: scenes and accuracy of overlapping / apart scenes."""
    correct = inferred == true_counts
    rows = {}
    for c in np.unique(true_counts):
        m = true_counts == c
        row = {}
        for name, sel in (("overlap", m & overlap), ("apart", m & ~overlap)):
            row[name] = {"scenes": int(sel.sum()), "accuracy": float(correct[sel].mean()) if sel.any() else None}
        rows[str(int(c))] = row
    wrong = ~correct
    return {
        "by_count": rows,
        "accuracy_overlap": float(correct[overlap].mean()) if overlap.any() else None,
        "accuracy_apart": float(correct[~overlap].mean()) if (~overlap).any() else None,
        "scenes_overlap": int(overlap.sum()),
        "miscounted": int(wrong.sum()),
        "miscounted_that_overlap": float(overlap[wrong].mean()) if wrong.any() else None,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True)
    ap.add_argument("--model-steps", type=int)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    air, params = load_params(a.checkpoint)
    if a.model_steps:
        air = dataclasses.replace(air, num_steps=a.model_steps)
    ev = load_eval_npz(a.data)
    if ev.boxes is None:
        raise SystemExit(f"error: {a.data} has no boxes")
    res = infer_batched(params, to_float(ev.images), jax.random.PRNGKey(0), air, greedy=True, reconstruct=False)
    out = {"checkpoint": str(a.checkpoint), "data": str(a.data), "model_steps": air.num_steps}
    out |= analyse(np.asarray(ev.counts), np.asarray(res["counts"]), overlapping(np.asarray(ev.boxes), np.asarray(ev.counts)))
    text = json.dumps(out, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()
