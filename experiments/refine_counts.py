"""Count by refitting each scene's posterior for the guide's count and its neighbours.

    python experiments/refine_counts.py runs/dsprites/checkpoint.npz [--num-images 500] [--fit-steps 150]
        [--samples 2] [--batch-size 250] [--out refine.json]

Semi-amortised inference as a count readout. For each scene of the ``multi-dsprites`` test split
(the cached one of ``--dataset multi-dsprites``; the first ``--num-images``), the guide's most
probable path gives a count c and a Gaussian posterior over every step's z_where and z_what (its
means and sds). Four candidates are then fitted per scene by Adam on the ELBO (``--samples``
reparameterised draws, the Normal KLs in closed form, presence fixed), each from the guide's
posterior:

* c - 1 objects (the guide's last one dropped), c objects;
* c + 1 objects, the new one at the peak of the guide's residual |x - reconstruction| (summed over
  channels, averaged over a 13-px square), at the prior's scale and z_what 0, once behind the
  guide's objects and once in front of them.

The count is the candidate's with the largest ELBO plus the model's count prior log P(n)
(:func:`numpyro_air.core.prior.count_log_probs`). Prints and writes the confusion matrices of the
guide's count and the refined one. No true count or box is used by the readout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESIDUAL_WINDOW = 13  # px: the side of the square the residual is averaged over (about a sprite)
IMPOSSIBLE = 1e9  # subtracted from the score of a candidate count outside 0..T


def residual_peak(x: np.ndarray, reconstruction: np.ndarray, window: int = RESIDUAL_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (cx, cy) (B,) of the largest |x - reconstruction| (summed over channels)
    averaged over a ``window``-px square, for images (B, H, W[, C])."""
    from scipy.ndimage import uniform_filter

    r = np.abs(np.asarray(x) - np.asarray(reconstruction))
    r = uniform_filter(r.sum(-1) if r.ndim == 4 else r, size=(1, window, window), mode="constant")
    cy, cx = np.unravel_index(r.reshape(len(r), -1).argmax(-1), r.shape[1:])
    return cx + 0.5, cy + 0.5


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument("--fit-steps", type=int, default=150)
    p.add_argument("--learning-rate", type=float, default=0.02)
    p.add_argument("--samples", type=int, default=2, help="reparameterised draws per ELBO estimate")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", help="JSON path")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    from scene_refit import SceneRefit

    from numpyro_air import load_params
    from numpyro_air.analysis.inference import infer_batched
    from numpyro_air.core.prior import base_prior, count_log_probs
    from numpyro_air.data import DataError
    from numpyro_air.data.datasets import load_dataset

    try:
        config, params = load_params(args.checkpoint)
        _, test = load_dataset("multi-dsprites")
    except (DataError, OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    images, truth = test.images_float()[: args.num_images], np.asarray(test.counts[: args.num_images])
    T = config.num_steps
    log_prior = np.asarray(count_log_probs(jnp.asarray(base_prior(config))))
    fit = SceneRefit(params, config, args.samples)

    def score(q, x, count):
        """Refitted ELBO plus the count prior, (B,)."""
        q = fit.refit(q, x, count, args.fit_steps, args.learning_rate)
        return fit.evaluate(q, x, jnp.asarray(count), draws=4) + log_prior[count]

    start = time.time()
    path = infer_batched(params, images, jax.random.PRNGKey(0), config, greedy=True, reconstruct=True)
    guide_counts = np.asarray(path["counts"]).astype(int)
    refined = []
    for s in range(0, len(images), args.batch_size):
        x, c = jnp.asarray(images[s : s + args.batch_size]), guide_counts[s : s + args.batch_size]
        q = fit.guide_posterior(x)
        pose = fit.pose_at(*residual_peak(x, path["reconstruction"][s : s + args.batch_size]))
        down, up = np.maximum(c - 1, 0), np.minimum(c + 1, T)
        scores = [
            score(q, x, down) - IMPOSSIBLE * (c == 0),
            score(q, x, c),
            score(fit.insert(q, pose, np.minimum(c, T - 1)), x, up) - IMPOSSIBLE * (c == T),
            score(fit.insert(q, pose, np.zeros_like(c)), x, up) - IMPOSSIBLE * (c == T),
        ]
        refined.append(c + np.array([-1, 0, 1, 1])[np.argmax(np.stack(scores, -1), -1)])
        print(f"{s + len(c)} / {len(images)} scenes, {time.time() - start:.0f} s", flush=True)
    refined = np.concatenate(refined)

    def confusion(counts):
        return [np.bincount(counts[truth == n], minlength=T + 1).tolist() for n in range(T + 1)]

    out = {"checkpoint": str(args.checkpoint), "scenes": int(len(images)), "split": "test (first --num-images)"}
    out |= {"fit_steps": args.fit_steps, "learning_rate": args.learning_rate, "samples": args.samples}
    out |= {"seconds": time.time() - start}
    out |= {"accuracy_path": float(np.mean(guide_counts == truth)), "accuracy_refined": float(np.mean(refined == truth))}
    out |= {"confusion_path": confusion(guide_counts), "confusion_refined": confusion(refined)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
