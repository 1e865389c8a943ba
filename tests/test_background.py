"""tests/background.py: jobs run one at a time in order, values and failures reach the test that
asks, unscheduled jobs run on the spot, and ``close`` stops what still runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from background import Background


def echo(workdir: Path, run) -> tuple[float, float, str]:
    start = time.monotonic()
    proc = run([sys.executable, "-c", "print('hello')"])
    (workdir / "done").write_text(proc.stdout)
    return start, time.monotonic(), proc.stdout.strip()


def echo_again(workdir: Path, run) -> tuple[float, float, str]:
    return echo(workdir, run)


def broken(workdir: Path, run) -> None:
    assert run([sys.executable, "-c", "raise SystemExit(3)"]).returncode == 0, "exit status 3"


def test_values_in_order_failures_raised_and_unscheduled_jobs_run_here(tmp_path):
    background = Background(tmp_path)
    background.start([echo, broken, echo_again, echo])  # the duplicate runs once
    first, second = background.result(echo), background.result(echo_again)
    assert first[2] == second[2] == "hello"
    assert first[1] <= second[0]  # one after the other, in the order given
    with pytest.raises(RuntimeError, match="background job broken failed") as info:
        background.result(broken)
    assert isinstance(info.value.__cause__, AssertionError) and "exit status 3" in str(info.value.__cause__)
    assert sorted(background.seconds) == sorted(f"{__name__}.{f.__name__}" for f in (echo, broken, echo_again))
    unscheduled = Background(tmp_path / "other")
    value = unscheduled.result(echo)
    assert value[2] == "hello" and unscheduled.result(echo) == value  # runs on the spot, once
    assert (tmp_path / "other" / f"{__name__}.echo" / "done").read_text().strip() == "hello"


def test_commands_see_the_environment_of_the_start(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKGROUND_PROBE", "at start")
    background = Background(tmp_path)
    background.start([])
    monkeypatch.setenv("BACKGROUND_PROBE", "changed by a test")
    show = [sys.executable, "-c", "import os; print(os.environ['BACKGROUND_PROBE'], os.environ.get('EXTRA'))"]
    assert background.run(show).stdout.split() == ["at", "start", "None"]
    assert background.run(show, env=background.env(EXTRA="1")).stdout.split() == ["at", "start", "1"]


def test_close_kills_running_processes_and_refuses_new_ones(tmp_path):
    background = Background(tmp_path)
    proc = background.popen([sys.executable, "-c", "import time; time.sleep(60)"])
    background.close()
    proc.communicate(timeout=10)  # reads and closes the pipes
    assert proc.returncode != 0
    with pytest.raises(RuntimeError, match="ended"):
        background.run([sys.executable, "-c", "pass"])
