"""NVIL_ELBO: unbiasedness against exact enumeration, agreement with NumPyro's TraceGraph_ELBO,
baselines (learned, constant, decaying average), the baseline/surrogate split on the AIR guide,
the two-group optimiser, and finiteness of a full AIR gradient at the tutorial sizes.

Monte-Carlo tolerance used throughout: an estimate ``est`` of a mean from N i.i.d. particles
with per-particle standard deviation ``sd`` passes when ``|est - exact| < 5 * sd / sqrt(N)``
(per component; 5 standard errors, a false-alarm rate < 1e-6 per component). The toy
experiments run in float64 (``jax.enable_x64``) with N = 200,000 particles, whose per-particle
gradients are computed once per estimator (module-scoped fixture) and shared by the tests.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.contrib.control_flow import scan
from numpyro.infer import SVI, TraceGraph_ELBO
from numpyro.primitives import mutable

from numpyro_air import AIRConfig
from numpyro_air.core.guide import guide as air_guide
from numpyro_air.core.model import model as air_model
from numpyro_air.core.sites import is_baseline_param
from numpyro_air.estimators.nvil import NVIL_ELBO
from numpyro_air.train.optim import make_optimizer, param_labels

# ----------------------------------------------------------------------------- the toy chain
# guide  q: z_t ~ Bern(logits = theta_t + C * z_{t-1})          (z_{-1} = 0)
# model  p: z_t ~ Bern(0.2 + 0.6 * z_{t-1}),  y ~ N(sum_t z_t, 1) observed
# No logit is ever exactly 0 (numpyro's Bernoulli(logits) has a wrong subgradient there).
T = 3
C = 0.7
THETA = np.array([0.3, -0.4, 0.5])
Y = 2.0
N = 200_000
N_SE = 5.0  # tolerance in standard errors


def _fz(z, like):
    return z.astype(jnp.result_type(like))


def guide_scan(y, baseline=None):
    """baseline: None | "learned" (deterministic site fed by param ``bl_b``) | "avg" (EMA)."""
    theta = numpyro.param("theta", jnp.asarray(THETA))
    infer = {}
    if baseline == "learned":
        bl = numpyro.param("bl_b", jnp.zeros(T))
        infer = {"baseline": {"baseline_value": "b"}}
    elif baseline == "avg":
        mutable("z_avg_baseline", jnp.zeros(T))
        infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}
    xs = (theta, bl) if baseline == "learned" else (theta, jnp.zeros(T))

    def step(zprev, x):
        th, b = x
        if baseline == "learned":
            numpyro.deterministic("b", b)
        z = numpyro.sample("z", dist.Bernoulli(logits=th + C * zprev), infer=infer)
        return _fz(z, zprev), None

    scan(step, jnp.zeros(()), xs)


def model_scan(y, baseline=None):
    def step(carry, _):
        zprev, total = carry
        z = _fz(numpyro.sample("z", dist.Bernoulli(probs=0.2 + 0.6 * zprev)), zprev)
        return (z, total + z), None

    (_, total), _ = scan(step, (jnp.zeros(()), jnp.zeros(())), None, length=T)
    numpyro.sample("y", dist.Normal(total, 1.0), obs=y)


def guide_unrolled(y):
    theta = numpyro.param("theta", jnp.asarray(THETA))
    zprev = jnp.zeros(())
    for t in range(T):
        zprev = _fz(numpyro.sample(f"z_{t}", dist.Bernoulli(logits=theta[t] + C * zprev)), zprev)


def model_unrolled(y):
    zprev, total = jnp.zeros(()), jnp.zeros(())
    for t in range(T):
        zprev = _fz(numpyro.sample(f"z_{t}", dist.Bernoulli(probs=0.2 + 0.6 * zprev)), zprev)
        total = total + zprev
    numpyro.sample("y", dist.Normal(total, 1.0), obs=y)


# plate version: B examples, each with its own observation and its own guide parameters
YB = np.array([0.5, 2.5, 3.5])
THETA_B = np.array([[0.3, -0.6, 1.1], [-0.4, 0.2, -0.9], [0.5, 0.8, -0.3]])  # (T, B)


def guide_plate(y, avg_baseline=False):
    B = y.shape[0]
    theta = numpyro.param("theta", jnp.asarray(THETA_B))
    infer = {}
    if avg_baseline:
        mutable("z_avg_baseline", jnp.zeros(T))
        infer = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}

    def step(zprev, th):
        with numpyro.plate("data", B):
            z = numpyro.sample("z", dist.Bernoulli(logits=th + C * zprev), infer=infer)
        return _fz(z, zprev), None

    scan(step, jnp.zeros(B), theta)


def model_plate(y):
    B = y.shape[0]

    def step(carry, _):
        zprev, total = carry
        with numpyro.plate("data", B):
            z = _fz(numpyro.sample("z", dist.Bernoulli(probs=0.2 + 0.6 * zprev)), zprev)
        return (z, total + z), None

    (_, total), _ = scan(step, (jnp.zeros(B), jnp.zeros(B)), None, length=T)
    with numpyro.plate("data", B):
        numpyro.sample("y", dist.Normal(total, 1.0), obs=y)


# ----------------------------------------------------------------------------- exact answers
PATHS = np.array(list(itertools.product([0.0, 1.0], repeat=T)))  # (2^T, T)


def _log_q(theta, z):
    zprev = jnp.concatenate([jnp.zeros(1), z[:-1]])
    logits = theta + C * zprev
    return jnp.sum(z * jax.nn.log_sigmoid(logits) + (1 - z) * jax.nn.log_sigmoid(-logits))


def _log_p(z, y):
    zprev = jnp.concatenate([jnp.zeros(1), z[:-1]])
    p = 0.2 + 0.6 * zprev
    return jnp.sum(z * jnp.log(p) + (1 - z) * jnp.log1p(-p)) + dist.Normal(jnp.sum(z), 1.0).log_prob(y)


def exact_elbo(theta, y):
    def term(z):
        lq = _log_q(theta, z)
        return jnp.exp(lq) * (_log_p(z, y) - lq)

    return jnp.sum(jax.vmap(term)(jnp.asarray(PATHS)))


def _path_terms(theta, y):
    """Per path: q(path), per-step log p - log q (2^T, T), and log p(y | path), in numpy."""
    z = PATHS
    zprev = np.concatenate([np.zeros((len(z), 1)), z[:, :-1]], axis=1)
    logits = theta + C * zprev
    lq = z * -np.logaddexp(0, -logits) + (1 - z) * -np.logaddexp(0, logits)
    pp = 0.2 + 0.6 * zprev
    lp = z * np.log(pp) + (1 - z) * np.log1p(-pp)
    obs = -0.5 * (y - z.sum(1)) ** 2 - 0.5 * np.log(2 * np.pi)
    return np.exp(lq.sum(1)), lp - lq, obs


def _expected_reward_to_go(theta, y):
    q, r, obs = _path_terms(theta, y)
    ctg = np.cumsum(r[:, ::-1], axis=1)[:, ::-1] + obs[:, None]
    return q @ ctg


def _exact_loss_and_grad(theta, y):
    with jax.enable_x64(True):
        v, g = _exact_vg(jnp.asarray(theta, jnp.float64), jnp.asarray(y, jnp.float64))
        return float(v), np.asarray(g)


_exact_vg = jax.jit(jax.value_and_grad(lambda th, y: -exact_elbo(th, y)))


# ----------------------------------------------------------------------------- MC machinery
def _per_particle(elbo, model, guide, params, y, n=N, seed=0):
    """Per-particle (loss, gradient pytree) of a 1-particle ELBO, vmapped over n keys, x64."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        y = jnp.asarray(y, jnp.float64)

        def one(key):
            return jax.value_and_grad(lambda p: elbo.loss(key, p, model, guide, y))(params)

        keys = jax.random.split(jax.random.PRNGKey(seed), n)
        loss, grads = jax.jit(jax.vmap(one))(keys)
        return np.asarray(loss), jax.tree.map(np.asarray, grads)


