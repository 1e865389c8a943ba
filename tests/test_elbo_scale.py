"""NVIL_ELBO under ``numpyro.handlers.scale`` (what subsampling does to every site's log-prob).

With model and guide both scaled by c, the objective is c * ELBO, so the expected gradient must be
c times the exact (enumerated) unscaled gradient. The score-function term is
``log q_s * sg(cost_s - b_s)`` with ``cost_s`` already scaled by c: ``log q_s`` has to be the
*unscaled* log-prob, otherwise the score part of the gradient is scaled twice (c^2).

The toy chains, exact enumeration and Monte-Carlo helpers are those of tests/test_elbo.py
(float64, tolerance ``N_SE`` standard errors). Scaling changes weights, not samples, so with the
same keys every particle's loss and gradient are exactly c times the unscaled ones as well.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpyro import handlers
from test_elbo import (
    N_SE,
    THETA,
    THETA_B,
    YB,
    Y,
    _check_mc,
    _exact_loss_and_grad,
    _per_particle,
    guide_plate,
    guide_scan,
    model_plate,
    model_scan,
)

from numpyro_air.estimators.nvil import NVIL_ELBO

N = 100_000  # particles; the c^2 alternative is > 20 standard errors away for both c below
SCALES = [3.0, 0.25]


def scaled(fn, c):
    return handlers.scale(fn, scale=c)


@pytest.fixture(scope="module")
def exact():
    return _exact_loss_and_grad(THETA, Y)


@pytest.fixture(scope="module")
def unscaled():
    loss, grads = _per_particle(NVIL_ELBO(), model_scan, guide_scan, {"theta": THETA}, Y, n=N, seed=1)
    return loss, grads["theta"]


@pytest.mark.parametrize("c", SCALES)
def test_scaled_nvil_gradient_is_c_times_exact(c, exact, unscaled):
    exact_loss, exact_grad = exact
    loss, grads = _per_particle(NVIL_ELBO(), scaled(model_scan, c), scaled(guide_scan, c), {"theta": THETA}, Y, n=N, seed=1)
    g = grads["theta"]
    # E[gradient] = c * exact gradient, E[loss] = c * exact -ELBO (within N_SE standard errors)
    _check_mc(g, c * exact_grad, f"NVIL gradient under scale {c}")
    _check_mc(loss, c * exact_loss, f"NVIL -ELBO under scale {c}")
    # the check has the power to reject a doubly scaled score term (c^2 * exact gradient)
    se = g.std(0) / np.sqrt(N)
    assert np.all(np.abs(g.mean(0) - c**2 * exact_grad) > 4 * N_SE * se)
    # same keys: exactly c times the unscaled per-particle loss and gradient
    loss1, g1 = unscaled
    np.testing.assert_allclose(g, c * g1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(loss, c * loss1, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("c", SCALES)
def test_scaled_nvil_plate_gradient_is_c_times_exact(c):
    """plate("data", B) inside the scan (per-example costs and parameters), everything scaled by c."""
    n = N // 4
    loss, grads = _per_particle(NVIL_ELBO(), scaled(model_plate, c), scaled(guide_plate, c), {"theta": THETA_B}, YB, n=n, seed=2)
    g = grads["theta"]  # (n, T, B)
    exact_loss = 0.0
    for b in range(len(YB)):
        lb, gb = _exact_loss_and_grad(THETA_B[:, b], YB[b])
        exact_loss += lb
        _check_mc(g[:, :, b], c * gb, f"plate example {b} under scale {c}")
        se = g[:, :, b].std(0) / np.sqrt(n)
        # power (the plate's smallest components are tiny, so: on the example's largest ones)
        assert np.max(np.abs(g[:, :, b].mean(0) - c**2 * gb) / se) > 2 * N_SE, b
    _check_mc(loss, c * exact_loss, f"plate -ELBO under scale {c}")
    loss1, grads1 = _per_particle(NVIL_ELBO(), model_plate, guide_plate, {"theta": THETA_B}, YB, n=n, seed=2)
    np.testing.assert_allclose(g, c * grads1["theta"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(loss, c * loss1, rtol=1e-9, atol=1e-12)
