"""Importance-sampled log-likelihood estimates (IWAE; Burda et al., 2016) with the guide as proposal.

For a datum x and K draws z_k ~ q(. | x) of all latents,

    log w_k  = log p(x, z_k) - log q(z_k | x)
    IWAE-K   = logsumexp_k(log w_k) - log K      (<= log p(x) in expectation, tightens as K grows)
    ELBO     = mean_k log w_k                     (the 1-sample bound, averaged over K draws)

The generic core, :func:`importance_estimates`, takes any NumPyro model/guide pair whose data
live in a plate (default name ``"data"``) and returns per-datum estimates; the AIR functions
:func:`log_marginal_likelihood` and :func:`elbo_per_image` are thin jitted wrappers. Samples are
processed in chunks (a ``lax.scan`` over chunks, ``vmap`` inside a chunk) with a running
logsumexp, so memory is that of ``chunk_size`` samples whatever ``num_samples`` is. Sample i
always uses ``random.split(key, num_samples)[i]``, so the chunk size changes only the order of
the floating-point reductions, never the samples.

The per-datum log-weights come from :mod:`numpyro_air.estimators.traces`, shared with
:class:`numpyro_air.estimators.vimco.VIMCO_ELBO`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import random
from numpyro import handlers

from ..core.config import AIRConfig
from ..core.guide import guide as air_guide
from ..core.model import latent_sites, prior_probs
from ..core.model import model as air_model
from ..core.prior import count_log_probs
from ..estimators.traces import DATA_PLATE, importance_traces, per_datum_terms


def log_weight(
    model: Callable,
    guide: Callable,
    params: Dict[str, Any],
    key: jax.Array,
    args: tuple = (),
    kwargs: Optional[dict] = None,
    plate: str = DATA_PLATE,
) -> jnp.ndarray:
    """One importance draw: per-datum log w, (B,) (see :func:`numpyro_air.estimators.traces.per_datum_terms`)."""
    model_trace, guide_trace = importance_traces(model, guide, params, key, args, kwargs or {})
    return per_datum_terms(model_trace, guide_trace, plate)[0]


# ----------------------------------------------------------------------------- chunked estimates
def _chunk(num_samples: int, chunk_size: Optional[int]) -> int:
    """Samples per chunk (``num_samples`` when ``chunk_size`` is None); checks both are >= 1."""
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    chunk = int(num_samples) if chunk_size is None else min(int(chunk_size), int(num_samples))
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    return chunk


def _chunked_keys(key: jax.Array, num_samples: int, chunk_size: int):
    """Keys (num_chunks, chunk_size, ...) and a validity mask (num_chunks, chunk_size); the
    padding of the last chunk reuses leading keys and is masked out."""
    keys = random.split(key, num_samples)
    num_chunks = -(-num_samples // chunk_size)
    pad = num_chunks * chunk_size - num_samples
    keys = jnp.concatenate([keys, keys[:pad]]) if pad else keys
    valid = (jnp.arange(num_chunks * chunk_size) < num_samples).reshape(num_chunks, chunk_size)
    return keys.reshape((num_chunks, chunk_size) + keys.shape[1:]), valid


def _scan_draws(one: Callable[[jax.Array], jnp.ndarray], key: jax.Array, num_samples: int, chunk_size: int):
    """(logsumexp_k lw_k - log K, mean_k lw_k), each (B,), of K = ``num_samples`` draws
    lw_k = one(split(key, K)[k]) (B,), evaluated ``chunk_size`` at a time (vmapped) in a scan."""
    keys, valid = _chunked_keys(key, int(num_samples), chunk_size)
    shape = jax.eval_shape(one, keys[0, 0])  # (B,) and dtype, from an abstract trace

    def body(carry, xs):
        lse, total = carry
        chunk_keys, ok = xs
        lw = jax.vmap(one)(chunk_keys)  # (chunk, B)
        ok = ok[:, None]
        lse = jnp.logaddexp(lse, jax.nn.logsumexp(jnp.where(ok, lw, -jnp.inf), axis=0))
        return (lse, total + jnp.sum(jnp.where(ok, lw, 0.0), axis=0)), None

    init = (jnp.full(shape.shape, -jnp.inf, shape.dtype), jnp.zeros(shape.shape, shape.dtype))
    (lse, total), _ = jax.lax.scan(body, init, (keys, valid))
    return lse - math.log(num_samples), total / num_samples


def importance_estimates(
    model: Callable,
    guide: Callable,
    params: Dict[str, Any],
    key: jax.Array,
    args: tuple = (),
    kwargs: Optional[dict] = None,
    *,
    num_samples: int,
    chunk_size: Optional[int] = None,
    plate: str = DATA_PLATE,
) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Per-datum (IWAE-K estimate of log p(x), mean log w) over K = ``num_samples`` draws from
    the guide, each (B,) in nats ((1,) if some site lies outside ``plate``).

    :param params: constrained parameter values (e.g. ``svi.get_params(state)``), substituted
        into model and guide; other guide sites (deterministic baselines) play no part.
    :param chunk_size: samples evaluated at once (vmapped); default: all ``num_samples``.
        Samples are scanned chunk by chunk with a running logsumexp and sum.
    """
    chunk = _chunk(num_samples, chunk_size)
    one = partial(log_weight, model, guide, params, args=args, kwargs=kwargs, plate=plate)
    return _scan_draws(one, key, int(num_samples), chunk)


