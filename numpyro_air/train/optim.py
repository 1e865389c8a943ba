"""Optimiser: Adam with a separate learning rate for the baseline parameters (Pyro's AIR)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from ..core.sites import is_baseline_param


def param_labels(params: dict) -> dict:
    """Label every leaf "baseline" (sites named ``bl_*``) or "main", for ``optax.multi_transform``."""
    return {
        name: jax.tree.map(lambda _: "baseline" if is_baseline_param(name) else "main", value) for name, value in params.items()
    }


def lr_schedule(peak: float, warmup_steps: int = 0, decay_steps: int = 0, final_lr_fraction: float = 0.0):
    """The learning rate at each optimiser step: ``peak`` throughout (no warmup, no decay), else a
    linear rise from 0 to ``peak`` over ``warmup_steps``, then (``decay_steps`` > 0) a cosine decay
    to ``final_lr_fraction * peak`` over the next ``decay_steps`` steps, held after that."""
    check_schedule(warmup_steps, decay_steps, final_lr_fraction)
    if decay_steps > 0:
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps, warmup_steps + decay_steps, end_value=final_lr_fraction * peak
        )
    if warmup_steps > 0:
        return optax.linear_schedule(0.0, peak, warmup_steps)
    return peak


def check_step_count(name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is an integer >= 0 (a bool is not a count)."""
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 0):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def check_schedule(warmup_steps: int, decay_steps: int, final_lr_fraction: float) -> None:
    """Raise ValueError for negative step counts or a final fraction outside [0, 1]."""
    check_step_count("warmup_steps", warmup_steps)
    check_step_count("decay_steps", decay_steps)
    if isinstance(final_lr_fraction, bool) or not 0.0 <= final_lr_fraction <= 1.0:
        raise ValueError(f"final_lr_fraction must be in [0, 1], got {final_lr_fraction!r}")


def applies(value) -> jnp.ndarray:
    """bool (): whether an update whose extra argument ``value`` is this applies. Every
    transformation here skips (keeps its state, returns zero updates) when ``value`` is given and
    not finite; :func:`numpyro_air.train.svi.make_update` passes the loss there, made NaN when a
    gradient is not finite, as NumPyro's optax wrapper passes ``value=loss``."""
    return jnp.bool_(True) if value is None else jnp.all(jnp.isfinite(value))


