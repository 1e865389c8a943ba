"""The training step's guard against a *finite* loss with *NaN* gradients.

``numpyro_air.train.svi.make_update`` must discard such an update (parameters and optimiser state kept
bit for bit, ``StepInfo.skipped`` set), exactly as for a NaN loss: a guard that only looks at the
loss would let Adam write NaN into the parameters.

The real AIR SVI (``make_svi``) gets one extra model term, a ``numpyro.factor`` on a scalar
parameter ``probe`` whose *value* is always finite but whose *gradient* is NaN on "poisoned"
batches (pixel [0, 0, 0] of the first image set to 1). The NaN comes from the classic double-where
pattern: ``where(poison, 0, sqrt(x))`` with x < 0 is 0 forwards, but its backward pass multiplies
the zero cotangent of the unselected branch by d sqrt(x) / dx = NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from conftest import bit_identical
from numpyro.infer import SVI

from numpyro_air.core.config import AIRConfig
from numpyro_air.core.prior import z_pres_prior_probs
from numpyro_air.train.recipes import OptimConfig
from numpyro_air.train.svi import make_svi, make_update

B = 4
CFG = AIRConfig(image_size=12, window_size=6, z_what_size=4, rnn_hidden_size=16, encoder_net=(8,), decoder_net=(8,))


def nan_grad_term(probe, poison):
    """Finite value (0 if poisoned, else sqrt(1 + probe^2)); NaN gradient w.r.t. probe if poisoned."""
    sign = jnp.where(poison, -1.0, 1.0)
    return jnp.where(poison, 0.0, jnp.sqrt(sign * (1.0 + probe**2)))


def poisoned_svi() -> SVI:
    base = make_svi(CFG, OptimConfig(learning_rate=1e-2, baseline_learning_rate=1e-2))

    def model(images=None, config=None, **kwargs):
        out = base.model(images, config, **kwargs)
        probe = numpyro.param("probe", jnp.asarray(0.5))
        numpyro.factor("probe_term", -nan_grad_term(probe, images[0, 0, 0] > 0.5))
        return out

    return SVI(model, base.guide, base.optim, base.loss, **base.static_kwargs)


def batch(poison: bool, seed: int) -> jnp.ndarray:
    x = np.random.default_rng(seed).uniform(0.0, 0.4, (B, CFG.image_size, CFG.image_size))
    x[0, 0, 0] = 1.0 if poison else 0.0
    return jnp.asarray(x, jnp.float32)


def leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def test_finite_loss_with_nan_gradient_is_skipped():
    svi = poisoned_svi()
    state0 = jax.jit(svi.init)(jax.random.PRNGKey(0), batch(False, 0))
    params0 = svi.get_params(state0)
    assert "probe" in params0 and all(np.all(np.isfinite(a)) for a in leaves(params0))
    update = jax.jit(make_update(svi, CFG))
    step = jnp.asarray(1, jnp.int32)

    # precondition: on the poisoned batch the loss itself is finite, only the gradient is NaN
    # (so a guard that checks the loss alone would apply this step)
    _, key = jax.random.split(state0.rng_key)  # the key make_update evaluates the ELBO with
    prior = z_pres_prior_probs(CFG, step)
    loss_and_grad = jax.jit(
        jax.value_and_grad(lambda p, x: svi.loss.loss(key, p, svi.model, svi.guide, x, z_pres_prior=prior, **svi.static_kwargs))
    )
    loss, grads = loss_and_grad(params0, batch(True, 1))
    assert np.isfinite(float(loss))
    assert np.isnan(np.asarray(grads["probe"]))
    assert all(np.all(np.isfinite(a)) for k, g in grads.items() if k != "probe" for a in leaves(g))
    loss_clean, grads_clean = loss_and_grad(params0, batch(False, 1))
    assert np.isfinite(float(loss_clean)) and np.isfinite(float(grads_clean["probe"]))

    # the guarded step skips: parameters and the whole optimiser state unchanged bit for bit
    state1, info = update(state0, batch(True, 1), step)
    assert bool(info.skipped) and np.isnan(float(info.loss))
    assert bit_identical(state1.optim_state, state0.optim_state)
    assert bit_identical(svi.get_params(state1), params0)
    assert bit_identical(state1.mutable_state, state0.mutable_state)
    assert not np.array_equal(np.asarray(state1.rng_key), np.asarray(state0.rng_key))  # the RNG advances

    # a normal step afterwards trains: finite loss, every parameter site moves, nothing NaN
    state2, info2 = update(state1, batch(False, 2), step + 1)
    assert not bool(info2.skipped) and np.isfinite(float(info2.loss))
    params2 = svi.get_params(state2)
    assert all(np.all(np.isfinite(a)) for a in leaves(params2))
    for name in params0:
        assert not bit_identical(params2[name], params0[name]), name
    # Adam's first step moves probe by ~lr against the sign of d(-ELBO)/d(probe) = probe/sqrt(1+probe^2) > 0
    np.testing.assert_allclose(float(params2["probe"]), 0.5 - 1e-2, rtol=1e-3)


def test_vmapped_seeds_skip_only_the_poisoned_one():
    """Over a seeds axis (``jax.vmap``, as ``make_step`` runs several seeds) the guard acts per seed:
    the seed with NaN gradients keeps its state bit for bit, the other one trains."""
    svi = poisoned_svi()
    states0 = jax.jit(jax.vmap(svi.init, in_axes=(0, None)))(jax.random.split(jax.random.PRNGKey(0), 2), batch(False, 0))
    images = jnp.stack([batch(True, 1), batch(False, 1)])
    states1, info = jax.jit(jax.vmap(make_update(svi, CFG), in_axes=(0, 0, None)))(states0, images, jnp.asarray(1))
    np.testing.assert_array_equal(np.asarray(info.skipped), [True, False])
    seed = lambda tree, k: jax.tree.map(lambda a: a[k], tree)  # noqa: E731
    assert bit_identical(seed(states1.optim_state, 0), seed(states0.optim_state, 0))
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(leaves(seed(svi.get_params(states1), 1)), leaves(seed(svi.get_params(states0), 1)))
    ]
    assert all(moved) and all(np.all(np.isfinite(a)) for a in leaves(svi.get_params(states1)))
