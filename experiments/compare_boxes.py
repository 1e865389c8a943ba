"""Inferred boxes of several trained models on the same scenes, one row per model.

    python experiments/compare_boxes.py AIR=runs/air/checkpoint.npz DAIR=runs/dair/checkpoint.npz \\
        --data test_0to3.npz --count 3 --num 8 --out boxes_air_vs_dair.png

Scenes: the first ``--num`` images of the evaluation file with ``--count`` true objects. Boxes are
coloured by step (red, green, blue, ...) from the guide's most probable path; titles give the
inferred count.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="NAME=CHECKPOINT")
    p.add_argument("--data", required=True, help="evaluation .npz")
    p.add_argument("--count", type=int, default=3, help="true object count of the scenes shown")
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args(argv)
    from matplotlib.figure import Figure

    from numpyro_air import infer, load_params
    from numpyro_air.analysis.figures import draw_boxes, save_figure
    from numpyro_air.data import load_eval_npz

    ev = load_eval_npz(args.data)
    images = ev.images[np.flatnonzero(ev.counts == args.count)[: args.num]]
    if len(images) == 0:
        raise SystemExit(f"error: {args.data} has no scene with {args.count} objects")
    fig = Figure(figsize=(1.6 * len(images), 2.2 * len(args.models) + 0.3), layout="constrained")
    axes = fig.subplots(len(args.models), len(images), squeeze=False)
    for row, spec in enumerate(args.models):
        name, _, path = spec.partition("=")
        config, params = load_params(path)
        res = jax.device_get(infer(params, images, jax.random.PRNGKey(0), config, greedy=True, reconstruct=False))
        for col, ax in enumerate(axes[row]):
            ax.imshow(images[col], cmap="gray", vmin=0, vmax=1)
            draw_boxes(ax, res["boxes"][col], res["z_pres"][col])
            ax.set_title(f"{name}: {int(res['counts'][col])}", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"inferred boxes on scenes with {args.count} objects (most probable path)", fontsize=9)

    out = save_figure(fig, args.out)
    print(out)
    return out


if __name__ == "__main__":
    main()
