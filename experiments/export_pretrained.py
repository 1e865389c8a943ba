"""Export a trained seed as the package's pretrained weights (float16) and measure what it costs.

    python experiments/export_pretrained.py --checkpoint runs/fast20k/checkpoint_seed2.npz \
        --data runs/test_heldout.npz [--out numpyro_air/weights] [--overwrite]

Writes ``air_multi_mnist.npz`` (parameters only, named leaves, float16) and
``air_multi_mnist.json`` (its SHA-256, the source checkpoint's run/seed/step, and held-out count
accuracies of the float32 checkpoint and of the float16 file: on the ``--data`` evaluation file
and on the 1,000 scenes of :func:`numpyro_air.heldout_scenes` that the test and the demo
use). Fails if float16 storage changes an accuracy by more than ``--max-change`` (0.1 points).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from numpyro_air.analysis.inference import count_accuracy
from numpyro_air.data import load_eval_npz
from numpyro_air.pretrained_model import MANIFEST_FILE, WEIGHTS_FILE, file_sha256, heldout_scenes
from numpyro_air.train.checkpoint import export_params, load_params, read_npz


def accuracies(params, config, images, counts) -> dict:
    key = jax.random.PRNGKey(0)
    return {
        name: count_accuracy(params, images, counts, key, config, greedy, batch_size=1000)["accuracy"]
        for name, greedy in (("one_sample", False), ("most_probable_path", True))
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="held-out evaluation .npz (e.g. the 10,000-canvas test split)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "numpyro_air" / "weights"))
    ap.add_argument("--max-change", type=float, default=0.001, help="largest accepted accuracy change (fraction)")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dst = out / WEIGHTS_FILE
    meta = read_npz(a.checkpoint)[0]
    final = dst
    dst = out / (WEIGHTS_FILE + ".candidate")  # moved into place only once the check below passes
    export_params(a.checkpoint, dst, dtype=np.float16, overwrite=True)
    dst.chmod(0o644)  # a package file, readable by every user
    ev, scenes = load_eval_npz(a.data), heldout_scenes()
    sets = {
        "eval_file": (np.asarray(ev.images, np.float32), ev.counts),
        "heldout_scenes_1000": (scenes.images_float(), scenes.counts),
    }
    result = {
        "sha256": file_sha256(dst),
        "bytes": dst.stat().st_size,
        "source": str(a.checkpoint),
        "seed": meta.get("seed"),
        "step": meta.get("step"),
        "eval_file": str(a.data),
        "accuracy": {},
    }
    for dtype_name, path in (("float32_checkpoint", a.checkpoint), ("float16_file", dst)):
        config, params = load_params(path)
        result["accuracy"][dtype_name] = {k: accuracies(params, config, *v) for k, v in sets.items()}
    f32, f16 = result["accuracy"]["float32_checkpoint"], result["accuracy"]["float16_file"]
    change = max(abs(f32[s][m] - f16[s][m]) for s in f32 for m in f32[s])
    result["largest_accuracy_change"] = change
    print(json.dumps(result, indent=1))
    if change > a.max_change:
        dst.unlink()
        sys.exit(f"float16 storage changed an accuracy by {change:.4f} > {a.max_change}: nothing installed")
    if final.exists() and not a.overwrite:
        dst.unlink()
        sys.exit(f"{final} exists: pass --overwrite to replace it")
    dst.replace(final)
    (out / MANIFEST_FILE).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
