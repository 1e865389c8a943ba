"""Deprecated module path (numpyro-air 0.3.0): import :mod:`numpyro_air.train.loop` instead.

Re-exports the public names of numpyro_air.train.loop and warns; removed in 0.4.0."""

import warnings

from .train.loop import *  # noqa: F401,F403

warnings.warn(
    "numpyro_air.training is deprecated (0.3.0; removed in 0.4.0): import numpyro_air.train.loop instead",
    DeprecationWarning,
    stacklevel=2,
)
