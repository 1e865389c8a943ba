"""Write a held-out multi-MNIST evaluation file built from MNIST *test* digits.

    python experiments/make_eval_set.py --out eval_3digits.npz [--max-digits 3] [--per-count 1000]
        [--seed 0] [--canvas-size 50] [--mnist PATH] [--overwrite]

Canvases come from :func:`numpyro_air.data.generate_multi_mnist` (Pyro's recipe: count uniform over
0..max_digits, digit scale ~ N(1.3, 0.1), uniform offsets) applied to the MNIST test split of
:func:`numpyro_air.data.load_mnist` (``--mnist``: an IDX directory, ``.npz`` or Zarr ``.zip``;
default the embedded canonical MNIST). Images are generated in chunks until every count
0..max_digits has at least ``--per-count`` images; then exactly ``--per-count`` images of each
count are kept (the first ones in generation order, order preserved), so the file is balanced with
``(max_digits + 1) * per_count`` images. The result is a pure function of (MNIST source, options):
chunk i uses ``numpy.random.SeedSequence(seed, spawn_key=(EVAL_STREAM, i))``, a stream distinct
from the ones :func:`numpyro_air.data.load_multi_mnist` derives from the same seed.

The file uses the layout of :mod:`numpyro_air.data.eval_io` (``images`` uint8 (N, H, W), ``counts``
(N,), ``boxes`` (N, K, 4) tight ``(x0, y0, w, h)`` pixel boxes, ``labels`` (N, K)) and is read with
:func:`numpyro_air.data.load_eval_npz`. An existing file is never replaced unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from numpyro_air.data import DataError, MultiMNIST, generate_multi_mnist, load_mnist, save_eval_npz

#: spawn-key tag of the evaluation-set streams (keeps them apart from load_multi_mnist's (0,), (1,)).
EVAL_STREAM = 0xE7A1
_MAX_CHUNKS = 64


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


def make_eval_set(
    digits: np.ndarray,
    digit_labels: np.ndarray,
    *,
    max_digits: int = 3,
    per_count: int = 1000,
    canvas_size: int = 50,
    seed: int = 0,
    progress: bool = False,
) -> MultiMNIST:
    """A balanced multi-MNIST set: exactly ``per_count`` canvases of each count 0..max_digits.

    Args:
        digits: (M, s, s) uint8 source digits (use the MNIST test split for a held-out set).
        digit_labels: (M,) integer classes of ``digits``.
        max_digits: K, the largest count (also the number of box/label slots).
        per_count: images kept per count (>= 1).
        canvas_size: canvas side in pixels.
        seed: non-negative seed; the result is a pure function of (digits, arguments).
        progress: show tqdm bars while generating.

    Returns:
        MultiMNIST with images ((K + 1) * per_count, canvas, canvas) uint8, counts, labels (., K)
        and boxes (., K, 4), in generation order.
    """
    if per_count < 1:
        raise ValueError(f"per_count must be >= 1, got {per_count}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    classes = max_digits + 1
    chunks: list[MultiMNIST] = []
    have = np.zeros(classes, np.int64)
    # First chunk: ~10% + 64 more than the balanced total, so one chunk almost always suffices.
    size = math.ceil(classes * per_count * 1.1) + 64
    for i in range(_MAX_CHUNKS):
        ss = np.random.SeedSequence(seed, spawn_key=(EVAL_STREAM, i))
        chunk = generate_multi_mnist(
            digits,
            digit_labels,
            size,
            max_digits=max_digits,
            canvas_size=canvas_size,
            seed=ss,
            progress=progress,
            desc=f"eval set chunk {i}",
        )
        chunks.append(chunk)
        have += np.bincount(chunk.counts, minlength=classes)
        deficit = int(np.max(per_count - have))
        if deficit <= 0:
            break
        size = math.ceil(classes * deficit * 1.5) + 64
    else:  # pragma: no cover - needs a pathological generator
        raise DataError(f"could not collect {per_count} images per count in {_MAX_CHUNKS} chunks")
    fields = ("images", "counts", "labels", "boxes")
    full = MultiMNIST(*(np.concatenate([getattr(c, f) for c in chunks]) for f in fields))
    keep = np.zeros(len(full), bool)
    for c in range(classes):
        keep[np.flatnonzero(full.counts == c)[:per_count]] = True
    return full.subset(keep)


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point (see the module docstring); returns the path written."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output .npz path (written exactly; no suffix added)")
    p.add_argument("--max-digits", type=_non_negative_int, default=3, help="counts 0..max_digits (default 3)")
    p.add_argument("--per-count", type=_positive_int, default=1000, help="images per count (default 1000)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="generator seed (default 0)")
    p.add_argument("--canvas-size", type=_positive_int, default=50, help="canvas side in pixels (default 50)")
    p.add_argument("--mnist", default=None, help="MNIST source for load_mnist (default: embedded MNIST)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = p.parse_args(argv)

    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} already exists; pass --overwrite to replace it")
    if out.is_dir():
        raise SystemExit(f"error: {out} is a directory")
    try:
        _, _, x_test, y_test = load_mnist(args.mnist)
        ds = make_eval_set(
            x_test,
            y_test,
            max_digits=args.max_digits,
            per_count=args.per_count,
            canvas_size=args.canvas_size,
            seed=args.seed,
            progress=sys.stderr.isatty(),
        )
    except (DataError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    path = save_eval_npz(out, ds)
    hist = np.bincount(ds.counts, minlength=args.max_digits + 1)
    per = ", ".join(f"{c}: {n}" for c, n in enumerate(hist.tolist()))
    print(
        f"wrote {len(ds)} images ({per} per count; {args.canvas_size}x{args.canvas_size}, "
        f"MNIST test digits, seed {args.seed}) to {path}"
    )
    return path


if __name__ == "__main__":
    main()