def _check_mc(samples, exact, what):
    """Assert mean(samples) == exact within N_SE standard errors (per component); return errors."""
    samples = np.asarray(samples)
    est = samples.mean(0)
    se = samples.std(0) / np.sqrt(samples.shape[0])
    err = np.abs(est - exact)
    assert np.all(err < N_SE * se), f"{what}: estimate {est} vs exact {exact}, |err| {err} >= {N_SE} * se {se}"
    return err, se


@pytest.fixture(scope="module")
def exact():
    return _exact_loss_and_grad(THETA, Y)


@pytest.fixture(scope="module")
def nvil_scan():
    return _per_particle(NVIL_ELBO(), model_scan, guide_scan, {"theta": THETA}, Y)


@pytest.fixture(scope="module")
def nvil_unrolled():
    return _per_particle(NVIL_ELBO(), model_unrolled, guide_unrolled, {"theta": THETA}, Y)


@pytest.fixture(scope="module")
def tracegraph_unrolled():
    return _per_particle(TraceGraph_ELBO(), model_unrolled, guide_unrolled, {"theta": THETA}, Y)


# ----------------------------------------------------------------------------- (a) scan vs exact
def test_exact_enumeration_sanity(exact):
    # the exact gradient is far from zero and from a finite-difference mistake
    loss, grad = exact
    with jax.enable_x64(True):
        eps = 1e-6
        e = eps * np.eye(T)
        fd = [(_exact_loss_and_grad(THETA + e[i], Y)[0] - _exact_loss_and_grad(THETA - e[i], Y)[0]) / (2 * eps) for i in range(T)]
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert np.all(np.abs(grad) > 0.05)


