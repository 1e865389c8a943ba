"""RWS_ELBO: the expected wake-theta and wake-phi gradients against exact enumeration (all
discrete configurations of K particles, Gauss-Hermite quadrature over the continuous site, the
draws held fixed), the value and the self-normalised weights by hand, and the AIR model.

The toy is test_vimco's, with one model parameter (``mu``, the mean offset of y) so that the
model's update is tested too. Monte-Carlo tolerance as in test_vimco (5 standard errors per
component), float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from conftest import SMALL, make_scenes
from numpyro import handlers
from numpyro.infer import SVI
from test_vimco import (
    P_MODEL,
    THETA,
    B,
    D,
    M,
    S,
    T,
    Y,
    _norm_logpdf,
    check_mc,
    draws_of,
    exact_bound,
    log_w_of_draws,
    toy_guide,
    toy_model,
)

from numpyro_air import AIRConfig, make_svi
from numpyro_air.core.guide import guide as air_guide
from numpyro_air.core.model import model as air_model
from numpyro_air.estimators.rws import RWS_ELBO
from numpyro_air.estimators.vimco import VIMCO_ELBO
from numpyro_air.train.recipes import OptimConfig


def toy_model_mu(y, with_c=True):
    """test_vimco's toy model with a learned offset: y ~ N(count + c + mu, 1)."""
    return toy_model(y, with_c, learn_mu=True)


def _params(with_c: bool) -> dict:
    p = {"theta": jnp.asarray(THETA), "mu": jnp.asarray(0.0)}  # mu = 0: test_vimco's exact bound is this model's too
    if with_c:
        p.update(m=jnp.asarray(M), s=jnp.asarray(S))
    return p


# ----------------------------------------------------------------------------- exact answers
def _log_q_count(theta, c):
    """log q(count = n | c), (E, T + 1, B), for c (E, B)."""
    logits = theta[None] + D * c[:, None, :]
    zeros = jnp.zeros((c.shape[0], 1, B))
    return jnp.concatenate([zeros, jnp.cumsum(jax.nn.log_sigmoid(logits), 1)], 1) + jnp.concatenate(
        [jax.nn.log_sigmoid(-logits), zeros], 1
    )


def _tables(live, held, y, with_c, n_gh, continuous="wake"):
    """Per particle outcome (node, count), each (E * (T + 1), B): the log-probability of drawing it
    (held parameters), its log-weight (held), and the per-particle term of the wake objective at the
    live parameters: log p + log q at the held draw ("wake"), or log w + 2 log q(count | c) with c
    = m + s * eps on its path at the live parameters ("path")."""
    if with_c:
        x, wq = np.polynomial.hermite.hermgauss(n_gh)
        eps, log_wq = jnp.asarray(math.sqrt(2.0) * x), jnp.asarray(np.log(wq / math.sqrt(math.pi)))
        node = lambda p: p["m"][None, :] + p["s"][None, :] * eps[:, None]  # noqa: E731  (E, B)
    else:
        log_wq, node = jnp.zeros(1), lambda p: jnp.zeros((1, B))  # noqa: E731
    pm = jnp.asarray(P_MODEL)
    lp_count = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jnp.log(pm))]) + jnp.concatenate([jnp.log1p(-pm), jnp.zeros(1)])
    counts = jnp.arange(T + 1.0)

    def log_p(p, c):
        out = lp_count[None, :, None] + _norm_logpdf(y[None, None, :], counts[None, :, None] + c[:, None, :] + p["mu"], 1.0)
        return out + (_norm_logpdf(c, 0.0, 1.0)[:, None, :] if with_c else 0.0)

    def log_q(p, c):
        out = _log_q_count(p["theta"], c)
        return out + (_norm_logpdf(c, p["m"], p["s"])[:, None, :] if with_c else 0.0)

    c = node(held)
    log_draw = log_wq[:, None, None] + _log_q_count(held["theta"], c)
    if continuous == "wake":
        term = log_p(live, c) + log_q(live, c)
    else:
        c_path = node(live)
        term = log_p(live, c_path) - log_q(live, c_path) + 2.0 * _log_q_count(live["theta"], c_path)
    flat = lambda a: jnp.broadcast_to(a, log_draw.shape).reshape(-1, B)  # noqa: E731
    return flat(log_draw), flat(log_p(held, c) - log_q(held, c)), flat(term)