# ----------------------------------------------------------------------------- AIR wrappers
def _air_estimates(params, images, key, config: AIRConfig, num_samples: int, chunk_size, z_pres_prior):
    kwargs = {"config": config, "z_pres_prior": z_pres_prior}
    return importance_estimates(
        air_model, air_guide, params, key, (images,), kwargs, num_samples=num_samples, chunk_size=chunk_size
    )


@partial(jax.jit, static_argnames=("config", "num_samples", "chunk_size"))
def log_marginal_likelihood(
    params: Dict[str, Any],
    images: jnp.ndarray,
    key: jax.Array,
    config: AIRConfig,
    num_samples: int = 100,
    chunk_size: Optional[int] = None,
    z_pres_prior: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """IWAE-K estimate of log p(x) per image, (B,) nats, for AIR's model with its guide as proposal.

    :param params: constrained parameters (``svi.get_params(state)``); baseline nets unused.
    :param images: (B, H, H) float32 in [0, 1].
    :param num_samples: K (addtt reports K = 100); a lower bound on log p(x) in expectation.
    :param chunk_size: samples evaluated at once (memory ~ chunk_size x one guide+model pass).
    :param z_pres_prior: per-step z_pres prior (num_steps,) (default: the config's un-annealed one).
    """
    return _air_estimates(params, images, key, config, num_samples, chunk_size, z_pres_prior)[0]


@partial(jax.jit, static_argnames=("config", "num_samples", "chunk_size"))
def elbo_per_image(
    params: Dict[str, Any],
    images: jnp.ndarray,
    key: jax.Array,
    config: AIRConfig,
    num_samples: int = 1,
    chunk_size: Optional[int] = None,
    z_pres_prior: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """ELBO estimate per image, (B,) nats: the mean of log w over ``num_samples`` guide draws
    (arguments as :func:`log_marginal_likelihood`)."""
    return _air_estimates(params, images, key, config, num_samples, chunk_size, z_pres_prior)[1]


# ----------------------------------------------------------------------------- count posterior
def _trace_counts(guide_trace: dict, config: AIRConfig) -> jnp.ndarray:
    """Objects counted in one guide draw, (B,) int32: the number of steps before the running
    product of presences first falls to 0 (relaxed presence: below 0.5, as :func:`infer`)."""
    from .inference import relaxed_counts  # here: a module-level import adds a level to the import graph

    z = guide_trace["z_pres"]["value"]  # (T, B): scan sites carry a leading time axis
    if config.relaxed_presence:
        return relaxed_counts(jnp.swapaxes(z, 0, 1))[1]
    return jnp.sum(jnp.cumprod(z > 0, axis=0), axis=0).astype(jnp.int32)


@partial(jax.jit, static_argnames=("config", "num_samples", "chunk_size"))
def count_posterior(
    params: Dict[str, Any],
    images: jnp.ndarray,
    key: jax.Array,
    config: AIRConfig,
    num_samples: int = 100,
    chunk_size: Optional[int] = None,
    z_pres_prior: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """Self-normalised importance estimate of the model's count posterior p(n | x), (B, T + 1).

    K = ``num_samples`` guide draws z_k, weights w_k = p(x, z_k) / q(z_k | x), and
    p(n | x) ~ sum_k w_k [count(z_k) = n] / sum_k w_k. Its argmax is the model's most probable
    count among the guide's proposals: a count the guide proposes rarely but that explains the
    image much better (a third object it usually misses) wins on its weight. Arguments as
    :func:`log_marginal_likelihood`; draws are chunked the same way (sample i uses
    ``random.split(key, num_samples)[i]``).
    """
    chunk = _chunk(num_samples, chunk_size)
    kwargs = {"config": config, "z_pres_prior": z_pres_prior}
    counts_axis = jnp.arange(config.num_steps + 1)

    def one(k):
        model_trace, guide_trace = importance_traces(air_model, air_guide, params, k, (images,), kwargs)
        return per_datum_terms(model_trace, guide_trace)[0], _trace_counts(guide_trace, config)

    def body(lse, xs):
        chunk_keys, ok = xs
        lw, n = jax.vmap(one)(chunk_keys)  # (chunk, B) each
        hit = (n[..., None] == counts_axis) & ok[:, None, None]  # (chunk, B, T + 1)
        return jnp.logaddexp(lse, jax.nn.logsumexp(jnp.where(hit, lw[..., None], -jnp.inf), axis=0)), None

    keys, valid = _chunked_keys(key, int(num_samples), chunk)
    init = jnp.full((images.shape[0], config.num_steps + 1), -jnp.inf, jnp.float32)
    lse, _ = jax.lax.scan(body, init, (keys, valid))
    return jnp.exp(lse - jax.nn.logsumexp(lse, axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- count evidence
def _forced_log_weight(params, images, key, config: AIRConfig, n: int, z_pres_prior) -> jnp.ndarray:
    """One draw of log p(x | z, n) + log p(z | n) - log q(z | x, n), (B,): the guide's first n
    steps switched on and the rest off (:func:`numpyro_air.analysis.inference.forced_presence`),
    the model replayed against it. Only the n present objects' z_where and z_what enter; the
    presence sites do not (their prior is :func:`count_log_probs`)."""
    from .inference import forced_presence  # imported here, as in _trace_counts

    forced = forced_presence(config, jnp.full((images.shape[0],), n))
    guide = handlers.substitute(air_guide, data=forced)
    kwargs = {"config": config, "z_pres_prior": z_pres_prior}
    model_trace, guide_trace = importance_traces(air_model, guide, params, key, (images,), kwargs)
    on = (jnp.arange(config.num_steps) < n).astype(jnp.float32)[:, None]  # (T, 1)
    log_w = model_trace["obs"]["log_prob"]  # (B,)
    for name in latent_sites(config)[1:]:  # z_where, z_what: (T, B) (scan sites, events summed)
        log_w = log_w + jnp.sum(on * (model_trace[name]["log_prob"] - guide_trace[name]["log_prob"]), axis=0)
    return log_w


@partial(jax.jit, static_argnames=("config", "num_samples", "chunk_size"))
def count_evidence(
    params: Dict[str, Any],
    images: jnp.ndarray,
    key: jax.Array,
    config: AIRConfig,
    num_samples: int = 20,
    chunk_size: Optional[int] = None,
    z_pres_prior: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """Importance estimate of log p(x, n) for every count n = 0..T, (B, T + 1) nats.

    For each n the guide proposes the objects with its first n presences switched on and the
    rest off (the guide conditioned on the count), and

        log p(x, n) ~ log P(n) + logsumexp_k log w_k - log K,
        w_k = p(x | z_k, n) p(z_k | n) / q(z_k | x, n),  z_k the z_where, z_what of the n objects,

    with P(n) the count prior of the discrete model (the absorbing chain of the per-step
    presence probabilities, :func:`numpyro_air.core.prior.count_log_probs`); with relaxed
    presence, the model read with hard presences (its zero-temperature limit). Its argmax over n
    is the model's preferred count among the guide's proposals for each count; unlike
    :func:`count_posterior` it does not need the guide to propose a count on its own. Count n
    uses ``fold_in(key, n)``, its sample i ``random.split(fold_in(key, n), K)[i]`` whatever the
    chunk. Arguments as :func:`log_marginal_likelihood` (default K = 20).
    """
    chunk = _chunk(num_samples, chunk_size)
    log_prior = count_log_probs(prior_probs(config, z_pres_prior))  # (T + 1,)
    out = []
    for n in range(config.num_steps + 1):
        one = partial(_forced_log_weight, params, images, config=config, n=n, z_pres_prior=z_pres_prior)
        out.append(_scan_draws(one, jax.random.fold_in(key, n), int(num_samples), chunk)[0] + log_prior[n])
    return jnp.stack(out, axis=-1)
