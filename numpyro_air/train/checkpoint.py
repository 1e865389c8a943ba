"""Checkpoints with named arrays, readable with plain numpy (``numpy.load``).

A checkpoint is an uncompressed ``.npz`` (a zip of ``.npy`` files; zip CRC-32 per member) with

- ``params/<site>/<path>``: every parameter under its NumPyro site and Flax path, e.g.
  ``params/rnn$params/img/kernel`` (kernels are (in, out), as Flax);
- ``average/<site>/<path>`` (runs with ``OptimConfig.average_decay``): the moving average of
  every parameter (Polyak averaging), named as the parameter; ``state/average_count`` counts the
  updates averaged;
- ``state/<path>``: the rest of the SVI state (optimiser moments and count, mutable state such
  as decaying-average baselines, the RNG key), named by its path in ``SVIState``;
- ``__meta__``: a JSON string (configs, step, seed, data description, format version, schema
  version, the numpyro-air version that wrote it and the SHA-256 of all arrays' bytes in name
  order).

``format_version`` is the container (2: this ``.npz`` layout); ``schema_version`` is what the
metadata and array names mean. Files written before the schema was versioned have none and read
as schema 0; a file of a newer schema than :data:`SCHEMA_VERSION` is refused naming the file.

A params-only file (:func:`export_params`) holds ``params/...`` and ``__meta__`` only. Files are
written atomically (temporary file ``<name>.<random>.tmp`` + ``os.replace``), so a crash or
SIGKILL at any instant leaves the previous file intact; :func:`remove_stale_temporaries` deletes
the temporary file such a kill leaves behind.

Runs of several seeds write one file per seed, ``<stem>_seed<seed><suffix>`` (:func:`seed_file`);
older versions numbered these files by index (seed ``base + k`` in ``<stem>_seed<k><suffix>``),
which :func:`read_seed_checkpoint` still reads, telling the two apart by the seed stored inside.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import jax
import numpy as np

FORMAT_VERSION = 2
SCHEMA_VERSION = 1  # 1: schema_version, numpyro_air_version in __meta__; per-seed files named by seed
META_KEY = "__meta__"
PARAMS_PREFIX = "params/"
AVERAGE_PREFIX = "average/"
STATE_PREFIX = "state/"
WEIGHTS = ("auto", "average", "last")  # which parameters load_params reads
# SVIState.optim_state = (count, (params, optax state)) for NumPyro's optax wrapper.
_PARAMS_PATH = ("optim_state", 1, 0)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the current configuration."""


def _key(entry) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    raise TypeError(f"unsupported pytree path entry {entry!r}")


def leaf_name(path: tuple) -> str:
    """Name of an SVI-state leaf: ``params/<site>/...`` for parameters, else ``state/...``."""
    # train.optim.ParamAverageState wraps the optimiser's state: its field is left out of names
    keys = tuple(k for k in (_key(e) for e in path) if k != "optimizer_state")
    if keys[: len(_PARAMS_PATH)] == _PARAMS_PATH:
        return PARAMS_PREFIX + "/".join(map(str, keys[len(_PARAMS_PATH) :]))
    if "averaged_params" in keys:
        return AVERAGE_PREFIX + "/".join(map(str, keys[keys.index("averaged_params") + 1 :]))
    if keys and keys[-1] == "average_count":
        return STATE_PREFIX + "average_count"
    return STATE_PREFIX + "/".join(map(str, keys))


