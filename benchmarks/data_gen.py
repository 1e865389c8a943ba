"""Time multi-MNIST generation: 60,000 train + 10,000 test canvases (Pyro's recipe).

Usage:  python benchmarks/data_gen.py [--num-train 60000] [--num-test 10000] [--progress]

Prints the machine (platform.processor(), CPU model, usable cores), the time to load MNIST,
the time to generate all canvases (single process), and the cache write/read times.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model as _cpu_model  # noqa: E402

from numpyro_air.data import MultiMNISTConfig, generate_multi_mnist, load_mnist
from numpyro_air.data.mnist import CANONICAL_FINGERPRINT
from numpyro_air.data.multi_mnist import _child, _read_cache, _seed_sequence, _write_cache, cache_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-train", type=int, default=60000)
    ap.add_argument("--num-test", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    cfg = MultiMNISTConfig(num_train=args.num_train, num_test=args.num_test, seed=args.seed)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    print(
        f"machine: processor={platform.processor()!r} cpu={_cpu_model()!r} "
        f"nproc={usable} cpu_count={os.cpu_count()} python={platform.python_version()}"
    )

    t0 = time.perf_counter()
    x_train, y_train, x_test, y_test = load_mnist()
    t_mnist = time.perf_counter() - t0

    root = _seed_sequence(cfg.seed)
    kw = dict(
        max_digits=cfg.max_digits,
        canvas_size=cfg.canvas_size,
        scale_mean=cfg.scale_mean,
        scale_sd=cfg.scale_sd,
        progress=args.progress,
    )
    t0 = time.perf_counter()
    train = generate_multi_mnist(x_train, y_train, cfg.num_train, seed=_child(root, 0), desc="train", **kw)
    test = generate_multi_mnist(x_test, y_test, cfg.num_test, seed=_child(root, 1), desc="test", **kw)
    t_gen = time.perf_counter() - t0
    n = len(train) + len(test)

    with tempfile.TemporaryDirectory() as d:
        path = cache_path(cfg, CANONICAL_FINGERPRINT, d)
        t0 = time.perf_counter()
        _write_cache(path, {"train": train, "test": test}, cfg, CANONICAL_FINGERPRINT)
        t_write = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        t0 = time.perf_counter()
        _read_cache(path, cfg, CANONICAL_FINGERPRINT)
        t_read = time.perf_counter() - t0

    counts = np.bincount(np.concatenate([train.counts, test.counts]), minlength=cfg.max_digits + 1)
    print(f"load_mnist: {t_mnist:.2f} s")
    print(
        f"generated {n} images ({len(train)} train + {len(test)} test, "
        f"{cfg.canvas_size}x{cfg.canvas_size}, counts {counts.tolist()}) in {t_gen:.2f} s "
        f"({n / t_gen:.0f} images/s, single process)"
    )
    print(f"cache write: {t_write:.2f} s ({size_mb:.1f} MB compressed), cache read+verify: {t_read:.2f} s")


if __name__ == "__main__":
    main()
