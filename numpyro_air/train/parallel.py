"""Scale-out: K seeds in one program (``jax.vmap``) x D devices (``jax.sharding``), multi-host.

The sharded step itself is built by :func:`numpyro_air.train.step.make_step`. Data parallelism uses
JAX's SPMD partitioner, not a hand-made scheme: a 1-D ``Mesh`` over the
devices with axis ``"data"``; minibatches (K, B, H, W) are sharded along B with a
``NamedSharding``; SVI states (parameters, optimiser state, RNG key) are replicated. XLA inserts
the all-reduce of the gradients (the loss is a sum over the batch).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def select_devices(kind: Optional[str] = None, num_devices: Optional[int] = None) -> list:
    """The first ``num_devices`` devices of platform ``kind`` ("cpu", "gpu", "tpu"; default: JAX's
    default backend). Raises ValueError naming what is missing."""
    try:
        devices = jax.devices(kind) if kind else jax.devices()
    except RuntimeError as e:
        raise ValueError(f"device kind {kind!r} is not available here ({e}); available: {jax.devices()}") from None
    if num_devices is None:
        return list(devices)
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if num_devices > len(devices):
        raise ValueError(
            f"{num_devices} devices requested but only {len(devices)} {kind or 'default'} device(s) are visible: {devices}"
        )
    return list(devices[:num_devices])


def make_mesh(devices: Sequence) -> Mesh:
    """1-D mesh with axis ``"data"`` over ``devices``."""
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the data axis (checked before compiling)."""
    d = mesh.shape[DATA_AXIS]
    if batch_size % d:
        raise ValueError(f"batch size {batch_size} is not divisible by the number of devices ({d})")


def data_mesh(devices: Optional[Sequence], batch_size: int) -> Optional[Mesh]:
    """The mesh that shards each batch over ``devices`` (default: all of JAX's), checked against
    ``batch_size``; None for one device in one process (no sharding)."""
    if (devices is None or len(devices) <= 1) and jax.process_count() == 1:
        return None
    mesh = make_mesh(devices if devices is not None else jax.devices())
    check_batch(batch_size, mesh)
    return mesh


def batch_sharding(mesh: Mesh, seeds_axis: bool = True) -> NamedSharding:
    """Sharding of a (K, B, H, W) batch (or (B, H, W) with ``seeds_axis=False``) along B."""
    return NamedSharding(mesh, P(None, DATA_AXIS) if seeds_axis else P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
) -> bool:
    """Multi-host set-up via ``jax.distributed.initialize``.

    Explicit arguments win; otherwise ``NUMPYRO_AIR_COORDINATOR``, ``NUMPYRO_AIR_NUM_PROCESSES`` and
    ``NUMPYRO_AIR_PROCESS_ID`` are read; if none is set, JAX's own auto-detection (SLURM, TPU pods,
    Open MPI, ...) is tried only when ``JAX_COORDINATOR_ADDRESS`` is set. Returns True when a
    multi-process run was initialised.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("NUMPYRO_AIR_COORDINATOR")
    if num_processes is None and env.get("NUMPYRO_AIR_NUM_PROCESSES"):
        num_processes = int(env["NUMPYRO_AIR_NUM_PROCESSES"])
    if process_id is None and env.get("NUMPYRO_AIR_PROCESS_ID"):
        process_id = int(env["NUMPYRO_AIR_PROCESS_ID"])
    if coordinator_address is None and num_processes is None and process_id is None:
        if not env.get("JAX_COORDINATOR_ADDRESS"):
            return False
        _cpu_collectives()
        jax.distributed.initialize()
        return True
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} is outside [0, {num_processes})")
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    return True


def _cpu_collectives() -> None:
    """Cross-process collectives on CPU devices need an implementation (gloo ships with jaxlib)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
