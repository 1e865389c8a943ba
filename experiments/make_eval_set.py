"""Write a held-out evaluation file of a generated benchmark, balanced over its counts.

    python experiments/make_eval_set.py --out eval_3digits.npz [--dataset multi-mnist] [--max-digits 3]
        [--per-count 1000] [--seed 0] [--canvas-size N] [--mnist PATH] [--overwrite]
    python experiments/make_eval_set.py --dataset multi-dsprites --out dsprites_test.npz [--max-objects 3]
    python experiments/make_eval_set.py --dataset scattered-mnist --out scattered_6to9.npz --min-digits 6 --max-digits 9

Scenes come from the generator of ``--dataset`` (:func:`numpyro_air.data.generate_dataset`):
``multi-mnist`` (Pyro's recipe, counts 0..``--max-digits``, default 3, 50x50), ``multi-dsprites``
(64x64 RGB, 0..``--max-objects`` sprites of ``--min-size``..``--max-size`` px) or
``scattered-mnist`` (48x48, ``--min-digits``..``--max-digits`` digits of ``--digit-size`` px whose
squares overlap by at most ``--max-overlap`` px, SPAIR's 98 by default, ``none``: unbounded); the
options not given keep the generator's defaults. MNIST-based scenes use the MNIST *test* digits
of :func:`numpyro_air.data.load_mnist` (``--mnist``: an IDX directory, ``.npz`` or Zarr ``.zip``;
default the embedded canonical MNIST). Scenes are generated in chunks until every count has at
least ``--per-count`` scenes; then exactly ``--per-count`` scenes of each count are kept (the first
ones in generation order, order preserved). The result is a pure function of (dataset, MNIST
source, options): chunk i uses ``numpy.random.SeedSequence(seed, spawn_key=(EVAL_STREAM, i))``, a
stream distinct from the ones the training loaders derive from the same seed.

The file uses the layout of :mod:`numpyro_air.data.eval_io` (``images`` uint8 (N, H, W) or
(N, H, W, 3), ``counts`` (N,), ``boxes`` (N, K, 4) tight ``(x0, y0, w, h)`` pixel boxes,
``labels`` (N, K): digit classes or sprite shapes) and is read with
:func:`numpyro_air.data.load_eval_npz` or ``numpyro-air evaluate --data``. An existing file is
never replaced unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from numpyro_air.cli.train import int_or_none
from numpyro_air.data import DATASETS, DataError, MultiMNIST, dataset_config, generate_dataset, save_eval_npz

#: spawn-key tag of the evaluation-set streams (keeps them apart from the loaders' (0,), (1,)).
EVAL_STREAM = 0xE7A1
_MAX_CHUNKS = 64
#: multi-MNIST evaluation files count 0..3 unless --max-digits says otherwise (training: 0..2).
EVAL_MAX_DIGITS = 3
# option -> (type, the datasets it applies to)
_SCENE_OPTIONS = {
    "max_digits": (int, ("multi-mnist", "scattered-mnist")),
    "min_digits": (int, ("scattered-mnist",)),
    "digit_size": (int, ("scattered-mnist",)),
    "max_overlap": (int_or_none, ("scattered-mnist",)),  # a negative value is refused by the config
    "max_objects": (int, ("multi-dsprites",)),
    "min_size": (float, ("multi-dsprites",)),
    "max_size": (float, ("multi-dsprites",)),
    "canvas_size": (int, tuple(DATASETS)),
}


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def balanced_set(
    generate: Callable[[int, np.random.SeedSequence], MultiMNIST],
    counts: Sequence[int],
    *,
    per_count: int = 1000,
    seed: int = 0,
) -> MultiMNIST:
    """Exactly ``per_count`` scenes of each count in ``counts``, from ``generate(n, seed_sequence)``
    called on chunk streams ``SeedSequence(seed, spawn_key=(EVAL_STREAM, i))`` until every count
    has enough (first scenes in generation order kept, order preserved)."""
    if per_count < 1:
        raise ValueError(f"per_count must be >= 1, got {per_count}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    counts = np.asarray(counts)
    chunks: list[MultiMNIST] = []
    have = np.zeros(len(counts), np.int64)
    # First chunk: ~10% + 64 more than the balanced total, so one chunk almost always suffices.
    size = math.ceil(len(counts) * per_count * 1.1) + 64
    for i in range(_MAX_CHUNKS):
        chunk = generate(size, np.random.SeedSequence(seed, spawn_key=(EVAL_STREAM, i)))
        chunks.append(chunk)
        have += np.array([np.sum(chunk.counts == c) for c in counts])
        deficit = int(np.max(per_count - have))
        if deficit <= 0:
            break
        size = math.ceil(len(counts) * deficit * 1.5) + 64
    else:  # pragma: no cover - needs a pathological generator
        raise DataError(f"could not collect {per_count} scenes per count in {_MAX_CHUNKS} chunks")
    fields = ("images", "counts", "labels", "boxes")
    full = type(chunks[0])(*(np.concatenate([getattr(c, f) for c in chunks]) for f in fields))
    keep = np.zeros(len(full), bool)
    for c in counts:
        keep[np.flatnonzero(full.counts == c)[:per_count]] = True
    return full.subset(keep)


def make_eval_set(
    digits: np.ndarray,
    digit_labels: np.ndarray,
    *,
    max_digits: int = EVAL_MAX_DIGITS,
    per_count: int = 1000,
    canvas_size: int = 50,
    seed: int = 0,
    progress: bool = False,
) -> MultiMNIST:
    """A balanced multi-MNIST set: exactly ``per_count`` canvases of each count 0..max_digits
    made of ``digits`` (M, s, s) uint8 with classes ``digit_labels`` (M,) (use the MNIST test
    split for a held-out set); see :func:`balanced_set`."""
    from numpyro_air.data import generate_multi_mnist

    def generate(n: int, ss: np.random.SeedSequence) -> MultiMNIST:
        return generate_multi_mnist(
            digits, digit_labels, n, max_digits=max_digits, canvas_size=canvas_size, seed=ss, progress=progress
        )

    return balanced_set(generate, range(max_digits + 1), per_count=per_count, seed=seed)


def dataset_eval_set(
    name: str, options: dict, *, per_count: int, seed: int, source: str | None = None, progress: bool = False
) -> tuple[MultiMNIST, object]:
    """(balanced held-out set, generator config) of dataset ``name`` with the scene ``options``
    (the fields of its generator config; the others keep their defaults)."""
    if name == "multi-mnist":
        options = {"max_digits": EVAL_MAX_DIGITS} | options
    config = dataset_config(name, **options)
    low, high = DATASETS[name].count_range(config)

    def generate(n: int, ss: np.random.SeedSequence) -> MultiMNIST:
        return generate_dataset(name, config, n, ss, split="test", source=source, progress=progress)

    return balanced_set(generate, range(low, high + 1), per_count=per_count, seed=seed), config


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point (see the module docstring); returns the path written."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output .npz path (written exactly; no suffix added)")
    p.add_argument("--dataset", choices=list(DATASETS), default="multi-mnist", help="generator (default multi-mnist)")
    for name, (kind, where) in _SCENE_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if kind is int:
            kind = _non_negative_int if name in ("max_digits", "max_objects", "min_digits") else _positive_int
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=f"{', '.join(where)} (default: the generator's)")
    p.add_argument("--per-count", type=_positive_int, default=1000, help="scenes per count (default 1000)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="generator seed (default 0)")
    p.add_argument("--mnist", default=None, help="MNIST source for load_mnist (default: embedded MNIST)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)

    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} already exists; pass --overwrite to replace it")
    if out.is_dir():
        raise SystemExit(f"error: {out} is a directory")
    options = {k: getattr(args, k) for k in _SCENE_OPTIONS if hasattr(args, k)}
    wrong = [k for k in options if args.dataset not in _SCENE_OPTIONS[k][1]]
    if wrong:
        raise SystemExit(f"error: {', '.join('--' + k.replace('_', '-') for k in wrong)}: not an option of {args.dataset}")
    if args.mnist is not None and not DATASETS[args.dataset].uses_mnist:
        raise SystemExit(f"error: --mnist: {args.dataset} is not built from MNIST digits")
    try:
        ds, config = dataset_eval_set(
            args.dataset, options, per_count=args.per_count, seed=args.seed, source=args.mnist, progress=sys.stderr.isatty()
        )
    except (DataError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    path = save_eval_npz(out, ds)
    low, high = DATASETS[args.dataset].count_range(config)
    hist = [int(np.sum(ds.counts == c)) for c in range(low, high + 1)]
    per = ", ".join(f"{c}: {n}" for c, n in zip(range(low, high + 1), hist))
    source = "MNIST test digits, " if DATASETS[args.dataset].uses_mnist else ""
    size = config.canvas_size
    print(f"wrote {len(ds)} {args.dataset} scenes ({per} per count; {size}x{size}, {source}seed {args.seed}) to {path}")
    return path


if __name__ == "__main__":
    main()
