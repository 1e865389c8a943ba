"""Checkpoints: SVI state (params, optimiser state, RNG key), step and configs in one file.

Layout: ``MAGIC`` (8 bytes) + SHA-256 of the payload (32 bytes) + payload, where the payload is
Flax's msgpack serialisation of ``{"meta": json str, "leaves": {"0": array, ...}}``. The leaves
are the flattened SVI state; they are restored into the structure of a freshly initialised state
(shapes and dtypes must agree), so a checkpoint written for another configuration is refused.
Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Tuple

import jax
import numpy as np
from flax import serialization

MAGIC = b"NPAIRCK1"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the current configuration."""


def save_checkpoint(path: str | os.PathLike, state: Any, meta: dict, overwrite: bool = True) -> Path:
    """Write ``state`` (any pytree of arrays) and JSON-able ``meta`` to ``path`` atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} exists; refusing to overwrite it (pass overwrite=True)")
    leaves = jax.tree.leaves(jax.device_get(state))
    payload = serialization.msgpack_serialize(
        {
            "meta": json.dumps({**meta, "format_version": FORMAT_VERSION}, sort_keys=True),
            "leaves": {str(i): np.asarray(leaf) for i, leaf in enumerate(leaves)},
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> Tuple[dict, list]:
    """Read and verify a checkpoint; returns (meta, leaves). Raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a file written by numpyro-air)")
    raw = path.read_bytes()
    if len(raw) < 40 or raw[:8] != MAGIC:
        raise CheckpointError(f"{path} is not a numpyro-air checkpoint (bad header)")
    payload = raw[40:]
    if hashlib.sha256(payload).digest() != raw[8:40]:
        raise CheckpointError(f"{path} is corrupt (checksum mismatch; truncated or modified file)")
    try:
        obj = serialization.msgpack_restore(payload)
        meta = json.loads(obj["meta"])
        leaves = [obj["leaves"][str(i)] for i in range(len(obj["leaves"]))]
    except Exception as e:  # noqa: BLE001 - any decoding failure means a corrupt file
        raise CheckpointError(f"{path} could not be decoded: {e}") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    return meta, leaves


def restore_into(template: Any, leaves: list, path: str | os.PathLike = "<checkpoint>") -> Any:
    """Put ``leaves`` into the structure of ``template`` (arrays or ShapeDtypeStructs), checking
    count, shapes and dtypes."""
    t_leaves, treedef = jax.tree.flatten(template)
    if len(t_leaves) != len(leaves):
        raise CheckpointError(
            f"{path}: state has {len(leaves)} arrays but the current configuration expects {len(t_leaves)}"
        )
    out = []
    for i, (t, leaf) in enumerate(zip(t_leaves, leaves)):
        leaf = np.asarray(leaf)
        if tuple(t.shape) != leaf.shape or np.dtype(t.dtype) != leaf.dtype:
            raise CheckpointError(
                f"{path}: array {i} has shape {leaf.shape} {leaf.dtype}, expected {tuple(t.shape)} {np.dtype(t.dtype)}"
            )
        out.append(jax.numpy.asarray(leaf))
    return jax.tree.unflatten(treedef, out)


def load_trained(path: str | os.PathLike):
    """(AIRConfig, constrained params, meta) from a training checkpoint, for inference."""
    from .config import AIRConfig
    from .svi import OptimConfig, make_svi

    meta, leaves = read_checkpoint(path)
    try:
        air = AIRConfig.from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in meta["air_config"].items()})
        opt = OptimConfig(**meta["optim_config"])
        batch = int(meta["batch_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: configuration in the checkpoint is invalid: {e}") from e
    svi = make_svi(air, opt)
    example = jax.numpy.zeros((batch, air.image_size, air.image_size), jax.numpy.float32)
    template = jax.eval_shape(svi.init, jax.random.PRNGKey(0), example)
    state = restore_into(template, leaves, path)
    return air, svi.get_params(state), meta
