"""Variance of the predict-network gradient of each z_pres estimator at fixed parameters.

Usage:  python benchmarks/grad_variance.py [--draws 100] [--particles 4] [--batch-size 64] [--seed 0]
            [--estimators nvil nvil-normalised vimco rws concrete] [--checkpoint NAME=PATH ...]
            [--chunk 10] [--stat-warmup 0] [--device cpu|gpu|tpu] [--json]

At fixed parameters and a fixed batch of B held-out multi-MNIST images, draws D independent
gradients of each estimator's loss (``svi.loss.loss``: the batch's summed -ELBO surrogate) with
respect to the guide's predict network ``predict$params`` (z_pres logit and z_where), each with K
samples per image (equal cost): NVIL (tutorial recipe, learned baselines), NVIL with normalised
learning signals, VIMCO, RWS (its surrogate's gradient: the wake update of z_pres) and
Concrete (relaxed z_pres, ``Trace_ELBO``). For a (D, P) matrix of
flattened gradients it reports

- ``total_var``: sum over the P parameters of the variance across draws (ddof 1),
- ``mean_sq_norm``: ||mean over draws||^2,
- ``ratio``: total_var / mean_sq_norm (scale-free; lower is a better signal-to-noise),

and the same restricted to the z_pres logit column (``MLP_0/Dense_<last>/kernel[:, 0]`` and
``bias[0]``). Parameters: "fresh" (one initialisation from ``--seed``, the sites common to all
estimators shared, so every fresh row is at the same predict net) and "trained" (``--checkpoint
NAME=PATH``: ``numpyro_air.load_params``; the checkpoint's AIRConfig decides the model, its
optimiser settings (signal decay, loss scale) the ELBO, its step the prior schedule, and its
mutable state, e.g. NVIL's running signal statistics, is used when present).

NVIL's normalised signal divides by running statistics that start at mean 0, var 0 (no scaling),
so at "fresh" parameters it equals plain NVIL unless ``--stat-warmup N`` first advances the
statistics with N forward passes at the fixed parameters (parameters unchanged).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model as _cpu_model  # noqa: E402
from machine import nproc as _nproc
from machine import pick_device as _pick_device

ESTIMATORS = ("nvil", "nvil-normalised", "vimco", "rws", "concrete")
PREDICT = "predict$params"


def estimator_config(name: str):
    """The AIRConfig of a fresh row: the tutorial networks with ``name``'s presence estimator."""
    import numpyro_air as air

    if name.startswith("nvil"):
        return air.Recipe.tutorial().air
    return air.AIRConfig.tutorial(presence_estimator=name)


def estimator_optim(name: str, particles: int, base: dict | None = None):
    """OptimConfig of ``name`` with K = ``particles``: the tutorial's, or the checkpoint's
    ``optim_config`` dict ``base``; normalised signals exactly for "nvil-normalised"."""
    from numpyro_air import OptimConfig

    known = {f.name for f in dataclasses.fields(OptimConfig)}
    optim = OptimConfig.tutorial() if base is None else OptimConfig(**{k: v for k, v in base.items() if k in known})
    return dataclasses.replace(optim, num_particles=particles, normalize_signal=name == "nvil-normalised")


def check_estimator(name: str, config, where: str) -> None:
    """Exit unless ``config.presence_estimator`` is the one ``name`` needs."""
    need = "nvil" if name.startswith("nvil") else name
    if config.presence_estimator != need:
        raise SystemExit(f"error: {where}: presence_estimator {config.presence_estimator!r}, but {name} needs {need!r}")


def share_params(params: dict, ref: dict) -> dict:
    """``params`` with every site that ``ref`` has with the same structure and shapes taken from ``ref``."""
    same = lambda a, b: (
        jax.tree.structure(a) == jax.tree.structure(b)
        and all(  # noqa: E731
            x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
        )
    )
    return {k: ref[k] if k in ref and same(v, ref[k]) else v for k, v in params.items()}


def checkpoint_mutable(arrays: dict, template):
    """The ``state/mutable_state/...`` arrays of a checkpoint in the structure of ``template``
    (``svi.init``'s mutable state); ``template`` itself when the checkpoint has none of them."""
    if not jax.tree.leaves(template):
        return template
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = ["state/mutable_state/" + jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in flat]
    if not all(n in arrays for n in names):
        return template
    return jax.tree.unflatten(treedef, [jnp.asarray(arrays[n], t.dtype) for n, (_, t) in zip(names, flat)])


