"""Deterministic, resumable mini-batches.

Global step ``i`` with ``S = N // B`` steps per epoch belongs to epoch ``e = i // S`` and takes
positions ``(i % S) * B ... + B - 1`` of that epoch's permutation. The permutation of epoch ``e``
is a pure function of ``(seed, e)`` (numpy ``SeedSequence(seed words, spawn_key=(e,))``), so
the batch of step ``i`` is a pure function of ``(seed, i)``: a run resumed at step ``i`` sees the
same batches as an uninterrupted one. The ragged tail (``N % B`` images) is skipped in each
epoch (different images each epoch, since the permutation changes).

``seed_or_key`` is a non-negative int, a ``numpy.random.SeedSequence``, a JAX PRNG key (typed
``jax.random.key`` or raw ``jax.random.PRNGKey`` uint32 data) or a numpy unsigned-int array.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "batch_at_step",
    "batch_indices",
    "epoch_permutation",
    "iterate_batches",
    "steps_per_epoch",
    "to_float",
]

_DOMAIN = 0x62617463  # "batc": keeps batch streams apart from generator streams


def to_float(images: Any) -> np.ndarray:
    """(..., H, W) images as float32 in [0, 1]: uint8 is divided by 255, floats are cast."""
    images = np.asarray(getattr(images, "images", images))
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(images.dtype, np.floating):
        return images.astype(np.float32, copy=False)
    raise TypeError(f"expected uint8 or floating images, got dtype {images.dtype}")


def _seed_words(seed_or_key: Any) -> list[int]:
    """Entropy words for a seed or key (tagged so ints and keys never collide)."""
    if isinstance(seed_or_key, np.random.SeedSequence):
        ent = seed_or_key.entropy
        ent = list(ent) if isinstance(ent, (list, tuple, np.ndarray)) else [int(ent)]
        return [_DOMAIN, 2, *map(int, ent), *map(int, seed_or_key.spawn_key)]
    if isinstance(seed_or_key, (bool, np.bool_)):
        raise TypeError("seed_or_key must be an int or a PRNG key, got a bool")
    if isinstance(seed_or_key, (int, np.integer)):
        if seed_or_key < 0:
            raise ValueError(f"seed must be >= 0, got {seed_or_key}")
        return [_DOMAIN, 0, int(seed_or_key)]
    data = seed_or_key
    if type(seed_or_key).__module__.split(".")[0] in ("jax", "jaxlib"):
        import jax

        if jax.dtypes.issubdtype(seed_or_key.dtype, jax.dtypes.prng_key):
            data = jax.random.key_data(seed_or_key)
    arr = np.asarray(data)
    if arr.dtype.kind not in "ui" or arr.size == 0 or (arr.dtype.kind == "i" and arr.min() < 0):
        raise TypeError(
            f"seed_or_key must be a non-negative int or a JAX/numpy unsigned-int key, got "
            f"{type(seed_or_key).__name__} with dtype {arr.dtype}"
        )
    return [_DOMAIN, 1, *map(int, arr.ravel())]


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """``num_images // batch_size`` (full batches per epoch); errors if that is zero."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if num_images < batch_size:
        raise ValueError(f"batch_size={batch_size} exceeds the number of images ({num_images})")
    return int(num_images) // int(batch_size)


def epoch_permutation(num_images: int, seed_or_key: Any, epoch: int) -> np.ndarray:
    """(N,) int64 permutation of epoch ``epoch``; a pure function of (seed, epoch)."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return _permutation(int(num_images), _seed_words(seed_or_key), int(epoch)).copy()


def _permutation(n: int, words: list[int], epoch: int) -> np.ndarray:
    return _cached_permutation(n, tuple(words), epoch)


@functools.lru_cache(maxsize=64)
def _cached_permutation(n: int, words: tuple, epoch: int) -> np.ndarray:
    """Read-only permutation of one epoch, cached: consecutive steps (and several seeds) reuse it
    instead of shuffling N indices per step."""
    ss = np.random.SeedSequence(list(words), spawn_key=(epoch,))
    perm = np.random.Generator(np.random.PCG64(ss)).permutation(n)
    perm.flags.writeable = False
    return perm


def batch_indices(num_images: int, batch_size: int, seed_or_key: Any, step: int) -> np.ndarray:
    """(B,) int64 indices of the images in the batch of global step ``step``."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    spe = steps_per_epoch(num_images, batch_size)
    epoch, pos = divmod(int(step), spe)
    perm = epoch_permutation(num_images, seed_or_key, epoch)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def batch_at_step(images: Any, batch_size: int, seed_or_key: Any, step: int) -> np.ndarray:
    """(B, H, W) float32 batch in [0, 1] of global step ``step``; pure in (seed, step).

    ``images`` is a (N, H, W) uint8/float array or a ``MultiMNIST``.
    """
    images = np.asarray(getattr(images, "images", images))
    return to_float(images[batch_indices(len(images), batch_size, seed_or_key, step)])


def iterate_batches(
    images: Any, batch_size: int, seed_or_key: Any, start_step: int = 0, num_steps: int | None = None
) -> Iterator[np.ndarray]:
    """Yield (B, H, W) float32 batches in [0, 1] for steps ``start_step, start_step + 1, ...``.

    Infinite unless ``num_steps`` is given. The batch yielded for step ``i`` equals
    ``batch_at_step(images, batch_size, seed_or_key, i)``; each epoch is reshuffled.
    """
    images = np.asarray(getattr(images, "images", images))
    n = len(images)
    spe = steps_per_epoch(n, batch_size)
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise ValueError(f"start_step must be a non-negative int, got {start_step!r}")
    if num_steps is not None and num_steps < 0:
        raise ValueError(f"num_steps must be >= 0 or None, got {num_steps}")
    words = _seed_words(seed_or_key)  # validate eagerly, before the first next()
    return _batches(images, batch_size, spe, words, int(start_step), num_steps)


def _batches(
    images: np.ndarray, batch_size: int, spe: int, words: list[int], step: int, num_steps: int | None
) -> Iterator[np.ndarray]:
    n = len(images)
    end = None if num_steps is None else step + int(num_steps)
    epoch, perm = -1, np.empty(0, dtype=np.int64)
    while end is None or step < end:
        e, pos = divmod(step, spe)
        if e != epoch:
            epoch, perm = e, _permutation(n, words, e)
        yield to_float(images[perm[pos * batch_size : (pos + 1) * batch_size]])
        step += 1
