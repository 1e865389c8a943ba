"""IWAE log-likelihood estimates: the generic core against exact log p(x) (a conjugate Gaussian
model, and the absorbing Bernoulli scan of test_vimco by enumeration), chunking, and the AIR
wrappers.

Tolerances: means over R independent keys are compared in standard errors (5 s.e. per datum).
The toys run in float64.
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
from numpyro.infer import SVI
from test_vimco import P_MODEL, THETA, Y, toy_guide, toy_model
from test_vimco import B as TOY_B

from numpyro_air import AIRConfig
from numpyro_air.analysis.likelihood import (
    count_evidence,
    count_posterior,
    elbo_per_image,
    importance_estimates,
    log_marginal_likelihood,
)
from numpyro_air.core.guide import guide
from numpyro_air.core.model import model
from numpyro_air.core.prior import base_prior, count_distribution
from numpyro_air.estimators.nvil import NVIL_ELBO

N_SE = 5.0

# ----------------------------------------------------------------------------- conjugate Gaussian
# p: z_b ~ N(0, 1), x_b ~ N(z_b, SIGMA);  q: z_b ~ N(Q_LOC_b, Q_SD_b) (not the posterior)
SIGMA = 0.8
X = np.array([-1.2, 0.4, 2.0])
Q_LOC = np.array([-0.1, 0.9, 0.4])
Q_SD = np.array([0.9, 0.4, 0.45])


def gauss_model(x):
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, SIGMA), obs=x)


def gauss_guide(x):
    loc, sd = numpyro.param("loc", jnp.asarray(Q_LOC)), numpyro.param("sd", jnp.asarray(Q_SD))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Normal(loc, sd))


def gauss_exact():
    """(log p(x_b), KL(q_b || p(z_b | x_b))), each (B,)."""
    v = 1.0 + SIGMA**2
    log_px = -0.5 * X**2 / v - 0.5 * np.log(2 * np.pi * v)
    post_var = SIGMA**2 / v
    post_mean = X / v
    kl = np.log(np.sqrt(post_var) / Q_SD) + (Q_SD**2 + (Q_LOC - post_mean) ** 2) / (2 * post_var) - 0.5
    return log_px, kl


# ----------------------------------------------------------------------------- discrete scan toy
def toy_exact():
    """(log p(y_b), KL(q_b || p(. | y_b))) for test_vimco's absorbing chain without c, (B,) each."""
    log_px, kl = np.zeros(TOY_B), np.zeros(TOY_B)
    T = len(P_MODEL)
    for b in range(TOY_B):
        lq, lj = [], []
        for n in range(T + 1):  # effective count n: steps < n present, step n absent (if n < T)
            sig = 1.0 / (1.0 + np.exp(-THETA[:, b]))
            lq.append(np.log(sig[:n]).sum() + (np.log1p(-sig[n]) if n < T else 0.0))
            lp = np.log(P_MODEL[:n]).sum() + (np.log1p(-P_MODEL[n]) if n < T else 0.0)
            lj.append(lp - 0.5 * (Y[b] - n) ** 2 - 0.5 * np.log(2 * np.pi))
        lq, lj = np.array(lq), np.array(lj)
        log_px[b] = np.logaddexp.reduce(lj)
        kl[b] = np.sum(np.exp(lq) * (lq - (lj - log_px[b])))
    return log_px, kl


CASES = {
    "gaussian": (gauss_model, gauss_guide, lambda: {"loc": Q_LOC, "sd": Q_SD}, X, {}, gauss_exact),
    "scan": (toy_model, toy_guide, lambda: {"theta": THETA}, Y, {"with_c": False}, toy_exact),
}


def _estimates(case, K, R, chunk_size=None, seed=0):
    """IWAE-K and mean-log-w estimates (R, B) over R independent keys, float64."""
    model, guide, params, x, kwargs, _ = CASES[case]
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v) for k, v in params().items()}

        def one(key):
            return importance_estimates(
                model, guide, params, key, (jnp.asarray(x),), kwargs, num_samples=K, chunk_size=chunk_size
            )

        iwae, elbo = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(seed), R))
        return np.asarray(iwae), np.asarray(elbo)