def loss_kwargs(config, step: int) -> dict:
    """Keyword arguments of the model and guide at optimisation step ``step``: the (annealed)
    z_pres prior (num_steps,) and, for Concrete, the temperature (scalar)."""
    import numpyro_air as air

    kw = {"z_pres_prior": air.z_pres_prior_probs(config, step)}
    if config.relaxed_presence:
        kw["temperature"] = air.prior.concrete_temperature(config, step)
    return kw


def loss_fn(svi, params: dict, mutable, images, step: int):
    """``(key, predict params) -> (loss, new mutable state)``: the SVI loss on images (B, H, H)
    with the other params fixed and the mutable state (or None) passed as in ``SVI.update``."""
    kw = {**loss_kwargs(svi.static_kwargs["config"], step), **svi.static_kwargs}

    def f(key, predict):
        p = {**params, PREDICT: predict}
        if not jax.tree.leaves(mutable):
            return svi.loss.loss(key, p, svi.model, svi.guide, images, **kw), mutable
        out = svi.loss.loss_with_mutable_state(key, {**p, **jax.lax.stop_gradient(mutable)}, svi.model, svi.guide, images, **kw)
        return out["loss"], out["mutable_state"]

    return f


def warm_stats(svi, params: dict, mutable, images, key, n: int):
    """The mutable state after ``n`` forward passes at fixed ``params`` (running signal statistics)."""
    if n <= 0 or not jax.tree.leaves(mutable):
        return mutable
    f = jax.jit(lambda k, m: loss_fn(svi, params, m, images, 1)(k, params[PREDICT])[1])
    for k in jax.random.split(key, n):
        mutable = f(k, mutable)
    return mutable


def pres_column(tree: dict) -> jnp.ndarray:
    """(..., H + 1): the z_pres logit column of the predict MLP's last Dense (kernel[:, 0], bias[0])."""
    mlp = tree["MLP_0"]
    last = mlp[max(mlp, key=lambda s: int(s.rsplit("_", 1)[1]))]
    return jnp.concatenate([last["kernel"][..., :, 0], last["bias"][..., :1]], axis=-1)


def draw_grads(svi, params: dict, mutable, images, keys, step: int, chunk: int):
    """Gradients of D draws (keys (D, 2)) w.r.t. ``predict$params``: flattened (D, P) and the
    z_pres logit column (D, H + 1), as float64 numpy arrays (draws vmapped ``chunk`` at a time)."""
    f = loss_fn(svi, params, mutable, images, step)

    def one(key):
        g = jax.grad(lambda pr: f(key, pr)[0])(params[PREDICT])
        return jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]), pres_column(g)

    flat, pres = jax.jit(lambda ks: jax.lax.map(one, ks, batch_size=min(chunk, len(keys))))(keys)
    return np.asarray(flat, np.float64), np.asarray(pres, np.float64)


def grad_stats(g: np.ndarray) -> dict:
    """total_var, mean_sq_norm and their ratio for gradients g (D, P)."""
    var = float(np.sum(np.var(g, axis=0, ddof=1)))
    msq = float(np.sum(np.mean(g, axis=0) ** 2))
    return {"total_var": var, "mean_sq_norm": msq, "ratio": var / msq if msq > 0 else float("inf")}


def measure(name: str, svi, params: dict, mutable, images, keys, step: int, chunk: int) -> dict:
    """One table row: statistics of the predict-net and z_pres-column gradients over the draws."""
    flat, pres = draw_grads(svi, params, mutable, images, keys, step, chunk)
    row = {"estimator": name, "step": step, "num_params": flat.shape[1], "finite": bool(np.isfinite(flat).all())}
    row.update(grad_stats(flat))
    row.update({f"pres_{k}": v for k, v in grad_stats(pres).items()})
    return row


def fresh_rows(args, images, keys) -> list:
    """Rows at one fresh initialisation (``--seed``; common sites shared across estimators)."""
    import numpyro_air as air

    rows, ref = [], None
    for name in args.estimators:
        config = estimator_config(name)
        svi = air.make_svi(config, estimator_optim(name, args.particles))
        state = svi.init(jax.random.PRNGKey(args.seed), images)
        params = svi.get_params(state)
        ref = params if ref is None else ref
        params = share_params(params, ref)
        mutable = warm_stats(svi, params, state.mutable_state, images, jax.random.PRNGKey(args.seed + 1), args.stat_warmup)
        rows.append({"params": "fresh", **measure(name, svi, params, mutable, images, keys, 1, args.chunk)})
    return rows


