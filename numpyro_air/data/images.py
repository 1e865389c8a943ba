"""Your own images: one loader for ``.npz`` files and directories of PNG/JPEG files.

:func:`load_images` reads

* an ``.npz`` in the evaluation layout of :mod:`.eval_io` (``images`` (N, H, W) or
  (N, H, W, C) with C = 1 or 3, uint8 or float in [0, 1]; ``counts`` (N,), ``boxes`` (N, K, 4)
  and ``labels`` (N, K) optional), validated by :func:`.eval_io.validate_eval_arrays`;
* a directory of PNG/JPEG files (``.png``, ``.jpg``, ``.jpeg``, any case) of one size, read with
  Pillow in file-name order (plain string sort: ``img10.png`` comes before ``img2.png``). Every
  visible entry must be such a file (names starting with ``.`` are skipped; anything else,
  subdirectories included, is an error, so no file is silently left out). Modes: ``L`` and ``1``
  give grayscale (N, H, W) uint8; ``RGB``, ``CMYK`` and ``YCbCr`` give RGB (N, H, W, 3) uint8.
  Images with alpha (``RGBA``, ``LA``, palette images with transparency) are accepted only when
  every pixel is opaque (alpha 255); the alpha channel is then dropped (``LA`` -> grayscale, the
  others -> RGB; palette images always become RGB). A transparent pixel is an error: the model
  draws opaque images, and which background to flatten onto is the user's choice. 16-bit and
  32-bit modes (``I;16``, ``I``, ``F``) are refused (convert to 8 bits). All files must share
  one size and one of grayscale/RGB. A directory has no ``counts``.

Any problem raises one :class:`.errors.DataError` naming the file and the problem (a missing path
raises its subclass :class:`.errors.DataNotFoundError`); nothing is written.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ._io import read_npz
from .errors import DataError, DataNotFoundError
from .eval_io import validate_eval_arrays

__all__ = ["IMAGE_SUFFIXES", "ImageSet", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FORMATS = ("PNG", "JPEG", "MPO")  # MPO: multi-picture JPEG as some cameras write it
_EXPECTED = (
    "an .npz with 'images' (N, H, W) or (N, H, W, C), C = 1 or 3, uint8 or float in [0, 1] (optional 'counts' (N,), "
    "'boxes' (N, K, 4), 'labels' (N, K)), or a directory of PNG/JPEG files of one size"
)


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images with optional ground truth, as :func:`load_images` returns them.

    Attributes:
        images: (N, H, W) grayscale or (N, H, W, 3) RGB, uint8 in 0..255 or float32 in [0, 1]
            (as stored).
        counts: (N,) int32 objects per image, or None.
        boxes: (N, K, 4) float32 ``(x0, y0, width, height)`` in pixels, or None.
        labels: (N, K) int32 (-1 for absent slots), or None.
        source: the path the images were read from.
    """

    images: np.ndarray
    counts: Optional[np.ndarray] = None
    boxes: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    source: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple:
        """One image's shape: (H, W) grayscale or (H, W, 3) RGB."""
        return tuple(int(d) for d in self.images.shape[1:])

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def channels(self) -> int:
        """1 (grayscale) or 3 (RGB)."""
        return 1 if self.images.ndim == 3 else int(self.images.shape[-1])

    def head(self, n: int) -> "ImageSet":
        """The first ``n`` images (and their counts, boxes, labels)."""
        cut = lambda a: None if a is None else a[:n]  # noqa: E731
        return ImageSet(cut(self.images), cut(self.counts), cut(self.boxes), cut(self.labels), self.source)

    def sha256(self) -> str:
        """SHA-256 of the images as loaded: dtype, shape and C-order bytes (not of the file)."""
        h = hashlib.sha256(f"{self.images.dtype.str} {self.images.shape}\n".encode())
        h.update(np.ascontiguousarray(self.images).data)
        return h.hexdigest()

    def describe(self) -> dict:
        """What a checkpoint records about these images: absolute path, N, per-image shape, dtype and
        SHA-256 (:meth:`sha256`)."""
        return {
            "path": os.path.abspath(self.source) if self.source else "",
            "images": len(self),
            "shape": list(self.shape),
            "dtype": str(self.images.dtype),
            "sha256": self.sha256(),
        }


