"""Data parallel (2 forced CPU devices, in a subprocess) and multi-seed vmap equal the
single-device, single-seed computations; bad scale-out inputs fail early and clearly."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import FAST_COMPILE_FLAGS

from numpyro_air.train import parallel
from numpyro_air.train.loop import TrainConfig

SCRIPT = Path(__file__).parent / "scripts" / "parallel_check.py"


def parallel_check(workdir: Path, run) -> subprocess.CompletedProcess:
    flags = f"--xla_force_host_platform_device_count=2 {FAST_COMPILE_FLAGS}"
    return run([sys.executable, str(SCRIPT)], env=run.env(XLA_FLAGS=flags, JAX_PLATFORMS="cpu"), timeout=900)


@pytest.fixture(scope="module")
def result(background):
    proc = background.result(parallel_check)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_two_devices_visible(result):
    assert result["num_devices"] == 2
    assert result["x_sharding_devices"] == 2


def test_sharded_loss_and_gradients_match_single_device(result):
    assert result["loss_sharded"] == pytest.approx(result["loss_single"], rel=1e-5)
    # float32 reductions in a different order: relative to the largest gradient entry
    assert result["grad_maxdiff"] <= 1e-4 * max(result["grad_maxabs"], 1.0)


def test_sharded_svi_step_matches(result):
    assert result["step_loss_sharded"] == pytest.approx(result["step_loss_single"], rel=1e-5)
    assert result["step_param_maxdiff"] < 1e-5


def test_seeds_times_devices_match_individual_runs(result):
    assert result["seeds_devices_param_maxdiff"] < 1e-5
    assert result["seeds_devices_loss_diff"] < 1e-3
    assert result["seeds_vmap_param_maxdiff"] < 1e-5


def test_training_loop_seeds_and_devices(result):
    # numpyro_air.train.loop.train with K = 2 seeds sharded over 2 devices = on one device
    one, two = result["train_loop_elbos"]["one"], result["train_loop_elbos"]["two"]
    assert len(one) == len(two) == 4  # 2 steps x 2 seeds
    assert two == pytest.approx(one, rel=1e-5)
    assert result["train_loop_params_close_fraction"] > 0.999


def test_indivisible_batch_error(result):
    assert "not divisible" in result["indivisible_error"] and "7" in result["indivisible_error"]


def test_bad_num_seeds():
    with pytest.raises(ValueError, match="num_seeds"):
        TrainConfig(num_seeds=0)


def test_missing_device_kind():
    with pytest.raises(ValueError, match="tpu"):
        parallel.select_devices("tpu")


def test_too_many_devices():
    with pytest.raises(ValueError, match="requested"):
        parallel.select_devices("cpu", 64)


MULTIHOST = Path(__file__).parent / "scripts" / "multihost_train.py"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(workdir: Path, run) -> tuple:
    """Process 0 and 1 of a 2-process run (concurrently), then the 1-process run."""
    env = run.env(JAX_PLATFORMS="cpu")
    port = _free_port()
    argv = [[sys.executable, str(MULTIHOST), str(p), str(port), str(workdir / f"p{p}")] for p in (0, 1)]
    with ThreadPoolExecutor(2) as pool:
        pair = list(pool.map(lambda a: run(a, env=env, timeout=900), argv))
    single = run([sys.executable, str(MULTIHOST), "-1", "0", str(workdir / "single")], env=env, timeout=900)
    return workdir, pair, single


BACKGROUND = (parallel_check, two_processes)


def test_two_processes_equal_one_process(background):
    """2 CPU processes (jax.distributed on localhost, one device each, each building its half of
    every batch) train like one process with the same global batch; only process 0 writes."""
    import numpy as np

    from numpyro_air.train.checkpoint import read_checkpoint

    tmp_path, pair, single = background.result(two_processes)
    for p in pair:
        assert p.returncode == 0, p.stderr[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    r0, r1, rs = (json.loads(p.stdout.strip().splitlines()[-1]) for p in (*pair, single))
    assert r0["process_count"] == r1["process_count"] == 2 and rs["process_count"] == 1
    assert len(r0["elbos"]) == 3 and r0["elbos"] == pytest.approx(rs["elbos"], rel=1e-5)
    assert "checkpoint.npz" in r0["files"] and r1["files"] == []  # only process 0 writes files
    _, a = read_checkpoint(tmp_path / "p0" / "checkpoint.npz")
    _, b = read_checkpoint(tmp_path / "single" / "checkpoint.npz")
    params = [n for n in a if n.startswith("params/")]
    assert sorted(a) == sorted(b) and len(params) > 10
    close = sum(int(np.sum(np.abs(a[n] - b[n]) <= 1e-5)) for n in params)
    assert close / sum(a[n].size for n in params) > 0.999
