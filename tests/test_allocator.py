"""The process's allocator and dispatch settings (``numpyro_air.train.allocator``) and the NaN
guard's test (``numpyro_air.train.svi.all_finite``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_air.cli import choose_allocator
from numpyro_air.cli.evaluate import build_parser as evaluate_parser
from numpyro_air.cli.train import build_parser as train_parser
from numpyro_air.train import allocator
from numpyro_air.train.svi import all_finite

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Minor page faults per allocation of a fresh 64 MB array (above glibc's largest mmap threshold,
# so with the defaults every allocation maps new pages), in a process of its own; numpy's huge
# pages for large arrays are switched off (NUMPY_MADVISE_HUGEPAGE=0), so a page is 4 KiB.
FAULTS = """
import resource, sys
import numpy as np
from numpyro_air.train.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    np.ones(8_000_000).sum()
f0 = faults()
for _ in range(5):
    np.ones(8_000_000).sum()
print((faults() - f0) / 5)
"""


def faults_per_allocation(mode: str) -> float:
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0"}
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_retained_memory_is_reused_without_page_faults():
    system, retain = faults_per_allocation("system"), faults_per_allocation("retain")
    assert system > 10_000  # 64 MB in 4 KiB pages is 15,625
    assert retain < 0.05 * system


# Minor page faults of a call (the median of 5 after 4 warm-up calls) of a jitted product whose
# (n, 4) operand, 80 MB, is a temporary of the computation, in a process of its own: "system"
# (glibc's defaults), "retain-async" (freed memory kept, JAX's default dispatch: the computation
# runs on a worker thread) and "retain" (as the CLI: freed memory kept and the computation on
# the calling thread).
TEMPORARY = """
import resource, sys
import jax, jax.numpy as jnp
from numpyro_air.train.allocator import retain_freed_memory, synchronous_cpu_dispatch
if sys.argv[1] != "system":
    assert retain_freed_memory()
if sys.argv[1] == "retain":
    synchronous_cpu_dispatch()
def f(x):
    y = jnp.sin(jnp.outer(x, jnp.arange(4.0)))
    return y.T @ y
x = jnp.ones(5_000_000)
g = jax.jit(f)
assert g.lower(x).compile().memory_analysis().temp_size_in_bytes >= 80_000_000
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    g(x).block_until_ready()
per_call = []
for _ in range(5):
    f0 = faults()
    g(x).block_until_ready()
    per_call.append(faults() - f0)
print(sorted(per_call)[2])
"""


def faults_per_call(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", TEMPORARY, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="glibc's per-thread arenas")
def test_a_large_temporary_is_reused_on_the_calling_thread():
    """A block above 64 MiB allocated on a worker thread is mapped afresh at every call even with
    freed memory kept; on the calling thread it comes from the main heap, which keeps it."""
    system, worker, caller = (faults_per_call(m) for m in ("system", "retain-async", "retain"))
    assert system > 15_000 and worker > 15_000  # 80 MB in 4 KiB pages is 19,531
    assert caller < 0.05 * worker


def test_settings_and_environment_agree():
    env = allocator.malloc_environment()
    assert env == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1), "MALLOC_TOP_PAD_": str(2**28)}
    assert all(-(2**31) <= v < 2**31 for _, v in allocator.MALLOPT_SETTINGS.values())  # mallopt takes a C int
    assert allocator.retain_freed_memory() is GLIBC


def test_cli_flag_chooses(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: calls.append("retain") or True)
    monkeypatch.setattr(allocator, "synchronous_cpu_dispatch", lambda: calls.append("sync"))
    assert choose_allocator(system=True) == "system"
    assert calls == []
    assert choose_allocator(system=False) == "retain"
    assert calls == ["retain", "sync"]
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda: False)  # not glibc: nothing else changes
    assert choose_allocator(system=False) == "system"
    assert calls == ["retain", "sync"]
    assert train_parser().parse_args(["--system-allocator"]).system_allocator
    assert evaluate_parser().parse_args(["--checkpoint", "c", "--data", "d", "--system-allocator"]).system_allocator
    assert not evaluate_parser().parse_args(["--checkpoint", "c", "--data", "d"]).system_allocator


def test_all_finite_tests_each_leaf_and_the_loss():
    big = np.full(4, 2e38, np.float32)  # each leaf's sum overflows float32: inf
    grads = {"a": jnp.ones((3, 2)), "b": {"c": jnp.zeros(5)}}
    assert bool(all_finite(jnp.float32(1.0), grads))
    assert not bool(all_finite(jnp.float32(jnp.nan), grads))
    assert not bool(all_finite(jnp.float32(jnp.inf), grads))
    for bad in (np.nan, np.inf, -np.inf):
        leaf = np.ones(5, np.float32)
        leaf[2] = bad
        assert not bool(all_finite(jnp.float32(1.0), {**grads, "b": {"c": jnp.asarray(leaf)}}))
    assert not bool(all_finite(jnp.float32(1.0), {"a": jnp.asarray(big)}))
    # large leaves whose sums are finite one by one pass, though their total would overflow
    half = np.full(2, 1.5e38, np.float32)
    assert bool(all_finite(jnp.float32(1.0), {"a": jnp.asarray(half), "b": jnp.asarray(half)}))
