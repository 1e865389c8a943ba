"""The optimiser's own skip (``numpyro_air.train.optim.adam_or_skip``) and the donated step.

The step's guard against non-finite values lives in the optimiser: it keeps Adam's moments and
counts where the loss or a gradient is not finite, and computes the update from the moments it
keeps, so the compiled step writes each moment once, in place when the state is donated. Where
the update applies, the numbers are optax's ``adam``, bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import bit_identical

from numpyro_air.core.config import AIRConfig
from numpyro_air.train.optim import adam_or_skip, applies, lr_schedule, make_optimizer, with_param_average
from numpyro_air.train.recipes import OptimConfig
from numpyro_air.train.svi import jit_update, make_svi

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 60).reshape(12, 5), "b": jnp.ones(7)}


def grads(i: int):
    key = jax.random.PRNGKey(i)
    return jax.tree.map(lambda p: jax.random.normal(key, p.shape), PARAMS)


def identical(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and bit_identical(a, b)


def run(tx, steps, skip_at=(), value=1.0):
    """Parameters and state after ``steps`` jitted updates; at ``skip_at`` the gradients hold a NaN
    and the value is NaN."""
    update = jax.jit(lambda p, s, g, v: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p, value=v)))
    p, s = PARAMS, tx.init(PARAMS)
    for i in range(steps):
        if i in skip_at:
            bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads(i))
            p2, s2 = update(p, s, bad, jnp.float32(jnp.nan))
            assert identical((p2, s2), (p, s)), f"skipped update {i} changed the state"
        p, s = update(p, s, grads(i), jnp.float32(value))
    return p, s


@pytest.mark.parametrize("lr", [1e-2, lr_schedule(1e-2, 3, 5, 0.1)], ids=["constant", "schedule"])
def test_equals_optax_adam_bit_for_bit_and_skips_exactly(lr):
    ref = optax.with_extra_args_support(optax.adam(lr))
    p_ref, s_ref = run(ref, 9)
    p_new, s_new = run(adam_or_skip(lr), 9, skip_at=(0, 4))
    assert identical(s_new, s_ref)  # the same state structure (checkpoints) and values
    assert identical(p_new, p_ref)
    assert not identical(p_new, PARAMS)


def test_skip_before_the_first_update_gives_zero_updates():
    tx = adam_or_skip(1e-3)
    state = tx.init(PARAMS)
    updates, new = tx.update(grads(0), state, PARAMS, value=jnp.float32(jnp.inf))
    assert all(np.all(np.asarray(u) == 0.0) for u in jax.tree.leaves(updates))  # not 0/0 = NaN at count 0
    assert identical(new, state)
    assert bool(applies(None)) and bool(applies(jnp.float32(2.0))) and not bool(applies(jnp.float32(-jnp.inf)))


def test_clipping_averaging_and_both_groups_skip():
    params = {"enc": PARAMS, "bl_net": {"w": jnp.ones((3, 2))}}
    tx = make_optimizer(1e-2, 1e-1, clip_norm=1.0, warmup_steps=2, decay_steps=4, average_decay=0.9)
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(g, state, params, value=jnp.float32(1.0))
    bad = jax.tree.map(lambda x: x * jnp.nan, g)
    updates, kept = tx.update(bad, state, params, value=jnp.float32(jnp.nan))
    assert identical(kept, state)  # moments, counts, schedule counts and the average
    assert all(np.all(np.asarray(u) == 0.0) for u in jax.tree.leaves(updates))
    updates, moved = tx.update(g, state, params, value=jnp.float32(1.0))
    assert int(moved.average_count) == int(state.average_count) + 1
    assert all(np.all(np.asarray(u) != 0.0) for u in jax.tree.leaves(updates))


def test_with_param_average_passes_the_value_on():
    tx = with_param_average(adam_or_skip(1e-2), 0.9)
    state = tx.init(PARAMS)
    _, kept = tx.update(grads(0), state, PARAMS, value=jnp.float32(jnp.nan))
    assert identical(kept, state)


def test_donated_step_writes_moments_in_place():
    """No copy of any optimiser-state leaf in the compiled, donated step; the state passed in is
    consumed (its buffers now hold the new state)."""
    cfg = AIRConfig(image_size=12, window_size=6, z_what_size=4, rnn_hidden_size=16, encoder_net=(8,), decoder_net=(8,))
    svi = make_svi(cfg, OptimConfig(learning_rate=1e-3, baseline_learning_rate=1e-2))
    images = jax.random.uniform(jax.random.PRNGKey(0), (4, 12, 12))
    state = jax.jit(svi.init)(jax.random.PRNGKey(1), images)
    step = jit_update(svi, cfg)
    hlo = step.lower(state, images, jnp.asarray(1, jnp.int32)).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    copied = [line for line in entry.splitlines() if " copy(" in line and ("__mu__" in line or "__nu__" in line)]
    assert "__mu__" in entry and "__nu__" in entry  # the parameter names this test relies on
    assert copied == []
    new, info = step(state, images, jnp.asarray(1, jnp.int32))
    assert not bool(info.skipped)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.optim_state))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new))
