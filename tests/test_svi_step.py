"""The jitted AIR training step (``jax.jit(numpyro_air.make_update(svi, config))``): compiled once, annealed
prior computed inside the trace, non-finite steps skipped without touching parameters.

All tests share one small AIR (20x20 images, 10x10 window, LSTM 32, z_what 8, annealed prior)
and one compiled step, so the module costs one init compile and one step compile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_air.train.svi as svi_mod
from numpyro_air import AIRConfig, z_pres_prior_probs
from numpyro_air.train.recipes import OptimConfig
from numpyro_air.train.svi import StepInfo, make_svi, make_update

B = 8
CFG = AIRConfig.tutorial(
    image_size=20,
    window_size=10,
    rnn_hidden_size=32,
    z_what_size=8,
    encoder_net=(32,),
    decoder_net=(32,),
    predict_net=(32,),
    bl_predict_net=(32,),
    z_pres_prior=0.5,
    anneal_prior="exp",
    anneal_prior_to=1e-3,
    anneal_prior_begin=0,
    anneal_prior_duration=100,
)


def _batch(seed: int) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (B, 20, 20)), jnp.float32)


def _step(s: int) -> jnp.ndarray:
    return jnp.asarray(s, jnp.int32)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _trees_equal(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def setup():
    """(svi, initial state, jitted step, trace counter). A counting wrapper around the prior
    schedule, which ``make_update`` calls once per trace, counts the step's traces."""
    traces = {"n": 0}
    original = svi_mod.z_pres_prior_probs

    def counting(config, step):
        traces["n"] += 1
        return original(config, step)

    mp = pytest.MonkeyPatch()
    mp.setattr(svi_mod, "z_pres_prior_probs", counting)
    svi = make_svi(CFG, OptimConfig(learning_rate=1e-3, baseline_learning_rate=1e-2))
    state0 = jax.jit(svi.init)(jax.random.PRNGKey(0), _batch(0))
    step_fn = jax.jit(make_update(svi, CFG))
    yield svi, state0, step_fn, traces
    mp.undo()


def test_step_compiles_once(setup):
    svi, state, step_fn, traces = setup
    params_prev = svi.get_params(state)
    for s in range(1, 6):
        state, info = step_fn(state, _batch(s), _step(s))
        assert isinstance(info, StepInfo)
        assert not bool(info.skipped) and np.isfinite(float(info.loss))
        params = svi.get_params(state)
        assert not _trees_equal(params, params_prev)  # it does train
        params_prev = params
    assert step_fn._cache_size() == 1
    assert traces["n"] == 1


def test_annealed_prior_changes_inside_compiled_step(setup):
    svi, state0, step_fn, traces = setup
    x = _batch(42)
    p = {s: np.asarray(z_pres_prior_probs(CFG, s)) for s in (1, 50, 200, 1000)}
    assert not np.allclose(p[1], p[50])
    np.testing.assert_array_equal(p[200], p[1000])  # annealing over: clamped at the final value
    loss = {s: float(step_fn(state0, x, _step(s))[1].loss) for s in p}  # same state, batch and key
    assert all(np.isfinite(v) for v in loss.values())
    assert loss[1] != loss[50]
    assert loss[200] == loss[1000]
    assert step_fn._cache_size() == 1


def test_nonfinite_step_is_skipped(setup):
    svi, state0, step_fn, traces = setup
    state, info = step_fn(state0, _batch(7), _step(1))
    assert not bool(info.skipped)
    # NaN reaches the compiled step: images are tracers there, so validate_images cannot see it
    x = np.asarray(_batch(8)).copy()
    x[3, 10, 10] = np.nan
    bad_state, info = step_fn(state, jnp.asarray(x), _step(2))
    assert bool(info.skipped)
    assert np.isnan(float(info.loss))
    assert _trees_equal(bad_state.optim_state, state.optim_state)  # params and Adam moments/count
    assert _trees_equal(svi.get_params(bad_state), svi.get_params(state))
    assert _trees_equal(bad_state.mutable_state, state.mutable_state)
    # the RNG still advances, exactly as in a normal step
    np.testing.assert_array_equal(bad_state.rng_key, jax.random.split(state.rng_key)[0])
    assert not np.array_equal(bad_state.rng_key, state.rng_key)
    # and training carries on
    good_state, info = step_fn(bad_state, _batch(9), _step(2))
    assert not bool(info.skipped) and np.isfinite(float(info.loss))
    assert not _trees_equal(svi.get_params(good_state), svi.get_params(bad_state))
    assert step_fn._cache_size() == 1


def test_update_equals_svi_update_with_mutable_state():
    """On finite steps ``make_update`` is NumPyro's ``SVI.update`` with the annealed prior of the
    step: after 3 steps the same RNG key and optimiser step counter, and parameters, Adam moments
    and mutable signal statistics equal up to float rounding (the two compiled programs fuse
    differently); the same loss (per image). NVIL with normalised signals, so the ELBO's
    mutable-state path is the one compared."""
    cfg = CFG.replace(rnn_hidden_size=16, encoder_net=(16,), decoder_net=(16,), predict_net=(8,), bl_predict_net=(8,))
    svi = make_svi(cfg, OptimConfig(learning_rate=1e-3, baseline_learning_rate=1e-2, normalize_signal=True))
    state = jax.jit(svi.init)(jax.random.PRNGKey(1), _batch(0))
    assert jax.tree.leaves(state.mutable_state)
    ours = jax.jit(make_update(svi, cfg))
    numpyro_update = jax.jit(lambda s, x, t: svi.update(s, x, z_pres_prior=z_pres_prior_probs(cfg, t)))
    a = b = state
    for s in range(1, 4):
        a, info = ours(a, _batch(10 + s), _step(s))
        b, loss = numpyro_update(b, _batch(10 + s), _step(s))
        assert not bool(info.skipped)
        assert float(info.loss) == pytest.approx(float(loss) / B, rel=1e-6)
    np.testing.assert_array_equal(a.rng_key, b.rng_key)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_leaves(a), _leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert not _trees_equal(a.mutable_state, state.mutable_state)  # the statistics did move
    assert int(a.optim_state[0]) == 3  # the optimiser's step counter


def test_update_takes_the_config_explicitly():
    svi = make_svi(CFG)
    with pytest.raises(TypeError, match="AIRConfig"):
        make_update(svi, None)
    with pytest.raises(ValueError, match="differs"):
        make_update(svi, CFG.replace(num_steps=2))
    make_update(svi, CFG.replace())  # an equal config is the config
