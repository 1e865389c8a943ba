"""z_pres prior schedules (Pyro's ``make_prior``, raw constant, linear / exponential annealing).

All functions are pure and accept traced arrays for the optimisation step, so a jitted training
step that receives ``step`` as an array never recompiles when it changes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # annotations only: the prior is read from any config-like object
    from .config import AIRConfig


def make_prior(k: float, num_steps: int = 3) -> np.ndarray:
    """Per-step success probabilities of a truncated geometric count prior.

    The count n in {0, ..., num_steps} has P(n) proportional to k**n; step t's success
    probability is P(n > t | n >= t). For k = 0.5 and 3 steps this gives
    [0.4667, 0.4286, 0.3333] (Pyro's ``make_prior``). Returns float64 (num_steps,).
    """
    if not (math.isfinite(k) and k >= 0):
        raise ValueError(f"k must be a finite number >= 0, got {k!r}")
    out = []
    for t in range(num_steps):
        powers = [k**j for j in range(num_steps - t + 1)]  # k^0 .. k^(N-t)
        out.append(sum(powers[1:]) / sum(powers))
    return np.asarray(out, dtype=np.float64)


def count_distribution(p: np.ndarray) -> np.ndarray:
    """P(n) for n = 0..N given per-step success probabilities p (N,) of the absorbing chain."""
    p = np.asarray(p, dtype=np.float64)
    probs, alive = [], 1.0
    for pt in p:
        probs.append(alive * (1 - pt))
        alive *= pt
    probs.append(alive)
    return np.asarray(probs)


def count_log_probs(p: jnp.ndarray) -> jnp.ndarray:
    """log P(n) for n = 0..N of the absorbing chain with per-step success probabilities p (N,)
    (:func:`count_distribution` in log space, traceable): sum_{t<n} log p_t + log(1 - p_n), and
    sum_t log p_t for n = N. Returns float32 (N + 1,); -inf where a count has probability 0."""
    p = jnp.asarray(p, jnp.float32)
    alive = jnp.concatenate([jnp.zeros(1, p.dtype), jnp.cumsum(jnp.log(p))])  # log P(n >= t), t = 0..N
    stop = jnp.concatenate([jnp.log1p(-p), jnp.zeros(1, p.dtype)])  # log P(stop at t | reached t)
    return alive + stop


def base_prior(config: AIRConfig) -> np.ndarray:
    """Un-annealed per-step probabilities (num_steps,): raw constant or ``make_prior(k)``."""
    if config.z_pres_prior_raw:
        return np.full(config.num_steps, float(config.z_pres_prior))
    return make_prior(float(config.z_pres_prior), config.num_steps)


def lin_decay(initial, final, begin, duration, step):
    """Linear interpolation initial -> final over [begin, begin + duration], clamped as Pyro's
    ``max(min(v, initial), final)`` (so ``final`` wins if it exceeds ``initial``)."""
    v = initial - (initial - final) * (step - begin) / duration
    return jnp.maximum(jnp.minimum(v, initial), final)


def exp_decay(initial, final, begin, duration, step):
    """``initial * exp(-r (step - begin))`` with r = ln(initial / final) / duration, clamped to
    Pyro's ``max(min(v, initial), final)`` (``exp_decay``). ``initial`` must be > 0."""
    initial = jnp.asarray(initial, jnp.float32)
    safe_initial = jnp.maximum(initial, jnp.finfo(jnp.float32).tiny)
    rate = jnp.log(safe_initial / final) / duration
    v = safe_initial * jnp.exp(-rate * (step - begin))
    return jnp.maximum(jnp.minimum(v, initial), final)


def z_pres_prior_probs(config: AIRConfig, step=0) -> jnp.ndarray:
    """Per-step z_pres prior success probabilities at optimisation step ``step`` (1-based, as
    Pyro; may be a traced scalar). Returns float32 (num_steps,)."""
    p = jnp.asarray(base_prior(config), jnp.float32)
    step = jnp.asarray(step, jnp.float32)
    args = (config.anneal_prior_to, config.anneal_prior_begin, config.anneal_prior_duration, step)
    if config.anneal_prior == "lin":
        return lin_decay(p, *args)
    if config.anneal_prior == "exp":
        return exp_decay(p, *args)
    return p


def concrete_temperature(config: AIRConfig, step=0) -> jnp.ndarray:
    """The guide's relaxed-presence temperature at optimisation step ``step`` (1-based, may be
    traced): ``concrete_temperature``, annealed exponentially to ``concrete_temperature_to`` over
    ``concrete_anneal_steps`` when set. float32 scalar."""
    t0 = jnp.asarray(config.concrete_temperature, jnp.float32)
    if config.concrete_temperature_to is None:
        return t0
    step = jnp.asarray(step, jnp.float32)
    return exp_decay(t0, config.concrete_temperature_to, 0.0, float(config.concrete_anneal_steps), step)
