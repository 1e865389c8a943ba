"""docs/tutorial.ipynb: saved with its figures, small, the same cells as docs/build_tutorial.py, and
every code cell runs (with a few training steps) so that it cannot go stale."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


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


def test_every_code_cell_runs(notebook, monkeypatch, tmp_path):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("NUMPYRO_AIR_TUTORIAL_STEPS", "4")
    monkeypatch.setenv("NUMPYRO_AIR_TUTORIAL_SCALE", "0.05")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__tutorial__"}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "<tutorial cell>", "exec"), namespace)
            plt.close("all")
    assert namespace["STEPS"] == 4 and len(namespace["log"]["elbo"]) == 4
    assert 0.0 <= namespace["accuracy"] <= 1.0 and namespace["summary"]["steps"] == 2
