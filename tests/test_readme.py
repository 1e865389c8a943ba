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
