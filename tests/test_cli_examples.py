"""Every help text of ``numpyro-air`` ends with its example, and the examples run as typed (with
fewer steps and scenes), in order, in one directory."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from numpyro_air import cli
from numpyro_air.cli import EXAMPLES, example_epilog
from numpyro_air.train.checkpoint import read_npz

RUN_EXAMPLES = Path(__file__).resolve().parent / "scripts" / "run_cli_examples.py"

# What the test changes in each example to keep it small: (option, value) replaced or appended.
SMALLER = {
    "train": {"-n": "2", "--eval-train-images": "64"},
    "make_eval_set.py": {"--per-count": "10"},
    "demo": {"--num": "40", "--show": "4"},
}


def smaller(line: str) -> list:
    """The example's argv with the options of SMALLER replaced or appended."""
    argv = shlex.split(line)
    key = next(k for k in (*SMALLER, "") if not k or k in argv[:3] or argv[1].endswith(k))
    for opt, value in SMALLER.get(key, {}).items():
        if opt in argv:
            argv[argv.index(opt) + 1] = value
        else:
            argv += [opt, value]
    return argv


def test_every_help_text_ends_with_its_example(capsys):
    cli.main(["--help"])
    assert capsys.readouterr().out.rstrip().endswith(example_epilog("numpyro-air"))
    for command in ("train", "evaluate", "plot", "demo"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out.rstrip()
        assert text.endswith(example_epilog(command)), command
        assert all(line.startswith(("numpyro-air ", "python experiments/")) for line in EXAMPLES[command])


def example_commands(workdir: Path, run) -> tuple[Path, subprocess.CompletedProcess]:
    """Every example line, smaller, in order, in one fresh process in ``workdir``."""
    lines = [smaller(line) for c in ("train", "evaluate", "plot", "demo") for line in EXAMPLES[c]]
    return workdir, run([sys.executable, str(RUN_EXAMPLES), json.dumps(lines)], cwd=workdir, timeout=900)


BACKGROUND = (example_commands,)


def test_examples_run_as_typed_in_order(background):
    lines = [line for c in ("train", "evaluate", "plot", "demo") for line in EXAMPLES[c]]
    assert EXAMPLES["numpyro-air"][0] in lines
    assert all(a[0] == "numpyro-air" or a[:2] == ["python", "experiments/make_eval_set.py"] for a in map(smaller, lines))
    tmp_path, proc = background.result(example_commands)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    run = tmp_path / "runs" / "fast"
    assert read_npz(run / "checkpoint.npz")[0]["step"] == 2
    evaluated = results[2]
    assert evaluated["num_images"] == 40 and evaluated["step"] == 2
    assert sum(map(sum, evaluated["confusion"])) == 40 and 0.0 <= evaluated["count_accuracy"] <= 1.0
    assert (run / "elbo.png").stat().st_size > 0 and (run / "accuracy.png").stat().st_size > 0
    demo = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert demo["scenes"] == 40 and 0.0 <= demo["accuracy_most_probable_path"] <= 1.0
    assert (tmp_path / "demo" / "demo_boxes.png").stat().st_size > 0
