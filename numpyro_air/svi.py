"""The JIT-compiled SVI step for AIR: NVIL ELBO, two-group Adam, annealed prior as an array."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from numpyro.infer import SVI
from numpyro.infer.svi import SVIState, _make_loss_fn

from .config import AIRConfig
from .elbo import NVIL_ELBO
from .guide import guide
from .model import model
from .optim import make_optimizer
from .prior import z_pres_prior_probs


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings (Pyro defaults: lr 1e-4, baseline lr 1e-3, no clipping)."""

    learning_rate: float = 1e-4
    baseline_learning_rate: float = 1e-3
    clip_norm: Optional[float] = None
    num_particles: int = 1

    def __post_init__(self) -> None:
        if self.num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {self.num_particles!r}")
        make_optimizer(self.learning_rate, self.baseline_learning_rate, self.clip_norm)  # validates

    @classmethod
    def tutorial(cls, **overrides) -> "OptimConfig":
        """The Pyro tutorial's optimiser settings (``-blr 0.1``; lr 1e-4)."""
        return cls(**({"baseline_learning_rate": 0.1} | overrides))


@dataclass(frozen=True)
class Recipe:
    """A model configuration with the optimiser settings it is meant to train with."""

    air: AIRConfig
    optim: OptimConfig

    @classmethod
    def tutorial(cls) -> "Recipe":
        """Pyro's working tutorial recipe: :meth:`AIRConfig.tutorial` + baseline lr 0.1 (leaving the
        baseline lr at Pyro's CLI default 1e-3 is what kept Pyro users at ~76%, pyro#1374)."""
        return cls(AIRConfig.tutorial(), OptimConfig.tutorial())


class StepInfo(NamedTuple):
    loss: jnp.ndarray  # -ELBO per image of this batch (NaN if the step was skipped)
    skipped: jnp.ndarray  # bool: non-finite loss or parameters, update discarded


def make_svi(config: AIRConfig | Recipe, optim: Optional[OptimConfig] = None) -> SVI:
    """``numpyro.infer.SVI`` over AIR's model and guide with :class:`NVIL_ELBO`; the AIR config is
    a static keyword argument (compile-time constant). Pass a :class:`Recipe` (e.g.
    ``Recipe.tutorial()``) to get its optimiser settings; with an ``AIRConfig`` alone, ``optim``
    defaults to ``OptimConfig()`` (Pyro's CLI defaults, baseline lr 1e-3)."""
    if isinstance(config, Recipe):
        config, optim = config.air, (config.optim if optim is None else optim)
    optim = OptimConfig() if optim is None else optim
    tx = make_optimizer(optim.learning_rate, optim.baseline_learning_rate, optim.clip_norm)
    return SVI(model, guide, tx, NVIL_ELBO(num_particles=optim.num_particles), config=config)


def make_update(svi: SVI) -> Callable[[SVIState, jnp.ndarray, jnp.ndarray], tuple]:
    """Pure (un-jitted) step ``(state, images (B,H,H), step) -> (state, StepInfo)`` for an SVI
    built by :func:`make_svi` (its ``config`` static keyword gives the annealed prior). Compose it
    with ``jax.jit`` / ``jax.vmap`` yourself, or use :func:`numpyro_air.step.make_step`.

    Same arithmetic and RNG use as ``svi.update``, plus:

    - ``step`` is the 1-based optimisation step as an array: the annealed z_pres prior is
      computed from it inside the trace, so changing it never recompiles;
    - a non-finite loss or gradient discards the update (parameters, optimiser and mutable state
      are kept, the RNG still advances) and sets ``StepInfo.skipped``. The test runs on the loss
      and the gradients' global norm *before* the optimiser, so the select fuses into the
      optimiser's element-wise update instead of costing another pass over the parameters.
    """

    config = svi.static_kwargs.get("config")
    if not isinstance(config, AIRConfig):
        raise ValueError("make_update needs an SVI built by make_svi (static keyword `config` missing)")

    def update(state: SVIState, images: jnp.ndarray, step: jnp.ndarray):
        prior = z_pres_prior_probs(config, step)
        rng_key, rng_key_step = jax.random.split(state.rng_key)
        params = svi.optim.get_params(state.optim_state)
        loss_fn = _make_loss_fn(
            svi.loss,
            rng_key_step,
            svi.constrain_fn,
            svi.model,
            svi.guide,
            (images,),
            {"z_pres_prior": prior},
            svi.static_kwargs,
            mutable_state=state.mutable_state,
        )
        (loss, mutable_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        ok = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
        optim_state = svi.optim.update(grads, state.optim_state, value=loss)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        new_state = SVIState(keep(optim_state, state.optim_state), keep(mutable_state, state.mutable_state), rng_key)
        return new_state, StepInfo(jnp.where(ok, loss, jnp.nan) / images.shape[0], ~ok)

    return update
