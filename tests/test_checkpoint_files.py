"""Checkpoint files: the schema version in ``__meta__``, per-seed files named by seed (and the
index-named files of older versions still resuming, never as another seed), stale temporary
files of a killed save removed on the next start."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import SVI, Trace_ELBO

import numpyro_air
from numpyro_air.train.checkpoint import (
    SCHEMA_VERSION,
    CheckpointError,
    load_params,
    read_checkpoint,
    read_npz,
    read_seed_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    seed_file,
    seed_files,
)
from numpyro_air.train.loop import TrainConfig, _prepare_out_dir, checkpoint_path, initial_states

WEIGHTS = Path(numpyro_air.__file__).parent / "weights" / "air_multi_mnist.npz"


def rewrite_meta(path: Path, **changes) -> Path:
    """Rewrite ``__meta__`` of ``path`` with ``changes`` (a value None deletes the key); the
    arrays' digest is unaffected."""
    with np.load(path) as z:
        stored = {k: z[k] for k in z.files}
    meta = json.loads(str(stored.pop("__meta__")))
    for key, value in changes.items():
        meta.pop(key) if value is None else meta.__setitem__(key, value)
    np.savez(path, **stored, __meta__=np.asarray(json.dumps(meta)))
    return path


def as_older_version(path: Path) -> Path:
    """The file as versions before the schema version wrote it."""
    return rewrite_meta(path, schema_version=None, numpyro_air_version=None)


def test_schema_version_is_written_and_files_without_one_load(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", {"a": jnp.arange(3.0)}, {"step": 1, "seed": 0})
    meta, arrays = read_checkpoint(path)
    assert meta["schema_version"] == SCHEMA_VERSION == 1
    assert meta["numpyro_air_version"] == numpyro_air.__version__
    meta, arrays = read_checkpoint(as_older_version(path))
    assert "schema_version" not in meta and meta["step"] == 1
    np.testing.assert_array_equal(arrays["state/a"], np.arange(3.0))
    # the shipped weights were written before the schema version: they load
    assert "schema_version" not in read_npz(WEIGHTS)[0]
    config, params = load_params(WEIGHTS)
    assert config.presence_estimator == "concrete" and params


def test_a_newer_schema_is_a_one_line_error_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "new.npz", {"a": jnp.ones(2)}, {"step": 1})
    rewrite_meta(path, schema_version=SCHEMA_VERSION + 1, numpyro_air_version="9.0.0")
    for reader in (read_npz, read_checkpoint, load_params):
        with pytest.raises(CheckpointError) as err:
            reader(path)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(str(path)), msg
        assert f"schema {SCHEMA_VERSION + 1} (written by numpyro-air 9.0.0)" in msg, msg
        assert f"reads schemas up to {SCHEMA_VERSION}: upgrade numpyro-air" in msg, msg


def test_per_seed_files_are_named_by_seed(tmp_path):
    base = tmp_path / "checkpoint.npz"
    tcfg = TrainConfig(seed=1, num_seeds=3)  # seeds 1, 2, 3
    assert [checkpoint_path(base, tcfg, k).name for k in range(3)] == [
        "checkpoint_seed1.npz",
        "checkpoint_seed2.npz",
        "checkpoint_seed3.npz",
    ]
    assert checkpoint_path(base, TrainConfig(seed=4), 0) == base  # one seed: the base name
    for name in (
        "checkpoint_seed10.npz",
        "checkpoint_seed2.npz",
        "checkpoint_seed1.npz",
        "checkpoint_seedx.npz",
        "other_seed1.npz",
        "checkpoint_seed3.npz.abc.tmp",
    ):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in seed_files(base)] == ["checkpoint_seed1.npz", "checkpoint_seed2.npz", "checkpoint_seed10.npz"]


# ----------------------------------------------------------------------------- index-named files


def _svi():
    def model(x):
        loc = numpyro.param("loc", lambda key: jax.random.normal(key, (2,)))
        numpyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    return SVI(model, lambda x: None, optax.adam(0.1), Trace_ELBO())


X = jnp.zeros((2,))
TCFG = TrainConfig(seed=1, num_seeds=3)


def _meta(seed: int, step: int) -> dict:
    return {"air_config": None, "optim_config": None, "batch_size": 8, "data": {}, "seed": seed, "step": step}


def _meta_of(tcfg):
    return lambda k, step: _meta(tcfg.seed_of(k), step)


def _state(svi, seed: int):
    return jax.jit(svi.init)(jax.random.PRNGKey(seed), X)


