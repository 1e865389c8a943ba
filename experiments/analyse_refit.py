"""Is a missed object the guide's miss or the model's choice, once every object may move? For scenes
with N true objects that the guide's most probable path counts as N - 1.

    python experiments/analyse_refit.py runs/dsprites/checkpoint.npz --data dsprites_0to3.npz \\
        --count 3 --max-scenes 64 --out refit.json

``analyse_missed_objects.py`` keeps the guide's N - 1 objects fixed and fits an N-th behind them;
with occluding objects a window that draws two sprites then still paints over the second one.
Here each scene gets its own Gaussian posterior over every present object's z_where and z_what
(means and log-sds, started from the guide's), fitted by Adam on the ELBO (``--samples``
reparameterised draws, the Normal KLs in closed form, presence fixed), twice:

* with N - 1 objects, from the guide's N - 1;
* with N objects: the guide's N - 1 plus one at the true object the N - 1 windows miss (the true
  box centre farthest from every window centre), at the prior's scale, z_what 0, once behind the
  others and once in front; the better of the two.

The ELBO gain of N objects over N - 1 is what counting the object is worth to the model apart
from the count prior, whose log-odds log P(N - 1) - log P(N) it must exceed (the model's own prior
over counts, :func:`numpyro_air.core.prior.count_log_probs`). As a control, the same is done
for scenes counted right (the guide's N-th object dropped, then refitted). Also reports how much
the refit improves on its start: the guide's posterior read as independent Gaussians along its
most probable path (the loc and scale of each step's z_where and z_what given the path's draws),
which scores below the guide's own ELBO (the guide draws each step given the draws before it),
so that gain is not the guide's amortisation gap. Writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="evaluation .npz with counts and boxes")
    p.add_argument("--count", type=int, default=3, help="N: true objects of the scenes analysed")
    p.add_argument("--fit-steps", type=int, default=300)
    p.add_argument("--learning-rate", type=float, default=0.02)
    p.add_argument("--samples", type=int, default=4, help="reparameterised draws per ELBO estimate")
    p.add_argument("--max-scenes", type=int, default=64, help="per group (missed / control)")
    p.add_argument("--out", required=True, help="JSON path")
    args = p.parse_args(argv)
    import jax.numpy as jnp
    from scene_refit import SceneRefit, quartiles, scenes_of_count

    from numpyro_air.core.prior import base_prior, count_log_probs

    n = args.count
    config, params, images, boxes, res = scenes_of_count(args.checkpoint, args.data, n, lowest=2)
    T = config.num_steps
    fit = SceneRefit(params, config, args.samples)

    def refitted(q, x, count):
        return fit.evaluate(fit.refit(q, x, count, args.fit_steps, args.learning_rate), x, count)

    def group(idx):
        x = jnp.asarray(images[idx])
        q = fit.guide_posterior(x)
        windows = res["boxes"][idx, : n - 1, :2] + res["boxes"][idx, : n - 1, 2:] / 2  # (B, n-1, 2)
        true = boxes[idx, :, :2] + boxes[idx, :, 2:] / 2  # (B, n, 2)
        far = np.linalg.norm(true[:, :, None] - windows[:, None], axis=-1).min(-1)
        c = true[np.arange(len(idx)), np.argmax(far, -1)]
        pose = fit.pose_at(c[:, 0], c[:, 1])
        fewer, more = jnp.full(len(idx), n - 1), jnp.full(len(idx), n)
        start_elbo = fit.evaluate(q, x, fewer)
        without = refitted(q, x, fewer)
        behind = refitted(fit.insert(q, pose, np.full(len(idx), n - 1)), x, more)
        front = refitted(fit.insert(q, pose, np.zeros(len(idx), int)), x, more)
        gain = np.maximum(behind, front) - without
        return {
            "scenes": int(len(idx)),
            "elbo_gain_of_the_object": quartiles(gain),
            "share_gain_above_count_prior": float(np.mean(gain > prior_gap)),
            "share_front_better": float(np.mean(front > behind)),
            "refit_gain_over_the_start": quartiles(without - start_elbo),
        }

    missed = np.flatnonzero(res["counts"] == n - 1)[: args.max_scenes]
    right = np.flatnonzero(res["counts"] == n)[: args.max_scenes]
    log_p = np.asarray(count_log_probs(jnp.asarray(base_prior(config))))
    prior_gap = float(log_p[n - 1] - log_p[n])
    out = {"checkpoint": str(args.checkpoint), "data": str(args.data), "count": n, "scenes": int(len(images))}
    out["count_prior_log_odds"] = prior_gap
    out |= {"fit_steps": args.fit_steps, "learning_rate": args.learning_rate, "samples": args.samples}
    out["counted"] = np.bincount(res["counts"].astype(int), minlength=T + 1).tolist()
    for name, idx in (("missed", missed), ("control_counted_right", right)):
        if len(idx):
            out[name] = group(idx)
            print(name, json.dumps(out[name]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
