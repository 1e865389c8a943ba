"""Training loop: JIT-compiled SVI steps over fixed-shape minibatches, K seeds in one program
(``jax.vmap``), periodic held-out evaluation, checkpoints, figures and a JSONL metrics log."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from . import parallel, viz
from .checkpoint import CheckpointError, read_checkpoint, restore_into, save_checkpoint
from .config import AIRConfig
from .data import batch_at_step, to_float
from .inference import count_accuracy, infer, sample_prior
from .svi import OptimConfig, make_svi, make_train_step, make_update

ACCURACY_THRESHOLDS = (0.90, 0.95, 0.98)


@dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``eval_every``/``save_every``/``viz_every`` = 0 turns that off."""

    num_steps: int = 200_000
    batch_size: int = 64
    seed: int = 0
    num_seeds: int = 1
    progress_every: int = 100
    eval_every: int = 0
    eval_batch_size: int = 1000
    eval_train_images: Optional[int] = None  # None: all training images (Pyro's metric)
    save_every: int = 10_000
    viz_every: int = 0

    def __post_init__(self) -> None:
        for name in ("num_steps", "eval_every", "save_every", "viz_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("batch_size", "num_seeds", "progress_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.eval_train_images is not None and self.eval_train_images < 1:
            raise ValueError(f"eval_train_images must be >= 1 or None, got {self.eval_train_images!r}")


def seed_of(tcfg: TrainConfig, k: int) -> int:
    """The seed of the k-th of ``num_seeds`` runs (initialisation, data order, guide samples)."""
    return tcfg.seed + k


def make_multi_seed_step(svi, config: AIRConfig) -> Callable:
    """Jitted step over K stacked states: ``(states, images (K, B, H, H), step) -> (states, info)``,
    one independent SVI update per seed (``jax.vmap`` of :func:`numpyro_air.svi.make_update`)."""
    return jax.jit(jax.vmap(make_update(svi, config), in_axes=(0, 0, None)))


def init_states(svi, keys: jnp.ndarray, example_batch: jnp.ndarray):
    """K SVI states (stacked on axis 0) from K raw PRNG keys (K, 2) and one (B, H, H) batch."""
    return jax.jit(jax.vmap(svi.init, in_axes=(0, None)))(keys, example_batch)


def _slice(tree, k: int):
    return jax.tree.map(lambda a: a[k], tree)


def _seed_slice(tree, k: int, num_seeds: int):
    """Seed k's part of a state/params tree: stacked on axis 0 when num_seeds > 1, else as is.
    (One seed runs the plain, un-vmapped step: on CPU a vmap of size 1 was measured 40% slower.)"""
    return tree if num_seeds == 1 else _slice(tree, k)


def _stack(trees: List[Any]):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def checkpoint_path(base: Path, k: int, num_seeds: int) -> Path:
    """``base`` for one seed; ``<stem>_seed<k><suffix>`` for each of several seeds."""
    return base if num_seeds == 1 else base.with_name(f"{base.stem}_seed{k}{base.suffix}")


def _meta(air: AIRConfig, opt: OptimConfig, tcfg: TrainConfig, data_desc: dict, k: int, step: int) -> dict:
    return {
        "air_config": air.to_dict(),
        "optim_config": dataclasses.asdict(opt),
        "batch_size": tcfg.batch_size,
        "seed": seed_of(tcfg, k),
        "step": step,
        "data": data_desc,
    }


def _check_meta(meta: dict, expected: dict, path) -> None:
    for key in ("air_config", "optim_config", "batch_size", "seed", "data"):
        if meta.get(key) != expected[key]:
            got, want = meta.get(key), expected[key]
            if isinstance(got, dict) and isinstance(want, dict):
                diff = sorted(f for f in set(got) | set(want) if got.get(f) != want.get(f))
                detail = ", ".join(f"{f}: checkpoint {got.get(f)!r} vs now {want.get(f)!r}" for f in diff)
            else:
                detail = f"checkpoint {got!r} vs now {want!r}"
            raise CheckpointError(f"{path}: {key} does not match the current run ({detail})")


def evaluate(params, tcfg: TrainConfig, air: AIRConfig, test_set, train_set, key, step: int) -> dict:
    """Count accuracy (one guide sample, Pyro's metric, and the guide's most probable path) with
    confusion matrices on the held-out test set (primary) and the training images."""
    out = {}
    n_train = len(train_set.images) if tcfg.eval_train_images is None else min(tcfg.eval_train_images, len(train_set.images))
    for split, ds, n in (("test", test_set, None), ("train", train_set, n_train)):
        if ds is None:
            continue
        images = to_float(ds.images if n is None else ds.images[:n])
        counts = np.asarray(ds.counts if n is None else ds.counts[:n])
        for greedy in (False, True):
            res = count_accuracy(params, images, counts, jax.random.fold_in(key, int(greedy)), air, greedy, tcfg.eval_batch_size)
            suffix = "_greedy" if greedy else ""
            out[f"{split}_accuracy{suffix}"] = res["accuracy"]
            out[f"{split}_confusion{suffix}"] = res["confusion"]
        out[f"{split}_images"] = int(len(counts))
    return out


def save_figures(params, air: AIRConfig, images: np.ndarray, true_counts, key, out_dir: Path, tag: str = "") -> list:
    """Boxes on data, reconstructions and prior samples for one seed's params."""
    res = infer(params, jnp.asarray(images), key, air)
    res = jax.device_get(res)
    counts = jnp.arange(16) % (air.num_steps + 1)  # scenes with 0, 1, ..., T objects
    prior = jax.device_get(sample_prior(params, jax.random.fold_in(key, 7), air, 16, counts))
    return [
        viz.save_boxes_figure(out_dir / f"boxes{tag}.png", images, res["boxes"], res["z_pres"], true_counts, title="inferred boxes (step 1 red, 2 green, 3 blue)"),
        viz.save_reconstruction_figure(out_dir / f"reconstructions{tag}.png", images[:10], res["reconstruction"][:10], res["boxes"][:10], res["z_pres"][:10]),
        viz.save_prior_samples_figure(out_dir / f"prior_samples{tag}.png", prior["canvas"], prior["boxes"], prior["z_pres"]),
    ]


def accuracy_summary(final_acc: List[float]) -> dict:
    """How many seeds reached each accuracy threshold."""
    return {f">={t:.0%}": int(sum(a >= t for a in final_acc)) for t in ACCURACY_THRESHOLDS} | {"num_seeds": len(final_acc)}


def train(
    air: AIRConfig,
    opt: OptimConfig,
    tcfg: TrainConfig,
    train_set,
    test_set,
    out_dir: str | os.PathLike,
    *,
    data_desc: Optional[dict] = None,
    load: Optional[str | os.PathLike] = None,
    save: Optional[str | os.PathLike] = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    devices: Optional[Sequence] = None,
) -> dict:
    """Train ``tcfg.num_seeds`` AIR models (vmapped when > 1) and return a summary dict.

    ``train_set``/``test_set`` expose ``images`` (N, H, W) uint8 or float and ``counts`` (N,).
    Writes ``metrics.jsonl`` (``kind`` "train": step, wall_time, elbo = +ELBO per image averaged
    over the last ``progress_every`` steps, skipped steps; ``kind`` "eval": accuracies and
    confusion matrices), checkpoints and figures under ``out_dir``. ``load`` resumes from a
    checkpoint (the batch of step i and the SVI RNG are pure functions of the seed and the saved
    state, so a resumed run equals the uninterrupted one). ``devices``: shard every batch over
    these devices (data parallel, :mod:`numpyro_air.parallel`); with several processes
    (``jax.distributed``) each process feeds its slice of the global batch.
    """
    out_dir = Path(out_dir)
    data_desc = data_desc or {}
    K = tcfg.num_seeds
    metrics_path = out_dir / "metrics.jsonl"
    save_base = Path(save) if save is not None else out_dir / "checkpoint.msgpack"
    resuming_here = load is not None and Path(load).resolve().parent == out_dir.resolve()
    if not resuming_here and not overwrite:
        # a fresh run, or a resume into another directory, must not replace an existing run
        clash = [p for p in [metrics_path] + [checkpoint_path(save_base, k, K) for k in range(K)] if p.exists()]
        if clash:
            raise FileExistsError(
                f"{clash[0]} already exists: pass overwrite=True (--overwrite) to replace it, or --load to resume"
            )
    out_dir.mkdir(parents=True, exist_ok=True)

    H = air.image_size
    if train_set.images.shape[1:] != (H, H):
        raise ValueError(f"training images have shape {train_set.images.shape[1:]}, config expects ({H}, {H})")
    if len(train_set.images) < tcfg.batch_size:
        raise ValueError(f"batch_size {tcfg.batch_size} exceeds the {len(train_set.images)} training images")

    mesh = None
    if (devices is not None and len(devices) > 1) or jax.process_count() > 1:
        mesh = parallel.make_mesh(devices if devices is not None else jax.devices())
        parallel.check_batch(tcfg.batch_size, mesh)  # before any compilation
    svi = make_svi(air, opt)
    example = jnp.asarray(batch_at_step(train_set.images, tcfg.batch_size, seed_of(tcfg, 0), 0))
    keys = jnp.stack([jax.random.PRNGKey(seed_of(tcfg, k)) for k in range(K)])
    t0 = time.time()
    if K == 1:
        states = jax.jit(svi.init)(keys[0], example)
    else:
        states = init_states(svi, keys, example)
    start = 0
    wall_offset = 0.0
    if load is not None:
        per_seed = []
        template = _seed_slice(states, 0, K)
        for k in range(K):
            path = checkpoint_path(Path(load), k, K)
            meta, leaves = read_checkpoint(path)
            _check_meta(meta, _meta(air, opt, tcfg, data_desc, k, meta.get("step", 0)), path)
            per_seed.append((meta, restore_into(template, leaves, path)))
        steps = {m["step"] for m, _ in per_seed}
        if len(steps) != 1:
            raise CheckpointError(f"per-seed checkpoints under {load} are at different steps: {sorted(steps)}")
        start = steps.pop()
        wall_offset = float(per_seed[0][0].get("wall_time", 0.0))
        states = per_seed[0][1] if K == 1 else _stack([s for _, s in per_seed])
        log(f"resumed {K} seed(s) from {load} at step {start}")
        if metrics_path.exists():  # resuming in place: drop log lines written after the checkpoint
            keep = [r for r in viz.read_jsonl(metrics_path) if r.get("step", 0) <= start]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    elif metrics_path.exists():
        metrics_path.unlink()

    if mesh is None:
        step_fn = make_multi_seed_step(svi, air) if K > 1 else make_train_step(svi, air)
    else:
        step_fn = parallel.make_sharded_step(svi, air, mesh, seeds_axis=K > 1)
        states = jax.device_put(states, parallel.replicated(mesh))
        log(f"data parallel over {mesh.devices.size} device(s), {jax.process_count()} process(es)")
    nproc, pid = jax.process_count(), jax.process_index()
    local = slice(pid * tcfg.batch_size // nproc, (pid + 1) * tcfg.batch_size // nproc)

    def put(batch: np.ndarray):
        if mesh is None:
            return jnp.asarray(batch)
        if nproc > 1:
            batch = batch[:, local] if K > 1 else batch[local]
        return parallel.put_batch(batch, mesh, seeds_axis=K > 1)

    log(f"compiling the SVI step ({K} seed(s), batch {tcfg.batch_size}) ...")
    logf = open(metrics_path if jax.process_index() == 0 else os.devnull, "a")

    def write(rec: dict) -> None:
        logf.write(json.dumps(rec) + "\n")
        logf.flush()

    def wall() -> float:
        return wall_offset + time.time() - t0

    def save_all(step: int) -> None:
        if jax.process_index() != 0:
            return
        for k in range(K):
            meta = _meta(air, opt, tcfg, data_desc, k, step) | {"wall_time": wall()}
            save_checkpoint(checkpoint_path(save_base, k, K), _seed_slice(states, k, K), meta)

    def eval_all(step: int) -> list:
        params = svi.get_params(states)
        recs = []
        for k in range(K):
            key = jax.random.fold_in(jax.random.PRNGKey(seed_of(tcfg, k) + 1_000_003), step)
            res = evaluate(_seed_slice(params, k, K), tcfg, air, test_set, train_set, key, step)
            rec = {"kind": "eval", "step": step, "wall_time": wall(), "seed": seed_of(tcfg, k),
                   "elbo": last_elbo[k], **res}
            write(rec)
            recs.append(rec)
            log(
                f"step={step} seed={rec['seed']} test_acc={res.get('test_accuracy', float('nan')):.4f} "
                f"(greedy {res.get('test_accuracy_greedy', float('nan')):.4f}) train_acc={res['train_accuracy']:.4f} "
                f"test_confusion={res.get('test_confusion')}"
            )
        return recs

    def viz_all(step: int, final: bool = False) -> None:
        params = svi.get_params(states)
        ds = test_set if test_set is not None else train_set
        images = to_float(ds.images[:16])
        for k in range(K):
            tag = "" if K == 1 else f"_seed{seed_of(tcfg, k)}"
            d = out_dir if final else out_dir / "viz" / f"step{step:07d}"
            save_figures(_seed_slice(params, k, K), air, images, ds.counts[:16], jax.random.PRNGKey(step), d, tag)

    pending: list = []
    last_eval: list = []
    last_elbo = [None] * K  # +ELBO per image over the last progress window, per seed
    bar = tqdm(total=tcfg.num_steps, initial=start, disable=not progress, dynamic_ncols=True, unit="step")
    try:
        for i in range(start, tcfg.num_steps):
            batch = np.stack([batch_at_step(train_set.images, tcfg.batch_size, seed_of(tcfg, k), i) for k in range(K)])
            batch = batch[0] if K == 1 else batch
            states, info = step_fn(states, put(batch), jnp.asarray(i + 1, jnp.int32))
            pending.append(info)
            step = i + 1
            if step == start + 1:
                jax.block_until_ready(info)
                log(f"first step (incl. compilation) done after {time.time() - t0:.1f}s")
            if step % tcfg.progress_every == 0 or step == tcfg.num_steps:
                losses = np.asarray(jnp.stack([p.loss for p in pending])).reshape(-1, K)  # (n, K)
                skipped = np.asarray(jnp.stack([p.skipped for p in pending])).reshape(-1, K).sum(0)
                pending = []
                with np.errstate(all="ignore"):
                    elbo = -np.nanmean(losses, axis=0)
                last_elbo = [float(e) for e in elbo]
                for k in range(K):
                    write({"kind": "train", "step": step, "wall_time": wall(), "seed": seed_of(tcfg, k),
                           "elbo": float(elbo[k]), "skipped": int(skipped[k])})
                bar.set_postfix_str("elbo/img=" + ",".join(f"{e:.1f}" for e in elbo) + (f" skipped={int(skipped.sum())}" if skipped.sum() else ""))
                bar.update(step - bar.n)
            if tcfg.eval_every and step % tcfg.eval_every == 0:
                last_eval = eval_all(step)
            if tcfg.save_every and step % tcfg.save_every == 0:
                save_all(step)
            if tcfg.viz_every and step % tcfg.viz_every == 0:
                viz_all(step)
    finally:
        bar.close()
    final_step = max(start, tcfg.num_steps)
    save_all(final_step)
    if not last_eval or last_eval[0]["step"] != final_step:
        last_eval = eval_all(final_step)
    viz_all(final_step, final=True)
    logf.close()
    viz.save_curves(viz.read_jsonl(metrics_path), out_dir)
    summary = {
        "steps": final_step,
        "wall_time_sec": wall(),
        "final": [{k: r[k] for k in r if "confusion" not in k and k != "kind"} for r in last_eval],
        "seeds_reaching": accuracy_summary([r.get("test_accuracy", r["train_accuracy"]) for r in last_eval]),
    }
    for r in last_eval:
        tag = "" if K == 1 else f"_seed{r['seed']}"
        for split in ("test", "train"):
            if f"{split}_confusion" in r:
                viz.save_confusion_figure(out_dir / f"confusion_{split}{tag}.png", r[f"{split}_confusion"], f"{split}: accuracy {r[f'{split}_accuracy']:.4f} (one guide sample)")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
