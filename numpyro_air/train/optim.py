"""Optimiser: Adam with a separate learning rate for the baseline parameters (Pyro's AIR)."""

from __future__ import annotations

from typing import Optional

import jax
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


def check_schedule(warmup_steps: int, decay_steps: int, final_lr_fraction: float) -> None:
    """Raise ValueError for negative step counts or a final fraction outside [0, 1]."""
    for name, v in (("warmup_steps", warmup_steps), ("decay_steps", decay_steps)):
        if not (isinstance(v, int) and v >= 0):
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if not 0.0 <= final_lr_fraction <= 1.0:
        raise ValueError(f"final_lr_fraction must be in [0, 1], got {final_lr_fraction!r}")


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
) -> optax.GradientTransformation:
    """Adam(lr) for model/guide parameters and Adam(baseline_lr) for every ``bl_*`` parameter
    (PyTorch-default betas and eps, as Pyro). Defaults are Pyro's (1e-4, 1e-3); the tutorial
    recipe uses (1e-4, 0.1). ``clip_norm`` clips each group's global gradient norm separately
    (the baseline gradients are orders of magnitude larger than the guide's). ``warmup_steps``,
    ``decay_steps`` and ``final_lr_fraction`` shape both rates alike (:func:`lr_schedule`); the
    schedule's step count lives in the optimiser state, so a resumed run continues it."""
    for name, v in (("learning_rate", learning_rate), ("baseline_learning_rate", baseline_learning_rate)):
        if not v > 0:
            raise ValueError(f"{name} must be positive, got {v!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")

    def group(lr: float) -> optax.GradientTransformation:
        adam = optax.adam(lr_schedule(lr, warmup_steps, decay_steps, final_lr_fraction), b1=b1, b2=b2, eps=eps)
        return adam if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adam)

    return optax.multi_transform({"main": group(learning_rate), "baseline": group(baseline_learning_rate)}, param_labels)
