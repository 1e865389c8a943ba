"""Shared pytest setup: CPU-only JAX, one compilation cache per test run, small configs and batches."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

# Force CPU before JAX is imported anywhere (tests must not grab an accelerator), unless
# NUMPYRO_AIR_TEST_PLATFORM asks for another one (benchmarks/gpu_check.sh runs the device-neutral
# tests on a GPU this way).
os.environ["JAX_PLATFORMS"] = os.environ.get("NUMPYRO_AIR_TEST_PLATFORM", "cpu")
# Compile fast rather than run fast: XLA's CPU backend at -O0 halves the (dominant) compile time
# of the model/guide scans; the test workloads are tiny. Set XLA_FLAGS yourself to override.
# (XLA's older loop emitters for fusions, --xla_cpu_use_fusion_emitters=false, would halve it
# again, but programs compiled with them are not bit-reproducible: the exact-resume and
# equal-program tests fail with them.)
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE_FLAGS).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numpyro import handlers  # noqa: E402

# numpyro's eager ``scan`` builds a fresh closure on every model/guide call, so JAX's in-memory
# cache never hits and each call recompiles (seconds on a small CPU). A persistent cache keyed on
# the compiled HLO makes repeated calls with the same config and shapes cheap. It must be set
# before the first compilation; it lives in a private temp dir removed at exit (no cross-run state).
_JAX_CACHE_DIR = tempfile.mkdtemp(prefix="numpyro_air_test_jax_cache_")
atexit.register(shutil.rmtree, _JAX_CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _JAX_CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
# The subprocesses (CLI and script tests) share a second one, so that what a train command's
# evaluation compiled is not compiled again by the ``evaluate`` and ``plot`` commands of the same
# test; it is separate from this process's (its entries are written without a lock, and the
# subprocesses run beside this process and may be killed mid-write).
_SUBPROCESS_CACHE_DIR = tempfile.mkdtemp(prefix="numpyro_air_test_jax_cache_subprocesses_")
atexit.register(shutil.rmtree, _SUBPROCESS_CACHE_DIR, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _SUBPROCESS_CACHE_DIR
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

from background import Background  # noqa: E402

from numpyro_air import AIRConfig  # noqa: E402

_BACKGROUND = pytest.StashKey[Background]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the ``BACKGROUND`` jobs of the modules whose selected tests use the ``background``
    fixture (tests/background.py), in collection order."""
    users = (item for item in session.items if "background" in getattr(item, "fixturenames", ()))
    modules = dict.fromkeys(m for m in (getattr(item, "module", None) for item in users) if m is not None)
    if session.config.option.collectonly:
        modules = {}
    background = Background()
    atexit.register(shutil.rmtree, background.root, ignore_errors=True)
    session.config.stash[_BACKGROUND] = background
    background.start(job for module in modules for job in getattr(module, "BACKGROUND", ()))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _BACKGROUND in session.config.stash:
        session.config.stash[_BACKGROUND].close()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """The wall time of each background job (they do not appear among the tests' durations)."""
    background = config.stash.get(_BACKGROUND, None)
    if background is not None and background.seconds:
        terminalreporter.write_sep("=", "background jobs (wall time, beside the tests)")
        for name, seconds in sorted(background.seconds.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{seconds:7.2f}s {name}")


@pytest.fixture(scope="session")
def background(request) -> Background:
    """The session's background jobs: ``background.result(job)`` is a job's value."""
    return request.config.stash[_BACKGROUND]


SMALL = dict(
    image_size=20,
    window_size=10,
    z_what_size=8,
    rnn_hidden_size=32,
    encoder_net=(16,),
    decoder_net=(16,),
)


# The networks of the training-loop tests (with AIRConfig.tutorial: 24x24 canvases, 12x12 windows);
# tests that share them share compiled programs through the persistent cache.
TINY_TRAINING = dict(
    image_size=24,
    window_size=12,
    z_what_size=4,
    rnn_hidden_size=16,
    encoder_net=(16,),
    decoder_net=(16,),
    predict_net=(8,),
    bl_predict_net=(8,),
)


@pytest.fixture(scope="session")
def small_config() -> AIRConfig:
    """A fast AIR config (20x20 images, 10x10 windows, z_what 8, LSTM 32); Pyro defaults otherwise."""
    return AIRConfig(**SMALL)


def make_scenes(n: int, image_size: int = 20, seed: int = 0) -> np.ndarray:
    """(n, image_size, image_size) float32 in [0, 1]: 0-3 bright squares on a faint noise floor."""
    rng = np.random.default_rng(seed)
    imgs = rng.uniform(0.0, 0.05, size=(n, image_size, image_size))
    side = max(2, image_size // 5)
    for i in range(n):
        for _ in range(i % 4):
            r, c = rng.integers(0, image_size - side, size=2)
            imgs[i, r : r + side, c : c + side] = rng.uniform(0.6, 1.0)
    return imgs.astype(np.float32)


@pytest.fixture(scope="session")
def small_batch(small_config) -> np.ndarray:
    """One batch (4, 20, 20) float32 in [0, 1] for the whole test run, matching ``small_config``."""
    return make_scenes(4, small_config.image_size)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def run(fn, seed, *args, data=None, **kwargs):
    """Trace ``fn`` seeded with ``seed`` (values substituted from ``data``): (trace, return).
    numpyro's scan slices substituted series with a tracer, so ``data`` becomes jnp arrays."""
    fn = handlers.seed(fn, seed)
    if data is not None:
        fn = handlers.substitute(fn, data=jax.tree.map(jnp.asarray, data))
    with handlers.trace() as tr:
        out = fn(*args, **kwargs)
    return tr, out


def site_log_probs(tr) -> dict:
    """{site: log_prob array} of a trace's sample sites (z_*: (T, B); obs: (B,))."""
    return {k: np.asarray(s["fn"].log_prob(s["value"])) for k, s in tr.items() if s["type"] == "sample"}


def params_of(tr) -> dict:
    """{site: value} of a trace's param sites."""
    return {k: s["value"] for k, s in tr.items() if s["type"] == "param"}


def bit_identical(a, b) -> bool:
    """The two pytrees' leaves have the same dtypes, shapes and bytes (NaN payloads and the sign
    of zero included)."""
    la, lb = [np.asarray(x) for x in jax.tree.leaves(a)], [np.asarray(x) for x in jax.tree.leaves(b)]
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(la, lb)
    )


def experiment_script(name: str):
    """``experiments/<name>.py`` imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_eval_set():
    """``experiments/make_eval_set.py`` imported as a module."""
    return experiment_script("make_eval_set")
