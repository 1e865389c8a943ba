"""Where does a model put the object too many? For the scenes it counts one too many (most
probable path), where the extra window lies against the earlier windows and the true objects.

    python experiments/analyse_extra_objects.py CHECKPOINT --data FILE --out JSON [--figure PNG]

For each true count c with overcounted scenes (c + 1 objects inferred), over those scenes:

- ``extra_to_earlier_window_px``: distance from the centre of the last present window (step c) to
  the nearest centre of the windows of steps < c (median, 10% and 90% quantiles);
- ``extra_to_true_object_px``: distance from that centre to the nearest true object's box centre
  (median);
- ``first_to_true_object_px``: the same for the first window (step 0);
- ``extra_presence_prob``: the guide's mean q(z_pres = 1) of the extra step.

A small distance to a true object and a large one to the earlier windows means the extra window
sits on an object that an earlier window missed (the earlier window is misplaced), rather than
on an empty patch. ``--figure`` draws up to 8 such scenes of the smallest overcounted true count
(data and reconstruction with the windows coloured by step,
``numpyro_air.analysis.figures.save_reconstruction_figure``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from numpyro_air.analysis import figures as viz
from numpyro_air.analysis.inference import infer_batched
from numpyro_air.analysis.metrics import box_centres
from numpyro_air.data import load_eval_npz
from numpyro_air.train.checkpoint import load_params


def _quantiles(d: np.ndarray) -> dict:
    return {"median": float(np.median(d)), "q10": float(np.quantile(d, 0.1)), "q90": float(np.quantile(d, 0.9))}


def analyse(res: dict, counts: np.ndarray, boxes: np.ndarray) -> dict:
    """Per true count, the overcounted scenes' extra windows (see the module docstring)."""
    inferred = box_centres(res["boxes"])  # (N, T, 2)
    true = box_centres(boxes)  # (N, K, 2)
    out = {}
    for c in sorted(set(counts.tolist())):
        over = np.flatnonzero((counts == c) & (res["counts"] == c + 1))
        if c == 0 or over.size == 0:
            continue
        extra = inferred[over, c]
        to_earlier = np.linalg.norm(extra[:, None] - inferred[over, :c], axis=-1).min(1)
        to_true = np.linalg.norm(extra[:, None] - true[over, :c], axis=-1).min(1)
        first_to_true = np.linalg.norm(inferred[over, 0][:, None] - true[over, :c], axis=-1).min(1)
        out[str(c)] = {
            "scenes": int((counts == c).sum()),
            "overcounted": int(over.size),
            "extra_to_earlier_window_px": _quantiles(to_earlier),
            "extra_to_true_object_px": _quantiles(to_true),
            "first_to_true_object_px": _quantiles(first_to_true),
            "extra_presence_prob": float(res["pres_prob"][over, c].mean()),
        }
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="an evaluation file with counts and boxes")
    p.add_argument("--out", required=True, help="JSON to write")
    p.add_argument("--figure", help="PNG of up to 8 overcounted scenes")
    a = p.parse_args(argv)
    ev = load_eval_npz(a.data)
    if ev.counts is None or ev.boxes is None:
        p.error(f"{a.data}: needs counts and boxes")
    config, params = load_params(a.checkpoint)
    images = np.asarray(ev.images)
    res = infer_batched(params, images, jax.random.PRNGKey(0), config, greedy=True, batch_size=500, reconstruct=True)
    result = {"checkpoint": a.checkpoint, "data": a.data, "by_true_count": analyse(res, ev.counts, ev.boxes)}
    Path(a.out).write_text(json.dumps(result, indent=1))
    if a.figure and result["by_true_count"]:
        c = int(min(result["by_true_count"], key=int))
        idx = np.flatnonzero((ev.counts == c) & (res["counts"] == c + 1))[:8]
        title = f"{c} true, counted {c + 1} (windows coloured by step: red, green, blue, ...)"
        viz.save_reconstruction_figure(
            a.figure, images[idx], res["reconstruction"][idx], res["boxes"][idx], res["z_pres"][idx], title
        )
    return result


if __name__ == "__main__":
    main()
