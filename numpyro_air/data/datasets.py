"""The generated benchmarks by name: ``multi-mnist``, ``multi-dsprites`` and ``scattered-mnist``.

One table (:data:`DATASETS`) maps each name to its generator configuration class, its loader and
its image channels, so that the CLI, ``experiments/make_eval_set.py`` and user code select a
benchmark the same way::

    config = dataset_config("scattered-mnist", max_digits=9)
    train, test = load_dataset("scattered-mnist", config)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from .dsprites import MultiDSpritesConfig, generate_multi_dsprites, load_multi_dsprites
from .mnist import load_mnist
from .multi_mnist import MultiMNIST, MultiMNISTConfig, generate_multi_mnist, load_multi_mnist, scene_fields
from .scattered_mnist import ScatteredMNISTConfig, generate_scattered_mnist, load_scattered_mnist

__all__ = ["DATASETS", "Dataset", "dataset_config", "generate_dataset", "load_dataset"]


@dataclass(frozen=True)
class Dataset:
    """One generated benchmark.

    Attributes:
        name: the CLI name.
        config_type: its frozen generator configuration (every field keys the cache).
        channels: 1 (grayscale, images (N, H, W)) or 3 (RGB, images (N, H, W, 3)).
        uses_mnist: whether the scenes are built from MNIST digits (``source`` applies).
        max_count_field, min_count_field: the config fields bounding the objects per scene
            (``min_count_field`` None: scenes may be empty).
    """

    name: str
    config_type: type
    channels: int
    uses_mnist: bool
    max_count_field: str
    min_count_field: str | None = None

    def count_range(self, config: Any) -> tuple[int, int]:
        """(fewest, most) objects per scene of ``config``."""
        low = 0 if self.min_count_field is None else int(getattr(config, self.min_count_field))
        return low, int(getattr(config, self.max_count_field))


DATASETS: Mapping[str, Dataset] = MappingProxyType(
    {
        "multi-mnist": Dataset("multi-mnist", MultiMNISTConfig, 1, True, "max_digits"),
        "multi-dsprites": Dataset("multi-dsprites", MultiDSpritesConfig, 3, False, "max_objects"),
        "scattered-mnist": Dataset("scattered-mnist", ScatteredMNISTConfig, 1, True, "max_digits", "min_digits"),
    }
)


def _dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    return DATASETS[name]


def dataset_config(name: str, base: Any = None, **fields: Any) -> Any:
    """The generator configuration of dataset ``name``: ``base`` (default: the config class's
    defaults) with ``fields`` replaced. Raises ValueError naming a field the dataset lacks."""
    ds = _dataset(name)
    known = {f.name for f in dataclasses.fields(ds.config_type)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{name} has no option {', '.join(unknown)} (its options: {', '.join(sorted(known))})")
    return dataclasses.replace(base if base is not None else ds.config_type(), **fields)


def load_dataset(
    name: str,
    config: Any = None,
    *,
    source: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[MultiMNIST, MultiMNIST]:
    """(train, test) splits of dataset ``name`` for ``config`` (default: its defaults), generated
    once and cached. ``source``: the MNIST source of the MNIST-based datasets."""
    ds = _dataset(name)
    config = ds.config_type() if config is None else config
    if not isinstance(config, ds.config_type):
        raise TypeError(f"{name} needs a {ds.config_type.__name__}, got {type(config).__name__}")
    if source is not None and not ds.uses_mnist:
        raise ValueError(f"{name} is not built from MNIST: a MNIST source does not apply")
    loaders: dict[str, Callable[..., tuple[MultiMNIST, MultiMNIST]]] = {
        "multi-mnist": lambda: load_multi_mnist(config, source=source, cache_dir=cache_dir, progress=progress),
        "multi-dsprites": lambda: load_multi_dsprites(config, cache_dir=cache_dir, progress=progress),
        "scattered-mnist": lambda: load_scattered_mnist(config, source=source, cache_dir=cache_dir, progress=progress),
    }
    return loaders[name]()


def generate_dataset(
    name: str,
    config: Any,
    num_images: int,
    seed: int | np.random.SeedSequence,
    *,
    split: str = "test",
    source: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> MultiMNIST:
    """``num_images`` scenes of dataset ``name`` with ``config``'s scene parameters (its sizes and
    counts; its ``num_*`` and ``seed`` fields are not used) from the PRNG stream ``seed``. MNIST
    based datasets use the digits of MNIST's ``split`` ("train" or "test")."""
    ds = _dataset(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(config, ds.config_type):
        raise TypeError(f"{name} needs a {ds.config_type.__name__}, got {type(config).__name__}")
    if source is not None and not ds.uses_mnist:
        raise ValueError(f"{name} is not built from MNIST: a MNIST source does not apply")
    scene = scene_fields(config)
    if name == "multi-dsprites":
        return generate_multi_dsprites(num_images, **scene, seed=seed, progress=progress)
    x_train, y_train, x_test, y_test = load_mnist(source)
    digits, labels = (x_test, y_test) if split == "test" else (x_train, y_train)
    generate = generate_scattered_mnist if name == "scattered-mnist" else generate_multi_mnist
    return generate(digits, labels, num_images, **scene, seed=seed, progress=progress)
