"""No lost work: SIGINT/SIGTERM stop the CLI with a checkpoint and a resume command; SIGKILL at any
instant (also during a save) leaves the last complete checkpoint loadable and the log parseable;
resumed runs end bit for bit where an uninterrupted run ends (CPU). The console command runs as
``python -m numpyro_air.cli`` under the interpreter running the tests, never looked up on PATH."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from numpyro_air.cli.train import build_parser, resume_command
from numpyro_air.train.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SLOW_SAVE = ROOT / "tests" / "scripts" / "train_slow_save.py"
STEPS = 600
CLI = [sys.executable, "-m", "numpyro_air.cli"]  # = the `numpyro-air` console command, without PATH


def runnable(command: str) -> list:
    """A printed ``numpyro-air ...`` command line as an argv for this interpreter (no PATH lookup)."""
    argv = shlex.split(command)
    assert argv[0] == "numpyro-air", command
    return CLI + argv[1:]


def fake_mnist(path: Path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    x = np.stack([np.exp(-((yy - rng.uniform(10, 18)) ** 2 + (xx - rng.uniform(10, 18)) ** 2) / 20) for _ in range(60)])
    y = rng.integers(0, 10, 60)
    x = (x * 200).astype(np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[:30], y_test=y[:30])
    return path


def run_args(tmp: Path) -> list:
    """The run every test interrupts: tiny tutorial networks on 32 fake-MNIST scenes."""
    return [
        "--preset",
        "tutorial",
        "-n",
        str(STEPS),
        "-b",
        "8",
        "--mnist",
        str(tmp / "mnist.npz"),
        "--data-dir",
        str(tmp / "cache"),
        "--num-train",
        "32",
        "--num-test",
        "8",
        "--rnn-hidden-size",
        "8",
        "--encoder-latent-size",
        "4",
        "--encoder-net",
        "8",
        "--decoder-net",
        "8",
        "--predict-net",
        "8",
        "--bl-predict-net",
        "8",
        "--progress-every",
        "50",
        "--eval-train-images",
        "8",
        "--no-progress",
        "--seed",
        "2",
    ]


def reference_run(workdir: Path, run) -> subprocess.CompletedProcess:
    """The uninterrupted run (in ``workdir / "ref"``), which every resumed run must end on."""
    fake_mnist(workdir / "mnist.npz")
    return run([*CLI, "train", *run_args(workdir), "--out", str(workdir / "ref")], env=run.env(JAX_PLATFORMS="cpu"), timeout=900)


@pytest.fixture(scope="module")
def reference(background) -> dict:
    """The uninterrupted run's final checkpoint arrays."""
    proc = background.result(reference_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_checkpoint(Path(proc.args[proc.args.index("--out") + 1]) / "checkpoint.npz")[1]


def saved_step(out: Path) -> int | None:
    """The step of ``out``'s checkpoint, None if there is none."""
    path = out / "checkpoint.npz"
    return read_checkpoint(path)[0]["step"] if path.exists() else None


def assert_same_arrays(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def wait_for_train_row(metrics: Path, proc, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if metrics.exists() and '"kind": "train"' in metrics.read_text():
            return
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no progress row within the timeout")


SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signalled_runs(workdir: Path, run) -> dict:
    """For each of ``SIGNALS``: the run stopped by it after its first logged step (its process, the
    checkpoint's step and the log's rows right after the stop), and for SIGINT the run resumed
    with the command it printed (the other signal's run is not resumed: both stop through the
    same save, and the SIGKILL test resumes too)."""
    fake_mnist(workdir / "mnist.npz")
    env, args, stopped = run.env(JAX_PLATFORMS="cpu"), run_args(workdir), {}
    for signum in SIGNALS:
        out = workdir / f"sig{int(signum)}"
        proc = run.popen([*CLI, "train", *args, "--out", str(out)], env=env)
        wait_for_train_row(out / "metrics.jsonl", proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
        step = saved_step(out)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        command = re.search(r"resume with:\n\s+(.+)", err)
        again = run(runnable(command.group(1)), env=env) if command and signum == signal.SIGINT else None
        stopped[signum] = dict(out=out, returncode=proc.returncode, stderr=err, step=step, rows=rows, again=again)
    return stopped


@pytest.mark.parametrize("signum", SIGNALS)
def test_signal_writes_checkpoint_and_resume_is_exact(reference, background, signum):
    """Either signal stops the run with a checkpoint, the log and the resume command; the resumed
    run (SIGINT's) ends bit for bit where the uninterrupted one ends."""
    stopped = background.result(signalled_runs)[signum]
    out, err = stopped["out"], stopped["stderr"]
    assert stopped["returncode"] == 128 + int(signum), err[-3000:]
    assert stopped["step"] is not None and 0 < stopped["step"] < STEPS  # stopped mid-run, after a finished step
    assert stopped["rows"] and all(r["step"] <= stopped["step"] for r in stopped["rows"])
    command = re.search(r"resume with:\n\s+(.+)", err).group(1)
    assert command.startswith("numpyro-air train ")  # as users type it
    assert shlex.split(command)[-2:] == ["--load", str(out / "checkpoint.npz")]
    if signum != signal.SIGINT:
        assert stopped["again"] is None
        return
    assert stopped["again"].returncode == 0, stopped["again"].stderr[-3000:]
    assert_same_arrays(read_checkpoint(out / "checkpoint.npz")[1], reference)


def test_resume_command_is_the_console_command_and_runs_without_path(tmp_path):
    """The printed resume command is ``numpyro-air train ...`` (copy-pasteable) and splits back into
    the run's own arguments plus ``--load``; the tests run it as ``python -m numpyro_air.cli``,
    which needs no PATH (no training here)."""
    ckpt = tmp_path / "a dir" / "it's" / "checkpoint.npz"  # needs quoting
    argv = ["--preset", "tutorial", "-n", "20", "--out", str(ckpt.parent), "--encoder-net", "8", "16"]
    argv += ["--overwrite", "--load", "old.npz", "--seed", "2"]  # neither --overwrite nor the old --load is resumed
    command = resume_command("numpyro-air train", argv, ckpt)
    assert command.startswith("numpyro-air train ")
    expected = [a for a in argv if a not in ("--overwrite", "--load", "old.npz")] + ["--load", str(ckpt)]
    assert shlex.split(command) == ["numpyro-air", "train", *expected]
    parser = build_parser("numpyro-air train")
    resumed = vars(parser.parse_args(shlex.split(command)[2:]))
    original = vars(parser.parse_args(argv))
    assert resumed == {k: v for k, v in original.items() if k != "overwrite"} | {"load": str(ckpt)}
    assert runnable(command) == [sys.executable, "-m", "numpyro_air.cli", "train", *expected]
    no_path = {k: v for k, v in os.environ.items() if k != "PATH"}
    for args in (["--help"], ["train", "--help"]):
        proc = subprocess.run(
            runnable(shlex.join(["numpyro-air", *args])), capture_output=True, text=True, env=no_path, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith("usage: numpyro-air"), proc.stdout[:500]


def _last_logged_step(metrics: Path) -> int:
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return max((json.loads(line)["step"] for line in lines), default=0)


def _kill_and_check(popen, cmd, env, out: Path, during_save: bool, rng) -> int:
    """Start ``cmd``, SIGKILL it at a random instant (a random step past the last checkpoint, plus a
    random delay) or while a save is between writing its temporary file and the rename; return
    the step of the checkpoint left behind (0 if none), after checking it and the log."""
    before = saved_step(out) or 0
    proc = popen(cmd, env=env, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(600, proc.kill)  # a hung run ends the loops below (and fails)
    watchdog.start()
    if during_save:
        for line in proc.stdout:
            if line.startswith("SAVING"):
                break
    else:
        target = before + int(rng.integers(250, 450))
        while _last_logged_step(out / "metrics.jsonl") < target:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
    watchdog.cancel()
    proc.kill()
    proc.communicate(timeout=60)
    step = saved_step(out) or 0
    assert step >= before
    for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []:
        json.loads(line)  # whole lines only
    if during_save:
        assert list(out.glob("checkpoint.npz.*.tmp")), "the kill was meant to land inside a save"
    return step


def killed_runs(workdir: Path, run) -> tuple[Path, list, subprocess.CompletedProcess]:
    """The run SIGKILLed inside its first save (no checkpoint left: it starts over), then at a random
    step, then finished with the plain console command (whose saves need no 3-s pause); the kills'
    checks are ``_kill_and_check``'s. Returns the output directory, the checkpoint step each kill
    left and the last leg."""
    fake_mnist(workdir / "mnist.npz")
    env, args, out = run.env(JAX_PLATFORMS="cpu"), run_args(workdir), workdir / "killed"
    base = [sys.executable, str(SLOW_SAVE), *args, "--out", str(out), "--save-every", "200"]
    rng = np.random.default_rng(7)
    steps = []
    for during_save in (True, False):
        resume = ["--load", str(out / "checkpoint.npz")] if (out / "checkpoint.npz").exists() else ["--overwrite"]
        steps.append(_kill_and_check(run.popen, base + resume, env, out, during_save, rng))
    plain = [*CLI, "train", *args, "--out", str(out), "--save-every", "200", "--load", str(out / "checkpoint.npz")]
    return out, steps, run(plain, env=env, timeout=900)


BACKGROUND = (reference_run, killed_runs, signalled_runs)


def test_sigkill_at_random_instants_resumes_from_last_checkpoint(reference, background):
    out, steps, final = background.result(killed_runs)
    assert all(step % 200 == 0 for step in steps), steps
    assert len(set(steps)) >= 2, steps  # the kills landed at different points of the run
    assert final.returncode == 0, final.stderr[-3000:]
    assert not list(out.glob("checkpoint.npz.*.tmp")), "a start removes the temporary file of a killed save"
    assert_same_arrays(read_checkpoint(out / "checkpoint.npz")[1], reference)