def test_nvil_scan_gradient_and_value_match_exact(nvil_scan, exact):
    loss, grads = nvil_scan
    exact_loss, exact_grad = exact
    _check_mc(grads["theta"], exact_grad, "NVIL scan gradient")
    _check_mc(loss, exact_loss, "NVIL scan -ELBO value")
    # the reported loss is the -ELBO estimate itself (surrogate terms add 0 to the value)
    assert loss.dtype == np.float64 and np.all(np.isfinite(loss))


def test_tracegraph_on_scan_is_biased(exact):
    """Stock TraceGraph_ELBO with scan misses later steps' costs (numpyro_jax.md §1.4)."""
    _, grads = _per_particle(TraceGraph_ELBO(), model_scan, guide_scan, {"theta": THETA}, Y)
    g = grads["theta"]
    err = np.abs(g.mean(0) - exact[1])
    tol = N_SE * g.std(0) / np.sqrt(N)
    assert np.any(err > 3 * tol), f"expected a biased estimate: |err| {err} vs tolerance {tol}"
    # the last step sees all its downstream costs even there, so only earlier steps are off
    assert err[-1] < tol[-1]


def test_num_particles_is_the_mean_of_single_particles():
    """NVIL_ELBO(num_particles=n) == the mean of n one-particle estimates on split keys."""
    n = 1000
    key = jax.random.PRNGKey(3)
    with jax.enable_x64(True):
        params = {"theta": jnp.asarray(THETA)}
        y = jnp.asarray(Y)
        many = jax.value_and_grad(lambda p: NVIL_ELBO(num_particles=n).loss(key, p, model_scan, guide_scan, y))
        one = lambda k: jax.value_and_grad(lambda p: NVIL_ELBO().loss(k, p, model_scan, guide_scan, y))(params)  # noqa: E731
        v, g = jax.jit(many)(params)
        vs, gs = jax.jit(jax.vmap(one))(jax.random.split(key, n))
        np.testing.assert_allclose(v, vs.mean(), rtol=1e-12)
        np.testing.assert_allclose(g["theta"], gs["theta"].mean(0), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- (b) unrolled / plate
def test_nvil_matches_tracegraph_on_unrolled_model(nvil_unrolled, tracegraph_unrolled, nvil_scan, exact):
    (l_n, g_n), (l_t, g_t) = nvil_unrolled, tracegraph_unrolled
    g_n, g_t = g_n["theta"], g_t["theta"]
    # both unbiased
    _check_mc(g_n, exact[1], "NVIL unrolled gradient")
    _check_mc(g_t, exact[1], "TraceGraph unrolled gradient")
    # agreement with each other within the MC tolerance of a difference of two estimates
    se = np.sqrt(g_n.var(0) / N + g_t.var(0) / N)
    assert np.all(np.abs(g_n.mean(0) - g_t.mean(0)) < N_SE * se)
    # Same key-splitting and the same Rao-Blackwellised costs: identical per particle.
    np.testing.assert_allclose(g_n, g_t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(l_n, l_t, rtol=1e-12)
    # the scan form (different per-step keys) agrees with the unrolled form within MC error
    g_s = nvil_scan[1]["theta"]
    se = np.sqrt(g_n.var(0) / N + g_s.var(0) / N)
    assert np.all(np.abs(g_n.mean(0) - g_s.mean(0)) < N_SE * se)


def test_plate_per_example_costs_and_gradient():
    """plate("data", B) inside the scan: costs stay per example; the gradient (per-example
    parameters) matches per-example exact enumeration."""
    B = len(YB)
    loss, grads = _per_particle(NVIL_ELBO(), model_plate, guide_plate, {"theta": THETA_B}, YB)
    g = grads["theta"]  # (N, T, B)
    exact_loss = 0.0
    for b in range(B):
        lb, gb = _exact_loss_and_grad(THETA_B[:, b], YB[b])
        exact_loss += lb
        _check_mc(g[:, :, b], gb, f"plate example {b}")
    _check_mc(loss, exact_loss, "plate -ELBO value")

    # Costs: exactly each example's own reward-to-go (no other example's terms leak in).
    with jax.enable_x64(True):

        @jax.jit
        def costs_and_z(key, params, y):
            out = NVIL_ELBO().components(key, params, model_plate, guide_plate, y)
            _, k_guide = jax.random.split(key)  # the guide's key inside components
            tr = handlers.trace(handlers.seed(handlers.substitute(guide_plate, params), k_guide)).get_trace(y)
            return out["costs"]["z"], tr["z"]["value"]

        for seed in range(4):
            cost, z = costs_and_z(jax.random.PRNGKey(seed), {"theta": jnp.asarray(THETA_B)}, jnp.asarray(YB))
            cost, z = np.asarray(cost), np.asarray(z, np.float64)  # (T, B) each
            assert cost.shape == (T, B)
            expected = np.zeros((T, B))
            for b in range(B):
                row = np.flatnonzero((PATHS == z[:, b]).all(1))[0]
                _, r, obs = _path_terms(THETA_B[:, b], YB[b])
                expected[:, b] = np.cumsum(r[row, ::-1])[::-1] + obs[row]
            np.testing.assert_allclose(cost, expected, rtol=1e-10)


# ----------------------------------------------------------------------------- (c) baselines
def test_learned_baseline_keeps_mean_and_reduces_variance(nvil_scan, exact):
    # a good constant per-step baseline: each step's expected reward-to-go, by enumeration
    # (any value that does not depend on z_t keeps the estimator unbiased)
    b = _expected_reward_to_go(THETA, Y)
    params = {"theta": THETA, "bl_b": b}
    _, grads = _per_particle(NVIL_ELBO(), model_scan, lambda y: guide_scan(y, baseline="learned"), params, Y)
    g_bl = grads["theta"]
    _check_mc(g_bl, exact[1], "gradient with baseline")
    sd0 = nvil_scan[1]["theta"].std(0)
    sd1 = g_bl.std(0)
    assert np.all(sd1 <= 0.7 * sd0), f"per-particle std {sd0} -> {sd1}: expected >= 30% reduction"
    # the baseline's own parameter gets the baseline-loss gradient 2 * (b - E[cost]) ~ 0 here
    assert np.all(np.isfinite(grads["bl_b"]))
    np.testing.assert_allclose(grads["bl_b"].mean(0), 0.0, atol=N_SE * grads["bl_b"].std(0).max() / np.sqrt(N) + 0.05)


def test_decaying_average_baseline_through_svi(exact):
    """EMA baseline held in a mutable site: SVI updates it to beta * old + (1 - beta) * (batch
    mean of each step's cost); the gradient stays unbiased."""
    beta = 0.9
    g = lambda y: guide_plate(y, avg_baseline=True)  # noqa: E731
    y = jnp.asarray(YB, jnp.float32)
    svi = SVI(model_plate, g, optax.adam(1e-2), NVIL_ELBO(num_particles=1))
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), y)
    np.testing.assert_array_equal(state.mutable_state["z_avg_baseline"], np.zeros(T))
    update = jax.jit(svi.update)
    cost_fn = jax.jit(lambda key, params: NVIL_ELBO().components(key, params, model_plate, g, y)["costs"]["z"])
    theta0 = np.asarray(svi.get_params(state)["theta"])
    guide_z = jax.jit(
        lambda key, params: handlers.trace(handlers.seed(handlers.substitute(g, params), key)).get_trace(y)["z"]["value"]
    )
    avg_by_hand = np.zeros(T)  # the EMA recomputed independently (never read back from the state)
    for _ in range(3):
        old = np.asarray(state.mutable_state["z_avg_baseline"])
        _, key_step = jax.random.split(state.rng_key)  # the key svi.update evaluates the ELBO with
        cost = np.asarray(cost_fn(key_step, {**svi.get_params(state), "z_avg_baseline": jnp.asarray(old)}))
        assert cost.shape == (T, len(YB))
        # Independent costs: this step's z (the guide run on the ELBO's guide key), then each
        # example's reward-to-go sum_{u >= t} (log p - log q)(z_u) + log p(y | z) in numpy.
        _, k_guide = jax.random.split(key_step)  # NVIL_ELBO.components: k_model, k_guide = split(key)
        theta = np.asarray(svi.get_params(state)["theta"], np.float64)
        z = np.asarray(guide_z(k_guide, svi.get_params(state)), np.float64)  # (T, B)
        cost_by_hand = np.zeros((T, len(YB)))
        for b in range(len(YB)):
            row = np.flatnonzero((PATHS == z[:, b]).all(1))[0]
            _, r, obs = _path_terms(theta[:, b], YB[b])
            cost_by_hand[:, b] = np.cumsum(r[row, ::-1])[::-1] + obs[row]
        np.testing.assert_allclose(cost, cost_by_hand, rtol=1e-5, atol=1e-5)
        avg_by_hand = beta * avg_by_hand + (1 - beta) * cost_by_hand.mean(1)  # EMA of the batch-mean cost
        state, loss = update(state, y)
        new = np.asarray(state.mutable_state["z_avg_baseline"])
        np.testing.assert_allclose(new, beta * old + (1 - beta) * cost.mean(1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(new, avg_by_hand, rtol=1e-5, atol=1e-5)
        assert np.isfinite(loss)
    assert np.all(new != 0)
    assert not np.allclose(np.asarray(svi.get_params(state)["theta"]), theta0)  # and it trains

    # unbiased with any (fixed) average in the state; here a typical one
    g = lambda y: guide_scan(y, baseline="avg")  # noqa: E731
    avg = np.array([-3.0, -2.0, -1.5])
    _, grads = _per_particle(NVIL_ELBO(), model_scan, g, {"theta": THETA, "z_avg_baseline": avg}, Y)
    _check_mc(grads["theta"], exact[1], "gradient with decaying-average baseline")
    assert "z_avg_baseline" not in grads or np.all(grads["z_avg_baseline"] == 0)


# ----------------------------------------------------------------------------- (d) AIR guide split
SMALL = AIRConfig.tutorial(
    image_size=20,
    window_size=10,
    rnn_hidden_size=32,
    z_what_size=8,
    encoder_net=(32,),
    decoder_net=(32,),
    predict_net=(32,),
    bl_predict_net=(32,),
    embed_net=(48,),  # so bl_embed exists too
    z_pres_prior=0.5,
)


@pytest.fixture(scope="module")
def small_air():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(0, 1, (4, 20, 20)), jnp.float32)
    svi = SVI(air_model, air_guide, make_optimizer(1e-4, 1e-2), NVIL_ELBO(), config=SMALL)
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), images)
    return svi, svi.get_params(state), images


