"""The package uses NumPyro's public API only: no module or name starting with ``_`` is imported
from ``numpyro`` anywhere in ``numpyro_air/``, nor reached as an attribute of a NumPyro module
(``numpyro.infer.svi._make_loss_fn``). A source scan of import statements and attribute chains;
string keys such as a trace site's ``"_control_flow_done"`` are data, not names, and not flagged."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "numpyro_air"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_numpyro(module: str) -> bool:
    return module == "numpyro" or module.startswith("numpyro.")


def private_numpyro_names(source: str) -> list:
    """``(line, dotted name)`` of every private NumPyro name the source imports or reaches as an
    attribute of a name bound to a NumPyro module or object by an import."""
    tree = ast.parse(source)
    found, bound = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_numpyro(alias.name):
                    bound.add(alias.asname or alias.name.split(".")[0])
                    found += [(node.lineno, alias.name) for part in alias.name.split(".") if _private(part)][:1]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _is_numpyro(node.module):
            private_module = any(_private(part) for part in node.module.split("."))
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if private_module or _private(alias.name):
                    found.append((node.lineno, f"{node.module}.{alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in bound and _private(node.attr):
                found.append((node.lineno, ".".join([inner.id, *reversed(chain)])))
    return sorted(set(found))


def test_the_scan_finds_private_names():
    """The scan itself: each way of reaching a private NumPyro name is flagged, public ones and
    string keys are not."""
    flagged = {
        "from numpyro.infer.svi import _make_loss_fn": "numpyro.infer.svi._make_loss_fn",
        "from numpyro.infer.svi import SVIState, _make_loss_fn as f": "numpyro.infer.svi._make_loss_fn",
        "from numpyro._private import thing": "numpyro._private.thing",
        "import numpyro._private.mod as m": "numpyro._private.mod",
        "import numpyro\nnumpyro.infer.svi._make_loss_fn": "numpyro.infer.svi._make_loss_fn",
        "import numpyro.infer.svi as s\ns._make_loss_fn()": "s._make_loss_fn",
        "from numpyro.infer import svi\nx = svi._make_loss_fn": "svi._make_loss_fn",
        "from numpyro.optim import Adam\nAdam._hidden": "Adam._hidden",
    }
    for source, name in flagged.items():
        assert [n for _, n in private_numpyro_names(source)] == [name], source
    clean = [
        "from numpyro.infer import SVI\nfrom numpyro.infer.svi import SVIState",
        "import numpyro.distributions as dist\ndist.Normal(0, 1).__class__",
        "def f(site):\n    return site.get('_control_flow_done', False)",
        "import jax\njax._src",  # not NumPyro
        "from ._helpers import _x",  # relative: this package
    ]
    for source in clean:
        assert private_numpyro_names(source) == [], source


def test_no_private_numpyro_names_in_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = {str(f.relative_to(PACKAGE.parent)): names for f in files if (names := private_numpyro_names(f.read_text()))}
    assert found == {}
