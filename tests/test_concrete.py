"""Relaxed presence (``presence_estimator="concrete"``): the counting rule, the model's log joint
against an independent numpy computation, pathwise gradients, temperature as a traced argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import SMALL, make_scenes, params_of, run
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import log_density
from test_dair import np_decode, np_place

from numpyro_air.analysis import inference
from numpyro_air.analysis.inference import hard_presence, relaxed_counts
from numpyro_air.core.config import AIRConfig
from numpyro_air.core.distributions import relaxed_presence_logit
from numpyro_air.core.guide import guide
from numpyro_air.core.model import latent_sites, model, presence_site
from numpyro_air.core.prior import count_distribution, make_prior
from numpyro_air.core.sites import is_baseline_param

TINY = dict(image_size=8, window_size=4, z_what_size=2, rnn_hidden_size=8, encoder_net=(4,), decoder_net=(4,))
CONFIG = AIRConfig(**SMALL, presence_estimator="concrete")


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(make_scenes(4, CONFIG.image_size, seed=11))


@pytest.fixture(scope="module")
def guide_params(images):
    return params_of(run(guide, 0, images, CONFIG)[0])


# ----------------------------------------------------------------------------- counting rule


def test_counting_rule_on_hand_made_sequences():
    z = jnp.array(
        [
            [0.9, 0.8, 0.6],  # products 0.9, 0.72, 0.432 -> 2
            [0.4, 0.99, 0.99],  # 0.4 < 0.5 at once -> 0, later presences cannot revive it
            [1.0, 1.0, 1.0],  # -> 3
            [0.7, 0.7, 0.99],  # 0.7, 0.49 -> 1
            [0.5, 1.0, 0.3],  # exactly 0.5 still counts -> 2
            [1e-30, 1.0, 1.0],  # -> 0
        ]
    )
    hard, counts = relaxed_counts(z)
    np.testing.assert_array_equal(counts, [2, 0, 3, 1, 2, 0])
    assert counts.dtype == jnp.int32 and hard.dtype == jnp.float32
    np.testing.assert_array_equal(hard, (np.arange(3)[None, :] < np.asarray(counts)[:, None]).astype(np.float32))
    # from running products directly (what the guide returns), with a batch of batches
    w = jnp.cumprod(z, axis=-1)
    np.testing.assert_array_equal(hard_presence(w[None])[1], counts[None])


# ----------------------------------------------------------------------------- log p(x, z) in numpy


def np_relaxed_bernoulli_logpdf(x, logit, temperature):
    """Binary Concrete density (Maddison et al., 2017) at x in (0, 1), alpha = exp(logit):
    lam alpha x^(-lam-1) (1-x)^(-lam-1) / (alpha x^(-lam) + (1-x)^(-lam))^2."""
    lam, alpha = temperature, np.exp(logit)
    num = np.log(lam) + np.log(alpha) + (-lam - 1) * (np.log(x) + np.log1p(-x))
    return num - 2 * np.log(alpha * x ** (-lam) + (1 - x) ** (-lam))


def norm_logpdf(x, loc, sd):
    return -0.5 * ((x - loc) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)


def np_log_joint(images, y, zw, zwhat, dec_params, config, probs, prior_temp):
    """Per-site log-probs and canvas of the relaxed model, float64; y = logit(z_pres) (T, B)."""
    T, B = y.shape
    z = 1 / (1 + np.exp(-y))
    logits = np.log(probs) - np.log1p(-probs)
    # log-density of y = logit(z): the relaxed Bernoulli's at z plus log |dz/dy| = log z(1 - z)
    lp_y = np_relaxed_bernoulli_logpdf(z, logits[:, None], prior_temp) + np.log(z) + np.log1p(-z)
    loc = np.array([config.scale_prior_mean, config.pos_prior_mean, config.pos_prior_mean])
    sd = np.array([config.scale_prior_sd, config.pos_prior_sd, config.pos_prior_sd])
    lp_where = norm_logpdf(zw, loc, sd).sum(-1)  # unmasked: every step counts
    lp_what = norm_logpdf(zwhat, 0.0, 1.0).sum(-1)
    weights = np.cumprod(z, axis=0)  # running product (T, B)
    H, w = config.image_size, config.window_size
    canvas = np.zeros((B, H, H))
    for t in range(T):
        for b in range(B):
            window = np_decode(dec_params, zwhat[t, b][None], config).reshape(w, w)
            canvas[b] += weights[t, b] * np_place(zw[t, b], window, H)
    obs = norm_logpdf(images.reshape(B, -1), canvas.reshape(B, -1), config.likelihood_sd).sum(-1)
    return {"z_pres_logit": lp_y, "z_where": lp_where, "z_what": lp_what, "obs": obs}, canvas, z


def test_model_log_joint_matches_numpy():
    config = AIRConfig.tutorial(**TINY, presence_estimator="concrete", concrete_temperature=0.7, concrete_prior_temperature=0.5)
    rng = np.random.default_rng(5)
    T, B, H = config.num_steps, 3, config.image_size
    images = make_scenes(B, H, seed=2)
    y = rng.uniform(-4, 4, (T, B)).astype(np.float32)
    y[1, 0] = -6.0  # an early ~0 presence: later objects of image 0 nearly vanish
    zw = np.stack([rng.uniform(0.8, 1.5, (T, B)), rng.uniform(-0.5, 0.5, (T, B)), rng.uniform(-0.5, 0.5, (T, B))], -1)
    zwhat = rng.normal(size=(T, B, config.z_what_size))
    dec = params_of(run(model, 0, jnp.asarray(images), config)[0])["decode$params"]
    dec = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.8, x.shape), jnp.float32), dec)
    data = {"decode$params": dec, "z_pres_logit": y, "z_where": zw.astype(np.float32), "z_what": zwhat.astype(np.float32)}
    temperature = 1.4  # guide's; the prior's is 1.4 * 0.5 / 0.7 = 1.0
    tr, canvas = run(model, 1, jnp.asarray(images), config, data=data, temperature=temperature)
    probs = make_prior(config.z_pres_prior)
    expected, np_canvas, z = np_log_joint(images, y, zw, zwhat, jax.tree.map(np.asarray, dec), config, probs, 1.0)

    assert presence_site(config) == "z_pres_logit" and latent_sites(config)[0] == "z_pres_logit"
    np.testing.assert_allclose(tr["z_pres"]["value"], z, rtol=1e-6)  # deterministic relaxed z_pres
    np.testing.assert_allclose(canvas, np_canvas, atol=1e-4)
    assert np.abs(np_canvas).sum() > 1.0
    for k, v in expected.items():
        got = np.asarray(tr[k]["fn"].log_prob(tr[k]["value"]))
        np.testing.assert_allclose(got, v, rtol=1e-4, atol=1e-4, err_msg=k)
    assert np.all(np.asarray(tr["z_where"]["fn"].log_prob(tr["z_where"]["value"])) != 0)  # never masked


def test_relaxed_presence_logit_is_numpyros_relaxed_bernoulli():
    logits, temp = jnp.array([-3.0, 0.0, 2.5]), 0.6
    d = relaxed_presence_logit(logits, temp)
    assert d.has_rsample
    y = jnp.array([-2.0, 0.3, 4.0])
    z = jax.nn.sigmoid(y)
    expected = dist.RelaxedBernoulliLogits(temp, logits).log_prob(z) + jnp.log(z) + jnp.log1p(-z)
    np.testing.assert_allclose(d.log_prob(y), expected, rtol=1e-5)
    # far in the tails (z == 1 or 0 in float32) the logit-space density stays exact and finite
    assert np.all(np.isfinite(d.log_prob(jnp.array([-200.0, 80.0, 1e3]))))


def np_binary_concrete_logit_logpdf(y, logits, temperature):
    """log density of y = logit(z) for z ~ binary Concrete(alpha = exp(logits), temperature), from
    Maddison et al. (2017), eq. (20): p(z) = T a z^(-T-1) (1-z)^(-T-1) / (a z^(-T) + (1-z)^(-T))^2,
    times the Jacobian dz/dy = z (1 - z); float64 numpy."""
    y, a, t = np.asarray(y, np.float64), np.asarray(logits, np.float64), float(temperature)
    log_z, log_1mz = -np.logaddexp(0.0, -y), -np.logaddexp(0.0, y)
    log_pz = np.log(t) + a - (t + 1) * (log_z + log_1mz) - 2 * np.logaddexp(a - t * log_z, -t * log_1mz)
    return log_pz + log_z + log_1mz


def np_binary_concrete_cdf(z, logits, temperature):
    """P(Z <= z) for Z = sigmoid((logits + L) / T), L ~ Logistic(0, 1): sigmoid(T logit(z) - logits)."""
    z, a = np.asarray(z, np.float64), np.asarray(logits, np.float64)
    with np.errstate(divide="ignore"):  # z may round to 0 or 1 in float32
        return 1.0 / (1.0 + np.exp(a) * ((1.0 - z) / z) ** temperature)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_relaxed_presence_is_the_binary_concrete_at_its_temperature(temperature):
    """sample_presence's relaxed z_pres against an independent binary Concrete at T != 1 (at T = 1
    dividing by the temperature once or twice is the same): the logit-space density, the law of
    the sampled z_pres (Kolmogorov-Smirnov against the Concrete CDF), z_pres = sigmoid(y) for the
    logit-space sample y, and the running product with the previous presence."""
    from scipy import stats

    from numpyro_air.core.model import sample_presence

    n = 3000
    logits = jnp.asarray(np.tile([-1.5, 0.0, 2.0], n // 3), jnp.float32)
    prev = jnp.asarray(np.random.default_rng(0).uniform(0.2, 1.0, n), jnp.float32)
    tr, eff = run(sample_presence, 4, CONFIG, logits, prev, jnp.float32(temperature))
    y = np.asarray(tr["z_pres_logit"]["value"], np.float64)
    z = np.asarray(tr["z_pres"]["value"], np.float64)
    # the site's density is the binary Concrete's, in logit space
    np.testing.assert_allclose(
        tr["z_pres_logit"]["fn"].log_prob(tr["z_pres_logit"]["value"]),
        np_binary_concrete_logit_logpdf(y, logits, temperature),
        rtol=1e-4,
        atol=1e-4,
    )
    # the relaxed presence is the Concrete variable whose logit is y ...
    np.testing.assert_allclose(z, 1.0 / (1.0 + np.exp(-y)), rtol=1e-6, atol=1e-7)
    # ... so its law is the binary Concrete at this temperature: F(z) is uniform
    ks = stats.kstest(np_binary_concrete_cdf(z, logits, temperature), "uniform")
    assert ks.pvalue > 1e-3, ks
    np.testing.assert_allclose(eff, z * np.asarray(prev), rtol=1e-6)


# ----------------------------------------------------------------------------- guide and ELBO


def test_guide_sites_and_no_baseline_nets(guide_params, images):
    assert not any(is_baseline_param(k) for k in guide_params) and "decode$params" not in guide_params
    tr, out = run(guide, 1, images, CONFIG, data=guide_params)
    assert "z_pres" not in tr or tr["z_pres"]["type"] == "deterministic"
    assert tr["z_pres_logit"]["fn"].has_rsample and "z_pres_baseline" not in tr
    w = np.asarray(out["z_pres"])  # running product of relaxed presences
    np.testing.assert_allclose(w, np.cumprod(np.asarray(tr["z_pres"]["value"]).T, axis=1), rtol=1e-6)
    assert np.all((w > 0) & (w < 1)) and np.all(np.diff(w, axis=1) <= 0)
    lq = np.asarray(tr["z_where"]["fn"].log_prob(tr["z_where"]["value"]))
    assert np.all(lq != 0) and np.all(np.isfinite(lq))  # unmasked


@pytest.mark.parametrize("temperature", [1.0, 0.02], ids=["t1", "t0.02"])
def test_trace_elbo_gradients_reach_presence(guide_params, images, temperature):
    model_params = params_of(run(model, 0, images, CONFIG)[0])
    params = {**guide_params, **model_params}

    def loss(p):
        return Trace_ELBO().loss(jax.random.PRNGKey(3), p, model, guide, images, CONFIG, temperature=temperature)

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    kernel = np.asarray(grads["predict$params"]["MLP_0"]["Dense_0"]["kernel"])  # (H, 7): column 0 = logit
    assert np.any(kernel[:, 0] != 0) and np.any(kernel[:, 1:] != 0)  # pathwise gradient of the presence
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads["decode$params"]))


def test_temperature_is_traced_no_recompile(guide_params, images):
    model_params = params_of(run(model, 0, images, CONFIG)[0])
    tr, _ = run(guide, 2, images, CONFIG, data=guide_params)
    latents = {k: tr[k]["value"] for k in latent_sites(CONFIG)}

    @jax.jit
    def densities(temperature):
        kw = {"temperature": temperature}
        lp_model = log_density(model, (images, CONFIG), kw, {**model_params, **latents})[0]
        lp_guide = log_density(guide, (images, CONFIG), kw, {**guide_params, **latents})[0]
        return lp_model, lp_guide

    a, b = densities(jnp.float32(1.0)), densities(jnp.float32(0.5))
    assert densities._cache_size() == 1
    assert all(np.isfinite(v) for v in a + b)
    assert a[0] != b[0] and a[1] != b[1]
    # the default is the config's temperature
    default = log_density(model, (images, CONFIG), {}, {**model_params, **latents})[0]
    np.testing.assert_allclose(default, a[0], rtol=1e-6)


# ----------------------------------------------------------------------------- prior, inference


def test_low_temperature_prior_counts_follow_the_discrete_prior():
    """Independent relaxed presences weighted by their running product: at a low temperature the
    hard counts follow the discrete model's truncated geometric prior."""
    config = AIRConfig(**TINY, presence_estimator="concrete")
    N = 20_000
    tr, _ = run(model, 7, None, config, batch_size=N, temperature=1e-3)
    _, counts = relaxed_counts(np.asarray(tr["z_pres"]["value"]).T)
    freq = np.bincount(np.asarray(counts), minlength=4) / N
    expected = count_distribution(make_prior(0.5))
    se = np.sqrt(expected * (1 - expected) / N)
    assert np.all(np.abs(freq - expected) <= 4 * se), (freq, expected)


