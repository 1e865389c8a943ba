"""Multi-MNIST generation (Pyro's recipe) with a checksummed on-disk cache.

Recipe (pyro.contrib.examples.multi_mnist, re-implemented with an explicit numpy Generator):

* each canvas is ``canvas_size`` x ``canvas_size`` (default 50);
* the number of digits is uniform over {0, ..., max_digits} (default 2);
* each digit is drawn uniformly (with replacement) from the source digits, its scale from
  N(scale_mean, scale_sd) (default N(1.3, 0.1)), and it is resized with Pillow's BICUBIC
  filter to an ``int(side / scale)`` square (side = 28 for MNIST), clamped to [1, canvas_size]
  (a non-positive scale gives canvas_size);
* its top-left corner (row, column) is uniform in [0, canvas_size - w - 1] each, like
  ``numpy.random.randint(0, canvas_size - w)`` (0 when w == canvas_size);
* the digits are summed (exactly, in uint16); if any pixel exceeds 255 all of the image's
  digits are redrawn, keeping its count; the result is stored as uint8.

Crowded scenes (``crowding = m``, off by default, not in Pyro's recipe): each scene's digits are
drawn as for a scene of m digits (m >= max_digits), and a scene of c >= 2 digits keeps the two
whose centres are closest, then the first c - 2 others in draw order. Its closest pair is then
distributed exactly as an m-digit scene's closest pair: the spacing of the most crowded scenes,
with fewer digits (e.g. 0-2-digit training scenes as crowded as the 3-digit test scenes).

Ground truth per image, in the order the digits were drawn (slot j < count is present):

* ``counts`` (N,) int32;
* ``labels`` (N, max_digits) int32, the digit class, -1 for absent slots;
* ``boxes`` (N, max_digits, 4) float32 ``(x0, y0, width, height)`` in pixels, x = column,
  y = row: the tight box of the resized digit's non-zero pixels, covering pixel columns
  x0 .. x0 + width - 1 and rows y0 .. y0 + height - 1 (continuous extent [x0, x0 + width)).
  Absent slots are all zeros. Every non-zero pixel of an image lies inside one of its boxes.

Determinism: everything is a pure function of the seed (numpy ``SeedSequence``; no global RNG
state). :func:`load_multi_mnist` derives different streams for train (from MNIST train digits)
and test (from MNIST test digits).

Cache: :func:`load_multi_mnist` stores both splits in one ``.npz`` under ``cache_dir``
(default ``$NUMPYRO_AIR_DATA``, else ``$XDG_CACHE_HOME/numpyro_air``, else
``~/.cache/numpyro_air``). The file name is keyed by a SHA-256 of the config, the format
version and the MNIST source fingerprint; the file also stores that metadata and a SHA-256 of
its arrays. A file that is unreadable, mismatched or fails its checksum is regenerated with a
logged warning; writes go to a temporary file followed by ``os.replace``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

import numpy as np
from PIL import Image

from ._io import cached_splits, default_cache_dir, read_checked_npz, write_checked_npz
from .errors import DataError
from .mnist import CANONICAL_FINGERPRINT, load_mnist, mnist_fingerprint

__all__ = [
    "CACHE_FORMAT_VERSION",
    "MultiMNIST",
    "MultiMNISTConfig",
    "cache_path",
    "default_cache_dir",
    "generate_multi_mnist",
    "load_multi_mnist",
]

logger = logging.getLogger(__name__)

#: Bump when the generator or the cache layout changes (it is part of the cache key).
CACHE_FORMAT_VERSION = 1
_MAX_ATTEMPTS = 10_000  # redraws of one image before giving up
_PROGRESS_EVERY = 2048
_MNIST_SIDE = 28
_SPLITS = ("train", "test")
_FIELDS = ("images", "counts", "labels", "boxes")


# ----------------------------------------------------------------------------------------------
# config and dataset containers
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_params(max_digits: int, canvas_size: int, scale_mean: float, scale_sd: float, digit_side: int) -> None:
    """Validate generator parameters, raising ValueError naming the offending field."""
    _check_int("max_digits", max_digits, 0)
    _check_int("canvas_size", canvas_size, 1)
    for name, v in (("scale_mean", scale_mean), ("scale_sd", scale_sd)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a real number, got {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if scale_mean <= 0:
        raise ValueError(f"scale_mean must be > 0, got {scale_mean}")
    if scale_sd < 0:
        raise ValueError(f"scale_sd must be >= 0, got {scale_sd}")
    typical = int(digit_side / scale_mean)
    if canvas_size < typical:
        raise ValueError(
            f"canvas_size={canvas_size} is smaller than a typical digit (int({digit_side}/scale_mean) = {typical} px)"
        )


def without_later_fields(d: dict, later: Mapping[str, Any]) -> dict:
    """``d`` without the fields of ``later`` that hold their value of before (a config's
    ``to_dict``: scenes drawn as before keep the cache keys they had)."""
    return {k: v for k, v in d.items() if not (k in later and v == later[k])}


def _check_crowding(crowding: int, max_digits: int) -> None:
    _check_int("crowding", crowding, 0)
    if crowding and crowding < max(max_digits, 2):
        raise ValueError(f"crowding must be 0 (off) or >= max(max_digits, 2) = {max(max_digits, 2)}, got {crowding}")


@dataclass(frozen=True)
class MultiMNISTConfig:
    """Every parameter of the multi-MNIST generator (all of them key the cache).

    Attributes:
        max_digits: digits per image are uniform over {0, ..., max_digits}.
        canvas_size: side of the square canvas in pixels.
        num_train: number of training canvases (from MNIST train digits).
        num_test: number of test canvases (from MNIST test digits).
        scale_mean, scale_sd: digit scale ~ N(scale_mean, scale_sd); size int(28 / scale).
        seed: non-negative integer seed; train and test use different derived streams.
        crowding: 0 (Pyro's scenes) or m >= max_digits: digits placed as in the most crowded
            pair of an m-digit scene (module docstring).
        LATER_FIELDS: the fields added after caches and checkpoints had been written, each with
            the value that draws the scenes of before it existed: ``to_dict`` omits a field at
            that value (the caches keep their keys), and ``numpyro-air train`` fills it into the
            data descriptions of older checkpoints it resumes.
    """

    LATER_FIELDS: ClassVar[Mapping[str, Any]] = MappingProxyType({"crowding": 0})

    max_digits: int = 2
    canvas_size: int = 50
    num_train: int = 60000
    num_test: int = 10000
    scale_mean: float = 1.3
    scale_sd: float = 0.1
    seed: int = 0
    crowding: int = 0

    def __post_init__(self) -> None:
        _check_params(self.max_digits, self.canvas_size, self.scale_mean, self.scale_sd, _MNIST_SIDE)
        _check_int("num_train", self.num_train, 0)
        _check_int("num_test", self.num_test, 0)
        _check_int("seed", self.seed, 0)
        _check_crowding(self.crowding, self.max_digits)

    def to_dict(self) -> dict[str, int | float]:
        """Plain JSON-able dict of the fields (ints and floats), without the ``LATER_FIELDS`` at
        their value of before."""
        floats = {"scale_mean", "scale_sd"}
        d = {f.name: (float if f.name in floats else int)(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return without_later_fields(d, self.LATER_FIELDS)

    def cache_key(self, mnist_id: str) -> str:
        """SHA-256 of (format version, every field, MNIST source fingerprint)."""
        payload = {"format_version": CACHE_FORMAT_VERSION, "config": self.to_dict(), "mnist": mnist_id}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class MultiMNIST:
    """A generated multi-MNIST split.

    Attributes:
        images: (N, H, W) uint8 canvases.
        counts: (N,) int32 number of digits per canvas.
        labels: (N, K) int32 digit classes, -1 for absent slots (K = max_digits).
        boxes: (N, K, 4) float32 ``(x0, y0, width, height)`` pixel boxes, zeros when absent.
    """

    _channels = 1  # grayscale scenes (N, H, W); subclasses with RGB scenes set 3

    images: np.ndarray
    counts: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        im, c, lab, box = self.images, self.counts, self.labels, self.boxes
        name, rgb = type(self).__name__, self._channels == 3
        ok = im.ndim == 4 and im.shape[-1] == 3 if rgb else im.ndim == 3
        if not (isinstance(im, np.ndarray) and ok and im.dtype == np.uint8):
            shape = "(N, H, W, 3)" if rgb else "(N, H, W)"
            raise DataError(f"{name}.images must be a {shape} uint8 array, got {_describe(im)}")
        n = im.shape[0]
        if not (isinstance(c, np.ndarray) and c.shape == (n,) and c.dtype == np.int32):
            raise DataError(f"{name}.counts must be a ({n},) int32 array, got {_describe(c)}")
        if not (isinstance(lab, np.ndarray) and lab.ndim == 2 and lab.shape[0] == n and lab.dtype == np.int32):
            raise DataError(f"{name}.labels must be a ({n}, K) int32 array, got {_describe(lab)}")
        k = lab.shape[1]
        if not (isinstance(box, np.ndarray) and box.shape == (n, k, 4) and box.dtype == np.float32):
            raise DataError(f"{name}.boxes must be a ({n}, {k}, 4) float32 array, got {_describe(box)}")
        if n and (c.min() < 0 or c.max() > k):
            raise DataError(f"{name}.counts must lie in 0..{k}, got {c.min()}..{c.max()}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def max_objects(self) -> int:
        """K, the number of label/box slots per image."""
        return int(self.labels.shape[1])

    max_digits = max_objects

    def images_float(self) -> np.ndarray:
        """(N, H, W[, 3]) float32 images in [0, 1] (``images / 255``)."""
        return self.images.astype(np.float32) / np.float32(255.0)

    def subset(self, index: np.ndarray | slice | Sequence[int]) -> MultiMNIST:
        """The images selected by ``index`` (slice, integer indices or boolean mask)."""
        return type(self)(
            np.ascontiguousarray(self.images[index]),
            np.ascontiguousarray(self.counts[index]),
            np.ascontiguousarray(self.labels[index]),
            np.ascontiguousarray(self.boxes[index]),
        )


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"shape {a.shape} dtype {a.dtype}"
    return type(a).__name__


# ----------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------


def _seed_sequence(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    _check_int("seed", seed, 0)
    return np.random.SeedSequence(int(seed))


def _child(ss: np.random.SeedSequence, i: int) -> np.random.SeedSequence:
    """Child stream i of ``ss``, a pure function (unlike ``SeedSequence.spawn``)."""
    return np.random.SeedSequence(ss.entropy, spawn_key=(*ss.spawn_key, i), pool_size=ss.pool_size)


def _sizes(scales: np.ndarray, side: int, canvas: int) -> np.ndarray:
    """int(side / scale) clamped to [1, canvas]; non-positive scales give ``canvas``."""
    raw = side / np.maximum(scales, side / (canvas + 1.0))  # <= canvas + 1, never divides by 0
    return np.clip(np.floor(raw), 1, canvas).astype(np.int64)


def _draw(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    n_digits: int,
    scale_mean: float,
    scale_sd: float,
    side: int,
    canvas: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digit indices, sizes, row and column offsets, each of ``shape``."""
    idx = rng.integers(0, n_digits, size=shape)
    sizes = _sizes(rng.normal(scale_mean, scale_sd, size=shape), side, canvas)
    high = np.maximum(canvas - sizes, 1)
    rows = rng.integers(0, high)
    cols = rng.integers(0, high)
    return idx, sizes, rows, cols


def _crowd(draws: tuple[np.ndarray, ...], count: int) -> tuple[np.ndarray, ...]:
    """Of m drawn digits (``draws``: indices, sizes, rows, cols, each (m,)), the ``count`` to place:
    the two with the closest centres first, then the first ``count - 2`` others in draw order."""
    idx, sizes, rows, cols = draws
    if count < 2:
        return tuple(a[:count] for a in draws)
    centres = np.stack([rows + sizes / 2.0, cols + sizes / 2.0], axis=-1)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    dist[np.diag_indices(len(idx))] = np.inf
    a, b = np.unravel_index(np.argmin(dist), dist.shape)
    order = [min(a, b), max(a, b)] + [j for j in range(len(idx)) if j not in (a, b)]
    keep = np.asarray(order[:count])
    return tuple(arr[keep] for arr in draws)


def _resize(digit: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Pillow BICUBIC resize to (size, size); also the (left, top, right, bottom) non-zero bbox."""
    side = digit.shape[0]
    src = Image.frombuffer("L", (side, side), digit, "raw", "L", 0, 1)  # shares digit's memory
    im = src.resize((size, size), Image.Resampling.BICUBIC)
    return np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(size, size), im.getbbox()


def _compose(
    out: np.ndarray,
    boxes: np.ndarray,
    digits: np.ndarray,
    idx: np.ndarray,
    sizes: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
) -> bool:
    """Place the digits onto ``out`` (H, W) uint8 and fill ``boxes`` (c, 4); False on overflow."""
    c = len(idx)
    canvas = out if c == 1 else np.zeros(out.shape, dtype=np.uint16)  # one digit cannot overflow
    for j in range(c):
        w, r, q = int(sizes[j]), int(rows[j]), int(cols[j])
        patch, bbox = _resize(digits[idx[j]], w)
        canvas[r : r + w, q : q + w] += patch
        if bbox is None:  # blank digit: empty box at its corner
            boxes[j] = (q, r, 0, 0)
        else:
            left, top, right, bottom = bbox
            boxes[j] = (q + left, r + top, right - left, bottom - top)
    if c > 1:
        if canvas.max() > 255:
            return False
        out[...] = canvas
    return True


def generate_multi_mnist(
    digits: np.ndarray,
    digit_labels: np.ndarray,
    num_images: int,
    *,
    max_digits: int = 2,
    canvas_size: int = 50,
    scale_mean: float = 1.3,
    scale_sd: float = 0.1,
    seed: int | np.random.SeedSequence = 0,
    progress: bool = False,
    desc: str = "multi-MNIST",
    crowding: int = 0,
) -> MultiMNIST:
    """Generate ``num_images`` multi-digit canvases with Pyro's recipe (see module docstring).

    Args:
        digits: (M, s, s) uint8 source digits (s = 28 for MNIST).
        digit_labels: (M,) integer classes of ``digits``.
        num_images: N, the number of canvases.
        max_digits: K; counts are uniform over {0, ..., K}.
        canvas_size: canvas side in pixels.
        scale_mean, scale_sd: digit scale ~ N(mean, sd); digit side int(s / scale).
        seed: non-negative int or a ``numpy.random.SeedSequence``; the output is a pure
            function of it.
        progress: show a tqdm progress bar.
        desc: progress-bar label.
        crowding: 0, or m >= max(max_digits, 2): digits drawn as for an m-digit scene, the
            closest pair kept first (module docstring); its draws come from their own stream.

    Returns:
        MultiMNIST with images (N, canvas, canvas) uint8, counts (N,), labels (N, K), boxes
        (N, K, 4).

    Raises:
        ValueError: invalid parameter (the message names it).
        DataError: invalid digits, or an image could not be drawn without saturating pixels
            after many attempts (canvas too small for max_digits).
    """
    digits = np.ascontiguousarray(digits)
    digit_labels = np.asarray(digit_labels)
    if digits.ndim != 3 or digits.shape[1] != digits.shape[2] or digits.dtype != np.uint8:
        raise DataError(f"digits must be a (M, s, s) uint8 array, got {_describe(digits)}")
    if digit_labels.shape != digits.shape[:1] or not np.issubdtype(digit_labels.dtype, np.integer):
        raise DataError(f"digit_labels must be a ({digits.shape[0]},) integer array, got {_describe(digit_labels)}")
    side = int(digits.shape[1])
    _check_params(max_digits, canvas_size, scale_mean, scale_sd, side)
    _check_crowding(crowding, max_digits)
    _check_int("num_images", num_images, 0)
    n, k, h = int(num_images), int(max_digits), int(canvas_size)
    if n and k and digits.shape[0] == 0:
        raise DataError("digits is empty; expected at least one source digit")

    ss = _seed_sequence(seed)
    rng = np.random.Generator(np.random.PCG64(_child(ss, 0)))
    retry_rng = np.random.Generator(np.random.PCG64(_child(ss, 1)))
    counts = rng.integers(0, k + 1, size=n).astype(np.int32)
    m = max(int(digits.shape[0]), 1)
    idx, sizes, rows, cols = _draw(rng, (n, k), m, scale_mean, scale_sd, side, h)
    if crowding:
        crowd_rng = np.random.Generator(np.random.PCG64(_child(ss, 2)))
        crowd = _draw(crowd_rng, (n, crowding), m, scale_mean, scale_sd, side, h)

    def redraw(c: int) -> tuple[np.ndarray, ...]:
        if crowding:
            return _crowd(_draw(retry_rng, (crowding,), m, scale_mean, scale_sd, side, h), c)
        return _draw(retry_rng, (c,), m, scale_mean, scale_sd, side, h)

    images = np.zeros((n, h, h), dtype=np.uint8)
    labels = np.full((n, k), -1, dtype=np.int32)
    boxes = np.zeros((n, k, 4), dtype=np.float32)
    label_src = digit_labels.astype(np.int32)

    from tqdm import tqdm

    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for i in range(n):
            c = int(counts[i])
            if c:
                d_idx, d_sz, d_r, d_c = idx[i, :c], sizes[i, :c], rows[i, :c], cols[i, :c]
                if crowding:
                    d_idx, d_sz, d_r, d_c = _crowd(tuple(a[i] for a in crowd), c)
                attempts = 1
                while not _compose(images[i], boxes[i], digits, d_idx, d_sz, d_r, d_c):
                    if attempts >= _MAX_ATTEMPTS:
                        raise DataError(
                            f"could not place {c} digits on a {h}x{h} canvas without a pixel "
                            f"exceeding 255 after {attempts} draws; use a larger canvas_size "
                            "or fewer max_digits"
                        )
                    attempts += 1
                    d_idx, d_sz, d_r, d_c = redraw(c)
                labels[i, :c] = label_src[d_idx]
            if (i + 1) % _PROGRESS_EVERY == 0 or i + 1 == n:
                bar.update(i + 1 - bar.n)
    return MultiMNIST(images, counts, labels, boxes)


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------


def _source_id(source: str | os.PathLike[str] | None, arrays: tuple[np.ndarray, ...] | None) -> str:
    if source is None:
        return CANONICAL_FINGERPRINT  # load_mnist(None) verifies the canonical digests
    assert arrays is not None
    return mnist_fingerprint(arrays)  # type: ignore[arg-type]


def cache_path(config: MultiMNISTConfig, mnist_id: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the cache for ``config`` built from MNIST with fingerprint ``mnist_id`` lives."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"multi_mnist_v{CACHE_FORMAT_VERSION}_{config.cache_key(mnist_id)[:24]}.npz"


def _metadata(config: MultiMNISTConfig, mnist_id: str, format_version: int = CACHE_FORMAT_VERSION) -> dict[str, object]:
    """The cache metadata; ``config`` is any generator config with ``to_dict`` and ``cache_key``."""
    return {
        "format_version": format_version,
        "config": config.to_dict(),
        "mnist": mnist_id,
        "key": config.cache_key(mnist_id),
    }


def _write_cache(
    path: Path,
    splits: dict[str, MultiMNIST],
    config: MultiMNISTConfig,
    mnist_id: str,
    format_version: int = CACHE_FORMAT_VERSION,
) -> None:
    arrays = {f"{s}_{f}": getattr(splits[s], f) for s in _SPLITS for f in _FIELDS}
    write_checked_npz(path, arrays, _metadata(config, mnist_id, format_version))


def _read_cache(
    path: Path,
    config: MultiMNISTConfig,
    mnist_id: str,
    format_version: int = CACHE_FORMAT_VERSION,
    expected: str = "a multi-MNIST cache file",
) -> dict[str, MultiMNIST]:
    """Load and fully verify a cache file; raise on any problem.

    ``config`` is any generator config with ``to_dict``, ``cache_key``, ``num_train``,
    ``num_test``, ``canvas_size`` and ``max_digits``.
    """
    names = tuple(f"{s}_{f}" for s in _SPLITS for f in _FIELDS)
    arrays = read_checked_npz(path, names, _metadata(config, mnist_id, format_version), expected=expected)
    out = {s: MultiMNIST(*(arrays[f"{s}_{f}"] for f in _FIELDS)) for s in _SPLITS}
    for s, n in (("train", config.num_train), ("test", config.num_test)):
        ds = out[s]
        shape = (n, config.canvas_size, config.canvas_size)
        if ds.images.shape != shape or ds.max_digits != config.max_digits:
            raise DataError(f"{s} split has images {ds.images.shape}, expected {shape}")
    return out


SPLIT_FIELDS = ("num_train", "num_test", "seed")
"""Generator-config fields that size and seed the splits; the other fields describe the scenes."""


def scene_fields(config: object) -> dict[str, object]:
    """The fields of a generator config that describe its scenes (the keyword arguments of its
    ``generate_*`` function): every field but :data:`SPLIT_FIELDS`."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in SPLIT_FIELDS}


def generate_splits(generate, config, digits=None, *, progress: bool, desc: str) -> dict:
    """{"train", "test"}: ``config.num_train`` / ``num_test`` scenes of ``generate(...,
    **scene_fields(config), seed, progress, desc)`` from the child streams 0 and 1 of
    ``config.seed``. ``digits``: ``(x_train, y_train, x_test, y_test)`` for generators built
    from MNIST (train scenes from train digits, test scenes from test digits), None otherwise."""
    root = _seed_sequence(config.seed)
    splits = {}
    for i, (s, n) in enumerate((("train", config.num_train), ("test", config.num_test))):
        source = () if digits is None else digits[2 * i : 2 * i + 2]
        splits[s] = generate(*source, n, **scene_fields(config), seed=_child(root, i), progress=progress, desc=f"{desc} {s}")
    return splits


def load_multi_mnist(
    config: MultiMNISTConfig = MultiMNISTConfig(),
    *,
    source: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[MultiMNIST, MultiMNIST]:
    """The (train, test) multi-MNIST splits for ``config``, generated once and cached.

    Args:
        config: generator parameters (all of them key the cache).
        source: MNIST source passed to :func:`load_mnist` (``None``: embedded canonical MNIST).
        cache_dir: directory of the ``.npz`` cache (default :func:`default_cache_dir`).
        progress: show progress bars while generating.

    Returns:
        ``(train, test)``: ``config.num_train`` canvases from MNIST train digits and
        ``config.num_test`` from MNIST test digits.
    """
    if not isinstance(config, MultiMNISTConfig):
        raise TypeError(f"config must be a MultiMNISTConfig, got {type(config).__name__}")
    arrays = None if source is None else load_mnist(source)
    mnist_id = _source_id(source, arrays)
    path = cache_path(config, mnist_id, cache_dir)

    def generate() -> dict:
        digits = arrays if arrays is not None else load_mnist(None)
        return generate_splits(generate_multi_mnist, config, digits, progress=progress, desc="multi-MNIST")

    read = lambda: _read_cache(path, config, mnist_id)  # noqa: E731
    write = lambda splits: _write_cache(path, splits, config, mnist_id)  # noqa: E731
    return cached_splits(path, read, generate, write, "multi-MNIST", logger)
