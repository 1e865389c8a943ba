"""The optimiser's update alone, with and without the training step's NaN guard, on the tutorial
networks' parameters (Adam of both parameter groups, as ``OptimConfig.tutorial()``).

    python benchmarks/nan_guard.py [--calls 30] [--rounds 3] [--json]

Three jitted functions ``(params, opt_state, grads) -> (params, opt_state)`` with the parameters
and state donated, each timed as the median of ``--calls`` blocked calls after 3 warm-up calls,
in ``--rounds`` interleaved rounds in this process:

- ``adam``: ``tx.update`` and ``optax.apply_updates``;
- ``adam + select``: the same, then ``jnp.where(ok, new, old)`` on every leaf of the parameters and
  the optimiser state (the training step's guard, ``numpyro_air.train.svi.make_update``);
- ``adam + cond``: ``lax.cond(ok, adam, keep)``,

with ``ok`` the finiteness of the sum of all gradient elements. ``--json`` writes
``results/cpu_nan_guard.json``. Alone, the select costs several times Adam's update; inside the
training step it fuses into Adam's element-wise update, and the cond made the step no faster
(``benchmarks/README.md``, "What was tried and dropped").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from numpyro_air import PRESETS, make_svi
from numpyro_air.train.svi import all_finite


def variants(tx: optax.GradientTransformation) -> dict:
    """name -> (params, opt_state, grads) -> (params, opt_state)."""

    def adam(p, s, g):
        updates, s2 = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s2

    def finite(g):
        return all_finite(jnp.float32(0), g)  # the step's test of the gradients

    def select(p, s, g):
        ok = finite(g)
        return jax.tree.map(lambda new, old: jnp.where(ok, new, old), adam(p, s, g), (p, s))

    def cond(p, s, g):
        return jax.lax.cond(finite(g), lambda: adam(p, s, g), lambda: (p, s))

    return {"adam": adam, "adam + select": select, "adam + cond": cond}


def median_ms(fn, params, opt_state, grads, calls: int) -> float:
    f = jax.jit(fn, donate_argnums=(0, 1))
    p, s = jax.tree.map(jnp.array, (params, opt_state))
    for _ in range(3):
        p, s = f(p, s, grads)
    jax.block_until_ready((p, s))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        p, s = jax.block_until_ready(f(p, s, grads))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    recipe = PRESETS["tutorial"]
    svi = make_svi(recipe.air, recipe.optim)
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), jnp.zeros((64,) + tuple(recipe.air.image_shape)))
    params = svi.optim.get_params(state.optim_state)
    tx = recipe.optim.optimizer()
    opt_state = tx.init(params)
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 1e-3, x.shape), x.dtype), params)
    megabytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)) / 1e6
    print(f"{len(jax.tree.leaves(params))} parameter arrays, {megabytes:.1f} MB")
    runs = {name: [] for name in variants(tx)}
    for r in range(a.rounds):
        for name, fn in variants(tx).items():
            runs[name].append(median_ms(fn, params, opt_state, grads, a.calls))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f} ms" for n, v in runs.items()), flush=True)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "param_megabytes": megabytes,
        "ms_per_round": runs,
        "median_ms": {n: statistics.median(v) for n, v in runs.items()},
    }
    print("medians: " + ", ".join(f"{n} {v:.2f} ms" for n, v in out["median_ms"].items()))
    if a.json:
        path = Path(__file__).resolve().parent / "results" / "cpu_nan_guard.json"
        path.write_text(json.dumps(out, indent=1))
        print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
