"""Every ```python block of the README runs as written, in order, in one namespace."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # files the snippets write land here
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    assert namespace["counts"].shape == (32,)
    # the params-only float16 export reads back as the same tree, within float16 rounding
    import jax
    import numpy as np

    from numpyro_air import load_params

    config, params = load_params(tmp_path / "my_params.npz")
    assert config == namespace["config"]
    assert jax.tree.structure(params) == jax.tree.structure(namespace["params"])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(namespace["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert jax.tree.structure(namespace["same"]) == jax.tree.structure(namespace["params"])


def test_no_path_outside_the_repository_in_docs_or_code():
    """No README, docstring or script points at files a user of the package does not have."""
    root = Path(__file__).resolve().parents[1]
    outside = ("../" + "shared", "shared/" + "reference")
    files = [
        p
        for p in root.rglob("*")
        if p.suffix in (".md", ".py", ".ipynb", ".sh", ".toml")
        and not any(part.startswith(".") or part in ("build", "dist", "runs") for part in p.relative_to(root).parts)
    ]
    assert len(files) > 50
    hits = [f"{p.relative_to(root)}: {s}" for p in files for s in outside if s in p.read_text(errors="replace")]
    assert not hits, hits


def test_docs_do_not_speak_of_development_rounds():
    """The documents state results by date and version, not by how the work was organised."""
    root = Path(__file__).resolve().parents[1]
    files = [root / "README.md", root / "CHANGELOG.md", root / "benchmarks" / "README.md"]
    files += sorted((root / "docs").rglob("*.md")) + sorted((root / "experiments").rglob("README.md"))
    files = [p for p in files if p.exists()]
    assert root / "README.md" in files and len(files) >= 5
    patterns = [
        re.compile(r"\bwaves?\b", re.I),
        re.compile(r"\bsession\b", re.I),
        re.compile(r"\b(?:the|this)\s+issue\b", re.I),
        re.compile(r"\bissue's", re.I),
    ]
    hits = []
    for p in files:
        text = p.read_text(errors="replace")
        for pattern in patterns:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{p.relative_to(root)}:{line}: {m.group(0)!r}")
    assert not hits, "development rounds named in the docs:\n" + "\n".join(hits)
