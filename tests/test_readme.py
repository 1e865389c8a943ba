"""Every ```python block of the README runs as written, in order, in one namespace."""

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
RUN_SNIPPETS = Path(__file__).resolve().parent / "scripts" / "run_snippets.py"


def python_blocks(text: str) -> list:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


# evaluated after the last block: the params-only float16 export reads back as the same tree,
# within float16 rounding; the Pyro round trip keeps the tree
EXPORTED = 'air.load_params("my_params.npz")'
PROBES = [
    "list(counts.shape)",
    f"{EXPORTED}[0] == config",
    f"jax.tree.structure({EXPORTED}[1]) == jax.tree.structure(params)",
    "all(a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-3, atol=1e-4))"
    f" for a, b in zip(jax.tree.leaves({EXPORTED}[1]), jax.tree.leaves(params), strict=True))",
    "jax.tree.structure(same) == jax.tree.structure(params)",
]


def readme_blocks(workdir: Path, run) -> subprocess.CompletedProcess:
    """The README's python blocks in one fresh process, in ``workdir`` (files they write land there)."""
    argv = [sys.executable, str(RUN_SNIPPETS), str(README), *(a for p in PROBES for a in ("--probe", p))]
    return run(argv, cwd=workdir, timeout=900)


BACKGROUND = (readme_blocks,)


def test_readme_python_blocks_run(background):
    assert len(python_blocks(README.read_text())) >= 2
    proc = background.result(readme_blocks)
    assert proc.returncode == 0, proc.stderr[-4000:]
    shape, same_config, same_tree, close, round_trip_tree = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shape == [32]
    assert same_config and same_tree and round_trip_tree
    assert close  # every leaf: same shape, |exported - params| <= 1e-4 + 1e-3 |params| (no NaN)


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
