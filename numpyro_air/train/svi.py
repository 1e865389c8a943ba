"""The JIT-compiled SVI step for AIR: NVIL ELBO, two-group Adam, annealed prior as an array."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.svi import SVIState

from ..core.config import AIRConfig
from ..core.guide import guide
from ..core.model import model
from ..core.prior import concrete_temperature, z_pres_prior_probs
from ..estimators.nvil import NVIL_ELBO, with_signal_stats
from ..estimators.rws import RWS_ELBO
from ..estimators.vimco import VIMCO_ELBO
from .recipes import OptimConfig, Recipe


class StepInfo(NamedTuple):
    loss: jnp.ndarray  # -ELBO per image of this batch (NaN if the step was skipped)
    skipped: jnp.ndarray  # bool: non-finite loss or parameters, update discarded


def make_svi(config: AIRConfig | Recipe, optim: Optional[OptimConfig] = None) -> SVI:
    """``numpyro.infer.SVI`` over AIR's model and guide with :class:`NVIL_ELBO`; the AIR config is
    a static keyword argument (compile-time constant). Pass a :class:`Recipe` (e.g.
    ``Recipe.tutorial()`` or ``PRESETS["fast"]``) to get its optimiser settings; with an
    ``AIRConfig`` alone, ``optim`` defaults to ``OptimConfig()`` (Pyro's CLI defaults)."""
    if isinstance(config, Recipe):
        config, optim = config.air, (config.optim if optim is None else optim)
    optim = OptimConfig() if optim is None else optim
    tx = optim.optimizer()
    guide_fn = guide
    if optim.normalize_signal and config.presence_estimator == "nvil":
        guide_fn = with_signal_stats(guide, {"z_pres": (config.num_steps,)})
    return SVI(model, guide_fn, tx, make_elbo(config, optim), config=config)


def make_elbo(config: AIRConfig, optim: OptimConfig):
    """The ELBO of ``config.presence_estimator``: NVIL (score function, learned baselines, optional
    signal normalisation / loss scale), VIMCO (K-sample bound, leave-one-out signals), RWS (wake
    updates from K particles) or
    ``Trace_ELBO`` for the relaxed (Concrete) presence, which is all pathwise. ``num_particles``
    ``None`` takes the estimator's default (:meth:`OptimConfig.for_estimator`)."""
    estimator = config.presence_estimator
    optim = optim.for_estimator(estimator)
    if estimator == "vimco":
        return VIMCO_ELBO(num_particles=optim.num_particles)
    if estimator == "rws":
        return RWS_ELBO(num_particles=optim.num_particles, continuous=optim.rws_continuous)
    if estimator == "concrete":
        return Trace_ELBO(num_particles=optim.num_particles)
    return NVIL_ELBO(
        num_particles=optim.num_particles,
        normalize_signal=optim.normalize_signal,
        signal_decay=optim.signal_decay,
        loss_scale=optim.loss_scale,
    )


def all_finite(loss: jnp.ndarray, grads) -> jnp.ndarray:
    """bool (): the loss and each gradient leaf's element sum are finite, i.e. no element is NaN
    or infinite (or a leaf's sum overflows float32). One read of each gradient, no squared copy
    as a norm would need. The sums are stacked and tested by one reduction: chained scalar ``&``s
    or ``+``s would be fused into, and recomputed by, every element of the optimiser's update
    loops that the guard's select joins (``benchmarks/README.md``)."""
    sums = jnp.stack([jnp.asarray(loss, jnp.float32)] + [jnp.sum(leaf, dtype=jnp.float32) for leaf in jax.tree.leaves(grads)])
    return jnp.all(jnp.isfinite(sums))


def make_update(svi: SVI, config: AIRConfig, leading_axis: bool = False) -> Callable[[SVIState, jnp.ndarray, jnp.ndarray], tuple]:
    """Pure (un-jitted) step ``(state, images (B,H,H), step) -> (state, StepInfo)`` for an SVI
    built by :func:`make_svi` from ``config`` (which gives the annealed prior and temperature).
    Compose it with ``jax.jit`` / ``jax.vmap`` yourself, or use :func:`numpyro_air.train.step.make_step`.
    With ``leading_axis`` every leaf of the state and of the result, and the images (1, B, H, W),
    carry a leading axis of size 1 (one seed of the training loop's stacked states); the
    optimiser then runs on the stacked leaves, so that a donated state is updated in place.

    Same arithmetic and RNG use as ``svi.update``, on NumPyro's public API only (the ELBO's
    ``loss`` / ``loss_with_mutable_state``, ``svi.constrain_fn``, the optimiser's ``get_params``
    and ``update``), plus:

    - ``step`` is the 1-based optimisation step as an array: the annealed z_pres prior is
      computed from it inside the trace, so changing it never recompiles;
    - a non-finite loss or gradient discards the update (parameters, optimiser and mutable state
      are kept, the RNG still advances) and sets ``StepInfo.skipped``. The test runs on the loss
      and the sum of all gradient elements *before* the optimiser (NaN and infinities propagate
      through a sum; a norm would first write a squared copy of every gradient), so the select
      fuses into the optimiser's element-wise update instead of costing another pass. The
      optimiser skips the update itself (:func:`numpyro_air.train.optim.applies`: it is given
      the loss, made NaN when a gradient is not finite), so that it computes the parameters'
      update from the moments it keeps and the compiled step writes each of them once. An
      SVI with an optimiser of one's own needs one that skips a non-finite ``value`` too
      (built from :func:`numpyro_air.train.optim.adam_or_skip`), or NaN reaches its state.
    """
    if not isinstance(config, AIRConfig):
        raise TypeError(f"make_update needs the AIRConfig the SVI was built from, got {type(config).__name__}")
    if "config" in svi.static_kwargs and svi.static_kwargs["config"] != config:
        raise ValueError("make_update: `config` differs from the AIRConfig the SVI's model and guide run with")
    elbo, model_fn, guide_fn, static = svi.loss, svi.model, svi.guide, svi.static_kwargs

    def loss_fn(rng_key, images, kwargs, mutable_state):
        """``params -> (-ELBO, new mutable state)`` at unconstrained ``params``, as NumPyro's SVI
        evaluates it: the mutable state enters the parameter map without gradient."""

        def loss(params):
            params = svi.constrain_fn(params)
            if not jax.tree.leaves(mutable_state):
                return elbo.loss(rng_key, params, model_fn, guide_fn, images, **kwargs, **static), None
            params = {**params, **jax.lax.stop_gradient(mutable_state)}
            out = elbo.loss_with_mutable_state(rng_key, params, model_fn, guide_fn, images, **kwargs, **static)
            return out["loss"], out["mutable_state"]

        return loss

    squeeze = (lambda tree: jax.tree.map(lambda a: a.reshape(a.shape[1:]), tree)) if leading_axis else (lambda t: t)
    stack = (lambda tree: jax.tree.map(lambda a: a.reshape((1, *a.shape)), tree)) if leading_axis else (lambda t: t)

    def update(state: SVIState, images: jnp.ndarray, step: jnp.ndarray):
        images = squeeze(images)
        kwargs = {"z_pres_prior": z_pres_prior_probs(config, step)}
        if config.relaxed_presence:
            kwargs["temperature"] = concrete_temperature(config, step)
        rng_key, rng_key_step = jax.random.split(squeeze(state.rng_key))
        params = svi.optim.get_params(state.optim_state)
        loss_of = loss_fn(rng_key_step, images, kwargs, squeeze(state.mutable_state))
        (loss, mutable_state), grads = jax.value_and_grad(lambda p: loss_of(squeeze(p)), has_aux=True)(params)
        ok = all_finite(loss, grads)
        # the optimiser skips a non-finite value itself (train.optim.applies); its step count too
        value = jnp.where(ok, loss, jnp.nan)
        i, optim_state = svi.optim.update(grads, state.optim_state, value=value)
        optim_state = (optax.tree.where(ok, i, state.optim_state[0]), optim_state)
        mutable_state = optax.tree.where(ok, stack(mutable_state), state.mutable_state)
        new_state = SVIState(optim_state, mutable_state, stack(rng_key))
        return new_state, stack(StepInfo(value / images.shape[0], ~ok))

    return update


def jit_update(svi: SVI, config: AIRConfig) -> Callable[[SVIState, jnp.ndarray, jnp.ndarray], tuple]:
    """``jax.jit`` of :func:`make_update` with the state donated, as the training loop compiles it
    (:func:`numpyro_air.train.step.make_step`): the new parameters and Adam moments are written
    over the old ones, so the state passed in must not be used again."""
    return jax.jit(make_update(svi, config), donate_argnums=0)
