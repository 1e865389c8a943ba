"""Subprocess jobs that run beside the in-process tests.

Most tests run in the pytest process and are bound by XLA compilation, which keeps one core busy;
the slowest tests only wait on subprocesses (whole training commands, the notebook, multi-device
scripts). A module lists such work in ``BACKGROUND`` (functions ``job(workdir, run) -> value``,
where ``run(argv, **popen_kwargs)`` is a ``subprocess.run`` with captured text output and
``run.popen`` a ``subprocess.Popen`` with text pipes, both stopped when the session ends);
when collection ends, ``conftest.py`` starts the jobs of the collected modules in a daemon
thread, one after another in collection order, so they use the second core while the in-process
tests run. A test asks for a job's value with the ``background`` fixture's ``result(job)``: it
waits for the job if it is scheduled, and runs it on the spot if it is not (a job missing from
its module's ``BACKGROUND``). A job's exception is raised again in the test that asks for its
value (a failed assertion included): a job runs processes and writes files, and leaves its
results' assertions to the test.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

Job = Callable[[Path, "Background"], Any]


class Background:
    """Runs jobs one at a time in a daemon thread; ``result(job)`` waits for one job's value."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="numpyro_air_test_background_"))
        self._scheduled: list[Job] = []
        self._done: dict[Job, tuple[bool, Any]] = {}
        self._running: set[subprocess.Popen] = set()
        self.seconds: dict[str, float] = {}  # wall time of each finished background job
        self._cond = threading.Condition()
        self._closed = False

    def start(self, jobs: Iterable[Job]) -> None:
        """Schedule ``jobs`` (duplicates once, in order) and start the worker thread."""
        self._scheduled = list(dict.fromkeys(jobs))
        if self._scheduled:
            threading.Thread(target=self._work, name="background-jobs", daemon=True).start()

    def result(self, job: Job) -> Any:
        """The value of ``job``: waits while it runs in the background, runs it here if unscheduled."""
        if job not in self._scheduled:
            return job(self._workdir(job), self)
        with self._cond:
            self._cond.wait_for(lambda: job in self._done)
            ok, value = self._done[job]
        if not ok:
            raise RuntimeError(f"background job {job.__name__} failed") from value
        return value

    def __call__(self, argv: list, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        return self.run(argv, timeout, **kwargs)

    def run(self, argv: list, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run(argv, capture_output=True, text=True)`` that ``close`` can stop."""
        proc = self.popen(argv, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            self._forget(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def popen(self, argv: list, **kwargs) -> subprocess.Popen:
        """A started ``subprocess.Popen`` (text pipes unless ``kwargs`` say otherwise), stopped by
        ``close`` if still running."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the test session has ended")
            pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            proc = subprocess.Popen(argv, **(pipes | kwargs))
            self._running.add(proc)
        return proc

    def close(self) -> None:
        """Stop scheduling and kill the processes still running (the session ends)."""
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

    def _work(self) -> None:
        for job in self._scheduled:
            if self._closed:
                return
            start = time.perf_counter()
            try:
                done = (True, job(self._workdir(job), self))
            except BaseException as exc:  # handed to the test that asks for the value
                done = (False, exc)
            with self._cond:
                self.seconds[f"{job.__module__}.{job.__name__}"] = time.perf_counter() - start
                self._done[job] = done
                self._cond.notify_all()
