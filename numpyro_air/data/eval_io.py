"""Evaluation ``.npz`` files: the layout evaluation reads, a writer and a validating reader.

Layout (``numpy.savez`` / ``savez_compressed``; no pickled objects; other keys are ignored):

=========  ===============  ====================================================================
key        shape            content
=========  ===============  ====================================================================
images     (N, H, W)        uint8 in 0..255, or float (16/32/64-bit) in [0, 1]; no NaN/inf;
           or (N, H, W, C)  C = 1 (grayscale, read as (N, H, W)) or 3 (RGB), channels last
counts     (N,)             integer dtype, number of objects per image, >= 0
boxes      (N, K, 4)        optional; float, finite; ``(x0, y0, width, height)`` in pixels
                            (x = column, y = row; width, height >= 0); slot j is an object
                            iff j < counts[n]; absent slots are conventionally zeros
labels     (N, K)           optional; integer; digit class 0..9 for j < counts[n], -1 otherwise
=========  ===============  ====================================================================

When ``boxes`` and/or ``labels`` are present they share the same K, and K >= max(counts); they
need ``counts``. A 2-D ``images`` array is refused: it could be one (H, W) image or N flattened
images, so the file must say which ((1, H, W) or (N, H, W)).
:func:`load_eval_npz` (count evaluation: ``counts`` required) returns images as float32 in
[0, 1], counts as int32, boxes as float32 and labels as int32 (``None`` when absent), raising
:class:`DataError` naming the file and the problem for a missing file or key, an unreadable file,
or a wrong shape, dtype or value. :func:`numpyro_air.data.load_images` reads the same layout
with ``counts`` optional, and directories of PNG/JPEG files.
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
        images: (N, H, W) or (N, H, W, 3) float32 in [0, 1].
        counts: (N,) int32.
        boxes: (N, K, 4) float32 ``(x0, y0, width, height)``, or None.
        labels: (N, K) int32 (-1 for absent slots), or None.
    """

    images: np.ndarray
    counts: np.ndarray
    boxes: np.ndarray | None
    labels: np.ndarray | None


def _check_images(images: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, 3) uint8 or float32 in [0, 1] (see :func:`validate_eval_arrays`)."""
    expected = "(N, H, W) or (N, H, W, C) with C = 1 or 3, channels last"
    if images.ndim == 2:
        raise DataError(
            f"{where}: 'images' must have shape {expected}, got 2 dimensions {images.shape}: one (H, W) image "
            f"or N flattened images? Store one image as images[None] (1, H, W), flattened ones reshaped to (N, H, W)"
        )
    if images.ndim not in (3, 4):
        raise DataError(f"{where}: 'images' must have shape {expected}, got {images.ndim} dimensions {images.shape}")
    if images.ndim == 4 and images.shape[-1] not in (1, 3):
        hint = "; it looks channels-first: use np.moveaxis(images, 1, -1)" if images.shape[1] in (1, 3) else ""
        raise DataError(
            f"{where}: 'images' has C={images.shape[-1]} channels (shape {images.shape}); expected C = 1 (grayscale) "
            f"or 3 (RGB), channels last{hint}"
        )
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if 0 in images.shape[1:3]:
        raise DataError(f"{where}: 'images' has an empty height or width, shape {images.shape}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{where}: 'images' must be uint8 or float in [0, 1], got dtype {images.dtype}")
    finite = np.isfinite(images)
    if not finite.all():
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise DataError(f"{where}: float 'images' contain NaN or inf (first at index {first})")
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise DataError(f"{where}: float 'images' must lie in [0, 1], got {images.min()}..{images.max()}")
    return images.astype(np.float32, copy=False)


def validate_eval_arrays(
    images: Any, counts: Any, boxes: Any = None, labels: Any = None, *, where: str = "eval data"
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Check the evaluation layout; return (images, counts int32, boxes f32, labels i32).

    ``images`` (N, H, W) or (N, H, W, C) with C in {1, 3} keeps uint8 or becomes float32;
    (N, H, W, 1) becomes (N, H, W). ``counts`` may be None (then ``boxes`` and ``labels`` must be
    None too). Raises DataError (naming ``where`` and the problem) otherwise.
    """
    images = _check_images(np.asarray(images), where)
    if counts is None:
        for name, value in (("boxes", boxes), ("labels", labels)):
            if value is not None:
                raise DataError(f"{where}: '{name}' needs 'counts' (slot j of image n is an object iff j < counts[n])")
        return images, None, None, None
    counts = np.asarray(counts)
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

    ``counts`` may be None (images only). Returns the path written.
    """
    path = Path(os.fspath(path)).expanduser()
    images, counts, boxes, labels = validate_eval_arrays(
        dataset.images,
        dataset.counts,
        getattr(dataset, "boxes", None),
        getattr(dataset, "labels", None),
        where=str(path),
    )
    arrays = {"images": images}
    if counts is not None:
        arrays["counts"] = counts
    if boxes is not None:
        arrays["boxes"] = boxes
    if labels is not None:
        arrays["labels"] = labels
    atomic_savez(path, arrays)
    return path


def load_eval_npz(path: str | os.PathLike[str]) -> EvalSet:
    """Read and validate an evaluation ``.npz`` (layout in the module docstring).

    Returns:
        EvalSet(images (N, H, W) or (N, H, W, 3) float32 in [0, 1], counts (N,) int32, boxes (N, K, 4) float32
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
