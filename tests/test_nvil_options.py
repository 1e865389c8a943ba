"""NVIL_ELBO options: NVIL's learning-signal centring and variance normalisation with running
statistics in mutable state (``normalize_signal``), and Pyro's N/B loss scale (``loss_scale``).

Toy (float64): an absorbing Bernoulli chain per image (plate "data", B = 3), as AIR's z_pres::

    q: z_t ~ Bern(sigmoid(theta_tb)) masked by the previous effective presence (1 before t = 0)
    p: z_t ~ Bern(P_t) masked the same way;  y_b ~ N(count_b, 1) observed

whose exact ELBO gradient comes from enumerating the T + 1 effective counts per image. Monte-Carlo
tolerance: 5 standard errors per component over N i.i.d. particles.
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
from numpyro_air.estimators.nvil import NVIL_ELBO, signal_stats_init, with_signal_stats

T, B = 3, 3
THETA = np.array([[0.8, -0.4, 0.3], [0.2, 0.6, -0.7], [-0.5, 0.4, 1.0]])  # (T, B)
P_MODEL = np.array([0.7, 0.5, 0.3])
Y = np.array([0.4, 1.6, 2.7])
N = 100_000
N_SE = 5.0


def toy_guide(y, baseline=False):
    theta = numpyro.param("theta", jnp.asarray(THETA))
    bl = numpyro.param("bl", jnp.zeros(T)) if baseline else jnp.zeros(T)
    infer = {"baseline": {"baseline_value": "b"}} if baseline else {}

    def step(prev, x):
        th, b = x
        with numpyro.plate("data", B):
            if baseline:
                numpyro.deterministic("b", jnp.broadcast_to(b, (B,)))
            z = numpyro.sample("z", dist.Bernoulli(logits=th).mask(prev > 0), infer=infer)
        return z.astype(prev.dtype) * prev, None

    scan(step, jnp.ones(B, theta.dtype), (theta, bl))


def toy_model(y, baseline=False):
    def step(carry, p):
        prev, count = carry
        with numpyro.plate("data", B):
            z = numpyro.sample("z", dist.Bernoulli(probs=p).mask(prev > 0))
        z = z.astype(prev.dtype) * prev
        return (z, count + z), None

    (_, count), _ = scan(step, (jnp.ones(B, y.dtype), jnp.zeros(B, y.dtype)), jnp.asarray(P_MODEL, y.dtype))
    with numpyro.plate("data", B):
        numpyro.sample("y", dist.Normal(count, 1.0), obs=y)


stats_guide = with_signal_stats(toy_guide, {"z": (T,)})


def exact_neg_elbo_grad(theta) -> np.ndarray:
    """d(-ELBO)/d theta (T, B) by enumerating the effective counts n = 0..T of each image."""

    def neg_elbo(th):
        ls1, ls0 = jax.nn.log_sigmoid(th), jax.nn.log_sigmoid(-th)  # (T, B)
        zero = jnp.zeros((1, B))
        lq = jnp.concatenate([zero, jnp.cumsum(ls1, 0)]) + jnp.concatenate([ls0, zero])  # (T+1, B)
        pm = jnp.asarray(P_MODEL)[:, None]
        lp = jnp.concatenate([zero, jnp.cumsum(jnp.log(pm) + zero, 0)]) + jnp.concatenate([jnp.log1p(-pm) + zero, zero])
        n = jnp.arange(T + 1.0)[:, None]
        lp = lp - 0.5 * (jnp.asarray(Y)[None] - n) ** 2 - 0.5 * math.log(2 * math.pi)
        return -jnp.sum(jnp.exp(lq) * (lp - lq))

    with jax.enable_x64(True):
        return np.asarray(jax.jit(jax.grad(neg_elbo))(jnp.asarray(theta)))


def per_particle(elbo, params, guide=stats_guide, n=N, seed=0):
    """Per-particle (loss, gradients) of a 1-particle ELBO over n keys, float64."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        y = jnp.asarray(Y)

        def one(key):
            return jax.value_and_grad(lambda p: elbo.loss(key, p, toy_model, guide, y))(params)

        loss, grads = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(seed), n))
        return np.asarray(loss), jax.tree.map(np.asarray, grads)


def check_mc(samples, exact, what):
    est, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    err = np.abs(est - exact)
    assert np.all(err < N_SE * se), f"{what}: estimate {est} vs exact {exact}, |err| {err} >= {N_SE} * se {se}"


# ----------------------------------------------------------------------------- normalisation
MEAN = np.array([-1.0, 0.5, 2.0])
VAR = np.array([4.0, 0.25, 9.0])  # divisors max(1, sd) = [2, 1, 3]


