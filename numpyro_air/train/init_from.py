"""Starting a run from another run's parameters (``numpyro-air train --init-from FILE``).

Unlike resuming (``--load``), which continues one run and refuses any change of configuration,
a run started this way is a new run: step 0, a fresh optimiser state, its own seed's random
numbers and data order, and any configuration whose networks have the parameters' shapes (a
sharper likelihood, another estimator or prior, the shipped weights on one's own scenes).

Rules: every model and guide parameter of the run must be in the file with the same shape;
baseline networks (``bl_*`` sites, which NVIL learns and the other estimators do not have)
that the file lacks start fresh; parameters of the file that the run does not have are left
out. Both are named in the log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.svi import SVIState

from ..core.sites import BASELINE_PREFIX
from .checkpoint import (
    PARAMS_PREFIX,
    CheckpointError,
    params_arrays,
    read_npz,
    read_seed_checkpoint,
    seed_files,
    select_params,
    unflatten_params,
)

Arrays = Dict[str, np.ndarray]


def source_params(path: str | os.PathLike, seeds: Sequence[int], weights: str = "auto") -> List[Tuple[Path, dict, Arrays]]:
    """Per seed ``(file, meta, {params/...: array})``: ``path`` itself (a training checkpoint or a
    params-only file) for every seed, or, when ``path`` is the base name of a several-seed run's
    checkpoints (``<stem>_seed<seed><suffix>``), each seed's own file. ``weights`` as
    :func:`~numpyro_air.train.checkpoint.select_params` ("auto": the parameter average when the
    file keeps one)."""
    path = Path(path)
    if path.is_file() or not seed_files(path):
        meta, arrays = read_npz(path)  # CheckpointError naming the file: missing, corrupt, newer schema
        return [(path, meta, select_params(arrays, weights, path, meta.get("weights", "last")))] * len(seeds)
    out = []
    for k, seed in enumerate(seeds):
        file, meta, arrays = read_seed_checkpoint(path, seed, k)
        out.append((file, meta, select_params(arrays, weights, file, meta.get("weights", "last"))))
    return out


def _is_baseline(name: str) -> bool:
    return name[len(PARAMS_PREFIX) :].startswith(BASELINE_PREFIX)


def merged_params(fresh: Arrays, given: Arrays, path: str | os.PathLike) -> Tuple[Arrays, List[str], List[str]]:
    """``fresh`` (a new run's ``params/...`` arrays) with every array of ``given`` that the run has.
    Returns (merged, baseline names kept fresh, names of ``given`` left out). Raises
    :class:`CheckpointError` (one line, naming ``path``) when a non-baseline parameter is missing
    or any shape differs."""
    missing = sorted(n for n in fresh if n not in given and not _is_baseline(n))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(
            f"{path}: the run's networks are not those of the file: it lacks {', '.join(missing[:3])}{more} "
            "(same network flags as the run that wrote it?)"
        )
    for name in sorted(set(fresh) & set(given)):
        if given[name].shape != fresh[name].shape:
            raise CheckpointError(
                f"{path}: {name} has shape {given[name].shape}, the run's has {fresh[name].shape} "
                "(same network flags as the run that wrote it?)"
            )
    kept_fresh = sorted(n for n in fresh if n not in given)
    left_out = sorted(n for n in given if n not in fresh)
    merged = {n: (given[n].astype(fresh[n].dtype) if n in given else fresh[n]) for n in fresh}
    return merged, kept_fresh, left_out


def start_from(svi, states: SVIState, params: Sequence[Arrays]) -> SVIState:
    """Fresh SVI states (K, ...) whose parameters are ``params[k]`` (``params/...`` arrays) and whose
    optimiser state is the optimiser's initial state for them; the mutable state and RNG keys of
    ``states`` are kept."""
    stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *[unflatten_params(p) for p in params])

    def one(state: SVIState, p: Any) -> SVIState:
        return SVIState(svi.optim.init(p), state.mutable_state, state.rng_key)

    return jax.jit(jax.vmap(one))(states, stacked)


def checked_sources(svi, example, path: str | os.PathLike, seeds: Sequence[int]) -> List[Tuple[Path, dict, Arrays]]:
    """:func:`source_params` of ``path``, each checked (:func:`merged_params`) against the shapes of
    the parameters ``svi.init`` would make for ``example`` (traced, nothing computed), so that a
    wrong file stops a run before it writes anything."""
    sources = source_params(path, seeds)
    shapes = jax.eval_shape(lambda key: svi.get_params(svi.init(key, example)), jax.random.PRNGKey(0))
    template = params_arrays(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))
    for file, _, given in sources:
        merged_params(template, given, file)
    return sources


def initialised_from(
    svi, states: SVIState, sources: Sequence[Tuple[Path, dict, Arrays]], log: Optional[Callable[[str], None]] = None
) -> Tuple[SVIState, List[dict]]:
    """``states`` (fresh, stacked on a seeds axis) started from the parameters of ``sources`` (per
    seed, :func:`source_params` or :func:`checked_sources`; merged by :func:`merged_params`).
    Returns the states and, per seed, what the run records of its start (``{"path", "step",
    "seed", "sha256"}`` of the source file)."""
    fresh_all = svi.get_params(states)
    merged, records = [], []
    for k, (file, meta, given) in enumerate(sources):
        fresh = params_arrays(jax.tree.map(lambda a: a[k], fresh_all))  # seed k's own fresh baselines
        params, kept_fresh, left_out = merged_params(fresh, given, file)
        merged.append(params)
        records.append({"path": str(file), "step": meta.get("step"), "seed": meta.get("seed"), "sha256": meta.get("sha256")})
        if log is not None and k == 0:
            log(f"parameters from {file} (step {meta.get('step')})")
            if kept_fresh:
                log(f"{file}: these start fresh (the file has none): {', '.join(kept_fresh)}")
            if left_out:
                log(f"{file}: left out (the run has none): {', '.join(left_out)}")
    return start_from(svi, states, merged), records
