"""Pyro's AIR example against numpyro-air on this machine: same networks, interleaved runs.

Usage:  python benchmarks/vs_pyro.py --pyro-air-dir DIR [--pyro-python .venv-pyro/bin/python]
                                     [--batch-sizes 64 256] [--infer-batch 1000] [--steps 20] [--warmup 3]
                                     [--infer-steps 5] [--rounds 2] [--sides ours pyro] [--torch-threads N]
                                     [--compute-dtype float32|bfloat16] [--system-allocator] [--json]

Setup of the Pyro side (once; none of it is part of this repository):

    python3 -m venv .venv-pyro && .venv-pyro/bin/pip install torch pyro-ppl numpy

and a checkout of pyro-ppl/pyro: ``--pyro-air-dir`` is its ``examples/air`` directory (``air.py``,
``modules.py``). Our side runs with the interpreter that runs this script (the project's
environment, ``pip install -e .``).

What is timed, with the tutorial recipe (``Recipe.tutorial()``; Pyro's tutorial flags
``--z-pres-prior 0.01 --scale-prior-sd 0.2 --predict-net 200 --bl-predict-net 200
--decoder-output-use-sigmoid --decoder-output-bias -2 -blr 0.1``), on random 50x50 images in [0, 1]:

- training step at each of ``--batch-sizes``: ours is the bare step ``jit_update(svi, cfg)`` (state donated)
  fed a pre-placed batch, each step blocked (as ``svi_step.py``); Pyro's is ``svi.step(X,
  batch_size=B, z_pres_prior_p=...)`` with ``SVI(air.model, air.guide, Adam, TraceGraph_ELBO())``,
  the Adam learning rates per parameter as Pyro's ``main.py`` sets them (baseline params "bl_*":
  the baseline lr) and X = 4 x B images (the guide's plate subsamples B of them);
- guide-only inference at ``--infer-batch`` images: ours ``infer(params, images, key, config,
  reconstruct=False)``; Pyro's ``poutine.trace(air.guide).get_trace(images, B)`` under
  ``torch.no_grad()``.

Pyro's ``AIR`` is built with the keyword arguments derived from our ``AIRConfig.tutorial()`` and
its z_pres prior from ours (``numpyro_air.core.prior.z_pres_prior_probs``), so both sides run the same
networks and prior. Each measurement runs in a fresh child process of the right interpreter (this
script with ``--child``), which prints one JSON line with the median seconds of its timed calls;
the children alternate ours, Pyro, ours, Pyro, ... for each task in each of ``--rounds`` rounds, and
the report gives the best and the median of each side's child medians and the ratio Pyro / ours.
Both children run with glibc's malloc keeping freed memory in the process, as ``numpyro-air
train`` sets it for itself (the ``MALLOC_*_`` variables of
``numpyro_air.train.allocator.malloc_environment()``), and ours runs its computations on the
calling thread as the CLI does (``synchronous_cpu_dispatch``); ``--system-allocator`` runs both
with glibc's defaults and ours with JAX's asynchronous dispatch. Pyro's times swing with other
load on the cores: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model as _cpu_model  # noqa: E402
from machine import median_times as _median_times
from machine import nproc as _nproc

HERE = Path(__file__).resolve().parent
DEFAULT_PYRO_PYTHON = HERE.parent / ".venv-pyro" / "bin" / "python"
_TORCH_NL = {
    "relu": "ReLU",
    "elu": "ELU",
    "leaky_relu": "LeakyReLU",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "softplus": "Softplus",
    "gelu": "GELU",
    "silu": "SiLU",
    "selu": "SELU",
}


# ----------------------------------------------------------------------------- children
def ours_child(a) -> dict:
    """Our training step (bare, pre-placed batch) or guide-only inference."""
    import jax
    import numpy as np
    from roofline import build_bare_step

    from numpyro_air import infer
    from numpyro_air.train.allocator import synchronous_cpu_dispatch

    if not a.system_allocator:  # as numpyro-air train (the malloc settings come from the environment)
        synchronous_cpu_dispatch()
    device = jax.devices()[0]
    step_fn, state, pool, svi, cfg = build_bare_step(a.batch_size, device, a.seed, a.compute_dtype)
    if a.task == "train":
        box = {"state": state, "i": 0}

        def call():
            box["i"] += 1
            box["state"], _ = jax.block_until_ready(step_fn(box["state"], pool[box["i"] % 4], np.int32(box["i"])))
    else:
        params = svi.get_params(state)
        images = jax.device_put(np.random.default_rng(a.seed).uniform(0, 1, (a.batch_size, 50, 50)).astype(np.float32))
        keys = iter(jax.random.split(jax.random.PRNGKey(a.seed), a.steps + a.warmup + 1))
        call = lambda: jax.block_until_ready(infer(params, images, next(keys), cfg, reconstruct=False))  # noqa: E731
    return _median_times(call, a.steps, a.warmup) | {"jax_version": jax.__version__}


def pyro_child(a) -> dict:
    """Pyro's example: ``svi.step`` of its AIR, or its guide under ``poutine.trace``."""
    sys.path.insert(0, str(Path(a.pyro_air_dir).resolve()))
    import pyro
    import pyro.optim as optim
    import pyro.poutine as poutine
    import torch
    from air import AIR  # Pyro's examples/air/air.py
    from pyro.infer import SVI, TraceGraph_ELBO

    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    pyro.set_rng_seed(a.seed)
    air = AIR(**json.loads(a.air_kwargs))
    probs = list(a.z_pres_probs)
    prior_p = lambda t: probs[t]  # noqa: E731
    if a.task == "train":
        lr, blr = a.lrs
        adam = optim.Adam(lambda name: {"lr": blr if "bl_" in name else lr})
        svi = SVI(air.model, air.guide, adam, loss=TraceGraph_ELBO())
        X = torch.rand(4 * a.batch_size, 50, 50)
        call = lambda: svi.step(X, batch_size=a.batch_size, z_pres_prior_p=prior_p)  # noqa: E731
    else:
        images = torch.rand(a.batch_size, 50, 50)

        def call():
            with torch.no_grad():
                poutine.trace(air.guide).get_trace(images, a.batch_size)

    return _median_times(call, a.steps, a.warmup) | {
        "torch_version": torch.__version__,
        "pyro_version": pyro.__version__,
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- parent
def pyro_settings() -> dict:
    """Pyro AIR keyword arguments, z_pres prior and learning rates of our tutorial recipe."""
    from numpyro_air import Recipe
    from numpyro_air.core.prior import z_pres_prior_probs

    recipe = Recipe.tutorial()
    c = recipe.air
    kwargs = dict(
        num_steps=c.num_steps,
        x_size=c.image_size,
        window_size=c.window_size,
        z_what_size=c.z_what_size,
        rnn_hidden_size=c.rnn_hidden_size,
        encoder_net=list(c.encoder_net),
        decoder_net=list(c.decoder_net),
        predict_net=list(c.predict_net),
        embed_net=None if c.embed_net is None else list(c.embed_net),
        bl_predict_net=list(c.bl_predict_net),
        non_linearity=_TORCH_NL[c.non_linearity],
        decoder_output_bias=c.decoder_output_bias,
        decoder_output_use_sigmoid=c.decoder_output_use_sigmoid,
        use_masking=c.use_masking,
        use_baselines=c.use_baselines,
        baseline_scalar=c.baseline_scalar,
        scale_prior_mean=c.scale_prior_mean,
        scale_prior_sd=c.scale_prior_sd,
        pos_prior_mean=c.pos_prior_mean,
        pos_prior_sd=c.pos_prior_sd,
        likelihood_sd=c.likelihood_sd,
    )
    probs = [float(p) for p in z_pres_prior_probs(c, 1)]
    return {"air_kwargs": kwargs, "z_pres_probs": probs, "lrs": [recipe.optim.learning_rate, recipe.optim.baseline_learning_rate]}


def run_child(side: str, task: str, batch: int, args, settings: dict) -> dict:
    """One child process; its JSON line, or an ``error`` entry."""
    python = sys.executable if side == "ours" else str(args.pyro_python)
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--child",
        side,
        "--task",
        task,
        "--batch-size",
        str(batch),
        "--seed",
        str(args.seed),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps if task == "train" else args.infer_steps),
        "--compute-dtype",
        args.compute_dtype,
    ]
    if args.system_allocator:
        cmd.append("--system-allocator")
    if side == "pyro":
        cmd += [
            "--pyro-air-dir",
            str(args.pyro_air_dir),
            "--air-kwargs",
            json.dumps(settings["air_kwargs"]),
            "--z-pres-probs",
            *map(str, settings["z_pres_probs"]),
            "--lrs",
            *map(str, settings["lrs"]),
            "--torch-threads",
            str(args.torch_threads or 0),
        ]
    env = dict(os.environ)
    if not args.system_allocator:  # both sides as numpyro-air train runs: freed memory kept in the process
        from numpyro_air.train.allocator import malloc_environment

        env |= malloc_environment()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(lines[-1]) | {"child_wall_sec": time.perf_counter() - t0}


