"""Evaluation ``.npz`` files: the layout evaluation reads, a writer and a validating reader.

Layout (``numpy.savez`` / ``savez_compressed``; no pickled objects; other keys are ignored):

=========  ==============  =====================================================================
key        shape           content
=========  ==============  =====================================================================
images     (N, H, W)       uint8 in 0..255, or float (16/32/64-bit) in [0, 1]; no NaN/inf
counts     (N,)            integer dtype, number of objects per image, >= 0
boxes      (N, K, 4)       optional; float, finite; ``(x0, y0, width, height)`` in pixels
                           (x = column, y = row; width, height >= 0); slot j is an object
                           iff j < counts[n]; absent slots are conventionally zeros
labels     (N, K)          optional; integer; digit class 0..9 for j < counts[n], -1 otherwise
=========  ==============  =====================================================================

When ``boxes`` and/or ``labels`` are present they share the same K, and K >= max(counts).
:func:`load_eval_npz` returns images as float32 in [0, 1], counts as int32, boxes as float32
and labels as int32 (``None`` when absent), raising :class:`DataError` naming the file and the
problem for a missing file or key, an unreadable file, or a wrong shape, dtype or value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._io import atomic_savez, read_npz
from .errors import DataError, DataNotFoundError

__all__ = ["EvalSet", "load_eval_npz", "save_eval_npz", "validate_eval_arrays"]


class EvalSet(NamedTuple):
    """Validated evaluation data.

    Attributes:
        images: (N, H, W) float32 in [0, 1].
        counts: (N,) int32.
        boxes: (N, K, 4) float32 ``(x0, y0, width, height)``, or None.
        labels: (N, K) int32 (-1 for absent slots), or None.
    """

    images: np.ndarray
    counts: np.ndarray
    boxes: np.ndarray | None
    labels: np.ndarray | None


def validate_eval_arrays(
    images: Any, counts: Any, boxes: Any = None, labels: Any = None, *, where: str = "eval data"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Check the evaluation layout; return (images as stored, counts int32, boxes f32, labels i32).

    ``images`` keeps uint8 or becomes float32; raises DataError (naming ``where``) otherwise.
    """
    images, counts = np.asarray(images), np.asarray(counts)
    if images.ndim != 3:
        raise DataError(f"{where}: 'images' must have shape (N, H, W), got {images.shape}")
    if images.dtype == np.uint8:
        pass
    elif np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise DataError(f"{where}: float 'images' contain NaN or inf")
        if images.size and (images.min() < 0.0 or images.max() > 1.0):
            raise DataError(f"{where}: float 'images' must lie in [0, 1], got {images.min()}..{images.max()}")
        images = images.astype(np.float32, copy=False)
    else:
        raise DataError(f"{where}: 'images' must be uint8 or float in [0, 1], got dtype {images.dtype}")
    n = images.shape[0]
    if counts.ndim != 1:
        raise DataError(f"{where}: 'counts' must have shape (N,), got {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        raise DataError(f"{where}: 'counts' must have an integer dtype, got {counts.dtype}")
    if counts.shape[0] != n:
        raise DataError(f"{where}: 'counts' has {counts.shape[0]} entries but there are {n} images")
    if n and counts.min() < 0:
        raise DataError(f"{where}: 'counts' must be >= 0, got minimum {counts.min()}")
    if n and counts.max() > np.iinfo(np.int32).max:
        raise DataError(f"{where}: 'counts' too large ({counts.max()})")
    counts = counts.astype(np.int32)
    max_count = int(counts.max()) if n else 0

    k = None
    if boxes is not None:
        boxes = np.asarray(boxes)
        if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
            raise DataError(f"{where}: 'boxes' must have shape ({n}, K, 4), got {boxes.shape}")
        if not np.issubdtype(boxes.dtype, np.floating) and not np.issubdtype(boxes.dtype, np.integer):
            raise DataError(f"{where}: 'boxes' must be numeric, got dtype {boxes.dtype}")
        boxes = boxes.astype(np.float32)
        if not np.all(np.isfinite(boxes)):
            raise DataError(f"{where}: 'boxes' contain NaN or inf")
        if boxes.size and boxes[..., 2:].min() < 0:
            raise DataError(f"{where}: box widths and heights must be >= 0")
        k = boxes.shape[1]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape[0] != n:
            raise DataError(f"{where}: 'labels' must have shape ({n}, K), got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{where}: 'labels' must have an integer dtype, got {labels.dtype}")
        if k is not None and labels.shape[1] != k:
            raise DataError(f"{where}: 'labels' has K={labels.shape[1]} slots but 'boxes' has K={k}")
        k = labels.shape[1]
        present = np.arange(k)[None, :] < counts[:, None]
        if labels.size and (np.any((labels < 0) & present) or np.any((labels > 9) & present)):
            raise DataError(f"{where}: 'labels' of present objects must lie in 0..9")
        if np.any((labels != -1) & ~present):
            raise DataError(f"{where}: 'labels' of absent slots (j >= counts) must be -1")
        labels = labels.astype(np.int32)
    if k is not None and max_count > k:
        raise DataError(f"{where}: counts reach {max_count} but boxes/labels have only K={k} slots")
    return images, counts, boxes, labels


def save_eval_npz(path: str | os.PathLike[str], dataset: Any) -> Path:
    """Write ``dataset`` (a MultiMNIST, EvalSet or anything with images/counts[/boxes/labels])
    to ``path`` (exactly; no suffix is added) in the evaluation layout, atomically.

    Returns the path written.
    """
    path = Path(os.fspath(path)).expanduser()
    images, counts, boxes, labels = validate_eval_arrays(
        dataset.images,
        dataset.counts,
        getattr(dataset, "boxes", None),
        getattr(dataset, "labels", None),
        where=str(path),
    )
    arrays = {"images": images, "counts": counts}
    if boxes is not None:
        arrays["boxes"] = boxes
    if labels is not None:
        arrays["labels"] = labels
    atomic_savez(path, arrays)
    return path


def load_eval_npz(path: str | os.PathLike[str]) -> EvalSet:
    """Read and validate an evaluation ``.npz`` (layout in the module docstring).

    Returns:
        EvalSet(images (N, H, W) float32 in [0, 1], counts (N,) int32, boxes (N, K, 4) float32
        or None, labels (N, K) int32 or None).
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise DataNotFoundError(
            f"evaluation file {path} does not exist; expected an .npz with 'images' (N, H, W) and 'counts' (N,)"
        )
    arrays = read_npz(
        path,
        ("images", "counts"),
        ("boxes", "labels"),
        expected="an evaluation .npz with 'images' (N, H, W) and 'counts' (N,) (optional 'boxes' (N, K, 4), 'labels' (N, K))",
    )
    images, counts, boxes, labels = validate_eval_arrays(
        arrays["images"], arrays["counts"], arrays.get("boxes"), arrays.get("labels"), where=str(path)
    )
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(255.0)
    return EvalSet(images, counts, boxes, labels)
