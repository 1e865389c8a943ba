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
from pathlib import Path

import numpy as np


def quartiles(a) -> dict:
    a = np.asarray(a, np.float64)
    return {"median": float(np.median(a)), "q25": float(np.percentile(a, 25)), "q75": float(np.percentile(a, 75))}


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
    import jax
    import jax.numpy as jnp
    import optax
    from numpyro import handlers

    from numpyro_air import load_params
    from numpyro_air.analysis.inference import forced_presence, infer_batched
    from numpyro_air.core.guide import guide
    from numpyro_air.core.model import model
    from numpyro_air.core.prior import base_prior, count_log_probs
    from numpyro_air.data import DataError, load_eval_npz

    try:
        config, params = load_params(args.checkpoint)
        ev = load_eval_npz(args.data)
    except (DataError, OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    n, T, S = args.count, config.num_steps, args.samples
    if ev.boxes is None:
        raise SystemExit(f"error: {args.data} has no boxes")
    if not 2 <= n <= T:
        raise SystemExit(f"error: --count must be in 2..{T} (the model's steps), got {n}")
    sel = np.flatnonzero(ev.counts == n)
    if len(sel) == 0:
        raise SystemExit(f"error: {args.data} has no scene with {n} objects")
    images, boxes = ev.images[sel], ev.boxes[sel, :n]
    res = infer_batched(params, images, jax.random.PRNGKey(0), config, greedy=True, reconstruct=False)
    sd, H, W = config.likelihood_sd, config.height, config.width
    where_loc = jnp.asarray([config.scale_prior_mean, config.pos_prior_mean, config.pos_prior_mean])
    where_scale = jnp.asarray([config.scale_prior_sd, config.pos_prior_sd, config.pos_prior_sd])

    def loglik(x, zw, zwhat, count):
        """log N(x | canvas of the first ``count`` objects, sd) (B,); latents (T, B, .)."""
        data = {**params, **forced_presence(config, jnp.full(x.shape[0], count)), "z_where": zw, "z_what": zwhat}
        with handlers.trace() as tr:
            handlers.seed(handlers.substitute(model, data=data), 0)(x, config)
        z = ((x - tr["canvas"]["value"]) / sd).reshape(x.shape[0], -1)
        return -0.5 * jnp.sum(z**2, -1) - z.shape[1] * (jnp.log(sd) + 0.5 * jnp.log(2 * jnp.pi))

    def kl_normal(mu, log_sd, prior_loc, prior_scale):
        return jnp.log(prior_scale) - log_sd + (jnp.exp(2 * log_sd) + (mu - prior_loc) ** 2) / (2 * prior_scale**2) - 0.5

    def elbo(q, x, count, key):
        """(B,) ELBO of the per-scene Gaussians q (means and log-sds (T, B, .)) with ``count`` objects."""
        k1, k2 = jax.random.split(key)
        draws = []
        for m, s, k in (("where", "where_log_sd", k1), ("what", "what_log_sd", k2)):
            z = q[m][None] + jnp.exp(q[s])[None] * jax.random.normal(k, (S,) + q[m].shape)  # (S, T, B, .)
            draws.append(jnp.moveaxis(z, 0, 1).reshape(T, S * x.shape[0], -1))
        ll = loglik(jnp.tile(x, (S,) + (1,) * (x.ndim - 1)), *draws, count).reshape(S, -1).mean(0)
        kl = kl_normal(q["where"], q["where_log_sd"], where_loc, where_scale).sum(-1)
        kl = kl + kl_normal(q["what"], q["what_log_sd"], 0.0, 1.0).sum(-1)  # (T, B)
        return ll - jnp.sum(kl * (jnp.arange(T) < count)[:, None], 0)

    def evaluate(q, x, count):
        return np.asarray(jnp.mean(jnp.stack([elbo(q, x, count, jax.random.PRNGKey(1000 + i)) for i in range(8)]), 0))

    def refit(q, x, count):
        opt = optax.adam(args.learning_rate)

        @jax.jit
        def update(q, state, key):
            g = jax.grad(lambda v: -jnp.sum(elbo(v, x, count, key)))(q)
            u, state = opt.update(g, state)
            return optax.apply_updates(q, u), state

        state, key = opt.init(q), jax.random.PRNGKey(1)
        for _ in range(args.fit_steps):
            key, sub = jax.random.split(key)
            q, state = update(q, state, sub)
        return evaluate(q, x, count)

    def loc_scale(fn):
        while not (hasattr(fn, "loc") and hasattr(fn, "scale")):
            fn = getattr(fn, "base_dist", None) or fn.fn
        return jnp.asarray(fn.loc), jnp.asarray(fn.scale)

    def guide_posterior(x):
        with handlers.trace() as tr:
            handlers.seed(handlers.substitute(guide, data=params), 0)(x, config, greedy=True)
        (wl, ws), (zl, zs) = loc_scale(tr["z_where"]["fn"]), loc_scale(tr["z_what"]["fn"])
        return {"where": wl, "where_log_sd": jnp.log(ws), "what": zl, "what_log_sd": jnp.log(zs)}

    def with_object(q, pose, front):
        """q with a new object (pose (B, 3), z_what 0) as step n - 1 (behind) or step 0 (in front)."""
        new = {"where": pose, "where_log_sd": jnp.full_like(pose, np.log(0.05))}
        new |= {"what": jnp.zeros_like(q["what"][0]), "what_log_sd": jnp.full_like(q["what"][0], np.log(0.3))}
        if front:
            return {k: jnp.concatenate([new[k][None], v[: n - 1], v[n:]]) for k, v in q.items()}
        return {k: v.at[n - 1].set(new[k]) for k, v in q.items()}

    def group(idx):
        x = jnp.asarray(images[idx])
        q = guide_posterior(x)
        windows = res["boxes"][idx, : n - 1, :2] + res["boxes"][idx, : n - 1, 2:] / 2  # (B, n-1, 2)
        true = boxes[idx, :, :2] + boxes[idx, :, 2:] / 2  # (B, n, 2)
        far = np.linalg.norm(true[:, :, None] - windows[:, None], axis=-1).min(-1)
        c = true[np.arange(len(idx)), np.argmax(far, -1)]
        s0 = config.scale_prior_mean
        pose = jnp.asarray(
            np.stack([np.full(len(idx), s0), s0 * (1 - 2 * c[:, 0] / W), s0 * (1 - 2 * c[:, 1] / H)], -1), jnp.float32
        )
        start_elbo = evaluate(q, x, n - 1)
        fewer = refit(q, x, n - 1)
        behind, front = refit(with_object(q, pose, False), x, n), refit(with_object(q, pose, True), x, n)
        gain = np.maximum(behind, front) - fewer
        return {
            "scenes": int(len(idx)),
            "elbo_gain_of_the_object": quartiles(gain),
            "share_gain_above_count_prior": float(np.mean(gain > prior_gap)),
            "share_front_better": float(np.mean(front > behind)),
            "refit_gain_over_the_start": quartiles(fewer - start_elbo),
        }

    missed = np.flatnonzero(res["counts"] == n - 1)[: args.max_scenes]
    right = np.flatnonzero(res["counts"] == n)[: args.max_scenes]
    log_p = np.asarray(count_log_probs(jnp.asarray(base_prior(config))))
    prior_gap = float(log_p[n - 1] - log_p[n])
    out = {"checkpoint": str(args.checkpoint), "data": str(args.data), "count": n, "scenes": int(len(sel))}
    out["count_prior_log_odds"] = prior_gap
    out |= {"fit_steps": args.fit_steps, "learning_rate": args.learning_rate, "samples": S}
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