def trained_row(name: str, path: str, args, images, keys) -> dict:
    """Row at the parameters (and mutable state, if any) of checkpoint ``path``."""
    import numpyro_air as air
    from numpyro_air.train.checkpoint import read_npz

    config, params = air.load_params(path)
    check_estimator(name, config, path)
    meta, arrays = read_npz(path)
    svi = air.make_svi(config, estimator_optim(name, args.particles, meta.get("optim_config")))
    mutable = checkpoint_mutable(arrays, svi.init(jax.random.PRNGKey(args.seed), images).mutable_state)
    step = max(int(meta.get("step", 1)), 1)
    return {"params": "trained", "checkpoint": str(path), **measure(name, svi, params, mutable, images, keys, step, args.chunk)}


def parse_checkpoints(pairs, ap) -> dict:
    """{estimator: path} from ``NAME=PATH`` strings."""
    out = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or name not in ESTIMATORS or not path:
            ap.error(f"--checkpoint {pair!r}: expected NAME=PATH with NAME in {ESTIMATORS}")
        out[name] = path
    return out


def print_table(res: dict) -> None:
    """The rows as a fixed-width table."""
    print(
        f"device {res['device']} ({res['cpu_model']}, nproc {res['nproc']}); {res['draws']} draws, "
        f"K = {res['particles']} samples per image, batch {res['batch_size']} test images"
    )
    head = ("estimator", "params", "total var", "||mean||^2", "var/||m||^2", "pres var", "pres ||m||^2", "pres ratio")
    print(f"{head[0]:<16} {head[1]:<8}" + "".join(f" {h:>12}" for h in head[2:]))
    for r in res["rows"]:
        vals = [r[k] for k in ("total_var", "mean_sq_norm", "ratio", "pres_total_var", "pres_mean_sq_norm", "pres_ratio")]
        flag = "" if r["finite"] else "  (non-finite gradients)"
        print(f"{r['estimator']:<16} {r['params']:<8}" + "".join(f" {v:>12.4e}" for v in vals) + flag)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=100, help="independent gradient draws per row")
    ap.add_argument("--particles", type=int, default=4, help="K samples per image, every estimator")
    ap.add_argument("--batch-size", type=int, default=64, help="held-out test images (the first B)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    ap.add_argument("--checkpoint", nargs="+", metavar="NAME=PATH", help="trained parameters per estimator")
    ap.add_argument("--chunk", type=int, default=10, help="draws vmapped at a time (memory bound)")
    ap.add_argument("--stat-warmup", type=int, default=0, help="fresh rows: forward passes to advance mutable statistics")
    ap.add_argument("--device", choices=("cpu", "gpu", "tpu"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.draws < 2 or args.particles < 1 or args.batch_size < 1 or args.chunk < 1:
        ap.error("--draws must be >= 2, --particles, --batch-size and --chunk >= 1")
    if "vimco" in args.estimators and args.particles < 2:
        ap.error("vimco needs --particles >= 2")
    ckpts = parse_checkpoints(args.checkpoint, ap)
    if set(ckpts) - set(args.estimators):
        ap.error(f"--checkpoint for {sorted(set(ckpts) - set(args.estimators))}: not in --estimators")
    device = _pick_device(args.device)
    import numpyro_air as air

    _, test = air.load_multi_mnist(progress=False)
    with jax.default_device(device):
        images = jax.device_put(air.data.to_float(test.images[: args.batch_size]), device)
        keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(args.seed), 1), args.draws)
        rows = fresh_rows(args, images, keys)
        rows += [trained_row(n, ckpts[n], args, images, keys) for n in args.estimators if n in ckpts]
    res = {
        "draws": args.draws,
        "particles": args.particles,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "stat_warmup": args.stat_warmup,
        "device": str(device),
        "backend": device.platform,
        "device_kind": getattr(device, "device_kind", None),
        "cpu_model": _cpu_model(),
        "nproc": _nproc(),
        "jax_version": jax.__version__,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(res))
    else:
        print_table(res)
    return res


if __name__ == "__main__":
    main()