def _norm(tree) -> float:
    """Global L2 norm in numpy (no eager JAX ops: each new shape would compile a kernel)."""
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


@jax.jit
def _split_grads(params, images, key):
    """Gradients of ``loss`` and of its two parts, ``baseline_loss`` and ``surrogate_loss``,
    plus the particle's baselines, costs and ELBO."""

    def parts(p):
        out = NVIL_ELBO().components(key, p, air_model, air_guide, images, config=SMALL)
        aux = (out["baselines"]["z_pres"], out["costs"]["z_pres"], out["elbo"])
        return jnp.stack([out["loss"], out["baseline_loss"], out["surrogate_loss"]]), aux

    jac, aux = jax.jacrev(parts, has_aux=True)(params)  # one trace, three backward passes
    return tuple(jax.tree.map(lambda a, i=i: a[i], jac) for i in range(3)) + (aux,)


def test_air_baseline_loss_reaches_only_baseline_params(small_air):
    """d(baseline_loss)/d(non-bl params) == 0 and d(surrogate_loss)/d(bl params) == 0 exactly,
    and d(loss) = d(surrogate_loss) + d(baseline_loss)."""
    _, params, images = small_air
    names = set(params)
    assert {"bl_rnn$params", "bl_predict$params", "bl_embed$params", "bl_h_init", "bl_c_init"} <= names
    g_loss, g_bl, g_surr, _ = _split_grads(params, images, jax.random.PRNGKey(5))
    for name in names:
        if is_baseline_param(name):
            assert _norm(g_surr[name]) == 0.0, f"surrogate ELBO reaches baseline param {name}"
            # the baseline nets do learn (bl_h_init/bl_c_init too: they feed step 0's baseline)
            assert _norm(g_bl[name]) > 0.0, name
        else:
            assert _norm(g_bl[name]) == 0.0, f"baseline loss reaches guide/model param {name}"
            assert _norm(g_surr[name]) > 0.0, name
        for a, b, c in zip(jax.tree.leaves(g_loss[name]), jax.tree.leaves(g_bl[name]), jax.tree.leaves(g_surr[name])):
            a, b, c = (np.asarray(v) for v in (a, b, c))
            np.testing.assert_allclose(a, b + c, rtol=1e-5, atol=1e-6 * (1 + np.abs(a).max()))


