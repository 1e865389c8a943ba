"""Multi-dSprites generation (coloured sprites on black) with a checksummed on-disk cache.

Recipe (offline, numpy and matplotlib's point-in-polygon test only):

* each scene is a ``canvas_size`` x ``canvas_size`` RGB image (default 64) on a black
  background;
* the number of sprites is uniform over {0, ..., max_objects} (default 3);
* each sprite's shape is uniform over :data:`SHAPES` (square, ellipse, heart, triangle; label =
  index), its colour is HSV with hue ~ U[0, 1) and saturation, value ~ U[0.5, 1] converted to
  RGB, its size ~ U[min_size, max_size] pixels (default 9 to 18: the unrotated shape's larger
  side), its rotation ~ U[0, 2 pi) and its centre uniform over the positions that keep the
  rotated shape inside the canvas (half a pixel of margin);
* a sprite's coverage ``alpha`` in [0, 1] is the fraction of the sub-pixel centres, on a grid
  ``supersample`` times finer than the canvas (default 4), that lie inside the shape (square;
  ellipse with axes 1 x 0.6; equilateral triangle, apex up; heart, the 128-point classic
  parametric curve, point down, looked up in a 1024 x 1024 mask), for anti-aliased edges;
* sprites are composited in order, later over earlier (``image = alpha * colour + (1 - alpha) *
  image``, overlap allowed), and the result is rounded to uint8.

Ground truth per scene, in drawing order (slot j < count is present):

* ``counts`` (N,) int32;
* ``labels`` (N, max_objects) int32, the shape index into :data:`SHAPES`, -1 for absent slots;
* ``boxes`` (N, max_objects, 4) float32 ``(x0, y0, width, height)`` in pixels, x = column,
  y = row: the tight box of the sprite's pixels with non-zero coverage, covering columns
  x0 .. x0 + width - 1 and rows y0 .. y0 + height - 1 (the convention of multi-MNIST).
  Absent slots are all zeros. Every non-black pixel lies inside one of its scene's boxes, and a
  sprite's box may include pixels that a later sprite covers.

Determinism: everything is a pure function of the seed (numpy ``SeedSequence``; no global RNG
state). :func:`load_multi_dsprites` draws train and test from two independent child streams.

Cache: :func:`load_multi_dsprites` stores both splits in one ``.npz`` under ``cache_dir``
(default :func:`.multi_mnist.default_cache_dir`), keyed by a SHA-256 of every config field and
the format version, with that metadata and a SHA-256 of the arrays inside. An unreadable,
mismatched or corrupt file is regenerated with a logged warning.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Mapping

import numpy as np
from matplotlib.path import Path as _Polygon

from ._io import cached_splits, default_cache_dir, read_checked_npz, write_checked_npz
from .errors import DataError
from .multi_mnist import MultiMNIST, _check_int, _seed_sequence, generate_splits

__all__ = [
    "DSPRITES_FORMAT_VERSION",
    "SHAPES",
    "MultiDSprites",
    "MultiDSpritesConfig",
    "dsprites_cache_path",
    "generate_multi_dsprites",
    "load_multi_dsprites",
]

logger = logging.getLogger(__name__)

#: Bump when the generator or the cache layout changes (it is part of the cache key).
DSPRITES_FORMAT_VERSION = 1
#: Shape names; a sprite's label is its index here.
SHAPES = ("square", "ellipse", "heart", "triangle")
_PROGRESS_EVERY = 256
_SPLITS = ("train", "test")
_FIELDS = ("images", "counts", "labels", "boxes")
_SAT_RANGE = (0.5, 1.0)  # HSV saturation and value ranges of the sprite colours


# ----------------------------------------------------------------------------------------------
# config and dataset containers
# ----------------------------------------------------------------------------------------------


def _check_params(max_objects: int, canvas_size: int, min_size: float, max_size: float, supersample: int) -> None:
    """Validate generator parameters, raising ValueError naming the offending field."""
    _check_int("max_objects", max_objects, 0)
    _check_int("canvas_size", canvas_size, 1)
    _check_int("supersample", supersample, 1)
    for name, v in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a real number, got {v!r}")
        if not (math.isfinite(v) and v >= 1):
            raise ValueError(f"{name} must be a finite number >= 1, got {v}")
    if min_size > max_size:
        raise ValueError(f"min_size must be <= max_size, got {min_size} > {max_size}")
    need = math.ceil(max_size * math.sqrt(2.0)) + 1  # a square rotated by 45 degrees
    if canvas_size < need:
        raise ValueError(f"canvas_size={canvas_size} cannot hold a rotated sprite of max_size={max_size} (needs {need})")


@dataclass(frozen=True)
class MultiDSpritesConfig:
    """Every parameter of the multi-dSprites generator (all of them key the cache).

    Attributes:
        max_objects: sprites per scene are uniform over {0, ..., max_objects}.
        canvas_size: side of the square RGB canvas in pixels.
        num_train: number of training scenes.
        num_test: number of held-out scenes (an independent stream of the same seed).
        min_size, max_size: sprite size ~ U[min_size, max_size] pixels (unrotated larger side).
        supersample: anti-aliasing factor (sprites are filled on a grid this much finer).
        seed: non-negative integer seed.
        LATER_FIELDS: none yet (:class:`~.multi_mnist.MultiMNISTConfig`).
    """

    LATER_FIELDS: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    max_objects: int = 3
    canvas_size: int = 64
    num_train: int = 60000
    num_test: int = 10000
    min_size: float = 9.0
    max_size: float = 18.0
    supersample: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        _check_params(self.max_objects, self.canvas_size, self.min_size, self.max_size, self.supersample)
        _check_int("num_train", self.num_train, 0)
        _check_int("num_test", self.num_test, 0)
        _check_int("seed", self.seed, 0)

    def to_dict(self) -> dict[str, int | float]:
        """Plain JSON-able dict of the fields (ints and floats)."""
        floats = {"min_size", "max_size"}
        return {f.name: (float if f.name in floats else int)(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def cache_key(self) -> str:
        """SHA-256 of (format version, every field)."""
        payload = {"format_version": DSPRITES_FORMAT_VERSION, "dataset": "multi-dsprites", "config": self.to_dict()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, eq=False)
class MultiDSprites(MultiMNIST):
    """A generated multi-dSprites split: :class:`~numpyro_air.data.multi_mnist.MultiMNIST`'s
    fields and checks with RGB scenes.

    Attributes:
        images: (N, H, W, 3) uint8 RGB scenes.
        counts: (N,) int32 number of sprites per scene.
        labels: (N, K) int32 shape indices into :data:`SHAPES`, -1 for absent slots.
        boxes: (N, K, 4) float32 ``(x0, y0, width, height)`` pixel boxes, zeros when absent.
    """

    _channels = 3


# ----------------------------------------------------------------------------------------------
# shapes and rasterisation
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _outline(shape: int) -> np.ndarray:
    """(V, 2) polygon of SHAPES[shape] in a unit frame: x right, y down, larger side 1, centred."""
    if shape == 0:  # square
        pts = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * 0.5
    elif shape == 1:  # ellipse, axes 1 x 0.6
        t = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
        pts = np.stack([0.5 * np.cos(t), 0.3 * np.sin(t)], axis=1)
    elif shape == 2:  # heart: the classic parametric curve, point down
        t = np.linspace(0.0, 2.0 * np.pi, 128, endpoint=False)
        x = 16.0 * np.sin(t) ** 3
        y = 13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t)
        pts = np.stack([x, -y], axis=1)
    elif shape == 3:  # equilateral triangle, apex up
        h = math.sqrt(3.0) / 2.0
        pts = np.array([[0.0, -h / 2], [0.5, h / 2], [-0.5, h / 2]])
    else:
        raise ValueError(f"unknown shape index {shape}")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pts = (pts - (lo + hi) / 2) / (hi - lo).max()
    pts.setflags(write=False)
    return pts


_HEART_RES = 1024  # cells of the heart mask across the unit square (1/50 px at size 18)


@lru_cache(maxsize=None)
def _heart_mask() -> np.ndarray:
    """(R + 2, R + 2) bool: cell centres of [-0.5, 0.5]^2 inside the heart, with a False border."""
    r = _HEART_RES
    centres = (np.arange(r) + 0.5) / r - 0.5
    gu, gv = np.meshgrid(centres, centres)
    inside = _Polygon(_outline(2)).contains_points(np.stack([gu.ravel(), gv.ravel()], axis=1))
    mask = np.zeros((r + 2, r + 2), dtype=bool)
    mask[1:-1, 1:-1] = inside.reshape(r, r)
    mask.setflags(write=False)
    return mask


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the unit-frame points (u, v) lie inside SHAPES[shape] (as :func:`_outline`)."""
    if shape == 1:  # the exact ellipse (its 96-gon outline only sets the extent)
        return (u / 0.5) ** 2 + (v / 0.3) ** 2 <= 1.0
    pts = _outline(shape)
    if shape == 2:  # the heart is not convex: look its polygon up in a fine mask
        mask = _heart_mask()
        r = _HEART_RES
        iu = np.clip(np.floor((u + 0.5) * r).astype(np.int64), -1, r)
        iv = np.clip(np.floor((v + 0.5) * r).astype(np.int64), -1, r)
        return mask[iv + 1, iu + 1]
    inside = np.ones(u.shape, dtype=bool)  # convex: on the inner side of every edge
    for (ax, ay), (bx, by) in zip(pts, np.roll(pts, -1, axis=0)):
        inside &= (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0
    return inside


def _render(shape: int, size: float, angle: float, cx: float, cy: float, canvas: int, ss: int) -> tuple[np.ndarray, int, int]:
    """Coverage of one sprite: (alpha (h, w) float32 in [0, 1], top row, left column)."""
    c, s = math.cos(angle), math.sin(angle)
    pts = _outline(shape) @ np.array([[c, s], [-s, c]]) * size + (cx, cy)  # rotated, in pixels
    x0 = max(int(math.floor(pts[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(pts[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + 1, canvas)
    y1 = min(int(math.ceil(pts[:, 1].max())) + 1, canvas)
    w, h = x1 - x0, y1 - y0
    # sub-pixel (r, q) covers [q, q + 1) x [r, r + 1) / ss; it is inside when its centre is
    sub = (np.arange(max(w, h) * ss, dtype=np.float64) + 0.5) / ss
    gx, gy = np.meshgrid(sub[: w * ss] + (x0 - cx), sub[: h * ss] + (y0 - cy))
    inside = _inside(shape, (gx * c + gy * s) / size, (gy * c - gx * s) / size)
    alpha = inside.reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)
    return alpha, y0, x0


def _extent(shape: int, size: float, angle: float) -> tuple[float, float, float, float]:
    """(xmin, xmax, ymin, ymax) of the rotated, scaled outline around its centre."""
    c, s = math.cos(angle), math.sin(angle)
    pts = _outline(shape) @ np.array([[c, s], [-s, c]]) * size
    return float(pts[:, 0].min()), float(pts[:, 0].max()), float(pts[:, 1].min()), float(pts[:, 1].max())


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    return np.array([colorsys.hsv_to_rgb(*row) for row in hsv.tolist()], dtype=np.float64).reshape(hsv.shape)


def _draw(seed, n: int, k: int, min_size: float, max_size: float):
    """Every random number of ``n`` scenes, in the generator's order: counts (n,), shapes, sizes,
    angles (n, k), colours (n, k, 3) in [0, 255] and positions (n, k, 2) in [0, 1) within each
    sprite's allowed range."""
    rng = np.random.Generator(np.random.PCG64(_seed_sequence(seed)))
    counts = rng.integers(0, k + 1, size=n).astype(np.int32)
    shapes = rng.integers(0, len(SHAPES), size=(n, k))
    sizes = rng.uniform(min_size, max_size, size=(n, k))
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(n, k))
    hsv = np.stack(
        [rng.uniform(0.0, 1.0, size=(n, k)), rng.uniform(*_SAT_RANGE, size=(n, k)), rng.uniform(*_SAT_RANGE, size=(n, k))],
        axis=-1,
    )
    colours = _hsv_to_rgb(hsv.reshape(-1, 3)).reshape(n, k, 3).astype(np.float32) * np.float32(255.0)
    where = rng.uniform(0.0, 1.0, size=(n, k, 2))
    return counts, shapes, sizes, angles, colours, where


def _place(shape: int, size: float, angle: float, where, canvas: int, ss: int):
    """A sprite's coverage at relative position ``where`` (2,) in [0, 1): its centre ranges over
    the positions that keep the rotated shape inside the canvas with half a pixel of margin.
    Returns (alpha, top, left, cx, cy) as :func:`_render` plus the centre."""
    margin = 0.5
    xmin, xmax, ymin, ymax = _extent(shape, size, angle)
    lo_x, hi_x = margin - xmin, canvas - margin - xmax
    lo_y, hi_y = margin - ymin, canvas - margin - ymax
    cx = lo_x + where[0] * max(hi_x - lo_x, 0.0)
    cy = lo_y + where[1] * max(hi_y - lo_y, 0.0)
    return (*_render(shape, size, angle, cx, cy, canvas, ss), cx, cy)


def generate_multi_dsprites(
    num_images: int,
    *,
    max_objects: int = MultiDSpritesConfig.max_objects,
    canvas_size: int = MultiDSpritesConfig.canvas_size,
    min_size: float = MultiDSpritesConfig.min_size,
    max_size: float = MultiDSpritesConfig.max_size,
    supersample: int = MultiDSpritesConfig.supersample,
    seed: int | np.random.SeedSequence = 0,
    progress: bool = False,
    desc: str = "multi-dSprites",
) -> MultiDSprites:
    """Generate ``num_images`` multi-dSprites scenes (see module docstring for the recipe).

    Args:
        num_images: N, the number of scenes.
        max_objects: K; counts are uniform over {0, ..., K}.
        canvas_size: canvas side in pixels.
        min_size, max_size: sprite size range in pixels.
        supersample: anti-aliasing factor.
        seed: non-negative int or a ``numpy.random.SeedSequence``; the output is a pure
            function of it.
        progress: show a tqdm progress bar.
        desc: progress-bar label.

    Returns:
        MultiDSprites with images (N, canvas, canvas, 3) uint8, counts (N,), labels (N, K),
        boxes (N, K, 4).

    Raises:
        ValueError: invalid parameter (the message names it).
    """
    _check_params(max_objects, canvas_size, min_size, max_size, supersample)
    _check_int("num_images", num_images, 0)
    n, k, h = int(num_images), int(max_objects), int(canvas_size)
    counts, shapes, sizes, angles, colours, where = _draw(seed, n, k, min_size, max_size)

    images = np.zeros((n, h, h, 3), dtype=np.uint8)
    labels = np.full((n, k), -1, dtype=np.int32)
    boxes = np.zeros((n, k, 4), dtype=np.float32)
    scene = np.zeros((h, h, 3), dtype=np.float32)

    from tqdm import tqdm

    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for i in range(n):
            c = int(counts[i])
            if c:
                scene.fill(0.0)
                for j in range(c):
                    sh = int(shapes[i, j])
                    alpha, top, left, cx, cy = _place(sh, float(sizes[i, j]), float(angles[i, j]), where[i, j], h, supersample)
                    rows, cols = np.nonzero(alpha)
                    if rows.size == 0:  # cannot happen for sizes >= 1; keep an empty box
                        boxes[i, j] = (cx, cy, 0, 0)
                    else:
                        boxes[i, j] = (
                            left + cols.min(),
                            top + rows.min(),
                            cols.max() - cols.min() + 1,
                            rows.max() - rows.min() + 1,
                        )
                    region = scene[top : top + alpha.shape[0], left : left + alpha.shape[1]]
                    a = alpha[..., None]
                    region *= 1.0 - a
                    region += a * colours[i, j]
                    labels[i, j] = sh
                np.rint(scene, out=scene)
                images[i] = np.clip(scene, 0, 255).astype(np.uint8)
            if (i + 1) % _PROGRESS_EVERY == 0 or i + 1 == n:
                bar.update(i + 1 - bar.n)
    return MultiDSprites(images, counts, labels, boxes)


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------


def dsprites_cache_path(config: MultiDSpritesConfig, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the cache for ``config`` lives."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"multi_dsprites_v{DSPRITES_FORMAT_VERSION}_{config.cache_key()[:24]}.npz"


def _metadata(config: MultiDSpritesConfig) -> dict[str, object]:
    return {
        "dataset": "multi-dsprites",
        "format_version": DSPRITES_FORMAT_VERSION,
        "config": config.to_dict(),
        "key": config.cache_key(),
    }


def _write_cache(path: Path, splits: dict[str, MultiDSprites], config: MultiDSpritesConfig) -> None:
    arrays = {f"{s}_{f}": getattr(splits[s], f) for s in _SPLITS for f in _FIELDS}
    write_checked_npz(path, arrays, _metadata(config))


def _read_cache(path: Path, config: MultiDSpritesConfig) -> dict[str, MultiDSprites]:
    """Load and fully verify a cache file; raise on any problem."""
    names = tuple(f"{s}_{f}" for s in _SPLITS for f in _FIELDS)
    arrays = read_checked_npz(path, names, _metadata(config), expected="a multi-dSprites cache file")
    out = {s: MultiDSprites(*(arrays[f"{s}_{f}"] for f in _FIELDS)) for s in _SPLITS}
    for s, n in (("train", config.num_train), ("test", config.num_test)):
        ds = out[s]
        shape = (n, config.canvas_size, config.canvas_size, 3)
        if ds.images.shape != shape or ds.max_objects != config.max_objects:
            raise DataError(f"{s} split has images {ds.images.shape}, expected {shape}")
    return out


def load_multi_dsprites(
    config: MultiDSpritesConfig = MultiDSpritesConfig(),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[MultiDSprites, MultiDSprites]:
    """The (train, test) multi-dSprites splits for ``config``, generated once and cached.

    Args:
        config: generator parameters (all of them key the cache).
        cache_dir: directory of the ``.npz`` cache (default :func:`.multi_mnist.default_cache_dir`).
        progress: show progress bars while generating.

    Returns:
        ``(train, test)``: ``config.num_train`` and ``config.num_test`` scenes from two
        independent streams of ``config.seed``.
    """
    if not isinstance(config, MultiDSpritesConfig):
        raise TypeError(f"config must be a MultiDSpritesConfig, got {type(config).__name__}")
    path = dsprites_cache_path(config, cache_dir)

    def generate() -> dict:
        return generate_splits(generate_multi_dsprites, config, progress=progress, desc="multi-dSprites")

    read = lambda: _read_cache(path, config)  # noqa: E731
    write = lambda splits: _write_cache(path, splits, config)  # noqa: E731
    return cached_splits(path, read, generate, write, "multi-dSprites", logger)