def summarise(runs: list, tasks: list, sides: list) -> list:
    """Best and median of each side's child medians per task, and Pyro / ours."""
    rows = []
    for task, batch in tasks:
        row = {"task": task, "batch_size": batch}
        for side in sides:
            ok = [
                r["sec_median"]
                for r in runs
                if (r["side"], r["task"], r["batch_size"]) == (side, task, batch) and "sec_median" in r
            ]
            row[side] = (
                {
                    "best_sec": min(ok),
                    "median_sec": statistics.median(ok),
                    "runs": len(ok),
                    "images_per_sec_best": batch / min(ok),
                }
                if ok
                else None
            )
        if row.get("ours") and row.get("pyro"):
            row["pyro_over_ours_best"] = row["pyro"]["best_sec"] / row["ours"]["best_sec"]
            row["pyro_over_ours_median"] = row["pyro"]["median_sec"] / row["ours"]["median_sec"]
        rows.append(row)
    return rows


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyro-air-dir", type=Path, help="Pyro's examples/air directory (air.py, modules.py)")
    ap.add_argument("--pyro-python", type=Path, default=DEFAULT_PYRO_PYTHON, help="interpreter with torch + pyro-ppl")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--infer-batch", type=int, default=1000, help="images per guide-only inference call (0: skip)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per child")
    ap.add_argument("--infer-steps", type=int, default=5, help="timed inference calls per child")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls after the first one")
    ap.add_argument("--rounds", type=int, default=2, help="children per side and task, alternating")
    ap.add_argument("--sides", nargs="+", choices=("ours", "pyro"), default=["ours", "pyro"])
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="our side's AIRConfig.compute_dtype (Pyro's side stays float32)",
    )
    ap.add_argument(
        "--system-allocator",
        action="store_true",
        help="both sides with glibc's malloc defaults; by default both keep freed memory in the process, as "
        "numpyro-air train does (numpyro_air.train.allocator.malloc_environment)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    # child mode (internal)
    ap.add_argument("--child", choices=("ours", "pyro"), help=argparse.SUPPRESS)
    ap.add_argument("--task", choices=("train", "infer"), help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--air-kwargs", help=argparse.SUPPRESS)
    ap.add_argument("--z-pres-probs", type=float, nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--lrs", type=float, nargs=2, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> dict:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.child:
        res = (ours_child if args.child == "ours" else pyro_child)(args)
        res |= {"side": args.child, "task": args.task, "batch_size": args.batch_size}
        print(json.dumps(res), flush=True)
        return res
    if min(args.steps, args.infer_steps, args.rounds, *args.batch_sizes) < 1 or args.warmup < 0 or args.infer_batch < 0:
        ap.error("--steps, --infer-steps, --rounds, --batch-sizes must be >= 1, --warmup, --infer-batch >= 0")
    if "pyro" in args.sides:
        if args.pyro_air_dir is None or not (args.pyro_air_dir / "air.py").is_file():
            ap.error("--pyro-air-dir must be Pyro's examples/air directory (with air.py); or pass --sides ours")
        if not Path(args.pyro_python).exists():
            ap.error(f"--pyro-python {args.pyro_python} not found (see the setup in this script's docstring)")
    settings = pyro_settings()
    tasks = [("train", b) for b in args.batch_sizes] + ([("infer", args.infer_batch)] if args.infer_batch else [])
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))
    runs = []
    for rnd in range(args.rounds):
        for task, batch in tasks:
            for side in args.sides:
                r = run_child(side, task, batch, args, settings) | {"side": side, "task": task, "batch_size": batch, "round": rnd}
                runs.append(r)
                log(
                    f"round {rnd} {side:>4} {task} batch {batch}: "
                    + (f"{r['sec_median'] * 1e3:.1f} ms median" if "sec_median" in r else r["error"])
                )
    res = {
        "rows": summarise(runs, tasks, args.sides),
        "runs": runs,
        "settings": settings,
        "cpu_model": _cpu_model(),
        "nproc": _nproc(),
        "loadavg_1min": os.getloadavg()[0],
        "compute_dtype": args.compute_dtype,
        "allocator": "system" if args.system_allocator else "retain (both sides)",
        "python": sys.version.split()[0],
        "jax_version": next((r.get("jax_version") for r in runs if "jax_version" in r), None),
        "device": "cpu (both sides: default JAX device / torch CPU)",
        "torch_version": next((r.get("torch_version") for r in runs if "torch_version" in r), None),
        "pyro_version": next((r.get("pyro_version") for r in runs if "pyro_version" in r), None),
    }
    print(json.dumps(res) if args.json else _text(res))
    return res


def _text(r: dict) -> str:
    out = [
        f"cpu {r['cpu_model']}, nproc {r['nproc']}, jax {r['jax_version']}, torch {r['torch_version']}, "
        f"pyro {r['pyro_version']}, load {r['loadavg_1min']:.2f}",
        f"{'task':<6} {'batch':>5} {'ours best ms':>12} {'ours med ms':>11} {'Pyro best ms':>12} {'Pyro med ms':>11} "
        f"{'Pyro/ours':>9}",
    ]
    for row in r["rows"]:
        cell = lambda s, k: f"{row[s][k] * 1e3:.1f}" if row.get(s) else "-"  # noqa: E731
        ratio = f"{row['pyro_over_ours_best']:.2f}x" if "pyro_over_ours_best" in row else "-"
        out.append(
            f"{row['task']:<6} {row['batch_size']:>5} {cell('ours', 'best_sec'):>12} {cell('ours', 'median_sec'):>11} "
            f"{cell('pyro', 'best_sec'):>12} {cell('pyro', 'median_sec'):>11} {ratio:>9}"
        )
    errors = [f"{x['side']} {x['task']} {x['batch_size']}: {x['error']}" for x in r["runs"] if "error" in x]
    return "\n".join(out + (["errors:"] + errors if errors else []))


if __name__ == "__main__":
    main()
