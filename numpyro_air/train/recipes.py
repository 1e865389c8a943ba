"""Optimiser settings and the named recipes: :class:`OptimConfig`, :class:`Recipe` (a model
configuration with the optimiser settings it trains with) and :data:`PRESETS`, the one table of
named recipes that Python and ``numpyro-air train --preset`` share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

from ..core.config import AIRConfig
from ..estimators.nvil import check_loss_scale, check_signal_decay
from ..estimators.rws import RWS_CONTINUOUS, RWS_ELBO, check_rws_continuous
from ..estimators.vimco import VIMCO_ELBO
from .optim import make_optimizer


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings (Pyro defaults: lr 1e-4, baseline lr 1e-3, no clipping)."""

    learning_rate: float = 1e-4
    baseline_learning_rate: float = 1e-3
    clip_norm: Optional[float] = None
    num_particles: Optional[int] = None  # ELBO particles, VIMCO's K (>= 2); None: the estimator's default
    # NVIL only: centre and normalise the learning signal with running statistics (NVIL paper),
    # their decay, and Pyro's loss scale N/B (60000/64 reproduces Pyro's baseline-loss magnitudes)
    normalize_signal: bool = False
    signal_decay: float = 0.9
    loss_scale: float = 1.0
    # RWS only: how the guide's reparameterised sites learn (estimators.rws.RWS_ELBO's continuous)
    rws_continuous: str = RWS_CONTINUOUS[0]
    # learning-rate schedule of both groups (train.optim.lr_schedule): linear warmup from 0 over
    # warmup_steps, then cosine decay to final_lr_fraction * lr over decay_steps (0: constant)
    warmup_steps: int = 0
    decay_steps: int = 0
    final_lr_fraction: float = 0.0
    # Polyak averaging: an exponential moving average of the parameters with this decay (None:
    # off), kept in the optimiser state; evaluation, figures and load_params then use it. Its
    # warm-up (train.optim.average_rate) gives the n-th update a mean age of n / 10 steps until
    # n reaches about 9 / (1 - decay), then 1 / (1 - decay): 0.999 averages about the last 1,000
    # steps of a long run, the last 500 after 5,000 averaged steps (train.optim.with_param_average)
    average_decay: Optional[float] = None
    # ... starting after this many applied updates (the average is the parameters until then)
    average_start: int = 0

    def __post_init__(self) -> None:
        if self.num_particles is not None and self.num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {self.num_particles!r}")
        check_signal_decay(self.signal_decay)
        check_loss_scale(self.loss_scale)
        check_rws_continuous(self.rws_continuous)
        self.optimizer()  # validates

    def optimizer(self):
        """The optax transformation these settings describe (:func:`~.optim.make_optimizer`)."""
        return make_optimizer(
            self.learning_rate,
            self.baseline_learning_rate,
            self.clip_norm,
            self.warmup_steps,
            self.decay_steps,
            self.final_lr_fraction,
            average_decay=self.average_decay,
            average_start=self.average_start,
        )

    @classmethod
    def tutorial(cls, **overrides) -> "OptimConfig":
        """The Pyro tutorial's optimiser settings (``-blr 0.1``; lr 1e-4)."""
        return cls(**({"baseline_learning_rate": 0.1} | overrides))

    def for_estimator(self, estimator: str) -> "OptimConfig":
        """This config with ``num_particles`` set: ``None`` becomes the estimator's default, the
        default K of :class:`VIMCO_ELBO` for "vimco", of :class:`RWS_ELBO` for "rws" and one
        particle for "nvil" and "concrete"."""
        if self.num_particles is not None:
            return self
        defaults = {"vimco": VIMCO_ELBO().num_particles, "rws": RWS_ELBO().num_particles}
        return dataclasses.replace(self, num_particles=defaults.get(estimator, 1))


@dataclass(frozen=True)
class Recipe:
    """A model configuration with the optimiser settings it is meant to train with, and the
    loop settings (``TrainConfig`` fields, as (name, value) pairs) it was measured with, which
    ``numpyro-air train --preset`` uses where no flag says otherwise."""

    air: AIRConfig
    optim: OptimConfig
    train: Tuple[Tuple[str, Any], ...] = ()

    @classmethod
    def pyro_default(cls) -> "Recipe":
        """Pyro's ``main.py`` defaults, :class:`AIRConfig` and :class:`OptimConfig` as they are
        (they do not learn well, pyro#637; ``--preset pyro-default``, the CLI's default)."""
        return cls(AIRConfig(), OptimConfig())

    @classmethod
    def tutorial(cls) -> "Recipe":
        """Pyro's working tutorial recipe: :meth:`AIRConfig.tutorial` + baseline lr 0.1 (leaving the
        baseline lr at Pyro's CLI default 1e-3 is what kept Pyro users at ~76%, pyro#1374)."""
        return cls(AIRConfig.tutorial(), OptimConfig.tutorial())

    @classmethod
    def concrete(cls) -> "Recipe":
        """The tutorial networks with relaxed (Concrete, temperature 1) presence and a pathwise
        gradient: the best recipe of the estimators head to head (``--preset concrete``)."""
        return cls(AIRConfig.tutorial(presence_estimator="concrete"), OptimConfig.tutorial())

    @classmethod
    def fast(cls) -> "Recipe":
        """:meth:`concrete` with three times the learning rate (3e-4) and bfloat16 matmul operands
        (float32 accumulation, parameters and ELBO): the quickest to 95% held-out count accuracy
        on the CPU (``--preset fast``; ``benchmarks/time_to_accuracy.py``). bfloat16 since
        2026-12-08: paired with float32 over 4 seeds x 20,000 steps it counted as many held-out
        canvases (0.02 points fewer on average) with a 23% shorter step on the 2-core Intel Xeon
        (``experiments/results/fast_preset/README.md``); ``--compute-dtype float32`` for the
        earlier recipe."""
        base = cls.concrete()
        air = base.air.replace(compute_dtype="bfloat16")
        return cls(air, dataclasses.replace(base.optim, learning_rate=3e-4))

    @classmethod
    def minute(cls) -> "Recipe":
        """:meth:`fast` at learning rate 2e-3 with a schedule (linear warmup over 100 steps, cosine
        decay to 5% over the next 1,100) and 1,200 steps: ``numpyro-air train --preset minute``
        counts >= 95% of the held-out split within a minute of the whole command on the 2-core CPU
        (``benchmarks/time_to_accuracy.py --whole-command``). Its final evaluation counts 2,000
        training images (not all 60,000); the held-out split is counted whole."""
        base = cls.fast()
        optim = dataclasses.replace(base.optim, learning_rate=2e-3, warmup_steps=100, decay_steps=1100, final_lr_fraction=0.05)
        return cls(base.air, optim, train=(("num_steps", 1_200), ("eval_train_images", 2_000)))


# Every named recipe, for Python (``make_svi(PRESETS["fast"])``) and ``numpyro-air train --preset``.
PRESETS: Mapping[str, Recipe] = MappingProxyType(
    {
        "pyro-default": Recipe.pyro_default(),
        "tutorial": Recipe.tutorial(),
        "concrete": Recipe.concrete(),
        "fast": Recipe.fast(),
        "minute": Recipe.minute(),
    }
)
