"""Starting a new run from another run's parameters (``--init-from``): which parameters are taken,
what starts fresh, what is refused, and what the new run records."""

from __future__ import annotations

import json
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_TRAINING

from numpyro_air import AIRConfig, make_svi
from numpyro_air.cli.train import build_parser, init_source, resume_command
from numpyro_air.data import generate_multi_mnist
from numpyro_air.train.checkpoint import (
    CheckpointError,
    params_arrays,
    read_checkpoint,
    read_npz,
    save_checkpoint,
    seed_file,
    write_npz,
)
from numpyro_air.train.init_from import initialised_from, merged_params, source_params, start_from
from numpyro_air.train.loop import TrainConfig, initial_states, train
from numpyro_air.train.recipes import OptimConfig

CANVAS = TINY_TRAINING["image_size"]
AIR = AIRConfig.tutorial(**TINY_TRAINING)
OPT = OptimConfig(baseline_learning_rate=0.1)
TCFG = TrainConfig(num_steps=2, batch_size=8, seed=5, num_seeds=2, progress_every=1, save_every=0, final_figures=False)
QUIET = dict(progress=False, log=lambda s: None)


def fresh_states(air: AIRConfig, tcfg: TrainConfig = TCFG):
    svi = make_svi(air, OPT)
    states, *_ = initial_states(svi, tcfg, jnp.zeros((tcfg.batch_size, CANVAS, CANVAS)))
    return svi, states


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The per-seed checkpoints of a two-seed run (NVIL, with baselines; parameters moved away from
    any initialisation), their base name, and images of the configuration's canvas."""
    svi, states = fresh_states(AIR)
    keys = iter(jax.random.split(jax.random.PRNGKey(9), 1000))
    params = jax.tree.map(lambda a: a + jax.random.normal(next(keys), a.shape), svi.get_params(states))
    states = start_from(svi, states, [params_arrays(jax.tree.map(lambda a: a[k], params)) for k in range(2)])
    base = tmp_path_factory.mktemp("source") / "checkpoint.npz"
    for k, seed in enumerate((5, 6)):
        save_checkpoint(seed_file(base, seed), jax.tree.map(lambda a: a[k], states), {"step": 2, "seed": seed})
    rng = np.random.default_rng(0)
    digits = (rng.uniform(size=(20, 28, 28)) > 0.7).astype(np.uint8) * 100
    return base, generate_multi_mnist(digits, rng.integers(0, 10, 20), 32, canvas_size=CANVAS, scale_mean=1.3, seed=1)


def test_merged_params_takes_the_files_arrays_keeps_missing_baselines_fresh_and_refuses_other_networks():
    fresh = {"params/rnn$params/k": np.zeros((3, 4), np.float32), "params/bl_rnn$params/k": np.ones(2, np.float32)}
    given = {"params/rnn$params/k": np.full((3, 4), 7.0, np.float16), "params/extra/k": np.ones(1)}
    merged, kept, left = merged_params(fresh, given, "f.npz")
    np.testing.assert_array_equal(merged["params/rnn$params/k"], 7.0)
    assert merged["params/rnn$params/k"].dtype == np.float32  # the run's dtype, e.g. from a float16 params file
    np.testing.assert_array_equal(merged["params/bl_rnn$params/k"], 1.0)
    assert kept == ["params/bl_rnn$params/k"] and left == ["params/extra/k"] and set(merged) == set(fresh)
    for bad, words in (
        ({"params/bl_rnn$params/k": np.ones(2)}, "it lacks params/rnn$params/k"),
        ({"params/rnn$params/k": np.ones((4, 3))}, "params/rnn$params/k has shape (4, 3), the run's has (3, 4)"),
    ):
        with pytest.raises(CheckpointError) as err:
            merged_params(fresh, bad, "f.npz")
        assert str(err.value).startswith("f.npz: ") and words in str(err.value) and "\n" not in str(err.value)