def load_images(path: str | os.PathLike[str]) -> ImageSet:
    """Read images (and optional counts, boxes, labels) from an ``.npz`` or a PNG/JPEG directory.

    Layouts, modes and refusals are in the module docstring.

    Returns:
        ImageSet(images (N, H, W) or (N, H, W, 3) uint8 or float32 in [0, 1], counts (N,) int32
        or None, boxes (N, K, 4) float32 or None, labels (N, K) int32 or None, source = the path).

    Raises:
        DataNotFoundError: ``path`` does not exist.
        DataError: anything else wrong, naming the file and the problem.
    """
    path = Path(os.fspath(path)).expanduser()
    if path.is_dir():
        images = _read_image_dir(path)
        return ImageSet(images, source=str(path))
    if not path.exists():
        raise DataNotFoundError(f"{path}: no such file or directory; expected {_EXPECTED}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise DataError(f"{path}: a single image file; pass the directory that holds the images, or an .npz")
    arrays = read_npz(path, ("images",), ("counts", "boxes", "labels"), expected=_EXPECTED)
    images, counts, boxes, labels = validate_eval_arrays(
        arrays["images"], arrays.get("counts"), arrays.get("boxes"), arrays.get("labels"), where=str(path)
    )
    if images.shape[0] == 0:
        raise DataError(f"{path}: 'images' holds no images (shape {images.shape})")
    return ImageSet(images, counts, boxes, labels, str(path))


def _read_image_dir(path: Path) -> np.ndarray:
    """(N, H, W) or (N, H, W, 3) uint8 of the PNG/JPEG files of ``path`` in file-name order."""
    entries = sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    if not entries:
        raise DataError(f"{path}: empty directory; expected PNG/JPEG files ({', '.join(IMAGE_SUFFIXES)}) of one size")
    for p in entries:
        if p.is_dir():
            raise DataError(f"{p}: a subdirectory; {path} must hold only PNG/JPEG files, all of one size")
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{p}: not an image file (suffix {p.suffix or 'none'!r}); {path} must hold only PNG/JPEG files "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
    first, arrays = None, []
    for p in entries:
        a = _read_image_file(p)
        if first is None:
            first = (p, a.shape)
        elif a.shape != first[1]:
            (q, shape) = first
            if a.shape[:2] != shape[:2]:
                raise DataError(
                    f"{path}: images of different sizes: {q.name} is {shape[0]}x{shape[1]} and {p.name} is "
                    f"{a.shape[0]}x{a.shape[1]} (height x width); all images must have one size"
                )
            mode = lambda s: "grayscale" if len(s) == 2 else "RGB"  # noqa: E731
            raise DataError(
                f"{path}: {q.name} is {mode(shape)} but {p.name} is {mode(a.shape)}; all images must be grayscale "
                f"or all RGB (convert them to one mode)"
            )
        arrays.append(a)
    return np.stack(arrays)


def _read_image_file(p: Path) -> np.ndarray:
    """One PNG/JPEG as (H, W) or (H, W, 3) uint8 (modes as in the module docstring)."""
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.load()
            fmt, mode = im.format, im.mode
            if fmt not in _FORMATS:
                raise DataError(f"{p}: a {fmt} image; expected PNG or JPEG")
            if mode in ("1", "L"):
                return np.asarray(im.convert("L"), dtype=np.uint8)
            if mode in ("RGB", "CMYK", "YCbCr"):
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
            if mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
                rgba = im.convert("LA" if mode in ("LA", "La") else "RGBA")
                alpha = np.asarray(rgba.getchannel("A"))
                if alpha.min() < 255:
                    raise DataError(
                        f"{p}: {mode} image with transparent pixels ({int((alpha < 255).sum())} with alpha < 255); "
                        f"flatten it onto a background first (only fully opaque images are read)"
                    )
                return np.asarray(rgba.convert("L" if mode in ("LA", "La") else "RGB"), dtype=np.uint8)
            if mode == "P":
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
            raise DataError(
                f"{p}: image mode {mode} is not read (16-/32-bit or other colour space); save it as 8-bit grayscale (L) or RGB"
            )
    except DataError:
        raise
    except Exception as e:  # Pillow raises many types for a file it cannot decode
        raise DataError(f"{p}: not a readable PNG/JPEG image ({type(e).__name__}: {e})") from e