def test_normalised_gradient_is_exact_over_per_step_scale():
    """With fixed running statistics, E[gradient] = exact gradient / max(1, sd_t) for theta_t
    (theta_t enters only step t's score term); centring by the running mean adds no bias."""
    exact = exact_neg_elbo_grad(THETA)
    assert np.all(np.abs(exact) > 0.02)
    params = {"theta": THETA, "z_signal_stats": {"mean": MEAN, "var": VAR}}
    _, grads = per_particle(NVIL_ELBO(normalize_signal=True), params)
    divisor = np.maximum(1.0, np.sqrt(VAR))[:, None]
    check_mc(grads["theta"], exact / divisor, "normalised gradient")
    # the un-normalised estimator on the same toy is unbiased for the exact gradient itself
    _, grads = per_particle(NVIL_ELBO(), {"theta": THETA}, guide=toy_guide)
    check_mc(grads["theta"], exact, "plain gradient")


def test_score_weights_are_centred_and_scaled():
    with jax.enable_x64(True):
        y = jnp.asarray(Y)
        params = {"theta": jnp.asarray(THETA), "bl": jnp.asarray([-4.0, -3.0, -2.0])}
        params["z_signal_stats"] = {"mean": jnp.asarray(MEAN), "var": jnp.asarray(VAR)}
        guide = with_signal_stats(lambda y: toy_guide(y, baseline=True), {"z": (T,)})
        for seed in range(3):
            out = jax.jit(lambda k: NVIL_ELBO(normalize_signal=True).components(k, params, toy_model, guide, y))(
                jax.random.PRNGKey(seed)
            )
            cost, b, w = (np.asarray(out[k]["z"]) for k in ("costs", "baselines", "score_weights"))
            want = (cost - b - MEAN[:, None]) / np.maximum(1.0, np.sqrt(VAR))[:, None]
            np.testing.assert_allclose(w, want, rtol=1e-12)
            # the baseline still regresses the un-normalised cost
            np.testing.assert_allclose(out["baseline_loss"], np.sum((cost - b) ** 2), rtol=1e-12)


def test_initial_statistics_leave_the_estimator_unchanged():
    """Zero mean and variance (the initial state): weights = cost - b, same loss and gradient
    as the default estimator on the same key."""
    with jax.enable_x64(True):
        y = jnp.asarray(Y)
        params = {"theta": jnp.asarray(THETA)}
        stats = {"z_signal_stats": signal_stats_init((T,), jnp.float64)}
        f = lambda e, g, p, k: jax.value_and_grad(lambda q: e.loss(k, q, toy_model, g, y))(p)  # noqa: E731
        for seed in range(3):
            key = jax.random.PRNGKey(seed)
            v0, g0 = jax.jit(lambda k: f(NVIL_ELBO(), toy_guide, params, k))(key)
            v1, g1 = jax.jit(lambda k: f(NVIL_ELBO(normalize_signal=True), stats_guide, {**params, **stats}, k))(key)
            np.testing.assert_allclose(v1, v0, rtol=1e-14)
            np.testing.assert_allclose(g1["theta"], g0["theta"], rtol=1e-12)


def test_running_statistics_follow_the_ema_through_svi():
    """Over SVI steps the mutable statistics follow mean' = a mean + (1 - a) batch_mean(l),
    var' = a var + (1 - a) batch_var(l), with l = cost - b over the *active* entries of each step
    (absorbed images excluded), recomputed here from the guide's samples."""
    alpha = 0.8
    y = jnp.asarray(Y, jnp.float32)
    guide = with_signal_stats(lambda y: toy_guide(y, baseline=True), {"z": (T,)})
    elbo = NVIL_ELBO(normalize_signal=True, signal_decay=alpha)
    svi = SVI(toy_model, guide, optax.adam(1e-2), elbo)
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), y)
    stats = state.mutable_state["z_signal_stats"]
    np.testing.assert_array_equal(stats["mean"], np.zeros(T))
    np.testing.assert_array_equal(stats["var"], np.zeros(T))
    update = jax.jit(svi.update)

    @jax.jit
    def signal_and_active(key, params):
        out = elbo.components(key, params, toy_model, guide, y)
        _, k_guide = jax.random.split(key)  # the guide's key inside components
        tr = handlers.trace(handlers.seed(handlers.substitute(guide, params), k_guide)).get_trace(y)
        return out["costs"]["z"] - out["baselines"]["z"], tr["z"]["value"]

    mean, var = np.zeros(T), np.zeros(T)
    n_masked = 0
    for _ in range(6):
        _, key_step = jax.random.split(state.rng_key)  # the key svi.update evaluates the loss with
        sig, z = signal_and_active(key_step, {**svi.get_params(state), **state.mutable_state})
        sig, z = np.asarray(sig, np.float64), np.asarray(z, np.float64)  # (T, B)
        eff = np.cumprod(z, axis=0)
        active = np.concatenate([np.ones((1, B)), eff[:-1]]) > 0
        n_masked += int((~active).sum())
        for t in range(T):
            if active[t].any():
                lt = sig[t, active[t]]
                mean[t], var[t] = alpha * mean[t] + (1 - alpha) * lt.mean(), alpha * var[t] + (1 - alpha) * lt.var()
        state, loss = update(state, y)
        assert np.isfinite(loss)
        stats = state.mutable_state["z_signal_stats"]
        np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats["var"], var, rtol=1e-5, atol=1e-5)
    assert n_masked > 0 and np.all(var > 0)  # the mask mattered and the statistics moved


