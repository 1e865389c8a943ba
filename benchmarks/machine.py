"""Machine description and device choice shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    """CPU cores available to this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pick_device(kind: str | None):
    """The first JAX device of ``kind`` ("cpu", "gpu", "tpu"; None: JAX's default), or exit with
    a clear message when that kind is not available."""
    import jax

    if kind is None:
        return jax.devices()[0]
    try:
        devices = jax.devices(kind)
    except RuntimeError as e:
        raise SystemExit(
            f"error: --device {kind}: no {kind} backend available to JAX "
            f"(available: {sorted({d.platform for d in jax.devices()})}; jax {jax.__version__}). {e}"
        ) from None
    if not devices:
        raise SystemExit(f"error: --device {kind}: JAX reports no {kind} devices")
    return devices[0]


def median_times(call, steps: int, warmup: int) -> dict:
    """Time ``call()`` (blocking) ``warmup`` + ``steps`` times after one first call: median,
    minimum and every timed call's seconds, and the first call's (compilation included)."""
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        call()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"sec_median": statistics.median(times), "sec_min": min(times), "first_call_sec": first, "times": times}


def add_allocator_option(ap) -> None:
    """``--system-allocator``, as ``numpyro-air train``: glibc's malloc defaults instead of keeping
    freed memory in the process. (Its help is written here: importing ``numpyro_air`` imports JAX,
    and ``dataset_recipes.py`` children set ``JAX_PLATFORMS`` after parsing.)"""
    ap.add_argument(
        "--system-allocator",
        action="store_true",
        help="glibc's malloc defaults (numpyro-air train's --system-allocator); by default, as the CLI, freed "
        "memory stays in the process",
    )


def apply_allocator(system: bool) -> str:
    """Set this process's allocator as ``numpyro-air train`` does (``numpyro_air.cli.choose_allocator``);
    returns the name the results record: "retain" (freed memory kept, where glibc) or "system"."""
    from numpyro_air.cli import choose_allocator

    return choose_allocator(system)
