"""docs/tutorial.ipynb: saved with its figures, small, the same cells as docs/build_tutorial.py, and
every code cell runs (with a few training steps) so that it cannot go stale."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
RUN_SNIPPETS = ROOT / "tests" / "scripts" / "run_snippets.py"


@pytest.fixture(scope="module")
def notebook() -> dict:
    return json.loads(NOTEBOOK.read_text())


def test_saved_with_figures_small_and_from_the_builder(notebook):
    assert NOTEBOOK.stat().st_size < 2_000_000
    spec = importlib.util.spec_from_file_location("build_tutorial", ROOT / "docs" / "build_tutorial.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    saved = [("".join(c["source"]), c["cell_type"]) for c in notebook["cells"]]
    assert saved == [(source, kind) for kind, source in builder.CELLS]  # rebuilt after every edit
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    images = sum(any("image/png" in o.get("data", {}) for o in c["outputs"]) for c in code)
    assert images >= 6  # data, prior, window, curves, inference, own images


def tutorial_cells(workdir: Path, run) -> subprocess.CompletedProcess:
    """Every code cell with a few training steps, in a fresh process (beside the other tests)."""
    env = run.env(NUMPYRO_AIR_TUTORIAL_STEPS="4", NUMPYRO_AIR_TUTORIAL_SCALE="0.05")
    probes = ["STEPS", 'len(log["elbo"])', "float(accuracy)", 'summary["steps"]']
    argv = [sys.executable, str(RUN_SNIPPETS), str(NOTEBOOK), *(a for p in probes for a in ("--probe", p))]
    return run(argv, env=env, cwd=workdir, timeout=900)


BACKGROUND = (tutorial_cells,)


def test_every_code_cell_runs(background):
    proc = background.result(tutorial_cells)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps, logged, accuracy, summary_steps = json.loads(proc.stdout.strip().splitlines()[-1])
    assert steps == 4 and logged == 4
    assert 0.0 <= accuracy <= 1.0 and summary_steps == 2
