"""Run the pretrained AIR model on held-out scenes: counts, accuracy and figures, no training.

    numpyro-air demo [--out demo] [--num 1000] [--show 12] [--seed 0] [--weights FILE] [--device cpu]

Loads the weights shipped with the package (:func:`numpyro_air.pretrained`, SHA-256 checked) or
``--weights`` (a checkpoint or params file), builds ``--num`` multi-MNIST scenes from MNIST *test*
digits (:func:`numpyro_air.heldout_scenes`), infers every scene with one guide sample
(Pyro's metric) and with the most probable path, prints the first scenes' counts and the
accuracies (overall and per true count), and writes to ``--out``: ``demo_boxes.png`` (inferred
boxes), ``demo_reconstructions.png`` (data and the model's reconstruction), ``demo_windows.png``
(each object's decoded window before placement) and ``demo.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

from . import example_epilog, set_platform


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog=example_epilog("demo"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo", help="directory for the figures and demo.json")
    p.add_argument("--num", type=int, default=1000, help="held-out scenes to count")
    p.add_argument("--show", type=int, default=12, help="scenes printed and drawn")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the guide samples")
    p.add_argument("--weights", help="a checkpoint or params file instead of the shipped weights")
    p.add_argument("--device", choices=["cpu", "gpu", "tpu"])
    return p


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> dict:
    args = build_parser(prog).parse_args(argv)
    if args.num < 1 or not 1 <= args.show <= 64:
        raise SystemExit("error: --num must be >= 1 and --show between 1 and 64")
    set_platform(args.device)
    t0 = time.perf_counter()
    import jax
    import numpy as np

    from numpyro_air.analysis import figures as viz
    from numpyro_air.analysis.inference import count_accuracy, decode_windows, infer
    from numpyro_air.pretrained_model import heldout_scenes, pretrained
    from numpyro_air.train.checkpoint import CheckpointError, load_params

    try:
        config, params = load_params(args.weights) if args.weights else pretrained()
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from e
    scenes = heldout_scenes(args.num)
    images, truth = scenes.images_float(), scenes.counts
    key = jax.random.PRNGKey(args.seed)
    summary = {"weights": args.weights or "numpyro_air (shipped)", "scenes": int(args.num)}
    for name, greedy in (("one_sample", False), ("most_probable_path", True)):
        res = count_accuracy(params, images, truth, key, config, greedy, batch_size=min(500, args.num))
        summary[f"accuracy_{name}"] = res["accuracy"]
        summary[f"accuracy_by_count_{name}"] = res["accuracy_by_count"]
    n = min(args.show, args.num)
    shown = jax.device_get(infer(params, jax.numpy.asarray(images[:n]), key, config, greedy=True))
    windows = np.asarray(decode_windows(params, jax.numpy.asarray(shown["z_what"]), config))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    z = shown["z_pres"]
    figures = [
        viz.save_boxes_figure(
            out / "demo_boxes.png",
            images[:n],
            shown["boxes"],
            z,
            truth[:n],
            ncols=6,
            title="pretrained AIR on held-out scenes: inferred boxes (most probable path)",
        ),
        viz.save_reconstruction_figure(
            out / "demo_reconstructions.png",
            images[: min(n, 8)],
            shown["reconstruction"][:8],
            shown["boxes"][:8],
            z[:8],
            title="data (top) and reconstruction (bottom)",
        ),
        viz.save_windows_figure(
            out / "demo_windows.png",
            images[: min(n, 6)],
            windows[:6],
            shown["boxes"][:6],
            z[:6],
            title="each object's decoded window",
        ),
    ]
    summary["figures"] = [str(f) for f in figures]
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    print("scene  true  inferred")
    for i in range(n):
        print(f"{i:5d}  {int(truth[i]):4d}  {int(shown['counts'][i]):8d}")
    for name in ("one_sample", "most_probable_path"):
        per = ", ".join(f"{c} digits {v['accuracy']:.1%}" for c, v in summary[f"accuracy_by_count_{name}"].items())
        acc = summary[f"accuracy_{name}"]
        print(f"count accuracy, {name.replace('_', ' ')}: {acc:.2%} of {args.num} held-out scenes ({per})")
    print(f"figures: {', '.join(summary['figures'])}  ({summary['seconds']:.1f} s)")
    return summary