def exact_wake_objective(live, held, y, K, with_c, n_gh, continuous="wake"):
    """E over K particles drawn with ``held``: sum_b sum_k v_kb term_kb(live) (see :func:`_tables`),
    v the self-normalised weights at ``held``. Its gradient in ``live`` at ``live = held`` is the
    expected RWS update."""
    log_draw, log_w, term = _tables(live, held, y, with_c, n_gh, continuous)
    n = log_draw.shape[0]
    joint, lw, terms = jnp.zeros((1,) * K + (B,)), [], []
    for k in range(K):
        shape = [1] * K + [B]
        shape[k] = n
        joint = joint + log_draw.reshape(shape)
        lw.append(jnp.broadcast_to(log_w.reshape(shape), (n,) * K + (B,)))
        terms.append(jnp.broadcast_to(term.reshape(shape), (n,) * K + (B,)))
    v = jax.nn.softmax(jnp.stack(lw), axis=0)
    return jnp.sum(jnp.exp(joint) * jnp.sum(v * jnp.stack(terms), axis=0))


def exact_loss_and_grad(K, with_c, n_gh=80, continuous="wake"):
    """(minus the exact K-sample bound, minus the exact expected wake gradient), float64."""
    with jax.enable_x64(True):
        params, y = _params(with_c), jnp.asarray(Y)
        g = jax.jit(jax.grad(exact_wake_objective), static_argnums=(3, 4, 5, 6))(params, params, y, K, with_c, n_gh, continuous)
        bound = jax.jit(exact_bound, static_argnums=(2, 3))({k: v for k, v in params.items() if k != "mu"}, y, K, with_c)[0]
        return -float(bound), {k: -np.asarray(a) for k, a in g.items()}


def per_draw(K, with_c, n, seed=0, continuous="wake"):
    """Per-draw (loss, gradient dict) of RWS_ELBO(K, continuous=) on the toy, vmapped over n keys, x64."""
    with jax.enable_x64(True):
        params = _params(with_c)
    return draws_of(RWS_ELBO(num_particles=K, continuous=continuous), toy_model_mu, params, n, seed, with_c=with_c)


# ----------------------------------------------------------------------------- tests
def test_exact_objective_sanity():
    """The enumeration's outcome probabilities sum to 1, and its gradient differs from the bound's
    (the guide's update is not VIMCO's), and no parameter's gradient is zero."""
    with jax.enable_x64(True):
        params, y = _params(True), jnp.asarray(Y)
        log_draw = _tables(params, params, y, True, 80)[0]
        np.testing.assert_allclose(np.exp(log_draw).sum(0), 1.0, rtol=1e-12)
    _, g = exact_loss_and_grad(2, True)
    _, g40 = exact_loss_and_grad(2, True, n_gh=40)
    for k in g:
        np.testing.assert_allclose(g40[k], g[k], atol=1e-4)  # converged far below the Monte-Carlo tolerance (~1e-3)
        assert np.max(np.abs(g[k])) > 5e-3
    from test_vimco import exact_loss_and_grad as vimco_exact

    _, g_vimco = vimco_exact(2, True)
    assert np.max(np.abs(g["theta"] - g_vimco["theta"])) > 0.02
    _, g_path = exact_loss_and_grad(2, True, continuous="path")  # c's path changes the guide's update
    assert np.max(np.abs(g_path["m"] - g["m"])) > 0.02 and np.max(np.abs(g_path["s"] - g["s"])) > 0.02


@pytest.mark.parametrize("K, with_c, continuous", [(2, True, "wake"), (3, False, "wake"), (2, True, "path")])
def test_gradient_and_value_match_exact(K, with_c, continuous):
    loss, grads = per_draw(K, with_c, 60_000, continuous=continuous)
    exact_v, exact_g = exact_loss_and_grad(K, with_c, continuous=continuous)
    assert set(grads) == set(exact_g)
    for name in exact_g:
        check_mc(grads[name], exact_g[name], f"K={K} gradient of {name}")
    check_mc(loss, exact_v, f"K={K} value")


def test_value_and_weights_by_hand():
    """With a fixed key: log w from the guide's draws by hand, the bound, the loss's value and the
    self-normalised weights and the wake terms."""
    K, key = 3, jax.random.PRNGKey(11)
    with jax.enable_x64(True):
        params, y = _params(True), jnp.asarray(Y)
        out = jax.jit(lambda k, p: RWS_ELBO(num_particles=K).components(k, p, toy_model_mu, toy_guide, y))(key, params)
        log_w, log_q_disc = log_w_of_draws(key, K, params, y, with_log_q_disc=True)
    np.testing.assert_allclose(out["log_weights"], log_w, rtol=1e-12)
    np.testing.assert_allclose(out["wake_terms"], log_w + 2 * log_q_disc, rtol=1e-12)  # the "path" default
    bound = np.logaddexp.reduce(log_w, axis=0) - math.log(K)
    np.testing.assert_allclose(out["bound"], bound, rtol=1e-12)
    np.testing.assert_allclose(out["loss"], -bound.sum(), rtol=1e-12)
    np.testing.assert_allclose(out["weights"], np.exp(log_w - np.logaddexp.reduce(log_w, axis=0)), rtol=1e-12)


