"""The loop's one step signature ``step(states, batch, t)`` with ``batch = BatchSource(...)(t - 1)``:
the step reads the images of its own (seed, step), for one seed and K vmapped seeds, across
epochs, compiled once. A probe model whose -ELBO is ``-w * sum(images)`` makes the step's loss
name the images it read; it compiles in about a second."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.optim import SGD

from numpyro_air import AIRConfig
from numpyro_air.data import batch_at_step
from numpyro_air.train.step import BatchSource, DeviceRows, make_step

CFG = AIRConfig(image_size=4, window_size=2)
N, B, LR = 12, 3, 1e-3  # 4 steps per epoch


def probe_model(images, config, **kwargs):
    w = numpyro.param("w", jnp.float32(1.0))
    numpyro.factor("probe", w * jnp.sum(images))


def probe_guide(images, config, **kwargs):
    pass


@pytest.mark.parametrize("seeds", [(7,), (7, 8)])
def test_step_reads_the_batch_of_its_seed_and_step_without_retracing(seeds):
    images = np.random.default_rng(0).integers(0, 256, (N, 4, 4), dtype=np.uint8)
    svi = SVI(probe_model, probe_guide, SGD(LR), Trace_ELBO(), config=CFG)
    state = svi.init(jax.random.PRNGKey(0), jnp.zeros((B, 4, 4)))
    states = jax.tree.map(lambda a: jnp.stack([a] * len(seeds)), state)
    step, batches = make_step(svi, CFG, len(seeds)), BatchSource(images, B, seeds)
    w = np.ones(len(seeds), np.float32)
    for i in range(9):  # more than two epochs
        batch = batches(i)
        assert isinstance(batch, DeviceRows) and batch.idx.shape == (len(seeds), B) and batch.idx.dtype == jnp.int32
        states, info = step(states, batch, jnp.asarray(i + 1, jnp.int32))
        sums = np.array([batch_at_step(images, B, seed, i).sum() for seed in seeds])
        np.testing.assert_allclose(info.loss, -w * sums / B, rtol=1e-5)
        assert info.loss.shape == info.skipped.shape == (len(seeds),) and not info.skipped.any()
        w = w + LR * sums.astype(np.float32)  # SGD on -w * sum: the gradient is -sum
        np.testing.assert_allclose(svi.get_params(states)["w"], w, rtol=1e-5)
    assert step._cache_size() == 1


def test_one_device_step_takes_device_rows_only():
    svi = SVI(probe_model, probe_guide, SGD(LR), Trace_ELBO(), config=CFG)
    state = jax.tree.map(lambda a: a[None], svi.init(jax.random.PRNGKey(0), jnp.zeros((B, 4, 4))))
    with pytest.raises(TypeError, match="DeviceRows"):
        make_step(svi, CFG)(state, jnp.zeros((1, B, 4, 4)), jnp.asarray(1, jnp.int32))
    with pytest.raises(ValueError, match="num_seeds"):
        make_step(svi, CFG, 0)
