"""Subprocess jobs that run beside the in-process tests.

Most tests run in the pytest process and are bound by XLA compilation, which keeps one core busy;
the slowest tests only wait on subprocesses (whole training commands, the notebook, multi-device
scripts). A module lists such work in ``BACKGROUND`` (functions ``job(workdir, run) -> value``,
where ``run(argv, **popen_kwargs)`` is a ``subprocess.run`` with captured text output,
``run.popen`` a ``subprocess.Popen`` with text pipes, both stopped when the test run ends, and
``run.env(**overrides)`` the test run's environment);
when collection ends, ``conftest.py`` starts the jobs of the collected modules in a daemon
thread, one after another in collection order, so they use the second core while the in-process
tests run. A test asks for a job's value with the ``background`` fixture's ``result(job)``: it
waits for the job if it is scheduled, and runs it on the spot if it is not (a job missing from
its module's ``BACKGROUND``). A job's exception is raised again in the test that asks for its
value (a failed assertion included): a job runs processes and writes files, and leaves its
results' assertions to the test.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

Job = Callable[[Path, "Background"], Any]


class Background:
    """Runs jobs one at a time in a daemon thread; ``result(job)`` waits for one job's value.

    Commands run with the environment and working directory the test run had when ``start`` was
    called (a test's ``monkeypatch`` does not leak into them) unless a job passes its own."""

    def __init__(self, root: Path | None = None, wait_limit: float = 3600) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="numpyro_air_test_background_"))
        self.wait_limit = wait_limit  # seconds a test waits for one job before it fails
        self.seconds: dict[str, float] = {}  # wall time of each finished job
        self._env, self._cwd = dict(os.environ), os.getcwd()
        self._scheduled: list[Job] = []
        self._done: dict[Job, tuple[bool, Any]] = {}
        self._running: set[subprocess.Popen] = set()
        self._cond = threading.Condition()
        self._closed = False

    def start(self, jobs: Iterable[Job]) -> None:
        """Schedule ``jobs`` (duplicates once, in order) and start the worker thread."""
        self._env, self._cwd = dict(os.environ), os.getcwd()
        self._scheduled = list(dict.fromkeys(jobs))
        if self._scheduled:
            threading.Thread(target=self._work, name="background-jobs", daemon=True).start()

    def result(self, job: Job) -> Any:
        """The value of ``job``: waits while it runs in the background; an unscheduled job runs
        here, once."""
        if job not in self._scheduled and job not in self._done:
            self._finish(job)
        with self._cond:
            if not self._cond.wait_for(lambda: job in self._done, timeout=self.wait_limit):
                raise TimeoutError(f"background job {job.__name__} did not finish within {self.wait_limit:.0f} s")
            ok, value = self._done[job]
        if not ok:
            raise RuntimeError(f"background job {job.__name__} failed") from value
        return value

    def env(self, **overrides: str) -> dict:
        """The test run's environment (as at ``start``) with ``overrides``."""
        return dict(self._env, **overrides)

    def __call__(self, argv: list, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        return self.run(argv, timeout, **kwargs)

    def run(self, argv: list, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run(argv, capture_output=True, text=True, timeout=timeout)``: a command
        that outlives ``timeout`` is killed (and raises), as is one still running at ``close``."""
        proc = self.popen(argv, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            self._forget(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def popen(self, argv: list, **kwargs) -> subprocess.Popen:
        """A started ``subprocess.Popen`` (text pipes, the test run's environment and directory,
        unless ``kwargs`` say otherwise), killed by ``close`` if still running."""
        options = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env, cwd=self._cwd)
        with self._cond:
            if self._closed:
                raise RuntimeError("the test run has ended")
            proc = subprocess.Popen(argv, **(options | kwargs))
            self._running.add(proc)
        return proc

    def close(self) -> None:
        """Stop scheduling and kill the processes still running (the test run ends)."""
        with self._cond:
            self._closed = True
            running = list(self._running)
        for proc in running:
            proc.kill()

    def _forget(self, proc: subprocess.Popen) -> None:
        with self._cond:
            self._running.discard(proc)

    def _workdir(self, job: Job) -> Path:
        path = self.root / f"{job.__module__}.{job.__name__}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _finish(self, job: Job) -> None:
        """Run ``job`` and record its value or exception and its wall time."""
        start = time.perf_counter()
        try:
            done = (True, job(self._workdir(job), self))
        except BaseException as exc:  # handed to the test that asks for the value
            done = (False, exc)
        with self._cond:
            self.seconds[f"{job.__module__}.{job.__name__}"] = time.perf_counter() - start
            self._done[job] = done
            self._cond.notify_all()

    def _work(self) -> None:
        for job in self._scheduled:
            if self._closed:
                return
            self._finish(job)