def test_missing_statistics_raise():
    with pytest.raises(ValueError, match="z_signal_stats"):
        params = {"theta": jnp.asarray(THETA, jnp.float32)}
        NVIL_ELBO(normalize_signal=True).loss(jax.random.PRNGKey(0), params, toy_model, toy_guide, jnp.asarray(Y))


BAD_OPTIONS = [dict(signal_decay=1.0), dict(signal_decay=-0.1), dict(loss_scale=0.0), dict(loss_scale=float("inf"))]


@pytest.mark.parametrize("kw", BAD_OPTIONS)
def test_invalid_options_raise(kw):
    with pytest.raises(ValueError):
        NVIL_ELBO(**kw)


# ----------------------------------------------------------------------------- loss scale
def test_loss_scale_multiplies_loss_gradients_costs_and_baseline_target():
    c = 60000 / 64
    with jax.enable_x64(True):
        y = jnp.asarray(Y)
        params = {"theta": jnp.asarray(THETA)}
        vg = lambda e, k: jax.value_and_grad(lambda p: e.loss(k, p, toy_model, toy_guide, y))(params)  # noqa: E731
        for seed in range(3):
            key = jax.random.PRNGKey(seed)
            v1, g1 = jax.jit(lambda k: vg(NVIL_ELBO(), k))(key)
            vc, gc = jax.jit(lambda k: vg(NVIL_ELBO(loss_scale=c), k))(key)
            np.testing.assert_allclose(vc, c * v1, rtol=1e-12)
            np.testing.assert_allclose(gc["theta"], c * g1["theta"], rtol=1e-10)
        # with a learned baseline: costs scale by c, the baseline loss is Pyro's sum((c cost - b)^2)
        bparams = {**params, "bl": jnp.asarray([-900.0, -700.0, -500.0])}
        guide = lambda y: toy_guide(y, baseline=True)  # noqa: E731
        comp = lambda e, k: e.components(k, bparams, toy_model, guide, y)  # noqa: E731
        o1 = jax.jit(lambda k: comp(NVIL_ELBO(), k))(key)
        oc = jax.jit(lambda k: comp(NVIL_ELBO(loss_scale=c), k))(key)
        np.testing.assert_allclose(oc["costs"]["z"], c * o1["costs"]["z"], rtol=1e-12)
        np.testing.assert_allclose(oc["elbo"], c * o1["elbo"], rtol=1e-12)
        b = np.asarray(oc["baselines"]["z"])
        np.testing.assert_allclose(oc["baseline_loss"], np.sum((c * np.asarray(o1["costs"]["z"]) - b) ** 2), rtol=1e-12)
        np.testing.assert_allclose(oc["score_weights"]["z"], c * np.asarray(o1["costs"]["z"]) - b, rtol=1e-12)


# ----------------------------------------------------------------------------- AIR
def test_air_normalised_nvil_trains_and_state_is_checkpointed():
    from numpyro_air.train.checkpoint import named_arrays

    config = AIRConfig(**SMALL)
    images = jnp.asarray(make_scenes(4, config.image_size, seed=2))
    guide = with_signal_stats(air_guide, {"z_pres": (config.num_steps,)})
    svi = SVI(air_model, guide, optax.adam(1e-4), NVIL_ELBO(normalize_signal=True), config=config)
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), images)
    update = jax.jit(svi.update)
    for _ in range(2):
        state, loss = update(state, images)
        assert np.isfinite(float(loss))
    stats = state.mutable_state["z_pres_signal_stats"]
    assert stats["mean"].shape == stats["var"].shape == (config.num_steps,)
    assert np.all(np.isfinite(stats["mean"])) and np.asarray(stats["var"])[0] > 0
    for leaf in jax.tree.leaves(svi.get_params(state)):
        assert np.all(np.isfinite(np.asarray(leaf)))
    names = named_arrays(state)
    assert {"state/mutable_state/z_pres_signal_stats/mean", "state/mutable_state/z_pres_signal_stats/var"} <= set(names)


@pytest.mark.parametrize("kw", BAD_OPTIONS + [dict(signal_decay=float("nan")), dict(loss_scale=-2.0)])
def test_optim_config_refuses_what_the_estimator_refuses(kw):
    """One rule per option: OptimConfig and NVIL_ELBO refuse the same values with the same message."""
    from numpyro_air.train.recipes import OptimConfig

    with pytest.raises(ValueError) as from_elbo:
        NVIL_ELBO(**kw)
    with pytest.raises(ValueError) as from_config:
        OptimConfig(**kw)
    assert str(from_config.value) == str(from_elbo.value)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.99])
def test_optim_config_accepts_what_the_estimator_accepts(decay):
    from numpyro_air.train.recipes import OptimConfig

    assert NVIL_ELBO(signal_decay=decay).signal_decay == OptimConfig(signal_decay=decay).signal_decay == decay
