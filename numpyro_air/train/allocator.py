"""Keep freed host memory in the process, so that a compiled step's large buffers do not arrive
in fresh pages at every call.

XLA:CPU allocates a step's outputs and temporaries with the C library's ``malloc`` at each call
and frees them afterwards. With glibc's defaults, blocks above the mmap threshold (dynamic, at
most 32 MB) come from ``mmap`` and go back to the system when freed, and freed memory at the top
of a heap is trimmed; the next call touches new pages, and every 4 KiB page costs a minor page
fault (the tutorial networks' step at batch 256 took 12,000-18,000 of them per call on a 2-core
Intel Xeon, 2026-12-07; ``benchmarks/step_processes.py --allocators retain system`` compares).

:func:`retain_freed_memory` sets glibc's ``M_MMAP_MAX`` to 0 (every block from the heaps),
``M_TRIM_THRESHOLD`` to 2 GiB (freed memory is not handed back) and ``M_TOP_PAD`` to 256 MiB (a
heap grows in large steps), as the environment variables ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=268435456`` would. The process then keeps
its peak of freed memory instead of returning it. It is a setting of the whole process, made by
``numpyro-air train`` and ``evaluate`` unless ``--system-allocator`` is given, and never by
importing the package; elsewhere than glibc it changes nothing.

The same commands also run each CPU computation on the thread that calls it
(:func:`synchronous_cpu_dispatch`). JAX otherwise runs it on a worker thread, whose glibc arena
cannot hold a block above its 64 MiB heap size and maps such a block afresh at every call
whatever ``M_MMAP_MAX`` says: the donated batch-256 step's 87 MB of temporaries cost 21,000
page faults per call that way. On the calling (main) thread the block comes from the main heap,
which :func:`retain_freed_memory` keeps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["MALLOPT_SETTINGS", "malloc_environment", "retain_freed_memory", "synchronous_cpu_dispatch"]

#: glibc ``mallopt`` parameters (name: (``malloc.h`` number, value)) that
#: :func:`retain_freed_memory` sets.
MALLOPT_SETTINGS = {
    "M_MMAP_MAX": (-4, 0),
    "M_TRIM_THRESHOLD": (-1, 2**31 - 1),  # the largest value of mallopt's int
    "M_TOP_PAD": (-2, 256 * 2**20),
}


def retain_freed_memory() -> bool:
    """Set :data:`MALLOPT_SETTINGS` with glibc's ``mallopt``; True if every setting was accepted,
    False (and nothing changed) where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in MALLOPT_SETTINGS.values())


def synchronous_cpu_dispatch() -> None:
    """Run every CPU computation on the thread that dispatches it (JAX's
    ``jax_cpu_enable_async_dispatch`` set to False). It takes effect only before the process's
    first computation creates the CPU client; a call dispatches, then returns when it is done."""
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)


def malloc_environment() -> dict:
    """The same settings as environment variables for a process about to start (glibc reads
    ``MALLOC_<NAME>_`` at its start): e.g. ``{"MALLOC_MMAP_MAX_": "0", ...}``."""
    return {f"MALLOC_{name[2:]}_": str(value) for name, (_, value) in MALLOPT_SETTINGS.items()}
