"""Scattered MNIST (the SPAIR protocol: many small digits) with a checksummed on-disk cache.

Recipe (numpy ``Generator``, everything a pure function of the seed):

* each canvas is a grayscale ``canvas_size`` x ``canvas_size`` image (default 48);
* the number of digits is uniform over {min_digits, ..., max_digits} (default 1..5);
* each digit is drawn uniformly (with replacement) from the source digits and resized with
  Pillow's BICUBIC filter to ``digit_size`` x ``digit_size`` (default 14; the multi-MNIST
  resize, :func:`numpyro_air.data.multi_mnist._resize`);
* its top-left corner (row, column) is uniform in [0, canvas_size - digit_size] each, so the
  whole digit lies inside the canvas;
* SPAIR's overlap bound (``max_overlap``, default 98 = half of a 14x14 square, as SPAIR's
  scattered-MNIST scenes; ``None``: no bound): a digit whose square shares more than
  ``max_overlap`` pixels with the squares of the digits before it, summed over them, is moved (a
  new position, up to 100 tries) and, failing that, the image is redrawn; scale it with
  ``digit_size`` (SPAIR uses ``digit_size ** 2 // 2``);
* pixels combine as in multi-MNIST: the digits are summed (exactly, in uint16); if any pixel
  exceeds 255 all of the image's digits and positions are redrawn, keeping its count; the result
  is stored as uint8. Digits may overlap, but never where their sum would saturate.

Ground truth per image, in the order the digits were drawn (slot j < count is present), exactly
as multi-MNIST defines it:

* ``counts`` (N,) int32;
* ``labels`` (N, max_digits) int32, the digit class, -1 for absent slots;
* ``boxes`` (N, max_digits, 4) float32 ``(x0, y0, width, height)`` in pixels, x = column,
  y = row: the tight box of the resized digit's non-zero pixels (columns x0 .. x0 + width - 1,
  rows y0 .. y0 + height - 1). Absent slots are all zeros.

The splits are :class:`~numpyro_air.data.multi_mnist.MultiMNIST` objects: training canvases
from MNIST training digits, held-out canvases from MNIST test digits, with different streams
derived from one seed. :func:`load_scattered_mnist` caches both splits in one checksummed
``.npz`` next to the multi-MNIST caches (:func:`~numpyro_air.data.multi_mnist.default_cache_dir`),
keyed by every :class:`ScatteredMNISTConfig` field, a format version and the MNIST fingerprint;
an unreadable, mismatched or corrupt file is regenerated with a logged warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

import numpy as np

from ._io import cached_splits
from .errors import DataError
from .mnist import load_mnist
from .multi_mnist import (
    _MAX_ATTEMPTS,
    _PROGRESS_EVERY,
    MultiMNIST,
    _check_int,
    _child,
    _describe,
    _read_cache,
    _resize,
    _seed_sequence,
    _source_id,
    _write_cache,
    default_cache_dir,
    generate_splits,
    without_later_fields,
)

__all__ = [
    "SCATTERED_CACHE_FORMAT_VERSION",
    "ScatteredMNISTConfig",
    "generate_scattered_mnist",
    "load_scattered_mnist",
    "scattered_cache_path",
]

logger = logging.getLogger(__name__)

#: Bump when the generator or the cache layout changes (it is part of the cache key).
SCATTERED_CACHE_FORMAT_VERSION = 1

_CANVAS_SIZE = 48
_DIGIT_SIZE = 14
_MIN_DIGITS = 1
_MAX_DIGITS = 5
_MAX_OVERLAP = 98  # SPAIR's bound for 14x14 digits: half a square
_MOVES = 100  # positions tried for one digit under max_overlap before the image is redrawn


def _check_params(canvas_size: int, digit_size: int, min_digits: int, max_digits: int, max_overlap: int | None = None) -> None:
    """Validate generator parameters, raising ValueError naming the offending field."""
    if max_overlap is not None:
        _check_int("max_overlap", max_overlap, 0)
    _check_int("canvas_size", canvas_size, 1)
    _check_int("digit_size", digit_size, 1)
    _check_int("min_digits", min_digits, 0)
    _check_int("max_digits", max_digits, 0)
    if digit_size > canvas_size:
        raise ValueError(f"digit_size={digit_size} is larger than canvas_size={canvas_size}")
    if min_digits > max_digits:
        raise ValueError(f"min_digits={min_digits} is larger than max_digits={max_digits}")


@dataclass(frozen=True)
class ScatteredMNISTConfig:
    """Every parameter of the scattered-MNIST generator (all of them key the cache).

    Attributes:
        canvas_size: side of the square grayscale canvas in pixels.
        digit_size: side every digit is resized to, in pixels (<= canvas_size).
        min_digits, max_digits: digits per image are uniform over {min_digits, ..., max_digits}.
        num_train: number of training canvases (from MNIST train digits).
        num_test: number of held-out canvases (from MNIST test digits).
        seed: non-negative integer seed; train and test use different derived streams.
        max_overlap: the most pixels a digit's square may share with the squares drawn before
            it (SPAIR's protocol: ``digit_size ** 2 // 2``), or None: digits overlap freely, as
            long as no summed pixel exceeds 255 (the scenes of numpyro-air before 2026-12-05,
            evening).
        LATER_FIELDS: fields added later, with the value that draws the scenes of before
            (:class:`~.multi_mnist.MultiMNISTConfig`).
    """

    LATER_FIELDS: ClassVar[Mapping[str, Any]] = MappingProxyType({"max_overlap": None})

    canvas_size: int = _CANVAS_SIZE
    digit_size: int = _DIGIT_SIZE
    min_digits: int = _MIN_DIGITS
    max_digits: int = _MAX_DIGITS
    num_train: int = 60000
    num_test: int = 10000
    seed: int = 0
    max_overlap: int | None = _MAX_OVERLAP

    def __post_init__(self) -> None:
        _check_params(self.canvas_size, self.digit_size, self.min_digits, self.max_digits, self.max_overlap)
        _check_int("num_train", self.num_train, 0)
        _check_int("num_test", self.num_test, 0)
        _check_int("seed", self.seed, 0)

    def to_dict(self) -> dict[str, int]:
        """Plain JSON-able dict of the fields, without the ``LATER_FIELDS`` at their value of
        before (unbounded scenes keep the cache keys they had before the bound existed)."""
        d = without_later_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, self.LATER_FIELDS)
        return {k: int(v) for k, v in d.items()}

    def cache_key(self, mnist_id: str) -> str:
        """SHA-256 of (generator name, format version, every field, MNIST source fingerprint)."""
        payload = {
            "generator": "scattered-mnist",
            "format_version": SCATTERED_CACHE_FORMAT_VERSION,
            "config": self.to_dict(),
            "mnist": mnist_id,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _draw(rng: np.random.Generator, shape: tuple[int, ...], n_digits: int, high: int) -> tuple[np.ndarray, ...]:
    """Digit indices, row and column offsets (each uniform in [0, high)), each of ``shape``."""
    idx = rng.integers(0, n_digits, size=shape)
    rows = rng.integers(0, high, size=shape)
    cols = rng.integers(0, high, size=shape)
    return idx, rows, cols


def _shared_pixels(rows: np.ndarray, cols: np.ndarray, j: int, size: int) -> int:
    """Pixels the ``size`` x ``size`` square at (rows[j], cols[j]) shares with the squares before
    it, summed over them."""
    dr = np.maximum(size - np.abs(rows[:j] - rows[j]), 0)
    dc = np.maximum(size - np.abs(cols[:j] - cols[j]), 0)
    return int(np.sum(dr * dc))


def _spread(rows: np.ndarray, cols: np.ndarray, size: int, max_overlap: int, rng: np.random.Generator, high: int) -> bool:
    """Move digits (in place, in drawing order) until each square shares at most ``max_overlap``
    pixels with the squares before it; False when one found no such place in ``_MOVES`` tries."""
    for j in range(1, len(rows)):
        moves = 0
        while _shared_pixels(rows, cols, j, size) > max_overlap:
            if moves == _MOVES:
                return False
            rows[j], cols[j] = rng.integers(0, high, size=2)
            moves += 1
    return True


class _Placer:
    """Sums resized digits onto a canvas, memoising each source digit's resize and tight box.

    The result equals :func:`numpyro_air.data.multi_mnist._compose` with every size equal to
    ``size`` (same pixels, boxes and overflow verdict); it only stops at the first digit that
    pushes a pixel above 255 (sums only grow, so the final canvas would overflow too).
    """

    def __init__(self, digits: np.ndarray, size: int, canvas: int) -> None:
        self.digits, self.size = digits, size
        self.memo: dict[int, tuple[np.ndarray, tuple[int, int, int, int] | None]] = {}
        self.acc = np.zeros((canvas, canvas), dtype=np.uint16)

    def resized(self, i: int) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        hit = self.memo.get(i)
        if hit is None:
            hit = self.memo[i] = _resize(self.digits[i], self.size)
        return hit

    def place(self, out: np.ndarray, boxes: np.ndarray, idx: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> bool:
        """Fill ``out`` (H, W) uint8 and ``boxes`` (c, 4); False (``out`` untouched) on overflow."""
        acc, w = self.acc, self.size
        acc.fill(0)
        for j in range(len(idx)):
            r, q = int(rows[j]), int(cols[j])
            patch, bbox = self.resized(int(idx[j]))
            region = acc[r : r + w, q : q + w]
            region += patch
            if region.max() > 255:
                return False
            if bbox is None:  # blank digit: empty box at its corner
                boxes[j] = (q, r, 0, 0)
            else:
                left, top, right, bottom = bbox
                boxes[j] = (q + left, r + top, right - left, bottom - top)
        out[...] = acc
        return True


def generate_scattered_mnist(
    digits: np.ndarray,
    digit_labels: np.ndarray,
    num_images: int,
    *,
    canvas_size: int = _CANVAS_SIZE,
    digit_size: int = _DIGIT_SIZE,
    min_digits: int = _MIN_DIGITS,
    max_digits: int = _MAX_DIGITS,
    max_overlap: int | None = _MAX_OVERLAP,
    seed: int | np.random.SeedSequence = 0,
    progress: bool = False,
    desc: str = "scattered MNIST",
) -> MultiMNIST:
    """Generate ``num_images`` scattered-MNIST canvases (see the module docstring).

    Args:
        digits: (M, s, s) uint8 source digits (s = 28 for MNIST).
        digit_labels: (M,) integer classes of ``digits``.
        num_images: N, the number of canvases.
        canvas_size: canvas side in pixels.
        digit_size: side every digit is resized to.
        min_digits, max_digits: counts are uniform over {min_digits, ..., max_digits}.
        max_overlap: the most pixels a digit's square may share with the squares drawn before it,
            or None (see the module docstring; no randomness is used unless it binds).
        seed: non-negative int or a ``numpy.random.SeedSequence``; the output is a pure
            function of it.
        progress: show a tqdm progress bar.
        desc: progress-bar label.

    Returns:
        MultiMNIST with images (N, canvas, canvas) uint8, counts (N,), labels (N, max_digits),
        boxes (N, max_digits, 4).

    Raises:
        ValueError: invalid parameter (the message names it).
        DataError: invalid digits, or an image could not be drawn without saturating pixels (or
            within ``max_overlap``) after many attempts (canvas too small for max_digits).
    """
    digits = np.ascontiguousarray(digits)
    digit_labels = np.asarray(digit_labels)
    if digits.ndim != 3 or digits.shape[1] != digits.shape[2] or digits.dtype != np.uint8:
        raise DataError(f"digits must be a (M, s, s) uint8 array, got {_describe(digits)}")
    if digit_labels.shape != digits.shape[:1] or not np.issubdtype(digit_labels.dtype, np.integer):
        raise DataError(f"digit_labels must be a ({digits.shape[0]},) integer array, got {_describe(digit_labels)}")
    _check_params(canvas_size, digit_size, min_digits, max_digits, max_overlap)
    _check_int("num_images", num_images, 0)
    n, k, h, w = int(num_images), int(max_digits), int(canvas_size), int(digit_size)
    if n and k and digits.shape[0] == 0:
        raise DataError("digits is empty; expected at least one source digit")

    ss = _seed_sequence(seed)
    rng = np.random.Generator(np.random.PCG64(_child(ss, 0)))
    retry_rng = np.random.Generator(np.random.PCG64(_child(ss, 1)))
    counts = rng.integers(min_digits, k + 1, size=n).astype(np.int32)
    m = max(int(digits.shape[0]), 1)
    high = h - w + 1
    idx, rows, cols = _draw(rng, (n, k), m, high)
    placer = _Placer(digits, w, h)

    images = np.zeros((n, h, h), dtype=np.uint8)
    labels = np.full((n, k), -1, dtype=np.int32)
    boxes = np.zeros((n, k, 4), dtype=np.float32)
    label_src = digit_labels.astype(np.int32)

    from tqdm import tqdm

    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for i in range(n):
            c = int(counts[i])
            if c:
                d_idx, d_r, d_c = idx[i, :c], rows[i, :c].copy(), cols[i, :c].copy()
                attempts = 1
                while not (
                    (max_overlap is None or _spread(d_r, d_c, w, max_overlap, retry_rng, high))
                    and placer.place(images[i], boxes[i], d_idx, d_r, d_c)
                ):
                    if attempts >= _MAX_ATTEMPTS:
                        bound = "" if max_overlap is None else f" or squares sharing more than {max_overlap} pixels"
                        raise DataError(
                            f"could not place {c} digits of {w}x{w} on a {h}x{h} canvas without a "
                            f"pixel exceeding 255{bound} after {attempts} draws; use a larger canvas_size, "
                            f"a smaller digit_size{'' if max_overlap is None else ', a larger max_overlap'} "
                            "or fewer max_digits"
                        )
                    attempts += 1
                    d_idx, d_r, d_c = _draw(retry_rng, (c,), m, high)
                labels[i, :c] = label_src[d_idx]
            if (i + 1) % _PROGRESS_EVERY == 0 or i + 1 == n:
                bar.update(i + 1 - bar.n)
    return MultiMNIST(images, counts, labels, boxes)


def scattered_cache_path(config: ScatteredMNISTConfig, mnist_id: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the cache for ``config`` built from MNIST with fingerprint ``mnist_id`` lives."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"scattered_mnist_v{SCATTERED_CACHE_FORMAT_VERSION}_{config.cache_key(mnist_id)[:24]}.npz"


def load_scattered_mnist(
    config: ScatteredMNISTConfig = ScatteredMNISTConfig(),
    *,
    source: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[MultiMNIST, MultiMNIST]:
    """The (train, test) scattered-MNIST splits for ``config``, generated once and cached.

    Args:
        config: generator parameters (all of them key the cache).
        source: MNIST source passed to :func:`load_mnist` (``None``: embedded canonical MNIST).
        cache_dir: directory of the ``.npz`` cache (default :func:`default_cache_dir`).
        progress: show progress bars while generating.

    Returns:
        ``(train, test)``: ``config.num_train`` canvases from MNIST train digits and
        ``config.num_test`` from MNIST test digits.
    """
    if not isinstance(config, ScatteredMNISTConfig):
        raise TypeError(f"config must be a ScatteredMNISTConfig, got {type(config).__name__}")
    arrays = None if source is None else load_mnist(source)
    mnist_id = _source_id(source, arrays)
    path = scattered_cache_path(config, mnist_id, cache_dir)
    version = SCATTERED_CACHE_FORMAT_VERSION

    def generate() -> dict:
        digits = arrays if arrays is not None else load_mnist(None)
        return generate_splits(generate_scattered_mnist, config, digits, progress=progress, desc="scattered MNIST")

    return cached_splits(
        path,
        lambda: _read_cache(path, config, mnist_id, version, "a scattered-MNIST cache file"),  # type: ignore[arg-type]
        generate,
        lambda splits: _write_cache(path, splits, config, mnist_id, version),  # type: ignore[arg-type]
        "scattered MNIST",
        logger,
    )