def test_each_seed_starts_from_its_own_checkpoint_with_a_fresh_optimiser(source):
    base, _ = source
    air = AIR.replace(likelihood_sd=0.2)  # another likelihood: allowed, the networks are the same
    svi, states = fresh_states(air)
    started, records = initialised_from(svi, states, source_params(base, [5, 6]))
    fresh_params = svi.get_params(states)
    for k, seed in enumerate((5, 6)):
        meta, arrays = read_checkpoint(seed_file(base, seed))
        got = params_arrays(jax.tree.map(lambda a: a[k], svi.get_params(started)))
        assert set(got) == {n for n in arrays if n.startswith("params/")}
        for name, a in got.items():
            np.testing.assert_array_equal(a, arrays[name])
        assert records[k] == {"path": str(seed_file(base, seed)), "step": 2, "seed": seed, "sha256": meta["sha256"]}
    # the two seeds' parameters differ (each its own file), the optimiser starts at count 0 with zero moments
    p = params_arrays(svi.get_params(started))
    assert not np.allclose(p["params/rnn$params/img/kernel"][0], p["params/rnn$params/img/kernel"][1])
    assert not np.allclose(p["params/rnn$params/img/kernel"][0], params_arrays(fresh_params)["params/rnn$params/img/kernel"][0])
    count, (_, adam) = started.optim_state
    np.testing.assert_array_equal(count, 0)
    moments = [leaf for leaf in jax.tree.leaves(adam) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert moments and all(not np.any(np.asarray(m)) for m in moments)
    np.testing.assert_array_equal(jax.random.key_data(started.rng_key), jax.random.key_data(states.rng_key))


def test_one_file_for_every_seed_and_baselines_it_lacks_start_fresh(source, tmp_path):
    base, _ = source
    _, arrays = read_checkpoint(seed_file(base, 6))
    networks = {n: a for n, a in arrays.items() if n.startswith("params/") and not n.startswith("params/bl_")}
    params_file = write_npz(tmp_path / "p.npz", networks, {"kind": "params", "step": 2})
    svi, states = fresh_states(AIR)
    lines = []
    started, _ = initialised_from(svi, states, source_params(params_file, [5, 6]), lines.append)
    got, fresh = (params_arrays(svi.get_params(s)) for s in (started, states))
    for name, a in got.items():
        want = np.broadcast_to(networks[name], a.shape) if name in networks else fresh[name]  # baselines: each seed's own
        np.testing.assert_array_equal(a, want)
    assert any(n.startswith("params/bl_") for n in got)
    assert any("start fresh" in line and "params/bl_" in line for line in lines), lines


def test_other_networks_are_a_one_line_error_naming_the_file_before_anything_is_written(source, tmp_path):
    base, images = source
    svi, states = fresh_states(AIR.replace(rnn_hidden_size=8))
    with pytest.raises(CheckpointError) as err:
        initialised_from(svi, states, source_params(base, [5, 6]))
    assert str(err.value).startswith(str(seed_file(base, 5))) and "has shape" in str(err.value)
    one = TrainConfig(num_steps=2, batch_size=8, seed=6, save_every=0, final_figures=False)
    for air, path, words in ((AIR.replace(rnn_hidden_size=8), base, "has shape"), (AIR, tmp_path / "none.npz", "does not exist")):
        out = tmp_path / "run"
        with pytest.raises(CheckpointError) as err:
            train(air, OPT, one, images, None, out, init_from=path, **QUIET)
        assert words in str(err.value) and "\n" not in str(err.value)
        assert not out.exists()  # refused before the run directory is made


def test_the_new_run_records_its_start_and_resumes_without_it(source, tmp_path):
    base, images = source
    out, one = (
        tmp_path / "new",
        TrainConfig(num_steps=2, batch_size=8, seed=6, eval_batch_size=16, save_every=0, final_figures=False),
    )
    train(AIR, OPT, one, images, None, out, init_from=base, **QUIET)  # seed 6 of the two-seed run's files
    meta, _ = read_checkpoint(out / "checkpoint.npz")
    assert meta["step"] == 2 and meta["init_from"]["path"] == str(seed_file(base, 6)) and meta["init_from"]["seed"] == 6
    assert meta["init_from"]["sha256"] == read_npz(seed_file(base, 6))[0]["sha256"]
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [2]  # a new run: from step 0
    with pytest.raises(CheckpointError, match="give one of them"):
        train(AIR, OPT, one, images, None, tmp_path / "both", load=base, init_from=base, **QUIET)
    argv = ["--init-from", str(base), "-n", "9", "--init-from=x", "--out", "o"]
    assert shlex.split(resume_command("numpyro-air train", argv, out / "c.npz")) == [
        "numpyro-air",
        "train",
        "-n",
        "9",
        "--out",
        "o",
        "--load",
        str(out / "c.npz"),
    ]
    # the flag: "pretrained" names the shipped weights
    given = vars(build_parser("numpyro-air train").parse_args(["--init-from", "pretrained"]))["init_from"]
    shipped = init_source(given)
    assert shipped.endswith("air_multi_mnist.npz") and read_npz(shipped)[0]["kind"] == "params"
    assert init_source(None) is None and init_source("a.npz") == "a.npz"
