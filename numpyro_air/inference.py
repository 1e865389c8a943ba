"""Deprecated module path (numpyro-air 0.3.0): import :mod:`numpyro_air.analysis.inference` instead.

Re-exports the public names of numpyro_air.analysis.inference and warns; removed in 0.4.0."""

import warnings

from .analysis.inference import *  # noqa: F401,F403

warnings.warn(
    "numpyro_air.inference is deprecated (0.3.0; removed in 0.4.0): import numpyro_air.analysis.inference instead",
    DeprecationWarning,
    stacklevel=2,
)
