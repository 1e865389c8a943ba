"""Evaluate a trained AIR checkpoint on an evaluation file (count accuracy + confusion matrix).

    python experiments/evaluate.py --checkpoint runs/air/checkpoint.msgpack --data test.npz [--json]

The data file uses the layout of :mod:`numpyro_air.data.eval_io`: ``images`` (N, H, W) uint8 or
float in [0, 1], ``counts`` (N,) int; optional ``boxes``, ``labels``. Accuracy is reported from one
guide sample per image (Pyro's metric, ``count_accuracy``) and from the guide's most probable
path (``count_accuracy_greedy``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="evaluation .npz (images, counts[, boxes, labels])")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the guide samples")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", choices=["cpu", "gpu", "tpu"])
    p.add_argument("--figures", type=str, help="also write boxes/reconstruction/confusion PNGs here")
    args = p.parse_args(argv)
    if args.device:
        os.environ.setdefault("JAX_PLATFORMS", args.device)
    import jax
    import numpy as np

    from numpyro_air.checkpoint import CheckpointError, load_trained
    from numpyro_air.data import DataError, load_eval_npz
    from numpyro_air.inference import count_accuracy

    try:
        air, params, meta = load_trained(args.checkpoint)
        ev = load_eval_npz(args.data)
    except (CheckpointError, DataError) as e:
        raise SystemExit(f"error: {e}")
    if ev.images.shape[1:] != (air.image_size, air.image_size):
        raise SystemExit(f"error: {args.data} has images of shape {ev.images.shape[1:]}, the model expects "
                         f"({air.image_size}, {air.image_size})")
    key = jax.random.PRNGKey(args.seed)
    sample = count_accuracy(params, ev.images, ev.counts, key, air, False, args.batch_size)
    greedy = count_accuracy(params, ev.images, ev.counts, key, air, True, args.batch_size)
    result = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "num_images": int(len(ev.counts)),
        "step": meta.get("step"),
        "count_accuracy": sample["accuracy"],
        "confusion": sample["confusion"],
        "count_accuracy_greedy": greedy["accuracy"],
        "confusion_greedy": greedy["confusion"],
    }
    if args.figures:
        from numpyro_air import viz
        from numpyro_air.training import save_figures

        out = Path(args.figures)
        save_figures(params, air, np.asarray(ev.images[:16]), ev.counts[:16], key, out)
        viz.save_confusion_figure(out / "confusion.png", sample["confusion"], f"accuracy {sample['accuracy']:.4f}")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['num_images']} images, step {result['step']}")
        print(f"count accuracy (one guide sample): {sample['accuracy']:.4f}")
        print(f"count accuracy (most probable path): {greedy['accuracy']:.4f}")
        print("confusion (rows: true count, columns: inferred count):")
        for row in sample["confusion"]:
            print("  ", row)
    return result


if __name__ == "__main__":
    main()