def test_air_baseline_value_changes_only_score_weights(small_air):
    """Perturbing the bl_ params changes the baselines but not the samples, costs or ELBO (same
    key), and the two exact zeros still hold there. (Non-bl gradient *values* do move, through
    the score weights sg(cost - b); only their expectation is baseline-independent, which the
    toy tests above check.)"""
    _, params, images = small_air
    key = jax.random.PRNGKey(7)
    bumped = {k: (jax.tree.map(lambda a: a + 0.05, v) if is_baseline_param(k) else v) for k, v in params.items()}
    *_, (b0, cost0, elbo0) = _split_grads(params, images, key)
    _, g_bl1, g_surr1, (b1, cost1, elbo1) = _split_grads(bumped, images, key)
    for name in params:
        if is_baseline_param(name):
            assert _norm(g_surr1[name]) == 0.0, name
        else:
            assert _norm(g_bl1[name]) == 0.0, name
    assert np.abs(np.asarray(b0) - np.asarray(b1)).max() > 1e-3
    np.testing.assert_allclose(cost0, cost1, rtol=1e-6)
    np.testing.assert_allclose(elbo0, elbo1, rtol=1e-6)


# ----------------------------------------------------------------------------- (d) optimiser
def test_optimizer_baseline_lr_applies_to_every_bl_param(small_air):
    """Pyro bug #1374: the baseline learning rate was applied to only some baseline params.
    Adam's first step moves each coordinate by lr * g / (|g| + eps) ~ lr * sign(g)."""
    _, params, _ = small_air
    lr, blr = 1e-4, 3e-2
    labels = param_labels(params)
    for name, tree in labels.items():
        want = "baseline" if name.startswith("bl_") else "main"
        assert set(jax.tree.leaves(tree)) == {want}, name
    rng = np.random.default_rng(1)

    # |g| >= 0.5 everywhere, so eps = 1e-8 is negligible: |delta| = lr * |g| / (|g| + eps)
    def away_from_zero(a):
        sign = np.where(rng.random(a.shape) < 0.5, -1.0, 1.0).astype(np.float32)
        return sign * (0.5 + rng.random(a.shape, np.float32))

    grads = jax.tree.map(away_from_zero, params)
    tx = make_optimizer(lr, blr)
    new = jax.jit(lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))(params, grads)
    for name in params:
        want = blr if is_baseline_param(name) else lr
        for a, b, g in zip(jax.tree.leaves(new[name]), jax.tree.leaves(params[name]), jax.tree.leaves(grads[name])):
            delta = np.asarray(a, np.float64) - np.asarray(b, np.float64)
            np.testing.assert_allclose(np.abs(delta), want, rtol=0.02, err_msg=name)
            assert np.all(np.sign(delta) == -np.sign(g)), name


