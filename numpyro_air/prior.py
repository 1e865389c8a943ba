"""Deprecated module path (numpyro-air 0.3.0): import :mod:`numpyro_air.core.prior` instead.

Re-exports the public names of numpyro_air.core.prior and warns; removed in 0.4.0."""

import warnings

from .core.prior import *  # noqa: F401,F403

warnings.warn(
    "numpyro_air.prior is deprecated (0.3.0; removed in 0.4.0): import numpyro_air.core.prior instead",
    DeprecationWarning,
    stacklevel=2,
)
