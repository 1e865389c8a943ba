"""Run ``numpyro-air`` and ``python experiments/...`` command lines in one process, in order, in
the current directory, through their ``main`` functions; print a JSON list of what each returned.

    python tests/scripts/run_cli_examples.py '[["numpyro-air", "demo", "--out", "demo"]]'
"""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def script_main(path: Path):
    """The ``main`` of a script under experiments/, imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run(argv: list):
    if argv[0] == "python":
        return script_main(ROOT / argv[1])(argv[2:])
    assert argv[0] == "numpyro-air", argv
    module = __import__(f"numpyro_air.cli.{argv[1]}", fromlist=["main"])
    return module.main(argv[2:], prog=f"numpyro-air {argv[1]}")


def plain(value):
    """numpy scalars and arrays as Python numbers and lists, anything else as its string."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


if __name__ == "__main__":
    print(json.dumps([run(argv) for argv in json.loads(sys.argv[1])], default=plain))