def named_arrays(tree: Any, name=leaf_name) -> Dict[str, np.ndarray]:
    """{name: numpy array} for every leaf of ``tree`` (fetched from the device)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
    return {name(path): np.asarray(leaf) for path, leaf in flat}


def params_arrays(params: dict) -> Dict[str, np.ndarray]:
    """{``params/<site>/<path>``: array} for a params dict as ``svi.get_params`` returns it."""
    return named_arrays(params, lambda path: PARAMS_PREFIX + "/".join(str(_key(e)) for e in path))


def _digest(arrays: Dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_npz(path: str | os.PathLike, arrays: Dict[str, np.ndarray], meta: dict, overwrite: bool = True) -> Path:
    """Write named arrays and JSON-able ``meta`` to ``path`` atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} exists; refusing to overwrite it (pass overwrite=True)")
    from .. import __version__

    meta = {
        **meta,
        "format_version": FORMAT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "numpyro_air_version": __version__,
        "sha256": _digest(arrays),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{META_KEY: np.asarray(json.dumps(meta, sort_keys=True))})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_npz(path: str | os.PathLike) -> Tuple[dict, Dict[str, np.ndarray]]:
    """Read and verify a checkpoint or params file: (meta, {name: array}). Raises
    :class:`CheckpointError` naming the problem."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass a checkpoint file (e.g. {path / 'checkpoint.npz'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a file written by numpyro-air)")
    raw = path.read_bytes()
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise CheckpointError(f"{path} is not a numpyro-air checkpoint (not an .npz file; truncated or another format)")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - bad CRC, truncated member, ...
        raise CheckpointError(f"{path} is corrupt ({e})") from e
    if META_KEY not in arrays:
        raise CheckpointError(f"{path} is not a numpyro-air checkpoint (no {META_KEY} entry)")
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
    except ValueError as e:
        raise CheckpointError(f"{path} is corrupt (metadata is not JSON: {e})") from e
    _check_schema(meta, path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    if meta.get("sha256") != _digest(arrays):
        raise CheckpointError(f"{path} is corrupt (checksum mismatch: arrays modified)")
    return meta, arrays


def _check_schema(meta: dict, path: Path) -> None:
    schema = meta.get("schema_version", 0)  # 0: written before the schema was versioned
    if isinstance(schema, bool) or not isinstance(schema, int) or schema > SCHEMA_VERSION:
        from .. import __version__

        writer = meta.get("numpyro_air_version", "a newer version")
        raise CheckpointError(
            f"{path} has checkpoint schema {schema!r} (written by numpyro-air {writer}); numpyro-air {__version__} "
            f"reads schemas up to {SCHEMA_VERSION}: upgrade numpyro-air to load it"
        )


def remove_stale_temporaries(path: str | os.PathLike) -> List[Path]:
    """Delete the temporary files an interrupted :func:`write_npz` of ``path`` left next to it
    (``<name>.<random>.tmp``); returns them. Call it only when no save of ``path`` is under way."""
    path = Path(path)
    stale = sorted(path.parent.glob(f"{glob.escape(path.name)}.*.tmp")) if path.parent.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def seed_file(base: str | os.PathLike, seed: int) -> Path:
    """The checkpoint of ``seed`` in a run of several seeds: ``<stem>_seed<seed><suffix>``."""
    base = Path(base)
    return base.with_name(f"{base.stem}_seed{seed}{base.suffix}")


def seed_files(base: str | os.PathLike) -> List[Path]:
    """The existing per-seed files of ``base`` (``<stem>_seed<N><suffix>``), by ``N``."""
    base = Path(base)
    if not base.parent.is_dir():
        return []
    pattern = re.compile(re.escape(base.stem) + r"_seed(\d+)" + re.escape(base.suffix))
    found = []
    for path in base.parent.glob(f"{glob.escape(base.stem)}_seed*{glob.escape(base.suffix)}"):
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def read_seed_checkpoint(base: str | os.PathLike, seed: int, index: int) -> Tuple[Path, dict, Dict[str, np.ndarray]]:
    """``(path, meta, arrays)`` of the checkpoint of ``seed``, the ``index``-th seed of a run whose
    per-seed files are named after ``base``: :func:`seed_file` ``(base, seed)``, or the file named
    by ``index`` that older versions wrote. The seed stored in each file decides which one it is,
    so neither name is trusted alone; :class:`CheckpointError` if no file holds ``seed``."""
    candidates = list(dict.fromkeys([seed_file(base, seed), seed_file(base, index)]))
    other = None
    for path in candidates:
        if path.is_file():
            meta, arrays = read_checkpoint(path)
            if meta.get("seed") == seed:
                return path, meta, arrays
            other = other or f"{path} holds seed {meta.get('seed')!r}"
    if other is None:
        read_checkpoint(candidates[0])  # raises: the file does not exist
    raise CheckpointError(f"no checkpoint of seed {seed} at {candidates[0]} ({other})")


def save_checkpoint(path: str | os.PathLike, state: Any, meta: dict, overwrite: bool = True) -> Path:
    """Write an SVI state (named leaves) and ``meta`` to ``path`` atomically."""
    return write_npz(path, named_arrays(state), meta, overwrite)


def read_checkpoint(path: str | os.PathLike) -> Tuple[dict, Dict[str, np.ndarray]]:
    """(meta, {name: array}) of a full training checkpoint."""
    meta, arrays = read_npz(path)
    if meta.get("kind", "checkpoint") != "checkpoint":
        raise CheckpointError(f"{path} holds {meta.get('kind')!r} only, not a training state (cannot resume from it)")
    return meta, arrays


def restore_into(
    template: Any,
    arrays: Dict[str, np.ndarray],
    path: str | os.PathLike = "<checkpoint>",
    note: Optional[Callable[[str], None]] = None,
) -> Any:
    """Put named ``arrays`` into the structure of ``template`` (arrays or ShapeDtypeStructs),
    checking names, shapes and dtypes. A parameter average is started or dropped to match the
    template (:func:`_with_average`); ``note`` (e.g. a log function) is told so."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [leaf_name(p) for p, _ in flat]
    adapted = _with_average(arrays, names)
    if note is not None and adapted is not arrays:
        note(
            f"{path}: parameter averaging starts here, from the checkpoint's parameters"
            if has_average(adapted)
            else f"{path}: the checkpoint's parameter average is dropped (this run does not average; --average-decay keeps it)"
        )
    arrays = adapted
    missing, extra = sorted(set(names) - set(arrays)), sorted(set(arrays) - set(names))
    if missing or extra:
        raise CheckpointError(
            f"{path}: arrays do not match the current configuration (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    out = []
    for name, (_, t) in zip(names, flat):
        a = arrays[name]
        if tuple(t.shape) != a.shape or np.dtype(t.dtype) != a.dtype:
            raise CheckpointError(f"{path}: {name} has shape {a.shape} {a.dtype}, expected {tuple(t.shape)} {t.dtype}")
        out.append(jax.numpy.asarray(a))
    return jax.tree.unflatten(treedef, out)


def _with_average(arrays: Dict[str, np.ndarray], names: List[str]) -> Dict[str, np.ndarray]:
    """``arrays`` adapted to a run that averages its parameters or not: a checkpoint written
    without averaging starts the average at its parameters (count 0); the average of a checkpoint
    is dropped when the run resuming it does not average."""
    wants, has = has_average(names), has_average(arrays)
    if wants and not has:
        start = {AVERAGE_PREFIX + n[len(PARAMS_PREFIX) :]: a for n, a in arrays.items() if n.startswith(PARAMS_PREFIX)}
        return {**arrays, **start, STATE_PREFIX + "average_count": np.zeros((), np.int32)}
    if has and not wants:
        return {n: a for n, a in arrays.items() if not (n.startswith(AVERAGE_PREFIX) or n == STATE_PREFIX + "average_count")}
    return arrays


def has_average(names: Iterable[str]) -> bool:
    """True when a checkpoint's array names (or its ``{name: array}``) hold averaged parameters
    (``average/...``)."""
    return any(name.startswith(AVERAGE_PREFIX) for name in names)


def chosen_weights(arrays: Dict[str, np.ndarray], weights: str = "auto", meta_weights: str = "last") -> str:
    """What :func:`select_params` reads for ``weights``: "average" when it is asked for anything but
    "last" and the file has an average, else what the file's parameters are (``meta_weights``: a
    params-only file records it, "last" otherwise)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    return "average" if weights != "last" and has_average(arrays) else meta_weights


def select_params(
    arrays: Dict[str, np.ndarray], weights: str = "auto", path: str | os.PathLike = "<checkpoint>", meta_weights: str = "last"
) -> Dict[str, np.ndarray]:
    """The ``params/...`` arrays of the chosen weights: "last" the parameters of the last step,
    "average" their moving average (:class:`CheckpointError` if the file has none), "auto" the
    average when the file has one, else the last parameters. Averages are renamed ``params/...``.
    ``meta_weights`` is what a params-only file says it holds (``export_params`` records it), so
    "average" also accepts a file exported from an average."""
    chosen = chosen_weights(arrays, weights, meta_weights)
    if weights == "average" and chosen != "average":
        raise CheckpointError(f"{path} holds no averaged parameters (train with --average-decay to keep them)")
    if chosen == "average" and has_average(arrays):
        return {PARAMS_PREFIX + n[len(AVERAGE_PREFIX) :]: a for n, a in arrays.items() if n.startswith(AVERAGE_PREFIX)}
    return {n: a for n, a in arrays.items() if n.startswith(PARAMS_PREFIX)}


def unflatten_params(arrays: Dict[str, np.ndarray]) -> dict:
    """Nested params dict from ``params/<site>/<path>`` names (other names are ignored)."""
    params: dict = {}
    for name, a in arrays.items():
        if not name.startswith(PARAMS_PREFIX):
            continue
        *parents, leaf = name[len(PARAMS_PREFIX) :].split("/")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = a
    return params


def config_from_meta(meta: dict, path: str | os.PathLike = "<checkpoint>"):
    """The :class:`AIRConfig` stored in a checkpoint's metadata."""
    from ..core.config import AIRConfig

    try:
        return AIRConfig.from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in meta["air_config"].items()})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: configuration in the checkpoint is invalid: {e}") from e


