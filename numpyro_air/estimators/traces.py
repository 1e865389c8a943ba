"""Trace helpers shared by the estimators (NVIL, VIMCO, RWS, importance-sampled likelihoods).

Generic: any NumPyro model/guide pair; nothing here knows AIR.

- :func:`importance_traces`: one draw of (model trace, guide trace) with per-site ``log_prob``,
  the model replayed against the guide, both under ``substitute(data=params)``;
- :func:`mutable_values`: the values of every ``numpyro.primitives.mutable`` site of the traces;
- :func:`is_scan_site`: whether a site was recorded inside ``numpyro.contrib.control_flow.scan``
  (its log-density then has a leading time axis);
- :func:`per_datum_terms`: log w = log p(x, z) - log q(z | x) and the log-density of the guide's
  non-reparameterised sites, per datum of a plate;
- :func:`per_datum_log_densities`: log p(x, z) and log q(z | x) apart, per datum of a plate.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax import random
from numpyro.handlers import seed
from numpyro.infer.util import get_importance_trace
from numpyro.util import check_model_guide_match

DATA_PLATE = "data"
# NumPyro marks the sites that ``contrib.control_flow.scan`` records (one site per scanned sample
# statement, with a leading time axis) with this key; it offers no public predicate for it, so this
# module is the one place that reads it (tests/test_traces.py fails loudly if NumPyro changes it).
_SCAN_MARK = "_control_flow_done"


def is_scan_site(site: dict) -> bool:
    """True for a site recorded inside ``numpyro.contrib.control_flow.scan``."""
    return bool(site.get(_SCAN_MARK, False))


def importance_traces(model: Callable, guide: Callable, params: Dict[str, Any], key: jax.Array, args: tuple, kwargs: dict):
    """(model_trace, guide_trace) of one draw: the guide seeded with the second half of
    ``random.split(key)``, the model (first half) replayed against it, both under
    ``substitute(data=params)``, with per-site ``log_prob`` (masks applied)."""
    k_model, k_guide = random.split(key)
    model_trace, guide_trace = get_importance_trace(seed(model, k_model), seed(guide, k_guide), args, kwargs, params)
    check_model_guide_match(model_trace, guide_trace)
    return model_trace, guide_trace


def mutable_values(*traces: dict) -> Dict[str, Any]:
    """{name: value} of every ``mutable`` site in ``traces`` (later traces win on a name clash)."""
    return {name: site["value"] for tr in traces for name, site in tr.items() if site["type"] == "mutable"}


def weight_sites(model_trace: dict, guide_trace: dict) -> list:
    """[(site, sign)] of every term of log w: model sample sites (+1; latent and observed) and
    guide latent sample sites (-1). Guide sites with ``obs=`` are not latents and are skipped."""
    out = [(s, 1.0) for s in model_trace.values() if s["type"] == "sample"]
    out += [(s, -1.0) for s in guide_trace.values() if s["type"] == "sample" and not s["is_observed"]]
    return out


def _plate_frame(site: dict, plate: str):
    return next((f for f in site["cond_indep_stack"] if f.name == plate), None)


def _check_unscaled(site: dict) -> None:
    scale = site.get("scale")
    if scale is not None and not (isinstance(scale, (int, float)) and scale == 1):
        raise ValueError(
            f"site {site['name']!r} is scaled (subsampling plate or handlers.scale): importance weights "
            "need unscaled log-densities; pass explicit minibatches instead"
        )


def data_size(sites: Sequence[dict], plate: str = DATA_PLATE) -> Optional[int]:
    """Size B of ``plate`` if every site in ``sites`` lies in it, else None (one datum: the
    whole trace). Raises if the sites disagree on B or a site is scaled."""
    sizes = set()
    for site in sites:
        _check_unscaled(site)
        frame = _plate_frame(site, plate)
        if frame is None:
            return None
        sizes.add(int(frame.size))
    if len(sizes) != 1:
        raise ValueError(f"sites disagree on the size of plate {plate!r}: {sorted(sizes)}")
    return sizes.pop()


def reduce_to_data(lp: jnp.ndarray, site: dict, plate: str, size: Optional[int]) -> jnp.ndarray:
    """Sum a site's log-density ``lp`` (any batch shape; a leading time axis for scanned sites)
    over every axis except ``plate``'s: returns (B,), or (1,) when ``size`` is None."""
    if size is None:
        return jnp.sum(lp).reshape(1)
    frame = _plate_frame(site, plate)
    axis = lp.ndim + frame.dim  # frame.dim counts from the right of the batch shape
    if axis < 0 or lp.shape[axis] != size:
        raise ValueError(f"site {site['name']!r}: log-density shape {lp.shape} has no plate axis of size {size}")
    return jnp.moveaxis(lp, axis, -1).reshape(-1, size).sum(0)


def per_datum_terms(model_trace: dict, guide_trace: dict, plate: str = DATA_PLATE) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Per datum of ``plate``: (log w = log p(x, z) - log q(z | x), sum of log q over the guide's
    non-reparameterised sites), each (B,), or (1,) when some site lies outside ``plate``; sums over
    sites, scan steps and other dims. Traces as :func:`importance_traces` returns them."""
    terms = weight_sites(model_trace, guide_trace)
    size = data_size([s for s, _ in terms], plate)
    log_w = jnp.zeros(1 if size is None else size)
    log_q_disc = jnp.zeros_like(log_w)
    for site, sign in terms:
        lp = reduce_to_data(site["log_prob"], site, plate, size)
        log_w = log_w + sign * lp
        if sign < 0 and not site["fn"].has_rsample:
            log_q_disc = log_q_disc + lp
    return log_w, log_q_disc


def per_datum_log_densities(model_trace: dict, guide_trace: dict, plate: str = DATA_PLATE) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Per datum of ``plate``: (log p(x, z), log q(z | x)), each (B,), or (1,) when some site lies
    outside ``plate``; the two halves of :func:`per_datum_terms`' log w, summed the same way."""
    terms = weight_sites(model_trace, guide_trace)
    size = data_size([s for s, _ in terms], plate)
    log_p = log_q = jnp.zeros(1 if size is None else size)
    for site, sign in terms:
        lp = reduce_to_data(site["log_prob"], site, plate, size)
        if sign > 0:
            log_p = log_p + lp
        else:
            log_q = log_q + lp
    return log_p, log_q
