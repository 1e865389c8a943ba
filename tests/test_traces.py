"""The estimators' shared trace helpers (numpyro_air.estimators.traces), and NumPyro behaviour they rely on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan
from numpyro.primitives import mutable

from numpyro_air.estimators.traces import importance_traces, is_scan_site, mutable_values, per_datum_terms

X = jnp.array([0.5, -1.0, 2.0])


def model(x, with_global=True):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0)) if with_global else 0.0

    def step(carry, t):
        with numpyro.plate("data", x.shape[0]):
            b = numpyro.sample("b", dist.Bernoulli(0.3))
        return carry + b, None

    total, _ = scan(step, jnp.zeros(x.shape[0]), jnp.arange(2))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Normal(mu + total, 1.0), obs=x)


def guide(x, with_global=True):
    mutable("counter", jnp.array(7.0))
    if with_global:
        numpyro.sample("mu", dist.Normal(numpyro.param("loc", 0.2), 0.5))

    def step(carry, t):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("b", dist.Bernoulli(0.6))
        return carry, None

    scan(step, None, jnp.arange(2))


def _reference(guide_trace, with_global: bool):
    """Per datum (3,): log p(b) + log p(x) - log q(b) summed over steps, and log q(b); the global
    site's log p(mu) - log q(mu) as a scalar (0 without it)."""
    b = np.asarray(guide_trace["b"]["value"])
    mu = float(guide_trace["mu"]["value"]) if with_global else 0.0
    lp_b, lq_b = np.asarray(dist.Bernoulli(0.3).log_prob(b)).sum(0), np.asarray(dist.Bernoulli(0.6).log_prob(b)).sum(0)
    lp_x = np.asarray(dist.Normal(mu + b.sum(0), 1.0).log_prob(X))
    glob = float(dist.Normal(0.0, 1.0).log_prob(mu) - dist.Normal(0.2, 0.5).log_prob(mu)) if with_global else 0.0
    return lp_b + lp_x - lq_b, lq_b, glob


@pytest.fixture(scope="module")
def traces():
    return importance_traces(model, guide, {"loc": 0.2}, jax.random.PRNGKey(3), (X,), {})


def test_scan_sites_are_told_apart_from_top_level_sites(traces):
    """NumPyro marks sites recorded by contrib.control_flow.scan (a private key that
    ``is_scan_site`` isolates): if NumPyro changes that, NVIL's per-step costs would silently
    become whole-trace costs, so this must fail loudly."""
    model_trace, guide_trace = traces
    assert is_scan_site(guide_trace["b"]) and is_scan_site(model_trace["b"])
    assert not is_scan_site(guide_trace["mu"]) and not is_scan_site(model_trace["x"])
    assert guide_trace["b"]["value"].shape == (2, 3)  # leading time axis


def test_mutable_values_harvests_every_mutable_site(traces):
    assert {k: float(v) for k, v in mutable_values(*traces).items()} == {"counter": 7.0}


@pytest.mark.parametrize("with_global", [False, True])
def test_per_datum_terms_against_a_hand_computation(with_global):
    key = jax.random.PRNGKey(5)
    model_trace, guide_trace = importance_traces(model, guide, {"loc": 0.2}, key, (X, with_global), {})
    per_datum, log_q_b, glob = _reference(guide_trace, with_global)
    log_w, log_q_disc = per_datum_terms(model_trace, guide_trace)
    if with_global:  # a site outside the data plate: the whole trace is one datum
        assert log_w.shape == (1,) and log_q_disc.shape == (1,)
        np.testing.assert_allclose(log_w[0], per_datum.sum() + glob, rtol=1e-5)
        np.testing.assert_allclose(log_q_disc[0], log_q_b.sum(), rtol=1e-5)
    else:
        assert log_w.shape == (3,)
        np.testing.assert_allclose(log_w, per_datum, rtol=1e-5)
        np.testing.assert_allclose(log_q_disc, log_q_b, rtol=1e-5)
    assert np.any(np.asarray(guide_trace["b"]["value"]) != 0)  # the draw exercises the Bernoulli terms
