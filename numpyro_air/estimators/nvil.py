"""NVIL: a score-function ELBO for NumPyro with Rao-Blackwellised costs and baselines.

:class:`NVIL_ELBO` is generic (any model/guide whose discrete latents live at top level or
inside ``numpyro.contrib.control_flow.scan``); AIR is one user. NumPyro's ``TraceGraph_ELBO``
is not used because (1) with ``scan`` every step is one site, so earlier steps never see later
steps' costs, (2) with subsampling the score term is scaled twice, and (3) it has no baselines
(``tests/test_elbo.py`` shows its bias on a scanned model against exact enumeration).

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

Options (constructor keywords; the defaults reproduce Pyro's TraceGraph_ELBO estimator):

- ``normalize_signal=True``: NVIL's signal centring and variance normalisation (Mnih & Gregor,
  2014), see :meth:`NVIL_ELBO._normalise`; running statistics in mutable state declared
  by the guide (:func:`with_signal_stats`).
- ``loss_scale=c``: multiply every log-density by c, as Pyro's subsampled plate does with
  c = N / B (60000 / 64 = 937.5 in Pyro's AIR), see :class:`NVIL_ELBO`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import random
from jax.lax import stop_gradient
from numpyro.infer.elbo import ELBO, get_nonreparam_deps
from numpyro.primitives import mutable

from .traces import importance_traces, is_scan_site, mutable_values

DEFAULT_BETA = 0.9
DEFAULT_SIGNAL_STATS = "{}_signal_stats"


def check_signal_decay(signal_decay: float) -> None:
    """The running statistics' decay alpha must lie in [0, 1) (0: this batch's moments only)."""
    if not (isinstance(signal_decay, (int, float)) and 0.0 <= float(signal_decay) < 1.0):
        raise ValueError(f"signal_decay must be in [0, 1), got {signal_decay!r}")


def check_loss_scale(loss_scale: float) -> None:
    """The loss scale c must be a positive finite number."""
    if not (isinstance(loss_scale, (int, float)) and float(loss_scale) > 0 and math.isfinite(loss_scale)):
        raise ValueError(f"loss_scale must be a positive finite number, got {loss_scale!r}")


def signal_stats_init(shape: Tuple[int, ...] = (), dtype=jnp.float32) -> Dict[str, jnp.ndarray]:
    """Initial running statistics of one discrete site's learning signal: ``{"mean": zeros(shape),
    "var": zeros(shape)}`` with shape (T,) for a site inside a scan of length T, () otherwise.
    A zero variance means no scaling (the divisor is max(1, sd)) until signals have been seen."""
    return {"mean": jnp.zeros(shape, dtype), "var": jnp.zeros(shape, dtype)}


def with_signal_stats(guide: Callable, sites: Mapping[str, Tuple[int, ...]], state_name: str = DEFAULT_SIGNAL_STATS) -> Callable:
    """Wrap ``guide`` so that it declares, before running, one ``numpyro.primitives.mutable``
    site per discrete site for ``NVIL_ELBO(normalize_signal=True)``.

    :param sites: {discrete site name: stats shape}, e.g. ``{"z_pres": (config.num_steps,)}``
        for AIR (a scan site gets per-step statistics (T,), a top-level site ()).
    :param state_name: format string of the mutable site's name (must match the ELBO's).

    SVI keeps the statistics in ``SVIState.mutable_state`` (so they persist across jitted steps
    and are checkpointed with it); the wrapped guide passes all arguments through.
    """

    @functools.wraps(guide)
    def wrapped(*args, **kwargs):
        for name, shape in sites.items():
            mutable(state_name.format(name), signal_stats_init(tuple(shape)))
        return guide(*args, **kwargs)

    return wrapped


def _term_in_layout(lp, term_site, target_site, target_ndim: int, keep_time: bool):
    """Reduce a cost term ``lp`` to the batch layout of ``target_site``.

    Sums over every batch dim that is not a plate shared with the target; returns an array
    broadcastable to (T, *target_batch) if ``keep_time`` else (*target_batch), where
    ``target_ndim`` is the rank of target_batch (without the time axis).
    """
    lead = 1 if is_scan_site(term_site) else 0
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
    :param bool normalize_signal: centre and scale each discrete site's learning signal
        ``l = cost - b`` by running statistics, NVIL-style (see :meth:`_normalise`). Needs a
        mutable site per discrete site named ``signal_stats_state.format(site)`` holding
        :func:`signal_stats_init` (declare it with :func:`with_signal_stats`).
    :param float signal_decay: alpha of the running statistics' exponential moving averages.
    :param str signal_stats_state: format string of the statistics' mutable site names.
    :param float loss_scale: c multiplying every model and guide log-density (the value, the
        ELBO terms, the costs, hence the score weights and the baseline loss
        ``(c * cost - b)**2``; the score function ``log q`` itself is not scaled), exactly as a
        Pyro plate subsampled with scale c = N / B does. With c = 1 (default) the loss is the
        batch's -ELBO. Mapping to Pyro's ``-lr``/``-blr``: with ``loss_scale=N/B`` every gradient,
        score weight, baseline target and baseline loss equals Pyro's for the same baseline
        outputs, so Pyro's ``-blr`` (e.g. the tutorial's 0.1) transfers unchanged, and so does
        ``-lr``. With c = 1 the main gradients are 1/c of Pyro's (Adam is invariant to that
        up to eps, so ``-lr`` still transfers), but the baseline must regress targets c times
        smaller: Adam's step is ~lr whatever the gradient scale, so the equivalent baseline
        rate is roughly ``blr / c`` for the output layer (an approximation; hidden layers do
        not scale linearly), or keep ``-blr`` and set ``baseline_scalar`` so that the net's raw
        output has Pyro's magnitude. The reported loss is c times the -ELBO.
    """

    can_infer_discrete = True

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool = True,
        use_provenance: bool = True,
        *,
        normalize_signal: bool = False,
        signal_decay: float = DEFAULT_BETA,
        signal_stats_state: str = DEFAULT_SIGNAL_STATS,
        loss_scale: float = 1.0,
    ):
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        check_signal_decay(signal_decay)
        check_loss_scale(loss_scale)
        self.use_provenance = use_provenance
        self.normalize_signal = bool(normalize_signal)
        self.signal_decay = float(signal_decay)
        self.signal_stats_state = signal_stats_state
        self.loss_scale = float(loss_scale)

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
        what ``loss`` adds, and with detached baseline inputs it reaches only baseline params),
        and per-site ``score_weights`` (what multiplies log q: sg(cost - b), normalised if asked).
        With ``loss_scale`` c, ``loss``, ``elbo`` and ``costs`` are c times the unscaled ones."""
        model_trace, guide_trace = importance_traces(model, guide, param_map, rng_key, args, kwargs)
        elbo, terms, discrete = self._collect_terms(model_trace, guide_trace)
        deps = self._dependencies(model, guide, args, kwargs, param_map, guide_trace, discrete)
        mutable_state = mutable_values(model_trace, guide_trace)
        signals = {}
        for name in discrete:
            site = guide_trace[name]
            log_q = site["fn"].log_prob(site["value"])  # unscaled score function
            cost = self._cost_to_go(site, log_q.shape, terms, None if deps is None else deps[name])
            signals[name], updates = self._signal(name, site, guide_trace, log_q, cost)
            mutable_state.update(updates)
        return self._assemble(elbo, signals, mutable_state)

    def _collect_terms(self, model_trace, guide_trace) -> Tuple[jnp.ndarray, list, list]:
        """The ELBO estimate (pathwise in the reparameterised sites, stop-gradient in the others),
        every cost term ``(("model"|"guide", name), site, signed scaled log-density)`` and the
        names of the guide's discrete (non-reparameterised) latent sites."""
        terms, discrete = [], []
        elbo = jnp.zeros(())
        for name, site in model_trace.items():
            if site["type"] == "sample":
                lp = self._scaled(site["log_prob"])
                elbo = elbo + jnp.sum(lp)
                terms.append((("model", name), site, lp))
        for name, site in guide_trace.items():
            if site["type"] == "sample" and not site["is_observed"]:
                lp = self._scaled(site["log_prob"])
                if site["fn"].has_rsample:
                    elbo = elbo - jnp.sum(lp)
                else:
                    elbo = elbo - jnp.sum(stop_gradient(lp))
                    discrete.append(name)
                terms.append((("guide", name), site, -lp))
        scan_lengths = {lp.shape[0] for _, s, lp in terms if is_scan_site(s)}
        if len(scan_lengths) > 1:
            raise ValueError(f"NVIL_ELBO assumes all scanned sites share one time axis; got lengths {sorted(scan_lengths)}")
        return elbo, terms, discrete

    @staticmethod
    def _cost_to_go(site, log_q_shape: Tuple[int, ...], terms: list, deps: Optional[set]) -> jnp.ndarray:
        """Sum of the cost terms downstream of discrete ``site`` (all of them if ``deps`` is None),
        in the site's layout (T, *batch) or (*batch): inside a scan, step t's cost is the reverse
        cumulative sum of the scanned terms from t on plus every top-level term."""
        scan_site = is_scan_site(site)
        ndim = len(log_q_shape) - (1 if scan_site else 0)
        cost = jnp.zeros(())
        per_step = jnp.zeros(())
        for key, term_site, lp in terms:
            if deps is not None and key not in deps:
                continue
            if scan_site and is_scan_site(term_site):
                per_step = per_step + _term_in_layout(lp, term_site, site, ndim, keep_time=True)
            else:
                cost = cost + _term_in_layout(lp, term_site, site, ndim, keep_time=False)
        if scan_site:
            cost = _reverse_cumsum(jnp.broadcast_to(per_step, log_q_shape)) + cost
        return jnp.broadcast_to(cost, log_q_shape)

    def _signal(self, name: str, site, guide_trace, log_q: jnp.ndarray, cost: jnp.ndarray):
        """One discrete site's score term and baseline: ``(dict(log_q, weight, cost, baseline,
        learned), {mutable site: new value})``."""
        scan_site = is_scan_site(site)
        b, learned, avg_update = self._baseline(name, site, guide_trace, cost, scan_site)
        updates = {} if avg_update is None else dict([avg_update])
        weight = stop_gradient(cost - b)
        if self.normalize_signal:
            weight, stats_update = self._normalise(name, guide_trace, weight, log_q, scan_site)
            updates[stats_update[0]] = stats_update[1]
        return dict(log_q=log_q, weight=weight, cost=cost, baseline=b, learned=learned), updates

    @staticmethod
    def _assemble(elbo: jnp.ndarray, signals: dict, mutable_state: dict) -> Dict[str, Any]:
        """The surrogate losses from the ELBO estimate and each discrete site's score term: the
        score part sum(log q * weight) enters with value 0; learned baselines regress the
        un-normalised cost (``baseline_loss``), also with value 0 in ``loss``."""
        surrogate = jnp.zeros(())
        bl_loss = jnp.zeros(())
        for sig in signals.values():
            surrogate = surrogate + jnp.sum(sig["log_q"] * sig["weight"])
            if sig["learned"]:
                bl_loss = bl_loss + jnp.sum((stop_gradient(sig["cost"]) - sig["baseline"]) ** 2)
        surrogate_loss = -(elbo + surrogate - stop_gradient(surrogate))
        return dict(
            loss=surrogate_loss + (bl_loss - stop_gradient(bl_loss)),
            elbo=stop_gradient(elbo),
            surrogate_loss=surrogate_loss,
            baseline_loss=bl_loss,
            costs={n: stop_gradient(sig["cost"]) for n, sig in signals.items()},
            baselines={n: stop_gradient(sig["baseline"]) for n, sig in signals.items()},
            score_weights={n: sig["weight"] for n, sig in signals.items()},
            mutable_state=mutable_state or None,
        )

    # ------------------------------------------------------------------ helpers
    def _scaled(self, lp: jnp.ndarray) -> jnp.ndarray:
        return lp if self.loss_scale == 1.0 else lp * self.loss_scale

    def _normalise(self, name: str, guide_trace, signal: jnp.ndarray, log_q: jnp.ndarray, scan_site: bool):
        """NVIL's centred, variance-normalised learning signal and the running statistics' update.

        ``signal`` l = sg(cost - b) has the site's layout, (T, *batch) in a scan or (*batch); the
        statistics ``{"mean", "var"}`` have shape (T,) or () (one entry per time step). Returns
        ``(l - mean) / max(1, sqrt(var))`` (stop-gradiented) and ``(state name, new stats)`` with::

            mean' = alpha * mean + (1 - alpha) * batch_mean(l)
            var'  = alpha * var  + (1 - alpha) * batch_var(l)     (about the batch mean, ddof 0)

        Choices: (1) the weight uses the statistics *before* this batch's update (the paper
        updates first): they do not depend on the current samples, so centring is an ordinary
        control variate and scaling a positive per-step factor, i.e. the expected gradient is
        the exact one with each step's score term divided by max(1, sd_t). (2) Batch moments
        count only entries whose score function is active (log q != 0): masked or absorbed
        entries (AIR after the first z_pres = 0) have log q == 0 and contribute no gradient, and
        their signals would distort the statistics; a step with no active entry keeps its
        statistics. (3) Statistics track l after the baseline (and decaying average) is
        subtracted, as in the paper, but the learned baseline still regresses the un-normalised
        cost, so its target (and Pyro's baseline loss) does not move as the statistics adapt.
        """
        state_name = self.signal_stats_state.format(name)
        site = guide_trace.get(state_name)
        value = None if site is None or site["type"] != "mutable" else site["value"]
        if not (isinstance(value, dict) and {"mean", "var"} <= set(value)):
            raise ValueError(
                f"normalize_signal needs a numpyro.primitives.mutable site {state_name!r} with "
                "{'mean', 'var'} declared in the guide (outside any scan): wrap the guide with "
                f"with_signal_stats(guide, {{{name!r}: shape}})"
            )
        mean, var = value["mean"], value["var"]
        expand = lambda a: a.reshape(a.shape + (1,) * (signal.ndim - a.ndim))  # noqa: E731
        weight = (signal - expand(mean)) / expand(jnp.maximum(1.0, jnp.sqrt(var)))

        axes = tuple(range(1 if scan_site else 0, signal.ndim))
        active = stop_gradient(log_q) != 0
        count = jnp.sum(active, axis=axes)
        denom = jnp.maximum(count, 1)
        batch_mean = jnp.sum(jnp.where(active, signal, 0.0), axis=axes) / denom
        centred = jnp.where(active, signal - expand(batch_mean), 0.0)
        batch_var = jnp.sum(centred**2, axis=axes) / denom
        a = self.signal_decay
        seen = count > 0
        new = {
            "mean": jnp.where(seen, a * mean + (1 - a) * batch_mean, mean).astype(mean.dtype),
            "var": jnp.where(seen, a * var + (1 - a) * batch_var, var).astype(var.dtype),
        }
        return stop_gradient(weight), (state_name, stop_gradient(new))

    def _dependencies(self, model, guide, args, kwargs, param_map, guide_trace, discrete):
        """{discrete site: set of ("model"|"guide", term name)} or None (= everything counts)."""
        if not self.use_provenance or not discrete:
            return None
        latents = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "sample" and not s["is_observed"]}
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
