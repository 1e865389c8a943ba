"""The scenes a trained model miscounts, with its boxes and its reconstruction.

    python experiments/show_misses.py runs/dsprites/checkpoint.npz --data dsprites_0to3.npz \\
        --count 3 --inferred 2 --num 12 --out misses_3_as_2.png

Scenes: the first ``--num`` of the evaluation file's scenes with ``--count`` true objects that the
guide's most probable path counts as ``--inferred``. Top row: the scene with the inferred boxes
(red, green, blue, ... by step); bottom row: the model's reconstruction. Prints how many of the
scenes with ``--count`` objects were counted as each number.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="evaluation .npz")
    p.add_argument("--count", type=int, default=3, help="true object count of the scenes searched")
    p.add_argument("--inferred", type=int, default=2, help="the count the model gives the scenes shown")
    p.add_argument("--num", type=int, default=12)
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args(argv)
    import jax
    from matplotlib.figure import Figure

    from numpyro_air import load_params
    from numpyro_air.analysis.figures import imshow, save_figure, show_scene
    from numpyro_air.analysis.inference import infer_batched
    from numpyro_air.data import load_eval_npz

    ev = load_eval_npz(args.data)
    images = ev.images[np.flatnonzero(ev.counts == args.count)]
    if len(images) == 0:
        raise SystemExit(f"error: {args.data} has no scene with {args.count} objects")
    config, params = load_params(args.checkpoint)
    res = infer_batched(params, images, jax.random.PRNGKey(0), config, greedy=True)
    counted = np.bincount(res["counts"].astype(int), minlength=config.num_steps + 1)
    print(f"{len(images)} scenes with {args.count} objects, counted as 0..{config.num_steps}: {counted.tolist()}")
    shown = np.flatnonzero(res["counts"] == args.inferred)[: args.num]
    if len(shown) == 0:
        raise SystemExit(f"error: no scene with {args.count} objects is counted as {args.inferred}")
    fig = Figure(figsize=(1.6 * len(shown), 3.6), layout="constrained")
    axes = fig.subplots(2, len(shown), squeeze=False)
    for col, i in enumerate(shown):
        show_scene(axes[0, col], images[i], res["boxes"][i], res["z_pres"][i])
        imshow(axes[1, col], res["reconstruction"][i])  # clipped to [0, 1]
        axes[1, col].axis("off")
    fig.suptitle(
        f"scenes with {args.count} objects counted as {args.inferred} (most probable path): scene and boxes, reconstruction",
        fontsize=9,
    )
    out = save_figure(fig, args.out, dpi=100)
    print(out)
    return out


if __name__ == "__main__":
    main()