def _write_index_named(base: Path, svi, step: int = 5) -> None:
    """Per-seed files as older versions wrote them: ``<stem>_seed<k>`` holds seed ``seed_of(k)``."""
    for k in range(TCFG.num_seeds):
        seed = TCFG.seed_of(k)
        as_older_version(save_checkpoint(seed_file(base, k), _state(svi, seed), _meta(seed, step)))


def _locs(svi, states) -> np.ndarray:
    return np.stack([svi.get_params(jax.tree.map(lambda a: a[k], states))["loc"] for k in range(TCFG.num_seeds)])


def test_index_named_files_of_older_versions_resume_each_seed(tmp_path):
    svi, base = _svi(), tmp_path / "checkpoint.npz"
    _write_index_named(base, svi)  # checkpoint_seed0..2 hold seeds 1..3
    states, start, _, _ = initial_states(svi, TCFG, X, base, _meta_of(TCFG))
    want = np.stack([svi.get_params(_state(svi, TCFG.seed_of(k)))["loc"] for k in range(3)])
    assert start == 5 and len({tuple(r) for r in want.tolist()}) == 3  # the seeds differ
    np.testing.assert_array_equal(_locs(svi, states), want)
    # checkpoint_seed1.npz holds seed 2: the seed inside decides, not the name
    path, meta, _ = read_seed_checkpoint(base, seed=2, index=1)
    assert (path.name, meta["seed"]) == ("checkpoint_seed1.npz", 2)
    path, meta, _ = read_seed_checkpoint(base, seed=3, index=2)
    assert (path.name, meta["seed"]) == ("checkpoint_seed2.npz", 3)


def test_seed_named_files_win_over_index_named_leftovers(tmp_path):
    """After a resume from index-named files, the run saves seed-named ones (seeds 1-3 over the
    names of index 1-2); the leftover index file ``checkpoint_seed0.npz`` (seed 1, older step) is
    not used."""
    svi, base = _svi(), tmp_path / "checkpoint.npz"
    _write_index_named(base, svi, step=5)
    for k in reversed(range(3)):
        seed = TCFG.seed_of(k)
        state = _state(svi, seed + 100)  # different values than at step 5
        save_checkpoint(checkpoint_path(base, TCFG, k), state, _meta(seed, 7))
    states, start, _, _ = initial_states(svi, TCFG, X, base, _meta_of(TCFG))
    assert start == 7
    want = np.stack([svi.get_params(_state(svi, TCFG.seed_of(k) + 100))["loc"] for k in range(3)])
    np.testing.assert_array_equal(_locs(svi, states), want)


def test_a_file_of_another_seed_is_never_loaded(tmp_path):
    """Resuming seeds 2-3 from index-named files of seeds 1-3: ``checkpoint_seed2.npz`` holds seed
    3 and ``checkpoint_seed0.npz`` seed 1, so seed 2 has no file: an error naming both seeds."""
    svi, base = _svi(), tmp_path / "checkpoint.npz"
    _write_index_named(base, svi)
    other = TrainConfig(seed=2, num_seeds=2)
    with pytest.raises(CheckpointError, match=r"no checkpoint of seed 2 at .*checkpoint_seed2\.npz \(.*holds seed 3\)"):
        initial_states(svi, other, X, base, _meta_of(other))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_seed_checkpoint(tmp_path / "none.npz", seed=5, index=0)


# ----------------------------------------------------------------------------- stale temporaries


def _killed_save(path: Path) -> Path:
    """The temporary file a save of ``path`` killed before its rename leaves (as write_npz names it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.write(fd, b"partial")
    os.close(fd)
    return Path(tmp)


def test_stale_temporaries_are_removed_on_the_next_start(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    base, tcfg = out / "checkpoint.npz", TrainConfig(seed=1, num_seeds=2)
    save_checkpoint(checkpoint_path(base, tcfg, 0), {"a": jnp.ones(2)}, {"step": 3})
    stale = [_killed_save(checkpoint_path(base, tcfg, k)) for k in range(2)] + [_killed_save(checkpoint_path(base, tcfg, 0))]
    kept = [_killed_save(out / "other.npz"), _killed_save(seed_file(base, 10)), out / "metrics.jsonl.tmp"]
    kept[-1].write_text("{}\n")
    _prepare_out_dir(out, base, tcfg, load=base, overwrite=False)  # resuming here
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert read_checkpoint(checkpoint_path(base, tcfg, 0))[0]["step"] == 3  # the checkpoint itself is kept
    assert remove_stale_temporaries(out / "single.npz") == []  # nothing to remove
    assert remove_stale_temporaries(tmp_path / "missing" / "c.npz") == []  # no directory
    assert remove_stale_temporaries(out / "other.npz") == [kept[0]] and not kept[0].exists()