def load_params(path: str | os.PathLike, dtype=np.float32, weights: str = "auto") -> Tuple[Any, dict]:
    """``(AIRConfig, params)`` from a training checkpoint or a params-only file, without building
    an SVI state. ``params`` is the nested dict ``svi.get_params`` returns (jax arrays, cast to
    ``dtype``; params files may store float16). ``weights`` (:func:`select_params`): "auto" reads
    the averaged parameters of a run trained with ``average_decay`` and the last ones otherwise.
    (AIR's parameters are unconstrained, so the average needs no transform.)"""
    meta, arrays = read_npz(path)
    return params_from_arrays(meta, arrays, path, dtype, weights)


def params_from_arrays(
    meta: dict, arrays: Dict[str, np.ndarray], path: str | os.PathLike = "<checkpoint>", dtype=np.float32, weights: str = "auto"
) -> Tuple[Any, dict]:
    """:func:`load_params` of a file already read (``read_npz``'s ``(meta, arrays)``)."""
    arrays = select_params(arrays, weights, path, meta.get("weights", "last"))
    params = jax.tree.map(lambda a: jax.numpy.asarray(a, dtype), unflatten_params(arrays))
    if not params:
        raise CheckpointError(f"{path} holds no parameters")
    return config_from_meta(meta, path), params


def export_params(
    src: str | os.PathLike, dst: str | os.PathLike, dtype=None, overwrite: bool = False, weights: str = "auto"
) -> Path:
    """Write the parameters of checkpoint ``src`` to a params-only file ``dst`` (optionally cast,
    e.g. ``numpy.float16`` to halve the size). ``load_params(dst)`` reads it back. ``weights`` as
    :func:`select_params` (the averaged parameters when ``src`` has them); the file records which."""
    meta, arrays = read_npz(src)
    chosen = chosen_weights(arrays, weights, meta.get("weights", "last"))
    selected = select_params(arrays, weights, src, meta.get("weights", "last"))
    params = {k: (a if dtype is None else a.astype(dtype)) for k, a in selected.items()}
    keep = {k: meta[k] for k in ("air_config", "optim_config", "step", "seed", "data") if k in meta}
    return write_npz(dst, params, keep | {"kind": "params", "source": str(src), "weights": chosen}, overwrite=overwrite)
