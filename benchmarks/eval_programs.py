"""What the end of a training run compiles and computes: the evaluation's counting and the
figures' arrays, each way it can be built, one fresh process per measurement.

- ``count_two``: ``count_accuracy`` once per mode (one guide sample, most probable path): two
  compiled programs, the training loop's evaluation before 2026-12-06 (night);
- ``count_one``: ``count_accuracies``: both modes in one program (the loop's evaluation since);
- ``figures_three``: ``infer``, ``decode_windows`` and ``sample_prior`` at XLA's defaults;
- ``figures_one``: ``figure_arrays`` as one program at -O0 on the CPU (``save_figures`` since).

The shipped weights (``numpyro_air.pretrained``) on the cached multi-MNIST data: the 10,000
held-out canvases and the first 2,000 training ones (``--preset minute``'s final evaluation),
chunks of 1,000; 16 held-out canvases for the figures. Each process reports its first call
(tracing, compilation, run) and a second call (compiled)::

    python benchmarks/eval_programs.py --rounds 3 --json > benchmarks/results/cpu_eval_programs_DATE.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODES = ("count_two", "count_one", "figures_three", "figures_one")


def measure(mode: str) -> dict:
    """Run ``mode`` twice in this process: {mode, first_sec, second_sec, accuracies}."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from numpyro_air import pretrained
    from numpyro_air.analysis import inference as inf
    from numpyro_air.analysis.evaluation import figure_arrays
    from numpyro_air.core.one_shot import one_shot_jit
    from numpyro_air.data.batches import to_float
    from numpyro_air.data.datasets import load_dataset

    config, params = pretrained()
    train, test = load_dataset("multi-mnist", progress=False)
    sets = [(to_float(test.images), np.asarray(test.counts)), (to_float(train.images[:2000]), np.asarray(train.counts[:2000]))]
    key = jax.random.PRNGKey(5)
    img16 = jnp.asarray(sets[0][0][:16])
    figures_one = one_shot_jit(figure_arrays, static_argnames=("air",))

    def count_two():
        modes = (False, True)
        return [
            inf.count_accuracy(params, x, c, jax.random.fold_in(key, int(g)), config, g, 1000)["accuracy"]
            for x, c in sets
            for g in modes
        ]

    def count_one():
        return [r["accuracy"] for x, c in sets for r in inf.count_accuracies(params, x, c, key, config, 1000).values()]

    def figures_three():
        res = inf.infer(params, img16, key, config)
        windows = inf.decode_windows(params, res["z_what"][:6], config)
        prior = inf.sample_prior(params, jax.random.fold_in(key, 7), config, 16, jnp.arange(16) % (config.num_steps + 1))
        return jax.device_get((res, windows, prior))

    def figures():
        return jax.device_get(figures_one(params, img16, key, config))

    fn = {"count_two": count_two, "count_one": count_one, "figures_three": figures_three, "figures_one": figures}[mode]
    t0 = time.perf_counter()
    out = fn()
    t1 = time.perf_counter()
    fn()
    t2 = time.perf_counter()
    return {"mode": mode, "first_sec": t1 - t0, "second_sec": t2 - t1, "accuracies": out if mode.startswith("count") else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per mode, interleaved")
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one measurement (the child process)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode)))
        return
    runs = []
    for _ in range(args.rounds):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--mode", mode], check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import jax

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import cpu_model, nproc

    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    result = {"runs": runs, "date": when, "cpu_model": cpu_model(), "nproc": nproc(), "jax_version": jax.__version__}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        first = ", ".join(f"{r['first_sec']:.2f}" for r in mine)
        second = ", ".join(f"{r['second_sec']:.3f}" for r in mine)
        print(f"{mode:14s} first call {first} s; again {second} s")


if __name__ == "__main__":
    main()
