"""Deprecated module path (numpyro-air 0.3.0): import :mod:`numpyro_air.train.svi` instead.

Re-exports the public names of numpyro_air.train.svi, numpyro_air.train.recipes and warns; removed in 0.4.0."""

import warnings

from .train.recipes import *  # noqa: F401,F403
from .train.svi import *  # noqa: F401,F403

warnings.warn(
    "numpyro_air.svi is deprecated (0.3.0; removed in 0.4.0): import numpyro_air.train.svi instead",
    DeprecationWarning,
    stacklevel=2,
)
