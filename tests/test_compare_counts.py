"""experiments/compare_counts.py: accuracy per true count from the eval rows of run logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import experiment_script


@pytest.fixture(scope="module")
def script():
    return experiment_script("compare_counts")


def write_run(path: Path, rows: list) -> Path:
    path.mkdir()
    train = {"kind": "train", "step": 1, "elbo": 1.0}
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [train, *rows]) + "\n")
    return path


def eval_row(step: int, greedy: list, sample: list) -> dict:
    return {"kind": "eval", "step": step, "test_confusion_greedy": greedy, "test_confusion": sample}


def test_per_count_accuracy_table_and_figure(script, tmp_path, capsys):
    # rows: true count, columns: inferred count; true 1 has no scenes in the first row
    a = write_run(
        tmp_path / "a", [eval_row(10, [[4, 0], [0, 0]], [[2, 2], [0, 0]]), eval_row(20, [[3, 1], [1, 3]], [[4, 0], [0, 4]])]
    )
    b = write_run(tmp_path / "b", [eval_row(10, [[1, 3], [2, 2]], [[4, 0], [4, 0]])])
    curves = script.per_count_curves(a, "test_confusion_greedy")
    assert curves == {0: [(10, 1.0), (20, 0.75)], 1: [(20, 0.75)]}
    assert script.per_count_curves(a, "test_confusion") == {0: [(10, 0.5), (20, 1.0)], 1: [(20, 1.0)]}
    out = tmp_path / "fig" / "c.png"
    script.main([str(a), str(b), "--labels", "A", "B", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = capsys.readouterr().out.splitlines()
    assert "| A | 10 | 100.0% | - |" in lines and "| A | 20 | 75.0% | 75.0% |" in lines
    assert "| B | 10 | 25.0% | 50.0% |" in lines


def test_bad_input_is_one_line(script, tmp_path):
    with pytest.raises(SystemExit, match=r"error: .*metrics.jsonl: no such file"):
        script.main([str(tmp_path), "--out", str(tmp_path / "x.png")])
    run = write_run(tmp_path / "r", [])
    with pytest.raises(SystemExit, match="no eval rows"):
        script.main([str(run), "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="2 runs but 1 labels"):
        script.main([str(run), str(run), "--labels", "one", "--out", str(tmp_path / "x.png")])
