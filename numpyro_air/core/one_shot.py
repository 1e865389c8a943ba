"""Compiling programs that run once per process, such as the arrays of a run's figures.

XLA's CPU backend spends most of the compile time of a model/guide program in LLVM's
optimisation passes. At LLVM -O0 (``xla_backend_optimization_level=0``) the figures' program of
the tutorial networks (guide, reconstruction, decoded windows and prior samples of 16 scenes)
compiles in 1.4-1.6 s instead of 2.2-2.3 s at XLA's defaults (2-core AMD EPYC, 2026-12-06) and
runs a little slower: the right trade for a program that runs once, the wrong one for the
training step or an evaluation over thousands of images. Other backends keep XLA's defaults.

The SVI initialisation is not compiled this way, although it runs once: its parameters would
differ in the last bit from those at XLA's defaults, and with them every seed's run.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional

import jax

# XLA DebugOptions of a one-shot program on the CPU backend.
ONE_SHOT_CPU_OPTIONS = (("xla_backend_optimization_level", 0),)


def one_shot_options() -> Optional[Dict[str, Any]]:
    """``compiler_options`` for ``jax.jit`` of a program that runs once: LLVM -O0 on the CPU
    backend, None (XLA's defaults) on any other. Initialises JAX's backend: call it when the
    program is built, not at import."""
    return dict(ONE_SHOT_CPU_OPTIONS) if jax.default_backend() == "cpu" else None


def one_shot_jit(fun: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fun, compiler_options=one_shot_options(), **jit_kwargs)``, built at the first
    call (so importing a module that defines one does not start JAX's backend); later calls reuse
    it and its compilation cache."""
    build = functools.cache(lambda: jax.jit(fun, compiler_options=one_shot_options(), **jit_kwargs))

    @functools.wraps(fun)
    def call(*args, **kwargs):
        return build()(*args, **kwargs)

    return call
