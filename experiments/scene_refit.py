"""Per-scene posteriors refitted on the ELBO: the helpers of ``analyse_refit.py``,
``refine_counts.py`` and ``analyse_missed_objects.py``.

A per-scene posterior ``q`` is a dict of means and log-sds of every step's z_where and z_what,
arrays (T, B, 3) and (T, B, D): ``where``, ``where_log_sd``, ``what``, ``what_log_sd``. Presence
is fixed by a count per scene; the ELBO is the model's log-likelihood of the image under the
first ``count`` objects, minus the closed-form KLs of those objects' Normals from their priors
(the count prior is the caller's to add).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
from numpyro import handlers

from numpyro_air.analysis.inference import forced_presence
from numpyro_air.core.config import AIRConfig
from numpyro_air.core.guide import guide
from numpyro_air.core.model import model


def scenes_of_count(checkpoint: str, data: str, n: int, lowest: int = 1):
    """(config, params, images (M, ...), true boxes (M, n, 4), the guide's most probable path) of
    the M scenes of evaluation file ``data`` with ``n`` true objects, for ``checkpoint``; a
    one-line ``SystemExit`` for a missing or bad file, no boxes, no such scene, or ``n`` outside
    ``lowest``..T."""
    from numpyro_air import load_params
    from numpyro_air.analysis.inference import infer_batched
    from numpyro_air.data import DataError, load_eval_npz

    try:
        config, params = load_params(checkpoint)
        ev = load_eval_npz(data)
    except (DataError, OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    T = config.num_steps
    if ev.boxes is None:
        raise SystemExit(f"error: {data} has no boxes")
    if not lowest <= n <= T:
        raise SystemExit(f"error: --count must be in {lowest}..{T} (the model's steps), got {n}")
    sel = np.flatnonzero(ev.counts == n)
    if len(sel) == 0:
        raise SystemExit(f"error: {data} has no scene with {n} objects")
    images, boxes = ev.images[sel], ev.boxes[sel, :n]
    path = infer_batched(params, images, jax.random.PRNGKey(0), config, greedy=True, reconstruct=False)
    return config, params, images, boxes, path


def quartiles(a) -> dict:
    """Median and quartiles of ``a`` as floats."""
    a = np.asarray(a, np.float64)
    return {"median": float(np.median(a)), "q25": float(np.percentile(a, 25)), "q75": float(np.percentile(a, 75))}


def loc_scale(fn) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(loc, scale) of a Normal site's distribution, through its wrappers (Independent, masks)."""
    while not (hasattr(fn, "loc") and hasattr(fn, "scale")):
        fn = getattr(fn, "base_dist", None) or fn.fn
    return jnp.asarray(fn.loc), jnp.asarray(fn.scale)


def kl_normal(mu, log_sd, prior_loc, prior_scale) -> jnp.ndarray:
    """KL(N(mu, exp(log_sd)) || N(prior_loc, prior_scale)), element-wise (NumPyro's closed form)."""
    return dist.kl_divergence(dist.Normal(mu, jnp.exp(log_sd)), dist.Normal(prior_loc, prior_scale))


@dataclass(frozen=True, eq=False)  # hashed by identity: a static argument of the compiled refit
class SceneRefit:
    """The model of ``params`` / ``config`` with per-scene Gaussian posteriors.

    Attributes:
        params, config: a trained model (``numpyro_air.load_params``).
        samples: reparameterised draws per ELBO estimate.
    """

    params: dict
    config: AIRConfig
    samples: int = 4

    def canvas(self, x, zw, zwhat, count) -> jnp.ndarray:
        """The model's canvas (B, *image_shape) of the first ``count`` (B,) objects of latents (T, B, .)."""
        data = {**self.params, **forced_presence(self.config, count), "z_where": zw, "z_what": zwhat}
        with handlers.trace() as tr:
            handlers.seed(handlers.substitute(model, data=data), 0)(x, self.config)
        return tr["canvas"]["value"]

    def loglik(self, x, zw, zwhat, count) -> jnp.ndarray:
        """log N(x | canvas, likelihood_sd), (B,) nats."""
        sd = self.config.likelihood_sd
        z = ((x - self.canvas(x, zw, zwhat, count)) / sd).reshape(x.shape[0], -1)
        return -0.5 * jnp.sum(z**2, -1) - z.shape[1] * (jnp.log(sd) + 0.5 * jnp.log(2 * jnp.pi))

    def elbo(self, q: dict, x, count, key) -> jnp.ndarray:
        """(B,) ELBO estimate of ``q`` with ``count`` (B,) objects from ``samples`` draws."""
        c, s, T = self.config, self.samples, self.config.num_steps
        draws = []
        for (m, log_sd), k in zip((("where", "where_log_sd"), ("what", "what_log_sd")), jax.random.split(key)):
            z = q[m][None] + jnp.exp(q[log_sd])[None] * jax.random.normal(k, (s,) + q[m].shape)  # (S, T, B, .)
            draws.append(jnp.moveaxis(z, 0, 1).reshape(T, s * x.shape[0], -1))
        xs, counts = jnp.tile(x, (s,) + (1,) * (x.ndim - 1)), jnp.tile(count, s)
        ll = self.loglik(xs, *draws, counts).reshape(s, -1).mean(0)
        where_loc = jnp.asarray([c.scale_prior_mean, c.pos_prior_mean, c.pos_prior_mean])
        where_scale = jnp.asarray([c.scale_prior_sd, c.pos_prior_sd, c.pos_prior_sd])
        kl = kl_normal(q["where"], q["where_log_sd"], where_loc, where_scale).sum(-1)
        kl = kl + kl_normal(q["what"], q["what_log_sd"], 0.0, 1.0).sum(-1)  # (T, B)
        return ll - jnp.sum(kl * (jnp.arange(T)[:, None] < count[None]), 0)

    def evaluate(self, q: dict, x, count, draws: int = 8) -> np.ndarray:
        """(B,) ELBO of ``q`` averaged over ``draws`` fixed-key estimates."""
        return np.asarray(jnp.mean(jnp.stack([self.elbo(q, x, count, jax.random.PRNGKey(1000 + i)) for i in range(draws)]), 0))

    def refit(self, q: dict, x, count, steps: int, learning_rate: float) -> dict:
        """``q`` after ``steps`` Adam steps on the summed ELBO (one compiled scan, compiled once per
        instance, shape and settings)."""
        return _refit(self, q, x, jnp.asarray(count), steps, learning_rate)

    def guide_posterior(self, x) -> dict:
        """The guide's posterior along its most probable path, read as independent Gaussians: each
        step's z_where and z_what loc and scale given the path's draws (this scores below the guide's
        own ELBO, which draws each step given the draws before it)."""
        with handlers.trace() as tr:
            handlers.seed(handlers.substitute(guide, data=self.params), 0)(x, self.config, greedy=True)
        (wl, ws), (zl, zs) = loc_scale(tr["z_where"]["fn"]), loc_scale(tr["z_what"]["fn"])
        return {"where": wl, "where_log_sd": jnp.log(ws), "what": zl, "what_log_sd": jnp.log(zs)}

    def new_object(self, q: dict, pose) -> dict:
        """One object per scene (pose (B, 3), z_what 0) in ``q``'s layout without the step axis."""
        new = {"where": pose, "where_log_sd": jnp.full_like(pose, np.log(0.05))}
        return new | {"what": jnp.zeros_like(q["what"][0]), "what_log_sd": jnp.full_like(q["what"][0], np.log(0.3))}

    def insert(self, q: dict, pose, at) -> dict:
        """``q`` with a new object at step ``at`` (B,) of each scene, the later steps moved back one
        (the last step drops out)."""
        t, at = jnp.arange(self.config.num_steps)[:, None, None], jnp.asarray(at)[None, :, None]
        new = self.new_object(q, pose)
        moved = {k: jnp.concatenate([v[:1], v[:-1]]) for k, v in q.items()}
        return {k: jnp.where(t < at, v, jnp.where(t == at, new[k][None], moved[k])) for k, v in q.items()}

    def pose_at(self, cx, cy) -> jnp.ndarray:
        """(B, 3) z_where at the prior's scale centred on pixel coordinates (cx, cy) (B,)."""
        c, s0 = self.config, self.config.scale_prior_mean
        pose = [np.full(len(cx), s0), s0 * (1 - 2 * np.asarray(cx) / c.width), s0 * (1 - 2 * np.asarray(cy) / c.height)]
        return jnp.asarray(np.stack(pose, -1), jnp.float32)


@partial(jax.jit, static_argnames=("fit", "steps", "learning_rate"))
def _refit(fit: SceneRefit, q: dict, x, count, steps: int, learning_rate: float) -> dict:
    opt = optax.adam(learning_rate)

    def body(carry, key):
        q, state = carry
        g = jax.grad(lambda v: -jnp.sum(fit.elbo(v, x, count, key)))(q)
        u, state = opt.update(g, state)
        return (optax.apply_updates(q, u), state), None

    (q, _), _ = jax.lax.scan(body, (q, opt.init(q)), jax.random.split(jax.random.PRNGKey(1), steps))
    return q