def scale_by_adam_or_skip(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """``optax.scale_by_adam`` (same state, same arithmetic in the same order) that skips where
    :func:`applies` says so: the moments and count are kept and the updates are zero.

    The kept moments are the ones the update is computed from, so the compiled step writes each
    moment once and the parameter update reads it back; a select applied to optax's state from
    outside leaves the update reading the unselected moments, which XLA then recomputes from the
    old ones, and copies them first when the state is donated (``benchmarks/README.md``)."""

    def init(params):
        return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params), optax.tree.zeros_like(params))

    def update(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        ok = applies(value)
        mu = optax.tree.where(ok, optax.tree.update_moment(updates, state.mu, b1, 1), state.mu)
        nu = optax.tree.where(ok, optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2), state.nu)
        count = jnp.where(ok, optax.safe_increment(state.count), state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        step = jax.tree.map(lambda m, v: jnp.where(ok, m / (jnp.sqrt(v + 0.0) + eps), 0.0), mu_hat, nu_hat)
        return step, optax.ScaleByAdamState(count, mu, nu)

    return optax.GradientTransformationExtraArgs(init, update)


def keeping_state_on_skip(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner`` (whose state is small: a step count, or nothing) with its state kept where
    :func:`applies` says the update is skipped; the updates pass through ``inner`` as they are."""
    inner = optax.with_extra_args_support(inner)

    def update(updates, state, params=None, *, value=None, **extra_args):
        new_updates, new_state = inner.update(updates, state, params, value=value, **extra_args)
        return new_updates, optax.tree.where(applies(value), new_state, state)

    return optax.GradientTransformationExtraArgs(inner.init, update)


def adam_or_skip(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """``optax.adam`` (the same chain of states and the same updates) that skips a step whose
    ``value`` is not finite: moments, counts and parameters stay as they were."""
    return optax.chain(scale_by_adam_or_skip(b1, b2, eps), keeping_state_on_skip(optax.scale_by_learning_rate(learning_rate)))


class ParamAverageState(NamedTuple):
    """State of :func:`with_param_average`: the wrapped optimiser's state, the number of updates
    averaged so far and the running average of the parameters."""

    optimizer_state: Any
    average_count: jnp.ndarray  # int32 scalar
    averaged_params: Any  # pytree like the parameters


def check_average_decay(decay: Optional[float]) -> None:
    """Raise ValueError unless ``decay`` is None or a number in (0, 1)."""
    if decay is not None and (isinstance(decay, bool) or not (isinstance(decay, (int, float)) and 0.0 < decay < 1.0)):
        raise ValueError(f"average_decay must be in (0, 1) or None, got {decay!r}")


def average_rate(decay: float, count: jnp.ndarray) -> jnp.ndarray:
    """The weight of the old average at the ``count``-th (1-based) averaged update:
    ``min(decay, (1 + count) / (10 + count))``, so the first updates are not swamped by the
    starting point (the warm-up of TensorFlow's ``ExponentialMovingAverage``). While the warm-up
    rate is the smaller one (count below about ``9 / (1 - decay)``: 8,990 for 0.999), the average
    after n updates weights the m-th about as ``9 m**8 / n**9``: a mean age of n / 10 updates."""
    count = jnp.asarray(count, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + count) / (10.0 + count))


def applied_updates(optim_state) -> jnp.ndarray:
    """int32 (): the updates applied so far, read from the count of the first Adam state in
    ``optim_state`` (every group's count moves together; a skipped step does not count)."""
    found = optax.tree.get_all_with_path(optim_state, optax.ScaleByAdamState.__name__)
    if not found:
        raise ValueError("averaging from a later update needs an optimiser that keeps an Adam state (optax.ScaleByAdamState)")
    return found[0][1].count


def with_param_average(inner: optax.GradientTransformation, decay: float, start: int = 0) -> optax.GradientTransformation:
    """``inner`` with an exponential moving average of the parameters it produces (Polyak
    averaging): the updates are ``inner``'s, and after each one
    ``average = r * average + (1 - r) * (params + updates)`` with ``r = average_rate(decay, n)``.
    The average starts at the initial parameters; ``update`` needs ``params``. The state keeps
    ``inner``'s state as one field, so checkpoints name it as they do without averaging.

    ``start`` > 0: until ``inner`` has applied ``start`` updates (:func:`applied_updates`, which
    ``inner`` must keep) the average is the parameters themselves and its count stays 0; the
    (``start`` + 1)-th update is its first, as when a run resumed at update ``start`` starts
    averaging. A resumed run continues from the count in its checkpoint."""
    check_average_decay(decay)
    check_step_count("average_start", start)

    def init(params):
        return ParamAverageState(inner.init(params), jnp.zeros([], jnp.int32), jax.tree.map(jnp.array, params))

    inner = optax.with_extra_args_support(inner)

    def update(grads, state: ParamAverageState, params=None, *, value=None, **extra_args):
        if params is None:
            raise ValueError("with_param_average needs the parameters: call update(grads, state, params)")
        updates, inner_state = inner.update(grads, state.optimizer_state, params, value=value, **extra_args)
        ok = applies(value)
        averaging = jnp.bool_(True) if start == 0 else applied_updates(inner_state) > start
        count = jnp.where(ok & averaging, state.average_count + 1, state.average_count)
        r = jnp.where(averaging, average_rate(decay, count), 0.0)
        new = jax.tree.map(lambda a, p, u: r * a + (1.0 - r) * (p + u), state.averaged_params, params, updates)
        return updates, ParamAverageState(inner_state, count, optax.tree.where(ok, new, state.averaged_params))

    return optax.GradientTransformationExtraArgs(init, update)


def averaged_params(optim_state) -> Optional[Any]:
    """The averaged (unconstrained) parameters held in an optax state built with
    :func:`with_param_average`, or None when it has none (``optim_state`` as NumPyro's optax wrapper
    keeps it, or any pytree containing a :class:`ParamAverageState`)."""
    found = optax.tree.get_all_with_path(optim_state, ParamAverageState.__name__)
    return found[0][1].averaged_params if found else None


def make_optimizer(
    learning_rate: float = 1e-4,
    baseline_learning_rate: float = 1e-3,
    clip_norm: Optional[float] = None,
    warmup_steps: int = 0,
    decay_steps: int = 0,
    final_lr_fraction: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    average_decay: Optional[float] = None,
    average_start: int = 0,
) -> optax.GradientTransformation:
    """Adam(lr) for model/guide parameters and Adam(baseline_lr) for every ``bl_*`` parameter
    (PyTorch-default betas and eps, as Pyro). Defaults are Pyro's (1e-4, 1e-3); the tutorial
    recipe uses (1e-4, 0.1). ``clip_norm`` clips each group's global gradient norm separately
    (the baseline gradients are orders of magnitude larger than the guide's). ``warmup_steps``,
    ``decay_steps`` and ``final_lr_fraction`` shape both rates alike (:func:`lr_schedule`); the
    schedule's step count lives in the optimiser state, so a resumed run continues it.
    ``average_decay`` (None: off) also keeps an exponential moving average of the parameters in
    the optimiser state (:func:`with_param_average`), from the update after ``average_start``
    applied ones; the updates are the same with or without it."""
    for name, v in (("learning_rate", learning_rate), ("baseline_learning_rate", baseline_learning_rate)):
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {v!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")

    def group(lr: float) -> optax.GradientTransformation:
        adam = adam_or_skip(lr_schedule(lr, warmup_steps, decay_steps, final_lr_fraction), b1=b1, b2=b2, eps=eps)
        return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)

    check_average_decay(average_decay)
    check_step_count("average_start", average_start)
    if average_start and average_decay is None:
        raise ValueError(f"average_start={average_start} needs average_decay (the averaging it starts)")
    tx = optax.multi_transform({"main": group(learning_rate), "baseline": group(baseline_learning_rate)}, param_labels)
    return tx if average_decay is None else with_param_average(tx, average_decay, average_start)
