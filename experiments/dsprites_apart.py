"""The multi-dSprites training scenes whose sprites do not overlap, as an image file for ``--data``.

    python experiments/dsprites_apart.py --out runs/dsprites_apart_train.npz [--test-out runs/dsprites_test1000.npz]

Reads the cached training split of ``--dataset multi-dsprites`` (default generator options;
generated on first use) and keeps the scenes in which no two sprites' boxes intersect
(``analyse_overlap.overlapping``, the test the results' "sprites apart" columns use). Writes
``images`` (N, 64, 64, 3) uint8, ``counts`` and ``boxes``, which ``numpyro-air train --data``
reads; ``--test-out`` also writes the first ``--num-test`` scenes of the cached test split (with
their overlaps) for ``--test-data``. Used for a curriculum: train on the scenes apart first, then
``--init-from`` that run on the full scenes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from analyse_overlap import overlapping  # noqa: E402

from numpyro_air.data.datasets import load_dataset  # noqa: E402


def apart(split):
    """The scenes of ``split`` (a :class:`~numpyro_air.data.MultiDSprites`) in which no two sprites'
    boxes intersect, in their order."""
    return split.subset(~overlapping(split.boxes, split.counts))


def write_scenes(path, split) -> None:
    """``images``, ``counts`` and ``boxes`` of ``split`` as an .npz that ``--data`` reads."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=split.images, counts=split.counts, boxes=split.boxes)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the .npz of the training scenes whose sprites are apart")
    p.add_argument("--test-out", help="also write the first --num-test test scenes here")
    p.add_argument("--num-test", type=int, default=1000)
    args = p.parse_args(argv)
    train, test = load_dataset("multi-dsprites")
    kept = apart(train)
    write_scenes(args.out, kept)
    by_count = np.bincount(kept.counts, minlength=4).tolist()
    print(f"{args.out}: {len(kept)} of {len(train)} training scenes, by count {by_count}")
    if args.test_out:
        write_scenes(args.test_out, test.subset(slice(0, args.num_test)))
        print(f"{args.test_out}: the first {args.num_test} test scenes")


if __name__ == "__main__":
    main()
