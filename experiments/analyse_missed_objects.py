"""Does the model or the guide miss the last object? For scenes with N true objects that the guide's
most probable path counts as N - 1.

    python experiments/analyse_missed_objects.py runs/dsprites/checkpoint.npz --data dsprites_0to3.npz \\
        --count 3 --out missed_objects.json

For each such scene the guide's N - 1 objects are kept (their means) and an N-th object is placed
on the true object that the N - 1 windows miss (the true box centre farthest from every window
centre): its pose starts at the prior's scale on that centre and its z_what at 0, and both are
fitted by Adam to maximise log N(x | canvas, sd) + log p(z_where_N) + log p(z_what_N) (the prior
densities without their constants). The gain in log-likelihood over the (N - 1)-object canvas is
what the model could gain from counting the object. As a control, the same fit replaces the N-th
object of scenes counted right (it should recover about what the guide's own object gains). The
cost of an object in the ELBO is the KL of its z_what and z_where from their priors: reported for
the guide's N-th object in the scenes it counts right. Writes a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_refit import loc_scale, quartiles, scenes_of_count  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="evaluation .npz with counts and boxes")
    p.add_argument("--count", type=int, default=3, help="N: true objects of the scenes analysed")
    p.add_argument("--fit-steps", type=int, default=300)
    p.add_argument("--max-scenes", type=int, default=200, help="per group (missed / control)")
    p.add_argument("--out", required=True, help="JSON path")
    args = p.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist
    import optax
    from numpyro import handlers

    from numpyro_air.analysis.inference import forced_presence
    from numpyro_air.core.guide import guide
    from numpyro_air.core.model import model

    config, params, images, boxes, res = scenes_of_count(args.checkpoint, args.data, args.count)
    n, T = args.count, config.num_steps
    sd, H, W = config.likelihood_sd, config.height, config.width

    def loglik(x, zw, zwhat, count):
        """log N(x | canvas, sd) (B,) of the first ``count`` objects of latents (T, B, .)."""
        data = {**params, **forced_presence(config, jnp.full(x.shape[0], count)), "z_where": zw, "z_what": zwhat}
        with handlers.trace() as tr:
            handlers.seed(handlers.substitute(model, data=data), 0)(x, config)
        return -0.5 * jnp.sum(((x - tr["canvas"]["value"]) / sd).reshape(x.shape[0], -1) ** 2, -1)

    loc = jnp.asarray([config.scale_prior_mean, config.pos_prior_mean, config.pos_prior_mean])
    scale = jnp.asarray([config.scale_prior_sd, config.pos_prior_sd, config.pos_prior_sd])

    def fit_last(idx):
        """Gain in log-likelihood (and with the object's prior log-density) of an n-th object fitted
        at the true object farthest from the guide's first n - 1 windows."""
        x = jnp.asarray(images[idx])
        zw, zwhat = (jnp.swapaxes(jnp.asarray(res[k][idx]), 0, 1) for k in ("z_where", "z_what"))  # (T, B, .)
        windows = res["boxes"][idx, : n - 1, :2] + res["boxes"][idx, : n - 1, 2:] / 2  # (B, n-1, 2)
        true = boxes[idx, :, :2] + boxes[idx, :, 2:] / 2  # (B, n, 2)
        dist = np.linalg.norm(true[:, :, None] - windows[:, None], axis=-1).min(-1) if n > 1 else np.zeros(true.shape[:2])
        c = true[np.arange(len(idx)), np.argmax(dist, -1)]
        s0 = config.scale_prior_mean
        pose = np.stack([np.full(len(idx), s0), s0 * (1 - 2 * c[:, 0] / W), s0 * (1 - 2 * c[:, 1] / H)], -1)
        without = loglik(x, zw, zwhat, n - 1)

        def objective(q):
            ll = loglik(x, zw.at[n - 1].set(q["zw"]), zwhat.at[n - 1].set(q["zwhat"]), n)
            lp = jnp.sum(-0.5 * ((q["zw"] - loc) / scale) ** 2, -1) + jnp.sum(-0.5 * q["zwhat"] ** 2, -1)
            return ll, lp

        q = {"zw": jnp.asarray(pose, jnp.float32), "zwhat": jnp.zeros((len(idx), config.z_what_size))}
        opt = optax.adam(0.05)

        @jax.jit
        def update(q, state):
            g = jax.grad(lambda v: -jnp.sum(sum(objective(v))))(q)
            u, state = opt.update(g, state)
            return optax.apply_updates(q, u), state

        state = opt.init(q)
        for _ in range(args.fit_steps):
            q, state = update(q, state)
        ll, lp = objective(q)
        return np.asarray(ll - without), np.asarray(ll - without + lp)

    def kl_normal(m, s, pm, ps):
        return np.asarray(dist.kl_divergence(dist.Normal(m, s), dist.Normal(pm, ps)))

    missed = np.flatnonzero(res["counts"] == n - 1)[: args.max_scenes]
    right = np.flatnonzero(res["counts"] == n)[: args.max_scenes]
    out = {"checkpoint": str(args.checkpoint), "data": str(args.data), "count": n, "scenes": int(len(images))}
    out["counted"] = np.bincount(res["counts"].astype(int), minlength=T + 1).tolist()
    for name, idx in (("missed", missed), ("control_counted_right", right)):
        if len(idx):
            gain, joint = fit_last(idx)
            out[name] = {
                "scenes": int(len(idx)),
                "loglik_gain": quartiles(gain),
                "loglik_gain_over_30": float(np.mean(gain > 30)),
                "loglik_gain_plus_log_prior": quartiles(joint),
            }
    if len(right):
        with handlers.trace() as tr:
            handlers.seed(handlers.substitute(guide, data=params), 0)(jnp.asarray(images[right]), config, greedy=True)
        wl, ws = (np.asarray(v) for v in loc_scale(tr["z_what"]["fn"]))
        zl, zs = (np.asarray(v) for v in loc_scale(tr["z_where"]["fn"]))
        kw = kl_normal(wl[n - 1], ws[n - 1], 0.0, 1.0).sum(-1)
        kz = kl_normal(zl[n - 1], zs[n - 1], np.asarray(loc), np.asarray(scale)).sum(-1)
        out["object_kl_counted_right"] = {"z_what": quartiles(kw), "z_where": quartiles(kz), "total": quartiles(kw + kz)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
