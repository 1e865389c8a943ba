"""The package's shape: role folders, no import cycles, shallow import chains, old paths that warn."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

import numpyro_air

PKG_DIR = Path(numpyro_air.__file__).parent
MAX_LEVELS = 7  # train.loop -> analysis.evaluation -> analysis.inference -> core.guide -> core.model -> core.nets -> core.conv
ROLES = ("core", "estimators", "train", "analysis", "data", "cli")
# old module path -> new module path (kept one release as warning re-exports)
DEPRECATED = {
    "numpyro_air.checkpoint": "numpyro_air.train.checkpoint",
    "numpyro_air.inference": "numpyro_air.analysis.inference",
    "numpyro_air.prior": "numpyro_air.core.prior",
    "numpyro_air.svi": "numpyro_air.train.svi",
    "numpyro_air.training": "numpyro_air.train.loop",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    """{module name: (path, is package __init__)} of every module except the deprecated re-exports."""
    out = {}
    for p in PKG_DIR.rglob("*.py"):
        name = _module_name(p)
        if name not in DEPRECATED:
            out[name] = (p, p.name == "__init__.py")
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module):
    """Import statements executed when the module is imported (not in functions or TYPE_CHECKING)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody + [h for x in node.handlers for h in x.body])


def _edges(name: str, path: Path, is_pkg: bool, modules: dict) -> set:
    package = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in _top_level_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            if t in modules and t != name:
                out.add(t)
    return out


@lru_cache(maxsize=1)
def _graph() -> dict:
    modules = _modules()
    return {name: _edges(name, p, is_pkg, modules) for name, (p, is_pkg) in modules.items()}


def _depth(name: str, graph: dict, facades: set, stack: tuple, memo: dict) -> int:
    """Longest chain of modules (package ``__init__`` facades not counted) starting at ``name``."""
    if name in stack:
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(name) :] + (name,)))
    if name not in memo:
        below = max((_depth(t, graph, facades, stack + (name,), memo) for t in graph[name]), default=0)
        memo[name] = below + (0 if name in facades else 1)
    return memo[name]


def test_modules_live_in_role_folders():
    top = sorted(p.stem for p in PKG_DIR.glob("*.py") if p.stem != "__init__" and f"numpyro_air.{p.stem}" not in DEPRECATED)
    assert top == ["pretrained_model", "pyro_compat"], top
    for role in ROLES:
        assert (PKG_DIR / role / "__init__.py").is_file(), role


def test_no_import_cycles_and_at_most_seven_levels():
    graph = _graph()
    facades = {n for n, (_, is_pkg) in _modules().items() if is_pkg}
    memo: dict = {}
    depths = {n: _depth(n, graph, facades, (), memo) for n in graph}
    deepest = max(depths, key=depths.get)
    assert depths[deepest] <= MAX_LEVELS, (deepest, depths[deepest])
    assert depths["numpyro_air.core.config"] == 1  # the leaf everything builds on


def test_estimators_import_nothing_of_air():
    graph = _graph()
    for name in graph:
        if name.startswith("numpyro_air.estimators"):
            assert all(t.startswith("numpyro_air.estimators") for t in graph[name]), (name, graph[name])


@pytest.mark.parametrize("old,new", sorted(DEPRECATED.items()))
def test_old_module_paths_warn_and_reexport(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        mod = importlib.import_module(old)
    target = importlib.import_module(new)
    public = [n for n in getattr(target, "__all__", dir(target)) if not n.startswith("_")]
    assert public
    for n in public:
        assert getattr(mod, n) is getattr(target, n), n


def test_importing_the_package_does_not_warn():
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import numpyro_air, numpyro_air.cli, numpyro_air.data\n"
        "print([str(x.message) for x in w if 'numpyro_air' in str(x.message)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_old_svi_path_still_offers_the_recipes():
    sys.modules.pop("numpyro_air.svi", None)
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("numpyro_air.svi")
    from numpyro_air.train.recipes import PRESETS, OptimConfig, Recipe

    assert (old.PRESETS, old.OptimConfig, old.Recipe) == (PRESETS, OptimConfig, Recipe)