@pytest.mark.parametrize("case", sorted(CASES))
def test_iwae_approaches_exact_log_likelihood_from_below(case):
    log_px, kl = CASES[case][-1]()
    gaps, ses = {}, {}
    for K, R, chunk in ((1, 16000, None), (10, 16000, None), (1000, 200, 300)):  # 300 does not divide 1000
        iwae, elbo = _estimates(case, K, R, chunk)
        mean, se = iwae.mean(0), iwae.std(0) / math.sqrt(R) + 1e-12
        gaps[K], ses[K] = log_px - mean, se
        # never significantly above log p(x)
        assert np.all(mean < log_px + N_SE * se), (case, K, mean, log_px)
        if K == 1:
            # one sample: E[log w] = log p(x) - KL(q || posterior) exactly; ELBO == IWAE-1
            np.testing.assert_allclose(iwae, elbo, rtol=1e-12)
            assert np.all(np.abs(mean - (log_px - kl)) < N_SE * se), (case, mean, log_px - kl)
        else:
            assert np.all(iwae >= elbo - 1e-9)  # Jensen, per draw
    # the bound tightens with K: significant improvements, and IWAE-1000 within 1% of the K=1 gap
    assert np.all(gaps[1] - gaps[10] > N_SE * np.hypot(ses[1], ses[10])), gaps
    assert np.all(gaps[10] - gaps[1000] > N_SE * np.hypot(ses[10], ses[1000])), gaps
    assert np.all(np.abs(gaps[1000]) < 0.01 * gaps[1] + N_SE * ses[1000]), gaps


def test_chunking_does_not_change_the_samples():
    """Sample i uses split(key, K)[i] whatever the chunk size: equal up to summation order."""
    ref = [a[0] for a in _estimates("scan", 100, 1, None, seed=3)]
    for chunk in (1, 7, 64, 100, 500):
        got = [a[0] for a in _estimates("scan", 100, 1, chunk, seed=3)]
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("bad", [dict(num_samples=0), dict(num_samples=4, chunk_size=0)])
def test_invalid_sizes_raise(bad):
    with pytest.raises(ValueError):
        importance_estimates(gauss_model, gauss_guide, {}, jax.random.PRNGKey(0), (jnp.asarray(X),), **bad)


# ----------------------------------------------------------------------------- AIR
def test_air_wrappers():
    config = AIRConfig(**SMALL)  # with baseline nets: their deterministic site plays no part
    images = jnp.asarray(make_scenes(4, config.image_size, seed=5))
    svi = SVI(model, guide, optax.adam(1e-4), NVIL_ELBO(), config=config)
    params = svi.get_params(jax.jit(svi.init)(jax.random.PRNGKey(0), images))
    K = 8
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    iwae = np.stack([log_marginal_likelihood(params, images, k, config, num_samples=K, chunk_size=3) for k in keys])
    elbo = np.stack([elbo_per_image(params, images, k, config, num_samples=K) for k in keys])
    assert iwae.shape == elbo.shape == (4, 4) and np.all(np.isfinite(iwae)) and np.all(np.isfinite(elbo))
    # same key, same samples: IWAE-K >= mean log w per draw (Jensen)
    assert np.all(iwae >= elbo - 1e-3 * np.abs(elbo))
    # ... and on average against independent draws (keys shifted by one)
    diff = iwae[:-1] - elbo[1:]
    assert diff.mean() > -3 * diff.std() / math.sqrt(diff.size), diff
    # chunking: same samples, same estimate up to float32 summation order
    whole = np.asarray(log_marginal_likelihood(params, images, keys[0], config, num_samples=K))
    np.testing.assert_allclose(whole, iwae[0], rtol=1e-5, atol=1e-3)


def test_count_posterior_is_the_self_normalised_weight_of_each_count():
    """p(n | x) from K draws equals, draw by draw, sum_k w_k [count_k = n] / sum_k w_k with
    w_k = p(x, z_k) / q(z_k | x) computed from each draw's traces in numpy (sample i uses
    split(key, K)[i] whatever the chunk), and sums to one."""
    from numpyro_air.estimators.traces import importance_traces, per_datum_terms

    config = AIRConfig(**SMALL)
    images = jnp.asarray(make_scenes(4, config.image_size, seed=6))
    svi = SVI(model, guide, optax.adam(1e-4), NVIL_ELBO(), config=config)
    params = svi.get_params(jax.jit(svi.init)(jax.random.PRNGKey(0), images))
    key, K = jax.random.PRNGKey(2), 8
    post = np.asarray(count_posterior(params, images, key, config, num_samples=K, chunk_size=3))
    assert post.shape == (4, config.num_steps + 1)
    np.testing.assert_allclose(post.sum(-1), 1.0, rtol=1e-5)

    @jax.jit
    def draw(k):
        mt, gt = importance_traces(model, guide, params, k, (images,), {"config": config})
        return per_datum_terms(mt, gt)[0], gt["z_pres"]["value"]  # (B,), (T, B)

    log_w, counts = [], []
    for k in jax.random.split(key, K):
        lw, z = draw(k)
        log_w.append(np.asarray(lw, np.float64))
        counts.append(np.cumprod(np.asarray(z) > 0, axis=0).sum(0))
    log_w, counts = np.stack(log_w), np.stack(counts)  # (K, B)
    w = np.exp(log_w - log_w.max(0))
    expected = np.stack([(w * (counts == n)).sum(0) for n in range(config.num_steps + 1)], -1) / w.sum(0)[:, None]
    np.testing.assert_allclose(post, expected, atol=1e-5)
    assert len(np.unique(counts)) > 1  # the untrained guide proposes several counts: a real test