@pytest.mark.parametrize("warmup, decay, final", [(4, 0, 0.0), (3, 6, 0.1)])
def test_learning_rate_schedule_moves_both_groups_by_their_scheduled_rate(small_air, warmup, decay, final):
    """Adam moves each coordinate by ~lr_t * sign(g) when every gradient has the same sign and size:
    step t's move is the schedule's rate at t (linear warmup from 0, cosine decay to final * lr,
    held after), for the main and the baseline group each at its own peak."""
    _, params, _ = small_air
    lr, blr, steps = 1e-3, 2e-2, 12

    def want_rate(peak, t):
        if t < warmup:
            return peak * t / warmup
        if decay == 0:
            return peak
        u = min(t - warmup, decay) / decay
        return peak * (final + (1 - final) * 0.5 * (1 + np.cos(np.pi * u)))

    grads = jax.tree.map(lambda a: np.ones(a.shape, np.float32), params)
    tx = make_optimizer(lr, blr, warmup_steps=warmup, decay_steps=decay, final_lr_fraction=final)

    @jax.jit
    def moves(p):
        def body(carry, _):
            p, s = carry
            u, s = tx.update(grads, s, p)
            new = optax.apply_updates(p, u)
            return (new, s), jax.tree.map(lambda a, b: (a - b).reshape(-1)[0], new, p)

        return jax.lax.scan(body, (p, tx.init(p)), None, length=steps)[1]

    got = moves(params)
    for name in params:
        peak = blr if is_baseline_param(name) else lr
        want = [-want_rate(peak, t) for t in range(steps)]
        for leaf in jax.tree.leaves(got[name]):
            np.testing.assert_allclose(np.asarray(leaf, np.float64), want, rtol=1e-3, atol=1e-9, err_msg=name)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"warmup_steps": -1}, "warmup_steps"), ({"decay_steps": 2.5}, "decay_steps"), ({"final_lr_fraction": 1.5}, "final_lr")],
)
def test_learning_rate_schedule_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(1e-4, 1e-3, **kwargs)