def test_infer_and_sample_prior_with_concrete(guide_params, images):
    params = {**guide_params, **params_of(run(model, 0, images, CONFIG)[0])}
    for greedy in (False, True):
        res = inference.infer(params, images, jax.random.PRNGKey(0), CONFIG, greedy=greedy)
        hard, counts = hard_presence(res["pres_weight"])
        np.testing.assert_array_equal(res["z_pres"], hard)
        np.testing.assert_array_equal(res["counts"], counts)
        assert set(np.unique(res["z_pres"])) <= {0.0, 1.0} and res["reconstruction"].shape == (4, 20, 20)
    # temperature as an argument of the jitted infer: no recompilation
    size = inference.infer._cache_size()
    inference.infer(params, images, jax.random.PRNGKey(0), CONFIG, True, True, jnp.float32(0.3))
    inference.infer(params, images, jax.random.PRNGKey(0), CONFIG, True, True, jnp.float32(0.6))
    assert inference.infer._cache_size() == size + 1

    out = inference.sample_prior(params, jax.random.PRNGKey(1), CONFIG, 4, counts=jnp.array([0, 1, 2, 3]))
    np.testing.assert_array_equal(np.asarray(out["z_pres"]).sum(1), [0, 1, 2, 3])
    assert np.all(np.asarray(out["canvas"][0]) == 0.0) and np.abs(np.asarray(out["canvas"][3])).sum() > 0