def test_draws_carry_no_gradient():
    """The guide's draws are held: with a reparameterisable c ~ N(m, s) alone (K = 2), the gradient
    in m and s is the weighted score of N(c; m, s) at the drawn c, not a path through the draw."""
    K, key = 2, jax.random.PRNGKey(5)

    def guide(y):
        m, s = numpyro.param("m", jnp.asarray(M)), numpyro.param("s", jnp.asarray(S))
        with numpyro.plate("data", B):
            numpyro.sample("c", dist.Normal(m, s))

    def model(y):
        with numpyro.plate("data", B):
            c = numpyro.sample("c", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(c, 1.0), obs=y)

    with jax.enable_x64(True):
        params, y = {"m": jnp.asarray(M), "s": jnp.asarray(S)}, jnp.asarray(Y)
        elbo = RWS_ELBO(num_particles=K, continuous="wake")
        grads = jax.grad(lambda p: elbo.loss(key, p, model, guide, y))(params)
        c = np.stack([np.asarray(_draw(guide, params, pk, y)) for pk in jax.random.split(key, K)])
        log_w = -0.5 * c**2 - 0.5 * (Y - c) ** 2 - math.log(2 * math.pi) - np.asarray(_norm_logpdf(c, M, S))
        v = np.exp(log_w - np.logaddexp.reduce(log_w, axis=0))
        z = (c - M) / S
        np.testing.assert_allclose(grads["m"], -np.sum(v * z / S, axis=0), rtol=1e-10)
        np.testing.assert_allclose(grads["s"], -np.sum(v * (z**2 - 1) / S, axis=0), rtol=1e-10)


def _draw(guide, params, pkey, y):
    """c drawn by ``guide`` with the particle key ``pkey`` (the guide half of its split)."""
    tr = handlers.trace(handlers.seed(handlers.substitute(guide, params), jax.random.split(pkey)[1])).get_trace(y)
    return tr["c"]["value"]


@pytest.mark.parametrize("K", [0, 1])
def test_fewer_than_two_particles_raises(K):
    with pytest.raises(ValueError, match="num_particles >= 2"):
        RWS_ELBO(num_particles=K)


def test_unknown_continuous_mode_raises():
    with pytest.raises(ValueError, match="continuous must be one of"):
        RWS_ELBO(continuous="reinforce")
    with pytest.raises(ValueError, match="continuous must be one of"):
        OptimConfig(rws_continuous="Path")


# ----------------------------------------------------------------------------- AIR
AIR_CONFIG = AIRConfig(**SMALL, use_baselines=False, presence_estimator="rws")


def test_air_rws_value_is_the_bound_and_update_moves():
    """On AIR: the loss's value is minus VIMCO's K-sample bound for the same key (the same draws,
    the same weights), and one update of the SVI that ``make_svi`` builds for
    ``presence_estimator="rws"`` (NumPyro's SVI with RWS_ELBO) moves both the model's decoder and
    the guide's LSTM to finite values (the optimiser would skip a non-finite gradient)."""
    images = jnp.asarray(make_scenes(4, AIR_CONFIG.image_size, seed=3))
    svi = make_svi(AIR_CONFIG, OptimConfig())
    assert isinstance(svi, SVI) and isinstance(svi.loss, RWS_ELBO) and svi.loss.num_particles == RWS_ELBO().num_particles
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), images)
    params, key = svi.get_params(state), jax.random.PRNGKey(7)

    @jax.jit
    def both(p):
        kw = dict(config=AIR_CONFIG)
        return (
            RWS_ELBO(4).components(key, p, air_model, air_guide, images, **kw),
            VIMCO_ELBO(4).components(key, p, air_model, air_guide, images, **kw),
        )

    rws, vimco = both(params)
    np.testing.assert_allclose(rws["log_weights"], vimco["log_weights"], rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(rws["loss"], vimco["loss"], rtol=1e-5)
    new_state, loss = jax.jit(svi.update)(state, images)
    assert np.isfinite(float(loss))
    new = svi.get_params(new_state)
    for name in ("decode$params", "rnn$params"):  # the model's decoder and the guide's LSTM
        old_leaves, new_leaves = jax.tree.leaves(params[name]), jax.tree.leaves(new[name])
        assert all(np.all(np.isfinite(a)) for a in new_leaves), name
        assert any(not np.allclose(a, b) for a, b in zip(old_leaves, new_leaves)), name