def _adam_mu(state, group):
    mus = optax.tree_utils.tree_get_all_with_path(state.inner_states[group], "mu")
    assert len(mus) == 1
    return mus[0][1]


def test_optimizer_clips_each_group_separately(small_air):
    _, params, _ = small_air
    is_bl = {k: is_baseline_param(k) for k in params}
    # main gradients with global norm 100, baseline gradients with global norm 1000
    ones = jax.tree.map(lambda a: np.ones(a.shape, np.float32), params)
    n_main = _norm({k: v for k, v in ones.items() if not is_bl[k]})
    n_bl = _norm({k: v for k, v in ones.items() if is_bl[k]})
    factor = {k: np.float32(1000.0 / n_bl if is_bl[k] else 100.0 / n_main) for k in params}
    grads = {k: jax.tree.map(lambda a, k=k: a * factor[k], v) for k, v in ones.items()}
    b1 = 0.9

    txs = {"clipped": make_optimizer(1e-4, 1e-3, clip_norm=1.0), "raw": make_optimizer(1e-4, 1e-3)}
    states = jax.jit(lambda p, g: {c: tx.update(g, tx.init(p), p)[1] for c, tx in txs.items()})(params, grads)

    def first_moment_norms(state):
        out = []
        for grp in ("main", "baseline"):
            mu = _adam_mu(state, grp)
            out.append(_norm({k: v for k, v in mu.items() if is_bl[k] == (grp == "baseline")}))
        return out

    # first moment after one step = (1 - b1) * (clipped) gradient: each group clipped to norm 1
    np.testing.assert_allclose(first_moment_norms(states["clipped"]), [(1 - b1) * 1.0] * 2, rtol=1e-4)
    np.testing.assert_allclose(first_moment_norms(states["raw"]), [(1 - b1) * 100.0, (1 - b1) * 1000.0], rtol=1e-4)


