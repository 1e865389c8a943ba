"""Run every code cell of a notebook (``.ipynb``) or every ```python block of a Markdown file, in
order, in one namespace, in the current directory; then print a JSON list with the value of each
``--probe`` expression evaluated in that namespace.

    python tests/scripts/run_snippets.py docs/tutorial.ipynb --probe STEPS --probe 'len(log["elbo"])'
"""

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def snippets(path: Path) -> list:
    """The code of ``path``: a notebook's code cells or a Markdown file's python blocks."""
    text = path.read_text()
    if path.suffix == ".ipynb":
        return ["".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a notebook or a Markdown file")
    parser.add_argument("--probe", action="append", default=[], help="an expression to print after the last snippet")
    args = parser.parse_args()
    namespace: dict = {"__name__": "__snippets__"}
    for i, code in enumerate(snippets(args.source)):
        exec(compile(code, f"{args.source.name} snippet {i}", "exec"), namespace)
        plt.close("all")
    print(json.dumps([eval(expr, namespace) for expr in args.probe]))


if __name__ == "__main__":
    main()
