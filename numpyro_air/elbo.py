"""NVIL: a score-function ELBO for NumPyro with Rao-Blackwellised costs and baselines.

:class:`NVIL_ELBO` is generic (any model/guide whose discrete latents live at top level or
inside ``numpyro.contrib.control_flow.scan``); AIR is one user. NumPyro's ``TraceGraph_ELBO``
is not used because (1) with ``scan`` every step is one site, so earlier steps never see later
steps' costs, (2) with subsampling the score term is scaled twice, and (3) it has no baselines
(see ``shared/reference/numpyro_jax.md`` §1.4-1.6).

Estimator, per particle (``sg`` = stop_gradient)::

    elbo      = sum(log p) - sum(log q_reparam) - sum(sg(log q_nonreparam))
    cost_s    = sum of (log p - log q) terms downstream of discrete site s, per example;
                inside a scan: that step's and all later steps' terms (reverse cumsum over time)
                plus top-level terms that depend on s (NumPyro's provenance tracking)
    surrogate = sum_s sum(log q_s * sg(cost_s - b_s))   (log q_s *unscaled*, cost_s scaled)
    bl_loss   = sum_s sum((sg(cost_s) - b_s) ** 2)      (learned baselines only)
    loss      = -(elbo + surrogate - sg(surrogate)) + (bl_loss - sg(bl_loss))

so the value is the honest -ELBO estimate, while gradients are the pathwise + score-function
ones; the baseline loss reaches only the baseline's parameters as long as the baseline's inputs
are detached in the guide.

Baselines are declared per discrete site with ``infer={"baseline": {...}}`` (Pyro's keys):

- ``"baseline_value"``: the *name* of a ``numpyro.deterministic`` site holding the baseline (for
  sites in a scan this is the only way: arrays in ``infer`` leak tracers from the scan), or an
  array (top-level sites only).
- ``"use_decaying_avg_baseline": True`` with ``"baseline_beta"`` (default 0.9): an exponential
  moving average of the cost (per time step for scan sites, averaged over the batch), held in a
  ``numpyro.primitives.mutable`` site named by ``"avg_baseline_state"`` (default ``"<site>_avg_baseline"``)
  that the guide declares with initial value zeros((T,)) or zeros(()). Both kinds add up.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.handlers import seed
from numpyro.infer.elbo import ELBO, get_nonreparam_deps
from numpyro.infer.util import get_importance_trace
from numpyro.util import check_model_guide_match

DEFAULT_BETA = 0.9


def _is_scan(site) -> bool:
    return bool(site.get("_control_flow_done", False))


def _term_in_layout(lp, term_site, target_site, target_ndim: int, keep_time: bool):
    """Reduce a cost term ``lp`` to the batch layout of ``target_site``.

    Sums over every batch dim that is not a plate shared with the target; returns an array
    broadcastable to (T, *target_batch) if ``keep_time`` else (*target_batch), where
    ``target_ndim`` is the rank of target_batch (without the time axis).
    """
    lead = 1 if _is_scan(term_site) else 0
    keep_dims = {f.dim for f in term_site["cond_indep_stack"] if f in target_site["cond_indep_stack"]}
    nd = lp.ndim - lead
    for d in range(-nd, 0):
        if d not in keep_dims:
            lp = jnp.sum(lp, axis=d, keepdims=True)
    if lead and not keep_time:
        lp = jnp.sum(lp, axis=0)
        lead = 0
    batch = lp.shape[lead:]
    if len(batch) > target_ndim:  # leading summed dims of size 1
        batch = batch[len(batch) - target_ndim :]
    else:
        batch = (1,) * (target_ndim - len(batch)) + batch
    return lp.reshape(lp.shape[:lead] + batch)


def _reverse_cumsum(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.flip(jnp.cumsum(jnp.flip(x, 0), axis=0), 0)


class NVIL_ELBO(ELBO):
    """Score-function ELBO with Rao-Blackwellised per-step costs and NVIL baselines.

    :param int num_particles: number of particles averaged (vmapped by default).
    :param bool vectorize_particles: vmap (True) or ``lax.map`` over particles.
    :param bool use_provenance: use NumPyro's provenance tracking (trace time only) to drop
        top-level cost terms that do not depend on a discrete site; with False every top-level
        term counts (still unbiased, higher variance).
    """

    can_infer_discrete = True

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = True, use_provenance: bool = True):
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.use_provenance = use_provenance

    # ------------------------------------------------------------------ public API
    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)["loss"]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        def single(key):
            out = self.components(key, param_map, model, guide, *args, **kwargs)
            return out["loss"], out["mutable_state"]

        if self.num_particles == 1:
            loss, mutable = single(rng_key)
        else:
            keys = random.split(rng_key, self.num_particles)
            losses, mutables = self.vectorize_particles_fn(single, keys)
            loss = jnp.mean(losses)
            mutable = jax.tree.map(lambda x: jnp.mean(x, 0), mutables)
        return {"loss": loss, "mutable_state": mutable}

    def components(self, rng_key, param_map, model, guide, *args, **kwargs) -> Dict[str, Any]:
        """One particle: ``loss`` (the differentiable surrogate whose value is -ELBO),
        ``elbo``, per-site ``costs`` and ``baselines``, ``mutable_state``, and the two
        differentiable parts of ``loss``'s gradient: ``surrogate_loss`` (value -ELBO; pathwise +
        score-function terms) and ``baseline_loss`` (value sum((cost - b)**2); its gradient is
        what ``loss`` adds, and with detached baseline inputs it reaches only baseline params)."""
        k_model, k_guide = random.split(rng_key)
        model_trace, guide_trace = get_importance_trace(
            seed(model, k_model), seed(guide, k_guide), args, kwargs, param_map
        )
        check_model_guide_match(model_trace, guide_trace)

        # cost terms: (trace name, site, signed log-prob)
        terms = []
        elbo = jnp.zeros(())
        for name, site in model_trace.items():
            if site["type"] == "sample":
                elbo = elbo + jnp.sum(site["log_prob"])
                terms.append((("model", name), site, site["log_prob"]))
        discrete = []
        for name, site in guide_trace.items():
            if site["type"] == "sample" and not site["is_observed"]:
                lp = site["log_prob"]
                if site["fn"].has_rsample:
                    elbo = elbo - jnp.sum(lp)
                else:
                    elbo = elbo - jnp.sum(stop_gradient(lp))
                    discrete.append(name)
                terms.append((("guide", name), site, -lp))

        scan_lengths = {lp.shape[0] for _, s, lp in terms if _is_scan(s)}
        if len(scan_lengths) > 1:
            raise ValueError(
                f"NVIL_ELBO assumes all scanned sites share one time axis; got lengths {sorted(scan_lengths)}"
            )

        deps = self._dependencies(model, guide, args, kwargs, param_map, guide_trace, discrete)
        mutable_state = {
            name: site["value"]
            for tr in (model_trace, guide_trace)
            for name, site in tr.items()
            if site["type"] == "mutable"
        }

        surrogate = jnp.zeros(())
        bl_loss = jnp.zeros(())
        costs, baselines = {}, {}
        for name in discrete:
            site = guide_trace[name]
            log_q = site["fn"].log_prob(site["value"])  # unscaled score function
            scan_site = _is_scan(site)
            ndim = log_q.ndim - (1 if scan_site else 0)
            cost = jnp.zeros(())
            per_step = jnp.zeros(())
            for key, term_site, lp in terms:
                if deps is not None and key not in deps[name]:
                    continue
                if scan_site and _is_scan(term_site):
                    per_step = per_step + _term_in_layout(lp, term_site, site, ndim, keep_time=True)
                else:
                    cost = cost + _term_in_layout(lp, term_site, site, ndim, keep_time=False)
            if scan_site:
                per_step = jnp.broadcast_to(per_step, log_q.shape)
                cost = _reverse_cumsum(per_step) + cost
            cost = jnp.broadcast_to(cost, log_q.shape)
            b, learned, avg_update = self._baseline(name, site, guide_trace, cost, scan_site)
            if avg_update is not None:
                mutable_state[avg_update[0]] = avg_update[1]
            surrogate = surrogate + jnp.sum(log_q * stop_gradient(cost - b))
            if learned:
                bl_loss = bl_loss + jnp.sum((stop_gradient(cost) - b) ** 2)
            costs[name], baselines[name] = stop_gradient(cost), stop_gradient(b)

        surrogate_loss = -(elbo + surrogate - stop_gradient(surrogate))
        loss = surrogate_loss + (bl_loss - stop_gradient(bl_loss))
        return dict(
            loss=loss,
            elbo=stop_gradient(elbo),
            surrogate_loss=surrogate_loss,
            baseline_loss=bl_loss,
            costs=costs,
            baselines=baselines,
            mutable_state=mutable_state or None,
        )

    # ------------------------------------------------------------------ helpers
    def _dependencies(self, model, guide, args, kwargs, param_map, guide_trace, discrete):
        """{discrete site: set of ("model"|"guide", term name)} or None (= everything counts)."""
        if not self.use_provenance or not discrete:
            return None
        latents = {
            n: s["value"] for n, s in guide_trace.items() if s["type"] == "sample" and not s["is_observed"]
        }
        model_deps, guide_deps = get_nonreparam_deps(model, guide, args, kwargs, param_map, latents=latents)
        out = {name: set() for name in discrete}
        for side, dep in (("model", model_deps), ("guide", guide_deps)):
            for term, sources in dep.items():
                for src in sources:
                    if src in out:
                        out[src].add((side, term))
        return out

    @staticmethod
    def _baseline(name, site, guide_trace, cost, scan_site):
        """Baseline b (broadcast to cost), whether it is learned, and an optional EMA update."""
        spec = site["infer"].get("baseline", {}) or {}
        b = jnp.zeros_like(cost)
        learned = False
        update = None
        value = spec.get("baseline_value")
        if value is not None:
            if isinstance(value, str):
                if value not in guide_trace:
                    raise ValueError(f"baseline_value site {value!r} of {name!r} is not in the guide trace")
                value = guide_trace[value]["value"]
            elif scan_site:
                raise ValueError(
                    f"site {name!r} is inside a scan: pass baseline_value as the name of a "
                    "numpyro.deterministic site, not an array"
                )
            b = b + jnp.broadcast_to(value, cost.shape)
            learned = True
        if spec.get("use_decaying_avg_baseline", False):
            state_name = spec.get("avg_baseline_state", f"{name}_avg_baseline")
            if state_name not in guide_trace or guide_trace[state_name]["type"] != "mutable":
                raise ValueError(
                    f"decaying-average baseline of {name!r} needs a numpyro.primitives.mutable site {state_name!r} "
                    "declared in the guide (outside any scan)"
                )
            beta = float(spec.get("baseline_beta", DEFAULT_BETA))
            avg = guide_trace[state_name]["value"]
            batch_axes = tuple(range(1 if scan_site else 0, cost.ndim))
            batch_mean = jnp.mean(stop_gradient(cost), axis=batch_axes)
            new_avg = beta * avg + (1.0 - beta) * batch_mean
            extra = avg.reshape(avg.shape + (1,) * (cost.ndim - avg.ndim))
            b = b + stop_gradient(jnp.broadcast_to(extra, cost.shape))
            update = (state_name, stop_gradient(new_avg))
        return b, learned, update