# ----------------------------------------------------------------------------- (e) full AIR
def _three_squares(rng, n, size=50, side=8):
    x = np.zeros((n, size, size), np.float32)
    for i in range(n):
        # three non-overlapping squares on a 3x2 grid of cells, random offsets inside the cell
        cells = rng.choice(6, size=3, replace=False)
        for c in cells:
            r0 = (c // 3) * 25 + rng.integers(0, 25 - side)
            c0 = (c % 3) * 16 + rng.integers(0, 16 - side)
            x[i, r0 : r0 + side, c0 : c0 + side] = 1.0
    return x


@pytest.mark.slow
def test_full_air_tutorial_gradients_finite():
    B = 64
    cfg = AIRConfig.tutorial(num_steps=3)
    assert (cfg.image_size, cfg.window_size, cfg.rnn_hidden_size) == (50, 28, 256)
    rng = np.random.default_rng(0)
    batches = {
        "empty": np.zeros((B, 50, 50), np.float32),
        "three": _three_squares(rng, B),
        "noise": rng.uniform(0, 1, (B, 50, 50)).astype(np.float32),
    }
    svi = SVI(air_model, air_guide, make_optimizer(1e-4, 0.1), NVIL_ELBO(), config=cfg)
    init = jax.jit(svi.init)
    elbo = NVIL_ELBO()

    @jax.jit
    def loss_and_grad(params, key, images):
        return jax.value_and_grad(lambda p: elbo.loss(key, p, air_model, air_guide, images, config=cfg))(params)

    for seed in range(3):
        state = init(jax.random.PRNGKey(seed), jnp.asarray(batches["noise"]))
        params = svi.get_params(state)
        for what, x in batches.items():
            loss, grads = loss_and_grad(params, jax.random.PRNGKey(100 + seed), jnp.asarray(x))
            assert np.isfinite(float(loss)), (seed, what)
            assert set(grads) == set(params)
            for name, g in grads.items():
                assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(g)), (seed, what, name)
    assert init._cache_size() == 1 and loss_and_grad._cache_size() == 1
