"""AIRConfig defaults/validation and the z_pres prior schedules (make_prior, raw, lin/exp annealing)."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_air import AIRConfig, z_pres_prior_probs
from numpyro_air.core.prior import count_distribution, count_log_probs, exp_decay, lin_decay, make_prior

# ----------------------------------------------------------------------------- reference (Pyro)


def pyro_make_prior(k):
    """Pyro examples/air/main.py ``make_prior`` (closed form for 3 steps)."""
    u = 1 / (1 + k + k**2 + k**3)
    p0 = 1 - u
    p1 = 1 - (k * u) / p0
    p2 = 1 - (k**2 * u) / (p0 * p1)
    return np.array([p0, p1, p2])


def pyro_lin_decay(initial, final, begin, duration, t):
    x = (final - initial) * (t - begin) / duration + initial
    return max(min(x, initial), final)


def pyro_exp_decay(initial, final, begin, duration, t):
    decay_rate = math.log(initial / final) / duration
    x = initial * math.exp(-decay_rate * (t - begin))
    return max(min(x, initial), final)


# ----------------------------------------------------------------------------- config


def test_defaults_are_pyros():
    c = AIRConfig()
    assert (c.num_steps, c.image_size, c.window_size, c.z_what_size, c.rnn_hidden_size) == (3, 50, 28, 50, 256)
    assert (c.encoder_net, c.decoder_net, c.predict_net, c.bl_predict_net) == ((200,), (200,), (), ())
    assert c.embed_net is None and c.non_linearity == "relu"
    assert c.decoder_output_bias is None and c.decoder_output_use_sigmoid is False
    assert (c.scale_prior_mean, c.scale_prior_sd, c.pos_prior_mean, c.pos_prior_sd) == (3.0, 0.1, 0.0, 1.0)
    assert c.likelihood_sd == 0.3
    assert c.z_pres_prior == 0.5 and c.z_pres_prior_raw is False
    assert (c.anneal_prior, c.anneal_prior_to, c.anneal_prior_begin, c.anneal_prior_duration) == (
        "none",
        1e-7,
        0,
        100_000,
    )
    assert c.use_masking is True and c.use_baselines is True
    # guide LSTM input: 2500 pixels + z_where 3 + z_what 50 + z_pres 1 (Pyro's LSTMCell(2554, 256))
    assert c.rnn_input_size == 2554


def test_tutorial_recipe():
    t = AIRConfig.tutorial()
    assert t.z_pres_prior == 0.01 and t.scale_prior_sd == 0.2
    assert t.predict_net == (200,) and t.bl_predict_net == (200,)
    assert t.decoder_output_use_sigmoid is True and t.decoder_output_bias == -2.0
    # everything else stays at Pyro's defaults
    d = AIRConfig()
    changed = {f.name for f in dataclasses.fields(AIRConfig) if getattr(t, f.name) != getattr(d, f.name)}
    assert changed == {
        "z_pres_prior",
        "scale_prior_sd",
        "predict_net",
        "bl_predict_net",
        "decoder_output_use_sigmoid",
        "decoder_output_bias",
    }
    # overrides win over the recipe
    assert AIRConfig.tutorial(z_pres_prior=0.2, image_size=30, window_size=10).z_pres_prior == 0.2


def test_frozen_and_roundtrip():
    c = AIRConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.num_steps = 4  # type: ignore[misc]
    assert AIRConfig.from_dict(c.to_dict()) == c
    assert AIRConfig(non_linearity="ReLU").non_linearity == "relu"  # torch class names accepted
    assert AIRConfig(encoder_net=[32, 16]).encoder_net == (32, 16)  # lists normalised to tuples
    with pytest.raises(ValueError, match="unknown AIRConfig fields"):
        AIRConfig.from_dict({"num_step": 3})


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_steps", 0),
        ("num_steps", 2.5),
        ("image_size", -1),
        ("window_size", 0),
        ("window_size", 51),  # larger than the 50-pixel image
        ("z_what_size", 0),
        ("rnn_hidden_size", -3),
        ("encoder_net", (200, 0)),
        ("decoder_net", (-1,)),
        ("predict_net", (0,)),
        ("bl_predict_net", (0,)),
        ("embed_net", ()),
        ("non_linearity", "swish"),
        ("scale_prior_sd", 0.0),
        ("pos_prior_sd", -1.0),
        ("likelihood_sd", 0.0),
        ("likelihood_sd", float("nan")),
        ("scale_prior_mean", -3.0),
        ("pos_prior_mean", float("inf")),
        ("z_pres_prior", -0.5),
        ("anneal_prior", "cosine"),
        ("anneal_prior_to", 0.0),
        ("anneal_prior_begin", -1),
        ("anneal_prior_duration", 0),
        ("baseline_scalar", 0.0),
        ("init", "xavier"),
        ("guide_input", "residual"),
        ("presence_estimator", "reinforce"),
        ("concrete_temperature", 0.0),
        ("concrete_temperature", float("nan")),
        ("concrete_prior_temperature", -1.0),
        ("concrete_prior_temperature", float("inf")),
    ],
)
def test_invalid_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError) as e:
        AIRConfig(**{field: value})
    # the message starts with the field's own name (\b: "anneal_prior" must not match "anneal_prior_to")
    assert re.match(rf"{field}\b", str(e.value)), str(e.value)


def test_variant_fields_defaults_and_roundtrip():
    c = AIRConfig()
    assert (c.guide_input, c.presence_estimator, c.concrete_temperature, c.concrete_prior_temperature) == (
        "image",
        "nvil",
        1.0,
        None,
    )
    assert not c.relaxed_presence and c.uses_baseline_nets and c.prior_temperature_ratio == 1.0
    v = AIRConfig(guide_input="difference", presence_estimator="concrete", concrete_temperature=2, concrete_prior_temperature=0.5)
    assert AIRConfig.from_dict(v.to_dict()) == v and v.to_dict()["guide_input"] == "difference"
    assert isinstance(v.concrete_temperature, float) and v.prior_temperature_ratio == 0.25
    assert v.relaxed_presence and not v.uses_baseline_nets
    assert not AIRConfig(presence_estimator="vimco").uses_baseline_nets
    old = {k: val for k, val in c.to_dict().items() if k not in ("guide_input", "presence_estimator")}
    assert AIRConfig.from_dict(old) == c  # dicts written before these fields existed still load


def test_invalid_raw_prior_and_replace_revalidates():
    with pytest.raises(ValueError, match=r"^z_pres_prior\b"):
        AIRConfig(z_pres_prior=1.5, z_pres_prior_raw=True)
    assert AIRConfig(z_pres_prior=1.5).z_pres_prior == 1.5  # a geometric k > 1 is fine
    with pytest.raises(ValueError, match=r"^window_size\b"):
        AIRConfig().replace(image_size=20)


# ----------------------------------------------------------------------------- make_prior


def test_make_prior_k05():
    p = make_prior(0.5)
    np.testing.assert_allclose(p, [7 / 15, 3 / 7, 1 / 3], rtol=1e-12)
    np.testing.assert_allclose(np.round(p, 4), [0.4667, 0.4286, 0.3333])
    np.testing.assert_allclose(count_distribution(p), [8 / 15, 4 / 15, 2 / 15, 1 / 15], rtol=1e-12)
    np.testing.assert_allclose(np.round(count_distribution(p), 3), [0.533, 0.267, 0.133, 0.067])


def test_count_log_probs_is_the_count_distribution_in_log_space():
    """log P(n) of the absorbing chain, traceable: the closed form of k = 0.5, and certain steps
    (p = 1, p = 0) giving -inf to the counts they rule out."""
    np.testing.assert_allclose(np.exp(count_log_probs(make_prior(0.5))), [8 / 15, 4 / 15, 2 / 15, 1 / 15], rtol=1e-6)
    for p in (make_prior(0.01, 4), np.array([0.9, 0.2]), np.array([0.3])):
        np.testing.assert_allclose(np.exp(count_log_probs(p)), count_distribution(p), rtol=1e-5)
    lp = np.asarray(jax.jit(count_log_probs)(jnp.array([1.0, 0.5, 0.0])))
    assert np.isneginf(lp[0]) and np.isneginf(lp[3])
    np.testing.assert_allclose(lp[1:3], np.log([0.5, 0.5]), rtol=1e-6)


def test_make_prior_k001_tutorial():
    p = make_prior(0.01)
    np.testing.assert_allclose(np.round(p, 4), [0.0100, 0.0100, 0.0099])
    np.testing.assert_allclose(count_distribution(p), [0.990, 0.0099, 9.9e-5, 9.9e-7], rtol=1e-2)


@pytest.mark.parametrize("k", [0.01, 0.3, 0.5, 1.0, 2.0])
def test_make_prior_matches_pyro_and_geometric(k):
    p = make_prior(k)
    np.testing.assert_allclose(p, pyro_make_prior(k), rtol=1e-9)  # Pyro's form cancels (1 - u)
    counts = count_distribution(p)
    geometric = np.array([k**n for n in range(4)])
    np.testing.assert_allclose(counts, geometric / geometric.sum(), rtol=1e-12)
    assert counts.sum() == pytest.approx(1.0, abs=1e-12)


def test_make_prior_other_num_steps():
    p = make_prior(0.5, num_steps=5)
    geometric = 0.5 ** np.arange(6)
    np.testing.assert_allclose(count_distribution(p), geometric / geometric.sum(), rtol=1e-12)
    with pytest.raises(ValueError):
        make_prior(-0.1)


def test_raw_prior():
    c = AIRConfig(z_pres_prior=0.3, z_pres_prior_raw=True)
    out = z_pres_prior_probs(c, 123)
    assert out.dtype == jnp.float32 and out.shape == (3,)
    np.testing.assert_allclose(out, [0.3, 0.3, 0.3], rtol=1e-7)
    np.testing.assert_allclose(z_pres_prior_probs(AIRConfig()), [7 / 15, 3 / 7, 1 / 3], rtol=1e-6)


# ----------------------------------------------------------------------------- annealing


def test_lin_annealing_hand_values():
    c = AIRConfig(anneal_prior="lin", anneal_prior_to=0.1, anneal_prior_begin=100, anneal_prior_duration=1000)
    p = np.array([7 / 15, 3 / 7, 1 / 3])
    np.testing.assert_allclose(z_pres_prior_probs(c, 50), p, rtol=1e-6)  # before begin: p
    np.testing.assert_allclose(z_pres_prior_probs(c, 100), p, rtol=1e-6)
    np.testing.assert_allclose(z_pres_prior_probs(c, 600), (p + 0.1) / 2, rtol=1e-6)  # half way
    np.testing.assert_allclose(z_pres_prior_probs(c, 850), p - 0.75 * (p - 0.1), rtol=1e-6)
    np.testing.assert_allclose(z_pres_prior_probs(c, 1100), [0.1] * 3, rtol=1e-6)  # end
    np.testing.assert_allclose(z_pres_prior_probs(c, 10**7), [0.1] * 3, rtol=1e-6)  # clamped
    raw = AIRConfig(z_pres_prior=0.8, z_pres_prior_raw=True, anneal_prior="lin", anneal_prior_to=0.2, anneal_prior_duration=100)
    np.testing.assert_allclose(z_pres_prior_probs(raw, 25), [0.65] * 3, rtol=1e-6)


def test_exp_annealing_kosiorek_setting():
    # main.py's comment: raw prior 1 - 1e-15, exp annealing to 1e-7, begin 1000, duration 1e6.
    c = AIRConfig(
        z_pres_prior=1 - 1e-15,
        z_pres_prior_raw=True,
        anneal_prior="exp",
        anneal_prior_to=1e-7,
        anneal_prior_begin=1000,
        anneal_prior_duration=1_000_000,
    )
    p = 1.0  # 1 - 1e-15 in float32
    r = math.log(p / 1e-7) / 1e6
    at = lambda i: float(z_pres_prior_probs(c, i)[0])  # noqa: E731
    assert at(200_000) == pytest.approx(p * math.exp(-r * 199_000), rel=1e-5)
    assert at(200_000) == pytest.approx(0.0405, abs=5e-4)  # "~0.040 at 200k"
    assert at(100_000) == pytest.approx(0.2028, abs=5e-4)
    assert at(500_000) == pytest.approx(3.2e-4, rel=2e-2)
    assert at(1_001_000) == pytest.approx(1e-7, rel=1e-4)
    assert at(500) == pytest.approx(p, rel=1e-7)  # before begin: clamped to p (not above)
    assert at(3_000_000) == pytest.approx(1e-7, rel=1e-6)  # after the end: clamped to the target


def test_exp_annealing_make_prior_hand_values():
    c = AIRConfig(anneal_prior="exp", anneal_prior_to=1e-7, anneal_prior_begin=1000, anneal_prior_duration=1_000_000)
    p = np.array([7 / 15, 3 / 7, 1 / 3])
    r = np.log(p / 1e-7) / 1e6
    np.testing.assert_allclose(z_pres_prior_probs(c, 200_000), p * np.exp(-r * 199_000), rtol=1e-5)
    np.testing.assert_allclose(z_pres_prior_probs(c, 0), p, rtol=1e-6)
    np.testing.assert_allclose(z_pres_prior_probs(c, 2_000_000), [1e-7] * 3, rtol=1e-5)


@pytest.mark.parametrize(
    "initial, final, begin, duration",
    [(0.4667, 1e-7, 0, 100_000), (0.9, 0.3, 50, 1000), (0.01, 0.1, 0, 1000), (0.5, 0.5, 10, 10)],
)
def test_decay_clamping_matches_pyro(initial, final, begin, duration):
    """Pyro clamps with max(min(x, initial), final): the target wins even if it exceeds initial."""
    steps = np.array([0, 1, begin, begin + duration // 3, begin + duration, 10 * (begin + duration)])
    lin = lin_decay(jnp.float32(initial), final, begin, duration, jnp.asarray(steps, jnp.float32))
    exp = exp_decay(jnp.float32(initial), final, begin, duration, jnp.asarray(steps, jnp.float32))
    # float32: lin's ``initial - (initial - final) * 1`` may miss ``final`` by ~eps32 * initial
    np.testing.assert_allclose(
        lin,
        [pyro_lin_decay(initial, final, begin, duration, t) for t in steps],
        rtol=1e-5,
        atol=2 * float(jnp.finfo(jnp.float32).eps) * initial,
    )
    np.testing.assert_allclose(exp, [pyro_exp_decay(initial, final, begin, duration, t) for t in steps], rtol=1e-5)


@pytest.mark.parametrize("mode", ["lin", "exp"])
def test_z_pres_prior_probs_jit_does_not_retrace(mode):
    c = AIRConfig(anneal_prior=mode, anneal_prior_to=1e-3, anneal_prior_begin=10, anneal_prior_duration=1000)
    n_traces = 0

    def probs(step):
        nonlocal n_traces
        n_traces += 1
        return z_pres_prior_probs(c, step)

    jitted = jax.jit(probs)
    outs = [jitted(jnp.asarray(s, jnp.int32)) for s in (1, 300, 700, 5000)]
    assert n_traces == 1
    for s, out in zip((1, 300, 700, 5000), outs):
        np.testing.assert_allclose(out, z_pres_prior_probs(c, s), rtol=1e-6)
    assert float(outs[0][0]) > float(outs[1][0]) > float(outs[2][0]) > float(outs[3][0]) == pytest.approx(1e-3)