def test_temperature_schedule_is_exponential_and_validated():
    """concrete_temperature(config, step): T0 at step 0, T_to after the anneal, geometric between
    (T0 (T_to / T0)^(step / N)), clamped after; a traced step (no recompilation)."""
    from numpyro_air.core.prior import concrete_temperature

    cfg = AIRConfig(
        presence_estimator="concrete", concrete_temperature=2.0, concrete_temperature_to=0.5, concrete_anneal_steps=100
    )
    for step, want in ((0, 2.0), (50, 2.0 * 0.25**0.5), (100, 0.5), (400, 0.5)):
        assert float(concrete_temperature(cfg, step)) == pytest.approx(want, rel=1e-5)
    f = jax.jit(lambda s: concrete_temperature(cfg, s))
    assert float(f(jnp.int32(25))) == pytest.approx(2.0 * 0.25**0.25, rel=1e-5) and f._cache_size() == 1
    f(jnp.int32(75))
    assert f._cache_size() == 1
    assert float(concrete_temperature(AIRConfig(presence_estimator="concrete", concrete_temperature=0.7), 10**6)) == (
        pytest.approx(0.7)
    )
    with pytest.raises(ValueError, match="set together"):
        AIRConfig(presence_estimator="concrete", concrete_temperature_to=0.5)
    with pytest.raises(ValueError, match="concrete_temperature_to"):
        AIRConfig(presence_estimator="concrete", concrete_temperature_to=-1.0, concrete_anneal_steps=10)


