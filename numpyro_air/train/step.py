"""The one builder of the training loop's compiled step: one seed, K vmapped seeds, sharded devices.

Everything derives from the pure :func:`numpyro_air.train.svi.make_update`. The loop always holds its
SVI states stacked on a leading seeds axis (K, ...), also for K = 1; one seed runs
``make_update(..., leading_axis=True)``, the plain update with that axis kept on the state (on CPU
a vmap of size 1 was measured 30-40% slower than the plain step, and dropping the axis around the
optimiser made XLA copy every Adam moment of the donated state), K seeds :func:`over_seeds`.

One signature, ``step(states, batch, t) -> (states, StepInfo)``, whatever the layout: ``batch``
is what a :class:`BatchSource` gives for step ``t - 1``, and how the step reads its images from it
is chosen when :func:`make_step` builds it:

- one device (``mesh=None``): ``batch`` is :class:`DeviceRows`: the whole uint8 data set (N, H, W)
  kept on the device and the (K, B) int32 images of this step for each seed; the batch is gathered
  and scaled to [0, 1] inside the compiled step (no host batch);
- a device mesh: ``batch`` is the (K, B, H, W) float32 batch sharded along B; every process builds
  only its addressable part (:func:`sharded_batch`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ..core.config import AIRConfig
from ..data.batches import batch_indices, to_float
from .parallel import batch_sharding, replicated
from .svi import make_update


class DeviceRows(NamedTuple):
    """A step's batch as rows of a data set kept on one device (a pytree the step takes)."""

    data: jax.Array  # (N, H, W) uint8 or float
    idx: jax.Array  # (K, B) int32: the rows of each seed


def over_seeds(update: Callable, num_seeds: int, sequential: bool = False) -> Callable:
    """``update(state, images (B,H,W), t)`` -> ``(states (K,...), images (K,B,H,W), t)``: the K
    seeds (K >= 2) vmapped, or with ``sequential`` as K plain one-seed updates side by side in the
    one compiled program (unrolled; compiling takes about K times as long). One seed:
    ``make_update(..., leading_axis=True)``."""
    if num_seeds < 2:
        raise ValueError(f"over_seeds runs K >= 2 seeds, got {num_seeds}: one seed is make_update(..., leading_axis=True)")
    if sequential:

        def unrolled(states, images, t):
            outs = [update(jax.tree.map(lambda a: a[k], states), images[k], t) for k in range(num_seeds)]
            return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

        return unrolled
    return jax.vmap(update, in_axes=(0, 0, None))


def gather_images(data: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
    """(N, H, W) uint8 or float data, (..., B) int indices -> (..., B, H, W) float32 in [0, 1]."""
    batch = jnp.take(data, idx, axis=0)
    return batch.astype(jnp.float32) / 255.0 if data.dtype == jnp.uint8 else batch.astype(jnp.float32)


def make_step(svi, config: AIRConfig, num_seeds: int = 1, mesh: Optional[Mesh] = None) -> Callable:
    """The jitted training step ``step(states, batch, t)`` of K seeds of ``svi`` (built by
    :func:`numpyro_air.train.svi.make_svi` from ``config``); ``batch`` as the module docstring says.

    ``t`` is the 1-based optimisation step (int32 array): the annealed prior reads it, so it
    never recompiles. Returns ``(states, StepInfo)`` with a leading seeds axis on every leaf. The
    states passed in are donated: the new ones are written over them, so they must not be used again.
    Seeds are vmapped, except for models with convolutions (``config.uses_convolutions``), whose
    seeds run one after another in the same program: vmapping a convolution over K parameter
    sets makes it a grouped convolution, measured 3x slower on the CPU than K plain ones (4 seeds
    of the multi-dSprites embedding, 2026-12-05).
    """
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    if num_seeds == 1:  # the stacked leaves through the optimiser: in place (the module docstring)
        update = make_update(svi, config, leading_axis=True)
    else:
        update = over_seeds(make_update(svi, config), num_seeds, sequential=config.uses_convolutions)
    if mesh is None:

        def step(states, batch: DeviceRows, t):
            if not isinstance(batch, DeviceRows):
                raise TypeError(f"a one-device step takes DeviceRows (see BatchSource), got {type(batch).__name__}")
            return update(states, gather_images(batch.data, batch.idx), t)

        return jax.jit(step, donate_argnums=0)
    rep = replicated(mesh)
    return jax.jit(update, in_shardings=(rep, batch_sharding(mesh), rep), out_shardings=(rep, rep), donate_argnums=0)


class BatchSource:
    """The ``batch`` argument of step i for the step :func:`make_step` builds with the same
    ``mesh``: batch i of seed k holds the images ``batch_indices(N, batch_size, seeds[k], i)``
    (``batch_at_step``), so a step's batch is a pure function of (seed, step). Without a mesh the
    data set is put on the device once and each step ships only its indices."""

    def __init__(self, images: np.ndarray, batch_size: int, seeds: Sequence[int], mesh: Optional[Mesh] = None):
        self.images, self.batch_size, self.seeds, self.mesh = np.asarray(images), batch_size, tuple(seeds), mesh
        self.data = None if mesh is not None else jax.device_put(self.images)

    def indices(self, i: int) -> np.ndarray:
        """(K, B) indices of the images of step i (0-based) of each seed."""
        return np.stack([batch_indices(len(self.images), self.batch_size, seed, i) for seed in self.seeds])

    def __call__(self, i: int):
        idx = self.indices(i)
        if self.mesh is None:
            return DeviceRows(self.data, jnp.asarray(idx, jnp.int32))
        return sharded_batch(self.images, idx, self.mesh)


def sharded_batch(data: np.ndarray, idx: np.ndarray, mesh: Mesh) -> jax.Array:
    """Global (K, B, H, W) float32 batch ``data[idx]`` on ``mesh``, sharded along B. Each process
    builds only the rows its devices hold (``jax.make_array_from_callback``), so the batch of a
    step stays a pure function of (seed, step) whatever the process layout."""
    K, B = idx.shape
    shape = (K, B) + tuple(data.shape[1:])

    def rows(index):
        part = to_float(data[idx[index[0], index[1]]])
        return part[(slice(None), slice(None)) + tuple(index[2:])]

    return jax.make_array_from_callback(shape, batch_sharding(mesh), rows)
