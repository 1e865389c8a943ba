"""VIMCO_ELBO: unbiased gradient of the K-sample bound against exact enumeration (all discrete
configurations of all K particles, Gauss-Hermite quadrature over the continuous site), the value
from the traces by hand, the leave-one-out signals, the one-datum fallback, and the AIR model.

Monte-Carlo tolerance: the mean of N i.i.d. per-draw gradients passes when, per component,
|mean - exact| < 5 standard errors (5 * sd / sqrt(N); a false alarm < 1e-6 per component). The
toy runs in float64 (``jax.enable_x64``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from conftest import SMALL, make_scenes
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.infer import SVI

from numpyro_air import AIRConfig
from numpyro_air.core.guide import guide as air_guide
from numpyro_air.core.model import model as air_model
from numpyro_air.estimators.nvil import NVIL_ELBO
from numpyro_air.estimators.vimco import VIMCO_ELBO, leave_one_out_bounds

# ----------------------------------------------------------------------------- the toy
# Per image b (plate "data", B = 2):
# guide  q: c ~ N(m_b, s_b) (reparameterised);  z_t ~ Bern(sigmoid(theta_tb + D c)) masked by the
#           previous effective presence (absorbing, as AIR's z_pres), t = 0..T-1 inside a scan
# model  p: c ~ N(0, 1);  z_t ~ Bern(P_t) masked the same way;  y ~ N(count + c, 1) observed
# Effective configurations per particle: count n in {0..T}.
T, B = 3, 2
D = 0.6
THETA = np.array([[0.4, -0.3], [0.1, 0.6], [-0.5, 0.2]])  # (T, B)
M = np.array([0.3, -0.2])
S = np.array([0.8, 1.1])
P_MODEL = np.array([0.6, 0.5, 0.4])
Y = np.array([0.7, 2.4])
N_SE = 5.0


def toy_guide(y, with_c=True):
    theta = numpyro.param("theta", jnp.asarray(THETA))
    c = jnp.zeros(B, theta.dtype)
    if with_c:
        m, s = numpyro.param("m", jnp.asarray(M)), numpyro.param("s", jnp.asarray(S))
        with numpyro.plate("data", B):
            c = numpyro.sample("c", dist.Normal(m, s))

    def step(prev, th):
        with numpyro.plate("data", B):
            z = numpyro.sample("z", dist.Bernoulli(logits=th + D * c).mask(prev > 0))
        return z.astype(prev.dtype) * prev, None

    scan(step, jnp.ones(B, theta.dtype), theta)


def toy_model(y, with_c=True, learn_mu=False):
    """With ``learn_mu``, y ~ N(count + c + mu, 1) with a parameter mu (starting at 0): a model
    parameter for the estimators that update the model (test_rws)."""
    mu = numpyro.param("mu", jnp.zeros((), y.dtype)) if learn_mu else 0.0
    c = jnp.zeros(B, y.dtype)
    if with_c:
        with numpyro.plate("data", B):
            c = numpyro.sample("c", dist.Normal(0.0, 1.0))

    def step(carry, p):
        prev, count = carry
        with numpyro.plate("data", B):
            z = numpyro.sample("z", dist.Bernoulli(probs=p).mask(prev > 0))
        z = z.astype(prev.dtype) * prev
        return (z, count + z), None

    (_, count), _ = scan(step, (jnp.ones(B, y.dtype), jnp.zeros(B, y.dtype)), jnp.asarray(P_MODEL, y.dtype))
    with numpyro.plate("data", B):
        numpyro.sample("y", dist.Normal(count + c + mu, 1.0), obs=y)


def _params(with_c: bool) -> dict:
    p = {"theta": jnp.asarray(THETA)}
    if with_c:
        p.update(m=jnp.asarray(M), s=jnp.asarray(S))
    return p


# ----------------------------------------------------------------------------- exact answers
def _norm_logpdf(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * math.log(2 * math.pi)


def _particle_table(params, y, with_c, n_gh):
    """Per image, over the (node, count) outcomes of one particle: log of its probability
    (quadrature weight x q(count | c)) and its log-weight, each (E * (T + 1), B)."""
    theta = params["theta"]
    if with_c:
        x, wq = np.polynomial.hermite.hermgauss(n_gh)
        eps, log_wq = jnp.asarray(math.sqrt(2.0) * x), jnp.asarray(np.log(wq / math.sqrt(math.pi)))
        c = params["m"][None, :] + params["s"][None, :] * eps[:, None]  # (E, B)
    else:
        log_wq, c = jnp.zeros(1), jnp.zeros((1, B))
    logits = theta[None] + D * c[:, None, :]  # (E, T, B)
    E = c.shape[0]
    zeros = jnp.zeros((E, 1, B))
    lq = jnp.concatenate([zeros, jnp.cumsum(jax.nn.log_sigmoid(logits), 1)], 1) + jnp.concatenate(
        [jax.nn.log_sigmoid(-logits), zeros], 1
    )  # (E, T+1, B): log q(count = n | c)
    pm = jnp.asarray(P_MODEL)
    lp = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jnp.log(pm))]) + jnp.concatenate([jnp.log1p(-pm), jnp.zeros(1)])
    counts = jnp.arange(T + 1.0)
    log_w = lp[None, :, None] + _norm_logpdf(y[None, None, :], counts[None, :, None] + c[:, None, :], 1.0) - lq
    if with_c:
        log_w = log_w + (_norm_logpdf(c, 0.0, 1.0) - _norm_logpdf(c, params["m"], params["s"]))[:, None, :]
    log_prob = log_wq[:, None, None] + lq
    return log_prob.reshape(-1, B), log_w.reshape(-1, B)


N_GH = 120  # Gauss-Hermite nodes per particle (error ~1e-6 at 120, see the sanity test)


def exact_bound(params, y, K, with_c=True, n_gh=N_GH):
    """sum_b E[logsumexp_k log w_kb - log K] over all K-particle outcomes (exact over the discrete
    configurations, Gauss-Hermite over each particle's c)."""
    log_prob, log_w = _particle_table(params, y, with_c, n_gh)
    n = log_prob.shape[0]
    lp_joint, lw_all = jnp.zeros((1,) * K + (B,)), []
    for k in range(K):
        shape = [1] * K + [B]
        shape[k] = n
        lp_joint = lp_joint + log_prob.reshape(shape)
        lw_all.append(jnp.broadcast_to(log_w.reshape(shape), (n,) * K + (B,)))
    bound = jax.nn.logsumexp(jnp.stack(lw_all), axis=0) - math.log(K)
    return jnp.sum(jnp.exp(lp_joint) * bound), jnp.sum(jnp.exp(lp_joint), axis=tuple(range(K)))


def exact_loss_and_grad(K, with_c, n_gh=N_GH):
    with jax.enable_x64(True):
        f = lambda p: -exact_bound(p, jnp.asarray(Y), K, with_c, n_gh)[0]  # noqa: E731
        v, g = jax.jit(jax.value_and_grad(f))(_params(with_c))
        return float(v), {k: np.asarray(a) for k, a in g.items()}


# ----------------------------------------------------------------------------- MC machinery
def draws_of(elbo, model, params: dict, n: int, seed: int = 0, **kwargs):
    """Per-draw (loss, gradient dict) of ``elbo.loss`` on the toy (``model`` with toy_guide, y = Y)
    at ``params``, vmapped over n keys, x64; ``kwargs`` go to model and guide."""
    with jax.enable_x64(True):
        y = jnp.asarray(Y)

        def one(key):
            fn = lambda p: elbo.loss(key, p, model, toy_guide, y, **kwargs)  # noqa: E731
            return jax.value_and_grad(fn)(params)

        keys = jax.random.split(jax.random.PRNGKey(seed), n)
        loss, grads = jax.jit(jax.vmap(one))(keys)
        return np.asarray(loss), {k: np.asarray(a) for k, a in grads.items()}


def per_draw(K, with_c, n, seed=0):
    """Per-draw (loss, gradient dict) of VIMCO_ELBO(K) on the toy, vmapped over n keys, x64."""
    with jax.enable_x64(True):
        params = _params(with_c)
    return draws_of(VIMCO_ELBO(num_particles=K), toy_model, params, n, seed, with_c=with_c)


def check_mc(samples, exact, what):
    samples = np.asarray(samples)
    est, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    err = np.abs(est - exact)
    assert np.all(err < N_SE * se), f"{what}: estimate {est} vs exact {exact}, |err| {err} >= {N_SE} * se {se}"


# ----------------------------------------------------------------------------- tests
def test_exact_enumeration_sanity():
    with jax.enable_x64(True):
        for K, with_c in ((2, True), (3, False)):
            _, total = jax.jit(exact_bound, static_argnums=(2, 3))(_params(with_c), jnp.asarray(Y), K, with_c)
            np.testing.assert_allclose(total, 1.0, rtol=1e-12)  # probabilities of all outcomes sum to 1
    # quadrature converged: 80 and N_GH nodes agree to far below the Monte-Carlo tolerance (~1e-3)
    v80, g80 = exact_loss_and_grad(2, True, 80)
    v, g = exact_loss_and_grad(2, True)
    assert abs(v80 - v) < 1e-5
    for k in g:
        np.testing.assert_allclose(g80[k], g[k], atol=1e-5)
        assert np.all(np.abs(g[k]) > 5e-3)  # every component is far from zero
    # the K-sample bound beats the 1-sample bound (K = 1 is the ELBO)
    assert exact_loss_and_grad(2, True)[0] < exact_loss_and_grad(1, True)[0]


@pytest.mark.parametrize("K, with_c, n", [(2, True, 100_000), (3, False, 100_000)])
def test_gradient_and_value_match_exact(K, with_c, n):
    loss, grads = per_draw(K, with_c, n)
    exact_v, exact_g = exact_loss_and_grad(K, with_c)
    assert set(grads) == set(exact_g)
    for name in exact_g:
        check_mc(grads[name], exact_g[name], f"K={K} gradient of {name}")
    check_mc(loss, exact_v, f"K={K} value")


def test_value_and_signals_by_hand():
    """With a fixed key: log w from the guide's samples by hand, the bound, the surrogate's value
    and the leave-one-out signals."""
    K = 3
    key = jax.random.PRNGKey(11)
    with jax.enable_x64(True):
        params, y = _params(True), jnp.asarray(Y)
        out = jax.jit(lambda k, p: VIMCO_ELBO(num_particles=K).components(k, p, toy_model, toy_guide, y))(key, params)
        log_w = log_w_of_draws(key, K, params, y)
    np.testing.assert_allclose(out["log_weights"], log_w, rtol=1e-12)
    bound = np.logaddexp.reduce(log_w, axis=0) - math.log(K)
    np.testing.assert_allclose(out["bound"], bound, rtol=1e-12)
    np.testing.assert_allclose(out["loss"], -bound.sum(), rtol=1e-12)
    for k in range(K):
        swapped = log_w.copy()
        swapped[k] = np.delete(log_w, k, axis=0).mean(0)
        loo = np.logaddexp.reduce(swapped, axis=0) - math.log(K)
        np.testing.assert_allclose(out["signals"][k], bound - loo, rtol=1e-10, atol=1e-12)


def log_w_of_draws(key, K, params, y, with_log_q_disc: bool = False):
    """(K, B) log w by hand of the guide's draws for particle keys ``random.split(key, K)``, each
    split again into (model key, guide key): the convention of numpyro_air.estimators.vimco/rws.
    With ``with_log_q_disc``, also (K, B) log q of the unmasked discrete draws z."""

    @jax.jit
    def draws(k_guide):
        tr = handlers.trace(handlers.seed(handlers.substitute(toy_guide, params), k_guide)).get_trace(y)
        return tr["c"]["value"], tr["z"]["value"]

    log_w, log_q_disc = np.zeros((K, B)), np.zeros((K, B))
    for k, pkey in enumerate(jax.random.split(key, K)):
        c, z = draws(jax.random.split(pkey)[1])
        log_w[k], log_q_disc[k] = _log_w_by_hand(np.asarray(c), np.asarray(z, np.float64))
    return (log_w, log_q_disc) if with_log_q_disc else log_w


def _log_w_by_hand(c, z):
    """(log p(y, c, z) - log q(c, z), log q(z | c)) per image from the raw samples c (B,), z (T, B)."""
    out, out_q_disc = np.zeros(B), np.zeros(B)
    for b in range(B):
        prev, count, lw = 1.0, 0.0, 0.0
        lw += -0.5 * c[b] ** 2 - (-0.5 * ((c[b] - M[b]) / S[b]) ** 2 - np.log(S[b]))
        for t in range(T):
            if prev > 0:  # masked steps contribute nothing
                logit = THETA[t, b] + D * c[b]
                lq = -np.logaddexp(0, -logit) if z[t, b] else -np.logaddexp(0, logit)
                lp = np.log(P_MODEL[t]) if z[t, b] else np.log1p(-P_MODEL[t])
                lw += lp - lq
                out_q_disc[b] += lq
            prev = z[t, b] * prev
            count += prev
        out[b] = lw - 0.5 * (Y[b] - count - c[b]) ** 2 - 0.5 * np.log(2 * np.pi)
    return out, out_q_disc


def test_leave_one_out_bounds_formula():
    log_w = jnp.asarray([[0.0, -3.0], [1.0, 2.0], [-2.0, 0.5]])
    got = np.asarray(leave_one_out_bounds(log_w))
    for k in range(3):
        w = np.asarray(log_w).copy()
        w[k] = np.delete(np.asarray(log_w), k, axis=0).mean(0)
        np.testing.assert_allclose(got[k], np.logaddexp.reduce(w, axis=0) - math.log(3), rtol=1e-6)


@pytest.mark.parametrize("K", [0, 1])
def test_fewer_than_two_particles_raises(K):
    with pytest.raises(ValueError, match="num_particles >= 2"):
        VIMCO_ELBO(num_particles=K)


def test_sites_outside_the_plate_make_one_datum():
    """A global latent outside the plate: the whole trace is one datum, log w (K, 1)."""

    def guide(y):
        loc = numpyro.param("loc", 0.1)
        g = numpyro.sample("g", dist.Normal(loc, 1.0))
        with numpyro.plate("data", 2):
            numpyro.sample("k", dist.Bernoulli(logits=jnp.full(2, 0.3 + 0.0 * g)))

    def model(y):
        g = numpyro.sample("g", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", 2):
            k = numpyro.sample("k", dist.Bernoulli(0.4))
            numpyro.sample("y", dist.Normal(g + k, 1.0), obs=y)

    elbo = VIMCO_ELBO(num_particles=4)
    out = jax.jit(lambda k: elbo.components(k, {"loc": 0.1}, model, guide, jnp.zeros(2)))(jax.random.PRNGKey(0))
    assert out["log_weights"].shape == (4, 1) and out["bound"].shape == (1,)
    np.testing.assert_allclose(out["loss"], -out["bound"][0], rtol=1e-6)
    # and inside a plate everything is per datum
    shapes = jax.eval_shape(
        lambda k: elbo.components(k, _params(False), toy_model, toy_guide, jnp.asarray(Y), with_c=False),
        jax.random.PRNGKey(0),
    )
    assert shapes["log_weights"].shape == (4, B)


def test_scaled_sites_are_rejected():
    def guide(y):
        with handlers.scale(scale=2.0), numpyro.plate("data", 2):
            numpyro.sample("k", dist.Bernoulli(0.3))

    def model(y):
        with handlers.scale(scale=2.0), numpyro.plate("data", 2):
            numpyro.sample("k", dist.Bernoulli(0.4))

    with pytest.raises(ValueError, match="scaled"):
        VIMCO_ELBO(num_particles=2).loss(jax.random.PRNGKey(0), {}, model, guide, None)


# ----------------------------------------------------------------------------- AIR
AIR_CONFIG = AIRConfig(**SMALL, use_baselines=False)
AIR_K = 4
AIR_DRAWS = 8


@pytest.fixture(scope="module")
def air_setup():
    images = jnp.asarray(make_scenes(4, AIR_CONFIG.image_size, seed=3))
    svi = SVI(air_model, air_guide, optax.adam(1e-4), VIMCO_ELBO(num_particles=AIR_K), config=AIR_CONFIG)
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), images)
    return svi, state, images