# ----------------------------------------------------------------------------- count evidence
def _small_params(config, images):
    """Untrained parameters of model and guide (constrained)."""
    from numpyro_air.train.svi import make_svi

    svi = make_svi(config)
    return svi.get_params(jax.jit(svi.init)(jax.random.PRNGKey(0), images))


def _empty_canvas_evidence(config, images) -> np.ndarray:
    """log P(0) + sum_i log N(x_i; 0, sd) per image, (B,), in float64."""
    x = np.asarray(images, np.float64).reshape(images.shape[0], -1)
    sd = config.likelihood_sd
    empty = np.sum(-0.5 * (x / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi), axis=1)
    return empty + math.log(1.0 - base_prior(config)[0])


def test_count_evidence_of_a_relaxed_model_reads_it_with_hard_presences():
    """Relaxed presence: n = 0 has no latent to sample, so log p(x, 0) is exactly the empty
    canvas's likelihood plus log P(0) of the discrete count prior; every count's estimate is finite."""
    config = AIRConfig(**SMALL, presence_estimator="concrete")
    images = jnp.asarray(make_scenes(4, config.image_size, seed=3))
    ev = np.asarray(count_evidence(_small_params(config, images), images, jax.random.PRNGKey(1), config, num_samples=3))
    assert ev.shape == (4, config.num_steps + 1) and np.all(np.isfinite(ev))
    np.testing.assert_allclose(ev[:, 0], _empty_canvas_evidence(config, images), rtol=1e-5)


def test_count_evidence_is_the_forced_draws_weight_without_presence_terms():
    """Discrete presence with masking: for each n, the estimate equals log P(n) + logmeanexp_k of
    the generic importance weight (per_datum_terms) of the guide's draw with its first n
    presences switched on, minus the presence sites' terms; the model's presence term of such a
    draw is log P(n) itself. Sample i of count n uses split(fold_in(key, n), K)[i] whatever the
    chunk."""
    from numpyro import handlers

    from numpyro_air.analysis.inference import forced_presence
    from numpyro_air.estimators.traces import importance_traces, per_datum_terms

    config = AIRConfig(**SMALL)
    images = jnp.asarray(make_scenes(4, config.image_size, seed=6))
    params = _small_params(config, images)
    key, K = jax.random.PRNGKey(2), 5
    ev = np.asarray(count_evidence(params, images, key, config, num_samples=K, chunk_size=2), np.float64)
    log_p_n = np.log(count_distribution(base_prior(config)))
    np.testing.assert_allclose(ev[:, 0], _empty_canvas_evidence(config, images), rtol=1e-5)  # no latent: exact

    @jax.jit
    def draw(k, n):
        g = handlers.substitute(guide, data=forced_presence(config, jnp.full((4,), n)))
        mt, gt = importance_traces(model, g, params, k, (images,), {"config": config})
        return per_datum_terms(mt, gt)[0], mt["z_pres"]["log_prob"].sum(0), gt["z_pres"]["log_prob"].sum(0)

    for n in range(config.num_steps + 1):
        lw = []
        for k in jax.random.split(jax.random.fold_in(key, n), K):
            generic, model_pres, guide_pres = (np.asarray(a, np.float64) for a in draw(k, n))
            np.testing.assert_allclose(model_pres, log_p_n[n], rtol=1e-5)
            lw.append(generic - model_pres + guide_pres)
        lw = np.stack(lw)
        expected = log_p_n[n] + np.log(np.mean(np.exp(lw - lw.max(0)), 0)) + lw.max(0)
        np.testing.assert_allclose(ev[:, n], expected, rtol=1e-5, atol=1e-2)
    # unmasked absent steps change nothing: only the present objects' latents enter
    unmasked = np.asarray(count_evidence(params, images, key, config.replace(use_masking=False), num_samples=K, chunk_size=2))
    np.testing.assert_allclose(unmasked, ev, rtol=1e-6)
    assert np.ptp(ev, axis=1).min() > 1.0  # the counts' evidences differ: a real comparison
