"""Pretrained AIR weights shipped with the package, and held-out scenes to try them on.

    from numpyro_air import pretrained, infer
    config, params = pretrained()
    scenes = heldout_scenes(100)                    # multi-MNIST from MNIST *test* digits
    out = infer(params, scenes.images_float(), jax.random.PRNGKey(0), config, greedy=True)

The weights (``numpyro_air/weights/air_multi_mnist.npz``) are the parameters only (named leaves
as in checkpoints, float16 storage) of the best seed of the 3-seed, 20,000-step ``--preset fast``
run described in ``experiments/results/fast_preset/README.md``; ``air_multi_mnist.json`` beside them records the file's
SHA-256, the run, and the held-out accuracies measured in float32 and after the float16 export.
:func:`pretrained` checks the file's SHA-256 against that manifest (and the arrays' own checksum
inside the file) before returning anything.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Tuple

import numpy as np

from .core.config import AIRConfig
from .train.checkpoint import CheckpointError, load_params

WEIGHTS_FILE = "air_multi_mnist.npz"
MANIFEST_FILE = "air_multi_mnist.json"
#: seed of the demo / test scenes (a stream of its own, apart from the training data's)
HELDOUT_SEED = 20161205


def weights_dir() -> Path:
    """Directory of the shipped weights inside the installed package."""
    return Path(str(resources.files("numpyro_air") / "weights"))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest() -> dict:
    """The manifest of the shipped weights: ``sha256``, ``source`` run, measured accuracies."""
    path = weights_dir() / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"pretrained-weights manifest {path} is missing (broken installation?)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"pretrained-weights manifest {path} is not valid JSON: {e}") from e


def weights_path(verify: bool = True) -> Path:
    """The shipped weights file (what ``numpyro-air train --init-from pretrained`` starts from).
    ``verify`` checks its SHA-256 against the manifest; a missing or corrupt file raises
    :class:`~numpyro_air.train.checkpoint.CheckpointError` naming it."""
    path = weights_dir() / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"pretrained weights {path} are missing (broken installation?)")
    if verify:
        want, got = manifest().get("sha256"), file_sha256(path)
        if want != got:
            raise CheckpointError(f"pretrained weights {path} are corrupt: SHA-256 {got}, manifest says {want}")
    return path


def pretrained(dtype: Any = np.float32, verify: bool = True) -> Tuple[AIRConfig, dict]:
    """``(AIRConfig, params)`` of the shipped pretrained model, cast to ``dtype`` (float32 by
    default; the file stores float16). ``verify``: :func:`weights_path`'s check of the file."""
    return load_params(weights_path(verify), dtype)


def heldout_scenes(num: int = 1000, max_digits: int = 2, seed: int = HELDOUT_SEED):
    """``num`` multi-MNIST scenes (Pyro's recipe, 0..``max_digits`` digits) built from the MNIST
    *test* digits of the embedded MNIST, so never seen in training; a
    :class:`~numpyro_air.data.MultiMNIST` with ``images`` (N, 50, 50) uint8, ``counts``, ``boxes``."""
    from .data import generate_multi_mnist, load_mnist

    if int(num) < 1:
        raise ValueError(f"num must be >= 1, got {num!r}")
    _, _, test_images, test_labels = load_mnist()
    return generate_multi_mnist(test_images, test_labels, int(num), max_digits=max_digits, seed=seed)
