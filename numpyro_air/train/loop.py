"""Training loop: K seeds of JIT-compiled SVI steps, periodic actions, and no lost work.

:func:`train` is a flat loop over pieces with one job each: :func:`initial_states` (fresh or
restored from a checkpoint), :func:`numpyro_air.train.step.make_step` and its
:class:`~numpyro_air.train.step.BatchSource` (one step signature for one seed, K vmapped seeds and
sharded devices), a :class:`MetricsLog`, and periodic actions as a list of ``(every, action)``.
The loop's state lives in local variables (a :class:`Snapshot` the actions read); the actions
return rows for the metrics log instead of changing shared state. SIGINT / SIGTERM stop the loop
after the current step with a checkpoint (:class:`TrainingInterrupted`); any other exception
writes a checkpoint of the last good state before it propagates. Only process 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..analysis import figures as viz
from ..analysis.evaluation import accuracy_summary, evaluate, save_figures
from ..core.config import AIRConfig
from ..data.batches import to_float
from . import parallel
from .checkpoint import (
    CheckpointError,
    config_from_meta,
    read_checkpoint,
    read_seed_checkpoint,
    remove_stale_temporaries,
    restore_into,
    save_checkpoint,
    seed_file,
)
from .init_from import checked_sources, initialised_from
from .optim import averaged_params
from .recipes import OptimConfig
from .step import BatchSource, make_step
from .svi import make_svi

CHECKPOINT_NAME = "checkpoint.npz"


@dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``eval_every``/``save_every``/``viz_every`` = 0 turns that off;
    ``final_figures=False`` skips the figures and curves at the end (metrics, checkpoints and
    ``summary.json`` are written all the same)."""

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
    final_figures: bool = True

    def __post_init__(self) -> None:
        for name in ("num_steps", "eval_every", "save_every", "viz_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("batch_size", "num_seeds", "progress_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.eval_train_images is not None and self.eval_train_images < 1:
            raise ValueError(f"eval_train_images must be >= 1 or None, got {self.eval_train_images!r}")

    def seed_of(self, k: int) -> int:
        """The seed of the k-th of ``num_seeds`` runs (initialisation, data order, guide samples)."""
        return self.seed + k


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM stopped training after a step; a checkpoint at ``step`` was written."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(f"{signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM


def checkpoint_path(base: Path, tcfg: TrainConfig, k: int) -> Path:
    """The checkpoint of the k-th seed of ``tcfg``: ``base`` for one seed; for several, named by
    the seed number, ``<stem>_seed<seed><suffix>`` (``--seed 1 --num-seeds 3``: seeds 1, 2, 3)."""
    return base if tcfg.num_seeds == 1 else seed_file(base, tcfg.seed_of(k))


def seed_slice(tree, k: int):
    """Seed k's part of a tree stacked on a leading seeds axis."""
    return jax.tree.map(lambda a: a[k], tree)


def _local(tree):
    """A replicated (possibly multi-process) tree as arrays this process can read."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


# ----------------------------------------------------------------------------- run metadata


def run_meta(air: AIRConfig, opt: OptimConfig, tcfg: TrainConfig, data_desc: dict, k: int, step: int) -> dict:
    """What a checkpoint records about its run (checked again on resume)."""
    return {
        "air_config": air.to_dict(),
        "optim_config": dataclasses.asdict(opt.for_estimator(air.presence_estimator)),
        "batch_size": tcfg.batch_size,
        "seed": tcfg.seed_of(k),
        "step": step,
        "data": data_desc,
    }


def _normalised(meta: dict, key: str, path, data_later: Mapping[str, Any]):
    """A checkpoint's configuration as the current code writes it: fields added since it was
    written take their defaults (data fields: their value of before, ``data_later``), so an older
    checkpoint of the same run still resumes (a field that differs is still refused). Anything
    unreadable is returned as stored."""
    got = meta.get(key)
    if not isinstance(got, dict):
        return got
    if key == "data":
        return dict(data_later) | got
    try:
        if key == "air_config":
            return config_from_meta(meta, path).to_dict()
        if key == "optim_config":
            estimator = (meta.get("air_config") or {}).get("presence_estimator", "nvil")
            return dataclasses.asdict(OptimConfig(**got).for_estimator(estimator))
    except (CheckpointError, TypeError, ValueError):
        pass
    return got


def _without_paths(desc):
    """A data description without its ``path`` entries (at any depth): where the data lie is
    recorded but not compared, their content (size, shape, checksum) is."""
    if isinstance(desc, dict):
        return {k: _without_paths(v) for k, v in desc.items() if k != "path"}
    return desc


def check_meta(meta: dict, expected: dict, path, data_later: Mapping[str, Any] = MappingProxyType({})) -> None:
    """Raise :class:`CheckpointError` naming every field where a checkpoint differs from the run
    (the ``path`` entries of the data description excepted). ``data_later``: data fields added
    after older checkpoints were written, with the value of the data of before (a generator
    config's ``LATER_FIELDS``)."""
    for key in ("air_config", "optim_config", "batch_size", "seed", "data"):
        got, want = _normalised(meta, key, path, data_later), expected[key]
        if key == "data":
            got, want = _without_paths(got), _without_paths(want)
        if key == "optim_config" and isinstance(got, dict) and isinstance(want, dict):
            # averaging may start (or stop) at a resume: it never changes the updates
            averaging = ("average_decay", "average_start")
            got, want = ({k: v for k, v in d.items() if k not in averaging} for d in (got, want))
        if got != want:
            if isinstance(got, dict) and isinstance(want, dict):
                shown = lambda d, f: repr(d[f]) if f in d else "(absent)"  # noqa: E731
                diff = sorted(f for f in set(got) | set(want) if (f in got) != (f in want) or got.get(f) != want.get(f))
                detail = ", ".join(f"{f}: checkpoint {shown(got, f)} vs now {shown(want, f)}" for f in diff)
            else:
                detail = f"checkpoint {got!r} vs now {want!r}"
            raise CheckpointError(f"{path}: {key} does not match the current run ({detail})")


# ----------------------------------------------------------------------------- pieces


def initial_states(
    svi, tcfg: TrainConfig, example: jnp.ndarray, load=None, meta_of=None, log=None, data_later=MappingProxyType({})
):
    """SVI states stacked on a seeds axis (K, ...): fresh (seed k from ``tcfg.seed_of(k)``), or
    restored from the per-seed checkpoints at ``load`` (files named by index, as older versions
    wrote them, too), each checked against ``meta_of(k, step)`` (:func:`check_meta` with
    ``data_later``). Returns (states, start step, wall seconds already spent, per-seed metadata of
    the restored files or ``({},) * K``). ``log`` gets a line when a restore starts or drops the
    parameter average (``OptimConfig.average_decay``)."""
    K = tcfg.num_seeds
    keys = jnp.stack([jax.random.PRNGKey(tcfg.seed_of(k)) for k in range(K)])
    init = jax.jit(jax.vmap(svi.init, in_axes=(0, None)))
    if load is None:
        return init(keys, example), 0, 0.0, ({},) * K
    template = jax.eval_shape(svi.init, keys[0], example)
    restored = []
    for k in range(K):
        if K == 1:
            path = Path(load)
            meta, arrays = read_checkpoint(path)
        else:
            path, meta, arrays = read_seed_checkpoint(load, tcfg.seed_of(k), k)
        check_meta(meta, meta_of(k, meta.get("step", 0)), path, data_later)
        restored.append((meta, restore_into(template, arrays, path, note=None if k else log)))
    steps = sorted({m["step"] for m, _ in restored})
    if len(steps) != 1:
        raise CheckpointError(f"per-seed checkpoints under {load} are at different steps: {steps}")
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *[s for _, s in restored])
    return states, steps[0], float(restored[0][0].get("wall_time", 0.0)), tuple(m for m, _ in restored)


class MetricsLog:
    """JSONL metrics log. Each record is one ``os.write`` of a whole line to an ``O_APPEND`` file,
    so a process killed at any instant leaves whole lines; resuming rewrites the log atomically
    (temporary file + rename) without the lines written after the checkpoint."""

    def __init__(self, path: Path, resume_step: Optional[int], enabled: bool = True):
        self.path, self.fd = path, None
        if not enabled:
            return
        if resume_step is None:
            path.unlink(missing_ok=True)
        elif path.exists():
            keep = [r for r in viz.read_jsonl(path) if r.get("step", 0) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            os.replace(tmp, path)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def write(self, rec: dict) -> None:
        if self.fd is not None:
            os.write(self.fd, (json.dumps(rec) + "\n").encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextmanager
def stop_on_signals(signums=(signal.SIGINT, signal.SIGTERM)) -> Iterator[list]:
    """Turn SIGINT/SIGTERM into a request (the yielded list gets the signal number) that the loop
    honours after its current step. Previous handlers are restored on exit."""
    requested: list = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signals are only delivered to the main thread
        return
    previous = {s: signal.signal(s, lambda signum, frame: requested.append(signum)) for s in signums}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ----------------------------------------------------------------------------- periodic actions


@dataclass(frozen=True)
class Setup:
    """What a run reads and never changes: configs, the SVI, data sets and where files go."""

    air: AIRConfig
    opt: OptimConfig
    tcfg: TrainConfig
    svi: Any
    train_set: Any
    test_set: Any
    out_dir: Path
    save_base: Path
    data_desc: dict
    log: Callable[[str], None]
    writer: bool  # process 0 writes the files
    data_later: Mapping[str, Any]  # check_meta's data fields of before
    started_from: tuple = ()  # per seed: the source of its initial parameters (--init-from) or None

    def params(self, states, k: int):
        """Seed k's constrained parameters: their moving average when the run keeps one
        (``OptimConfig.average_decay``), else the last step's."""
        average = averaged_params(states.optim_state)
        params = self.svi.get_params(states) if average is None else self.svi.constrain_fn(average)
        return seed_slice(_local(params), k)


class Snapshot(NamedTuple):
    """What a periodic action reads of the loop after a step (the loop's own variables)."""

    states: Any  # SVI states stacked on a seeds axis
    step: int
    wall: Callable[[], float]  # seconds of training so far, resumed runs included
    pending: tuple  # StepInfo of every step since the last "train" rows
    last: dict  # kind -> the latest rows of that kind written ("train", "eval"); never changed in place


def progress_rows(run: Setup, at: Snapshot) -> List[dict]:
    """Per seed: mean -loss (= +ELBO per image) and skipped steps over the pending steps."""
    K = run.tcfg.num_seeds
    losses = np.concatenate([np.asarray(_local(p.loss)).reshape(-1, K) for p in at.pending])  # (n, K)
    skipped = np.concatenate([np.asarray(_local(p.skipped)).reshape(-1, K) for p in at.pending]).sum(0)
    with np.errstate(all="ignore"):
        elbo = [float(e) for e in -np.nanmean(losses, axis=0)]
    return [
        {
            "kind": "train",
            "step": at.step,
            "wall_time": at.wall(),
            "seed": run.tcfg.seed_of(k),
            "elbo": elbo[k],
            "skipped": int(skipped[k]),
        }
        for k in range(K)
    ]


def eval_rows(run: Setup, at: Snapshot) -> List[dict]:
    """Held-out (and training-image) count accuracy of every seed, logged; for data without
    counts the held-out ELBO instead (see :func:`numpyro_air.analysis.evaluation.evaluate`)."""
    rows = []
    for k in range(run.tcfg.num_seeds):
        seed = run.tcfg.seed_of(k)
        key = jax.random.fold_in(jax.random.PRNGKey(seed + 1_000_003), at.step)
        res = evaluate(run.params(at.states, k), run.tcfg, run.air, run.test_set, run.train_set, key)
        elbo = at.last["train"][k]["elbo"] if "train" in at.last else None
        rows.append({"kind": "eval", "step": at.step, "wall_time": at.wall(), "seed": seed, "elbo": elbo, **res})
        parts = [f"step={at.step} seed={seed}"]
        if "test_accuracy" in res:
            parts.append(f"test_acc={res['test_accuracy']:.4f} (greedy {res['test_accuracy_greedy']:.4f})")
        if "test_elbo" in res:
            parts.append(f"test_elbo={res['test_elbo']:.2f}")
        if "train_accuracy" in res:
            parts.append(f"train_acc={res['train_accuracy']:.4f}")
        if "test_confusion" in res:
            parts.append(f"test_confusion={res['test_confusion']}")
        run.log(" ".join(parts))
    return rows


def save_all(run: Setup, at: Snapshot) -> List[dict]:
    """Per-seed checkpoints of the states at ``at.step`` (no rows)."""
    K = run.tcfg.num_seeds
    if run.writer:
        local = _local(at.states)
        # last seed first: after a resume from index-named files (older versions), the file seed s
        # replaces held seed tcfg.seed + s, a later seed, which by then is saved under its own name
        for k in reversed(range(K)):
            meta = run_meta(run.air, run.opt, run.tcfg, run.data_desc, k, at.step) | {"wall_time": at.wall()}
            if run.started_from and run.started_from[k]:
                meta["init_from"] = run.started_from[k]
            save_checkpoint(checkpoint_path(run.save_base, run.tcfg, k), seed_slice(local, k), meta)
    return []


def figures_all(run: Setup, at: Snapshot, final: bool = False) -> List[dict]:
    """Boxes, reconstructions and prior samples of every seed (under viz/stepNNNNNNN unless final)."""
    if not run.writer:
        return []
    ds = run.test_set if run.test_set is not None else run.train_set
    images = to_float(ds.images[:16])
    counts = None if getattr(ds, "counts", None) is None else ds.counts[:16]
    d = run.out_dir if final else run.out_dir / "viz" / f"step{at.step:07d}"
    for k in range(run.tcfg.num_seeds):
        tag = "" if run.tcfg.num_seeds == 1 else f"_seed{run.tcfg.seed_of(k)}"
        save_figures(run.params(at.states, k), run.air, images, counts, jax.random.PRNGKey(at.step), d, tag)
    return []


def periodic_actions(tcfg: TrainConfig) -> List[tuple]:
    """(every, action) pairs run in this order after each step whose number is a multiple of
    ``every``; ``action(run, snapshot)`` returns the rows it adds to the metrics log."""
    return [
        (tcfg.progress_every, progress_rows),
        (tcfg.eval_every, eval_rows),
        (tcfg.save_every, save_all),
        (tcfg.viz_every, figures_all),
    ]


class Records:
    """Where rows go: the metrics log, and the progress bar for "train" rows."""

    def __init__(self, metrics: MetricsLog, bar):
        self.metrics, self.bar = metrics, bar

    def write(self, rows: List[dict]) -> dict:
        """Write ``rows``; return them grouped by kind."""
        by_kind: dict = {}
        for row in rows:
            self.metrics.write(row)
            by_kind.setdefault(row["kind"], []).append(row)
        train = by_kind.get("train")
        if train:
            skipped = sum(r["skipped"] for r in train)
            self.bar.set_postfix_str(
                "elbo/img=" + ",".join(f"{r['elbo']:.1f}" for r in train) + (f" skipped={skipped}" if skipped else "")
            )
            self.bar.update(train[0]["step"] - self.bar.n)
        return by_kind

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()


def _prepare_out_dir(out_dir: Path, save_base: Path, tcfg: TrainConfig, load, overwrite: bool) -> None:
    """A fresh run, or a resume into another directory, must not replace an existing run. Removes
    the temporary files a killed save of this run's checkpoints left behind."""
    checkpoints = [checkpoint_path(save_base, tcfg, k) for k in range(tcfg.num_seeds)]
    resuming_here = load is not None and Path(load).resolve().parent == out_dir.resolve()
    if not resuming_here and not overwrite:
        clash = [p for p in [out_dir / "metrics.jsonl", *checkpoints] if p.exists()]
        if clash:
            raise FileExistsError(
                f"{clash[0]} already exists: pass overwrite=True (--overwrite) to replace it, or --load to resume"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        for path in checkpoints:
            remove_stale_temporaries(path)


def canvas_shape(air: AIRConfig) -> tuple:
    """One image's shape under ``air``: (H, W) grayscale or (H, W, C) colour."""
    return tuple(air.image_shape)


def check_data(air: AIRConfig, tcfg: TrainConfig, train_set, test_set=None) -> None:
    """Raise ValueError unless the images fit the config's canvas and a batch."""
    want = canvas_shape(air)
    for name, ds in (("training", train_set), ("test", test_set)):
        if ds is not None and tuple(ds.images.shape[1:]) != want:
            raise ValueError(f"{name} images have shape {tuple(ds.images.shape[1:])}, the config expects {want}")
    if len(train_set.images) < tcfg.batch_size:
        raise ValueError(f"batch_size {tcfg.batch_size} exceeds the {len(train_set.images)} training images")


def recorded(at: Snapshot, new: dict) -> Snapshot:
    """``at`` after rows ``new`` (kind -> rows) were written: "train" rows summarise the pending steps."""
    return at._replace(pending=() if "train" in new else at.pending, last=at.last | new)


def flush(run: Setup, at: Snapshot, records: Records) -> Snapshot:
    """Write the rows of the steps still pending (a run ending or stopping between rows)."""
    return recorded(at, records.write(progress_rows(run, at))) if at.pending else at


def finish(run: Setup, at: Snapshot, records: Records) -> dict:
    """Final checkpoint, evaluation, figures, curves and ``summary.json``."""
    at = flush(run, at, records)
    save_all(run, at)
    if not at.last.get("eval") or at.last["eval"][0]["step"] != at.step:
        at = recorded(at, records.write(eval_rows(run, at)))
    if run.tcfg.final_figures:
        figures_all(run, at, final=True)
    records.close()
    final = at.last["eval"]
    summary = {
        "steps": at.step,
        "wall_time_sec": at.wall(),
        "final": [{k: r[k] for k in r if "confusion" not in k and k != "kind"} for r in final],
    }
    accuracies = [r.get("test_accuracy", r.get("train_accuracy")) for r in final]
    if None not in accuracies:  # data without counts have no accuracy to summarise
        summary["seeds_reaching"] = accuracy_summary(accuracies)
    if run.writer and run.tcfg.final_figures:
        save_final_curves(run, records, final)
    if run.writer:
        (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def save_final_curves(run: Setup, records: Records, final: List[dict]) -> None:
    """The training curves and each seed's confusion matrices, as PNGs in the run directory."""
    viz.save_curves(viz.read_jsonl(records.metrics.path), run.out_dir)
    for r in final:
        tag = "" if run.tcfg.num_seeds == 1 else f"_seed{r['seed']}"
        for split in ("test", "train"):
            if f"{split}_confusion" in r:
                viz.save_confusion_figure(
                    run.out_dir / f"confusion_{split}{tag}.png",
                    r[f"{split}_confusion"],
                    f"{split}: accuracy {r[f'{split}_accuracy']:.4f} (one guide sample)",
                )


def example_batch(train_set, tcfg: TrainConfig) -> jnp.ndarray:
    """The first batch of the training images as floats: the shapes ``svi.init`` builds for."""
    return jnp.asarray(to_float(train_set.images[: tcfg.batch_size]))


def start(run: Setup, load, mesh, sources=None) -> Tuple[Setup, Snapshot]:
    """The states (fresh, restored from ``load``, or fresh with the parameters of ``sources``, an
    ``init_from`` file's :func:`~numpyro_air.train.init_from.checked_sources`; replicated over
    ``mesh``) and the wall clock of the run; ``run`` with the source of each seed's initial
    parameters (``started_from``: from ``sources``, or as a resumed checkpoint records it)."""
    example = example_batch(run.train_set, run.tcfg)
    meta_of = lambda k, step: run_meta(run.air, run.opt, run.tcfg, run.data_desc, k, step)  # noqa: E731
    states, step, wall_offset, metas = initial_states(run.svi, run.tcfg, example, load, meta_of, run.log, run.data_later)
    started_from = tuple(m.get("init_from") for m in metas)
    if sources is not None:
        states, records = initialised_from(run.svi, states, sources, run.log)
        started_from = tuple(records)
    if mesh is not None:
        states = jax.device_put(states, parallel.replicated(mesh))
    t0 = time.time()
    run = dataclasses.replace(run, started_from=started_from)
    return run, Snapshot(states, step, lambda: wall_offset + time.time() - t0, pending=(), last={})


def train(
    air: AIRConfig,
    opt: OptimConfig,
    tcfg: TrainConfig,
    train_set,
    test_set,
    out_dir: str | os.PathLike,
    *,
    data_desc: Optional[dict] = None,
    data_later: Optional[Mapping[str, Any]] = None,
    load: Optional[str | os.PathLike] = None,
    init_from: Optional[str | os.PathLike] = None,
    save: Optional[str | os.PathLike] = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    devices: Optional[Sequence] = None,
) -> dict:
    """Train ``tcfg.num_seeds`` AIR models and return a summary dict.

    ``train_set``/``test_set`` (``test_set`` may be None) expose ``images`` (N, H, W) or
    (N, H, W, C), uint8 or float in [0, 1], of the config's canvas (:func:`canvas_shape`), and
    ``counts`` (N,) or None. Writes ``metrics.jsonl`` (``kind`` "train": step, wall_time, elbo =
    +ELBO per image averaged over the last ``progress_every`` steps, skipped steps; ``kind``
    "eval": accuracies and confusion matrices of the sets with counts, ``test_elbo`` for a test set
    without), per-seed checkpoints and figures under ``out_dir``. ``load`` resumes from a
    checkpoint; the batch of step i and the SVI RNG are pure functions of the seed and the saved
    state, so a resumed run equals the uninterrupted one. ``init_from`` starts a new run from the
    parameters of a checkpoint or params file (:mod:`numpyro_air.train.init_from`; not with
    ``load``). ``data_desc`` is recorded in the
    checkpoints and must match on resume; ``data_later`` gives data fields that older checkpoints
    lack the value of their data (``numpyro-air train`` passes the generator config's
    ``LATER_FIELDS``; without it such a checkpoint is refused, naming the field). ``devices``:
    shard every batch over these devices. Raises :class:`TrainingInterrupted` after SIGINT/SIGTERM.
    """
    if load is not None and init_from is not None:
        raise CheckpointError("--load resumes a run and --init-from starts a new one: give one of them")
    out_dir, K = Path(out_dir), tcfg.num_seeds
    save_base = Path(save) if save is not None else out_dir / CHECKPOINT_NAME
    check_data(air, tcfg, train_set, test_set)
    svi = make_svi(air, opt)
    sources = None
    if init_from is not None:  # a wrong file stops the run before it writes anything
        sources = checked_sources(svi, example_batch(train_set, tcfg), init_from, [tcfg.seed_of(k) for k in range(K)])
    _prepare_out_dir(out_dir, save_base, tcfg, load, overwrite)
    mesh = parallel.data_mesh(devices, tcfg.batch_size)  # before any compilation
    writer = jax.process_index() == 0
    run = Setup(
        air,
        opt,
        tcfg,
        svi,
        train_set,
        test_set,
        out_dir,
        save_base,
        data_desc or {},
        log,
        writer,
        MappingProxyType(dict(data_later or {})),
    )
    run, at = start(run, load, mesh, sources)
    step_fn, actions = make_step(run.svi, air, K, mesh), periodic_actions(tcfg)
    batches = BatchSource(train_set.images, tcfg.batch_size, [tcfg.seed_of(k) for k in range(K)], mesh)
    metrics = MetricsLog(out_dir / "metrics.jsonl", at.step if load is not None else None, writer)
    log(
        f"{'resumed at' if load is not None else 'starting'} step {at.step}: {K} seed(s), batch {tcfg.batch_size}, "
        f"{1 if mesh is None else mesh.devices.size} device(s), {jax.process_count()} process(es)"
    )
    bar = tqdm(total=tcfg.num_steps, initial=at.step, disable=not (progress and writer), dynamic_ncols=True)
    records = Records(metrics, bar)
    with stop_on_signals() as stop:
        try:
            for i in range(at.step, tcfg.num_steps):
                states, info = step_fn(at.states, batches(i), jnp.asarray(i + 1, jnp.int32))
                at = at._replace(states=states, step=i + 1, pending=at.pending + (info,))
                for every, action in actions:
                    if every and at.step % every == 0:
                        at = recorded(at, records.write(action(run, at)))
                if stop:
                    save_all(run, at)
                    raise TrainingInterrupted(stop[0], at.step, run.save_base)
        except TrainingInterrupted:
            flush(run, at, records)
            records.close()
            raise
        except BaseException:
            save_all(run, at)  # the states and step of the last step that returned
            flush(run, at, records)
            records.close()
            raise
    return finish(run, at, records)
