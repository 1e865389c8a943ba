"""Shared file helpers: strict ``.npz`` reading, atomic ``.npz`` writing and checksummed caches."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError

_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def read_npz(path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = (), *, expected: str) -> dict[str, np.ndarray]:
    """Load ``keys`` (required) and ``optional`` keys from an ``.npz`` without pickle.

    Raises DataError naming ``path`` and ``expected`` for a non-npz/unreadable file or a
    missing required key.
    """
    try:
        f = open(path, "rb")  # our handle: np.load leaks its own when the zip is corrupt
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e}); expected {expected}") from e
    with f:
        try:
            obj = np.load(f, allow_pickle=False)
        except _READ_ERRORS as e:
            raise DataError(f"{path}: unreadable .npz ({type(e).__name__}: {e}); expected {expected}") from e
        if not isinstance(obj, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an .npz archive (a single .npy array); expected {expected}")
        with obj as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing keys {missing} (found {sorted(z.files)}); expected {expected}")
            try:
                return {k: z[k] for k in (*keys, *optional) if k in z.files}
            except _READ_ERRORS as e:
                raise DataError(f"{path}: corrupt .npz member ({type(e).__name__}: {e}); expected {expected}") from e


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a compressed ``.npz`` at exactly ``path`` via temp file + os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # honours the umask
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def default_cache_dir() -> Path:
    """``$NUMPYRO_AIR_DATA``, else ``$XDG_CACHE_HOME/numpyro_air``, else ``~/.cache/numpyro_air``."""
    env = os.environ.get("NUMPYRO_AIR_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "numpyro_air"


def arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the sorted names, dtypes, shapes and bytes of ``arrays``."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def write_checked_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
    """Atomically write ``arrays`` plus a JSON ``meta`` entry that gains their ``checksum``."""
    meta = {**meta, "checksum": arrays_checksum(arrays)}
    atomic_savez(path, {"meta": np.array(json.dumps(meta, sort_keys=True)), **arrays})


def read_checked_npz(path: Path, names: tuple[str, ...], meta: dict[str, object], *, expected: str) -> dict[str, np.ndarray]:
    """Read a :func:`write_checked_npz` file; its metadata must equal ``meta`` (plus the checksum).

    Raises DataError for an unreadable file, missing arrays, mismatched metadata (naming the
    differing keys) or a checksum mismatch.
    """
    arrays = read_npz(path, ("meta", *names), expected=expected)
    stored = json.loads(str(arrays.pop("meta")[()]))
    if not isinstance(stored, dict):
        raise DataError("metadata is not a JSON object")
    want = {**meta, "checksum": stored.get("checksum", "")}
    if stored != want:
        diff = sorted(k for k in set(stored) | set(want) if stored.get(k) != want.get(k))
        raise DataError(f"metadata mismatch in {diff}")
    if arrays_checksum(arrays) != stored["checksum"]:
        raise DataError("array checksum mismatch")
    return arrays


def cached_splits(
    path: Path,
    read: Callable[[], dict],
    generate: Callable[[], dict],
    write: Callable[[dict], None],
    what: str,
    log: logging.Logger,
) -> tuple:
    """``(train, test)`` from the cache file ``path`` (``read()``), or generated (``generate()``) and written
    (``write(splits)``) when the file is missing or unusable (any error reading it: logged, then
    regenerated). A failed write only logs: the splits are still returned."""
    if path.exists():
        try:
            splits = read()
            log.info("loaded %s from cache %s", what, path)
            return splits["train"], splits["test"]
        except Exception as e:  # any unreadable/mismatched/corrupt file: regenerate
            log.warning("%s cache %s is unusable (%s: %s); regenerating it", what, path, type(e).__name__, e)
    splits = generate()
    try:
        write(splits)
        log.info("wrote %s cache %s", what, path)
    except OSError as e:
        log.warning("could not write %s cache %s (%s); continuing without it", what, path, e)
    return splits["train"], splits["test"]