def test_air_vimco_runs_and_beats_the_elbo(air_setup):
    svi, state, images = air_setup
    params = svi.get_params(state)
    vimco, nvil = VIMCO_ELBO(num_particles=AIR_K), NVIL_ELBO()

    @jax.jit
    def run(key):
        k1, k2 = jax.random.split(key)
        out = vimco.components(k1, params, air_model, air_guide, images, config=AIR_CONFIG)
        grads = jax.grad(lambda p: vimco.loss(k1, p, air_model, air_guide, images, config=AIR_CONFIG))(params)
        elbo_loss = nvil.loss(k2, params, air_model, air_guide, images, config=AIR_CONFIG)  # independent draw
        return out["loss"], out["bound"], out["log_weights"], elbo_loss, grads

    losses, elbo_losses = [], []
    for i in range(AIR_DRAWS):
        loss, bound, log_w, elbo_loss, grads = run(jax.random.PRNGKey(100 + i))
        assert np.isfinite(float(loss)) and bound.shape == (4,) and log_w.shape == (AIR_K, 4)
        for leaf in jax.tree.leaves(grads):
            assert np.all(np.isfinite(np.asarray(leaf)))
        # log-density of the likelihood <= H*H * log(1 / (sd sqrt(2 pi))) per image; the priors and
        # guide keep the bound far below that bound plus a generous margin
        max_ll = AIR_CONFIG.image_size**2 * -math.log(AIR_CONFIG.likelihood_sd * math.sqrt(2 * math.pi))
        assert float(loss) / 4 > -(max_ll + 100.0)
        # per draw, the bound is >= the mean of its own K single-sample ELBOs (Jensen)
        assert np.all(np.asarray(bound) >= np.asarray(log_w).mean(0) - 1e-3)
        losses.append(float(loss))
        elbo_losses.append(float(elbo_loss))
    # statistical: -IWAE-K <= -ELBO on average, over independent draws (difference > -3 s.e.)
    diff = np.asarray(elbo_losses) - np.asarray(losses)
    assert diff.mean() > -3 * diff.std() / math.sqrt(len(diff)), (losses, elbo_losses)


def test_air_vimco_svi_update(air_setup):
    svi, state, images = air_setup
    update = jax.jit(svi.update)
    new_state, loss = update(state, images)
    assert np.isfinite(float(loss))
    old, new = svi.get_params(state), svi.get_params(new_state)
    moved = [not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new))]
    assert any(moved)