def test_training_step_uses_the_annealed_temperature_of_its_step():
    """The training step at step ``s`` (``make_update``, and the loop's ``make_step``) passes the
    annealed ``concrete_temperature(config, s)`` to model and guide, not the initial one. A probe
    model whose log joint is ``w * T`` (T: the guide's temperature as the AIR model reads it, via
    ``temperatures``) makes the step's loss ``-w T / B`` and its gradient ``-T``, computed here
    from the schedule's closed form ``T0 (T_to / T0)^(min(s, N) / N)``."""
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import SGD

    from numpyro_air.core.model import temperatures
    from numpyro_air.train.step import DeviceRows, make_step
    from numpyro_air.train.svi import make_update

    cfg = AIRConfig(
        **TINY, presence_estimator="concrete", concrete_temperature=2.0, concrete_temperature_to=0.25, concrete_anneal_steps=8
    )
    scheduled = lambda s: 2.0 * (0.25 / 2.0) ** (min(s, 8) / 8)  # noqa: E731
    w0, lr, B = 1.5, 0.1, 4

    def probe_model(images, config, temperature=None, **kwargs):
        w = numpyro.param("w", jnp.float32(w0))
        numpyro.factor("probe", w * temperatures(config, temperature)[0])

    def probe_guide(images, config, temperature=None, **kwargs):
        pass

    svi = SVI(probe_model, probe_guide, SGD(lr), Trace_ELBO(), config=cfg)
    x = jnp.zeros((B, cfg.image_size, cfg.image_size))
    state = jax.jit(svi.init)(jax.random.PRNGKey(0), x)
    update = jax.jit(make_update(svi, cfg))
    for s in (1, 4, 8, 20):
        new, info = update(state, x, jnp.asarray(s, jnp.int32))
        assert float(info.loss) == pytest.approx(-w0 * scheduled(s) / B, rel=1e-5), s
        assert float(svi.get_params(new)["w"]) == pytest.approx(w0 + lr * scheduled(s), rel=1e-5), s  # gradient -T
    assert update._cache_size() == 1
    assert abs(scheduled(4) - cfg.concrete_temperature) > 1.0  # the initial temperature would give another loss
    step = make_step(svi, cfg, 2)  # the loop's step: 2 seeds, uint8 data set and (K, B) indices
    states = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    data = jnp.zeros((6, cfg.image_size, cfg.image_size), jnp.uint8)
    _, info = step(states, DeviceRows(data, jnp.zeros((2, B), jnp.int32)), jnp.asarray(4, jnp.int32))
    np.testing.assert_allclose(info.loss, [-w0 * scheduled(4) / B] * 2, rtol=1e-5)
