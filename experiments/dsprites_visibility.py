"""How much of each sprite a held-out multi-dSprites file leaves visible.

    python experiments/dsprites_visibility.py [--per-count 500] [--seed 0] [--out FILE.json]

Regenerates the scenes of ``experiments/make_eval_set.py --dataset multi-dsprites`` (default
options, the same chunk streams and the same balanced selection) with every sprite's coverage
mask, and reports, per true count, how many scenes have a sprite whose visible fraction (its
coverage times the transmittance of the sprites drawn after it, over its coverage) is under 25%,
50% and 75%. Checks that the regenerated counts equal the file's when ``--data`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_eval_set  # noqa: E402

from numpyro_air.data import dsprites as D  # noqa: E402


def visible_fractions(n: int, seed_seq, cfg: D.MultiDSpritesConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts (n,), visible fraction (n, K), NaN for absent slots, colours (n, K, 3) in [0, 1]),
    from the generator's own random draws and sprite placement."""
    h = cfg.canvas_size
    counts, shapes, sizes, angles, colours, where = D._draw(seed_seq, n, cfg.max_objects, cfg.min_size, cfg.max_size)
    vis = np.full((n, cfg.max_objects), np.nan)
    for i in range(n):
        masks = []
        for j in range(int(counts[i])):
            a, top, left, _, _ = D._place(
                int(shapes[i, j]), float(sizes[i, j]), float(angles[i, j]), where[i, j], h, cfg.supersample
            )
            m = np.zeros((h, h))
            m[top : top + a.shape[0], left : left + a.shape[1]] = a
            masks.append(m)
        for j, m in enumerate(masks):
            seen = m * np.prod([1.0 - later for later in masks[j + 1 :]], axis=0) if j + 1 < len(masks) else m
            vis[i, j] = seen.sum() / m.sum()
    return counts, vis, colours / 255.0


def heldout_attributes(per_count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts (N,), visible fraction (N, K), colours (N, K, 3) in [0, 1]) of the balanced held-out
    scenes of ``make_eval_set.py --dataset multi-dsprites`` (default options), in the file's order:
    ``per_count`` scenes of each count from its first chunk."""
    cfg = D.MultiDSpritesConfig()
    counts_range = range(cfg.max_objects + 1)
    size = math.ceil(len(counts_range) * per_count * 1.1) + 64  # make_eval_set's first chunk
    seq = np.random.SeedSequence(seed, spawn_key=(make_eval_set.EVAL_STREAM, 0))
    counts, vis, colours = visible_fractions(size, seq, cfg)
    keep = np.zeros(size, bool)
    for c in counts_range:
        idx = np.flatnonzero(counts == c)[:per_count]
        if len(idx) < per_count:
            raise SystemExit(f"error: the first chunk holds {len(idx)} scenes of count {c}, fewer than --per-count")
        keep[idx] = True
    return counts[keep], vis[keep], colours[keep]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-count", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="the held-out file, to check the regenerated counts against")
    p.add_argument("--out", help="write the table as JSON here")
    args = p.parse_args(argv)
    counts_range = range(D.MultiDSpritesConfig().max_objects + 1)
    counts, vis, _ = heldout_attributes(args.per_count, args.seed)
    if args.data is not None and not np.array_equal(np.load(args.data)["counts"], counts):
        sys.exit(f"error: {args.data}: its counts differ from the regenerated scenes (other options or seed?)")
    least = np.nanmin(np.where(np.isnan(vis), np.inf, vis), axis=1)
    table = {
        str(c): {f"under_{int(t * 100)}pct": int(np.sum(least[counts == c] < t)) for t in (0.25, 0.5, 0.75)}
        | {"scenes": int(np.sum(counts == c))}
        for c in counts_range
        if c >= 2
    }
    print(json.dumps(table, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
