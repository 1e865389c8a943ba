"""Deprecated module path (numpyro-air 0.3.0): import :mod:`numpyro_air.train.checkpoint` instead.

Re-exports the public names of numpyro_air.train.checkpoint and warns; removed in 0.4.0."""

import warnings

from .train.checkpoint import *  # noqa: F401,F403

warnings.warn(
    "numpyro_air.checkpoint is deprecated (0.3.0; removed in 0.4.0): import numpyro_air.train.checkpoint instead",
    DeprecationWarning,
    stacklevel=2,
)
