"""VIMCO (Mnih & Rezende, 2016): the K-sample importance-weighted bound with leave-one-out
learning signals for non-reparameterised latents; no learned baseline.

:class:`VIMCO_ELBO` is generic: any NumPyro model/guide pair, discrete sites at top level or
inside ``numpyro.contrib.control_flow.scan``, masks honoured. Per datum b (an index of the plate
named ``plate``, ``"data"`` by default) and particle k = 1..K (all latents drawn K times,
``vmap`` over particles)::

    log w_kb = log p(x_b, z_kb) - log q(z_kb | x_b)      summed over sites and scan steps
    L_b      = logsumexp_k(log w_kb) - log K              the K-sample bound (IWAE)
    L_b^-k   = L_b with log w_kb replaced by mean_{j != k} log w_jb   (geometric mean of the others)
    s_kb     = sg(L_b - L_b^-k)                           leave-one-out learning signal
    S        = sum_kb s_kb * log q_disc(z_kb)             log q_disc: sum over the particle's
                                                          non-reparameterised sites and steps
    loss     = -(sum_b L_b + S - sg(S))

so ``loss``'s value is minus the K-sample bound summed over the data, its gradient is pathwise
through L_b (continuous sites, and the explicit dependence of log q_disc on the parameters) plus
the score-function terms. L_b^-k does not depend on z_kb, so the estimator is unbiased for the
gradient of E[sum_b L_b].

If any site lies outside ``plate`` (a global latent) or there is no such plate, the whole trace is
one datum (B = 1): per-datum bounds are only valid when the data are conditionally independent.
Scaled sites (subsampling plates, ``handlers.scale``) are rejected: the weights need unscaled
log-densities. Keys: particle k uses ``random.split(rng_key, K)[k]``, split again into
(model key, guide key) as in :func:`numpyro_air.estimators.traces.importance_traces`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
from jax.lax import stop_gradient

from .particles import ParticlesELBO
from .traces import DATA_PLATE, importance_traces, mutable_values, per_datum_terms


def check_vimco_particles(num_particles: int) -> None:
    """VIMCO's leave-one-out signals need K >= 2 particles."""
    if int(num_particles) < 2:
        raise ValueError(f"VIMCO needs num_particles >= 2 (leave-one-out), got {num_particles!r}")


def leave_one_out_bounds(log_w: jnp.ndarray) -> jnp.ndarray:
    """For log-weights (K, B), the bounds (K, B) with particle k's log-weight replaced by the mean
    of the other K - 1 log-weights: logsumexp_j(log w') - log K."""
    K = log_w.shape[0]
    others = (jnp.sum(log_w, axis=0, keepdims=True) - log_w) / (K - 1)  # (K, B)
    eye = jnp.eye(K, dtype=bool)[:, :, None]
    replaced = jnp.where(eye, others[:, None, :], log_w[None, :, :])  # (K, K, B): row k, column k replaced
    return jax.nn.logsumexp(replaced, axis=1) - math.log(K)


class VIMCO_ELBO(ParticlesELBO):
    """Multi-sample (IWAE) objective with VIMCO's leave-one-out score-function gradients.

    :param int num_particles: K >= 2 particles per datum; the default is also that of
        ``OptimConfig(num_particles=None)`` and ``numpyro-air train --estimator vimco``.
    :param str plate: name of the data plate (per-datum bounds); see the module docstring.
    :param vectorize_particles: ``vmap`` (True), ``lax.map`` (False) or a callable over particles.
    """

    def __init__(self, num_particles: int = 4, plate: str = DATA_PLATE, vectorize_particles: bool = True):
        check_vimco_particles(num_particles)
        super().__init__(num_particles, plate, vectorize_particles)

    def components(self, rng_key, param_map, model, guide, *args, **kwargs) -> Dict[str, Any]:
        """All K particles at once. Returns ``loss`` (the surrogate; value -sum_b L_b),
        ``bound`` (B,) L_b, ``log_weights`` (K, B), ``signals`` (K, B) s_kb (stop-gradiented),
        ``log_q_discrete`` (K, B) (masked; zeros without non-reparameterised sites) and
        ``mutable_state`` (averaged over particles, or None)."""
        log_w, log_q_disc, mutable = self.all_particles(rng_key, param_map, model, guide, args, kwargs)
        bound = self.bound(log_w)  # (B,)
        signals = stop_gradient(bound[None, :] - leave_one_out_bounds(log_w))  # (K, B)
        score = jnp.sum(signals * log_q_disc)
        loss = -(jnp.sum(bound) + score - stop_gradient(score))
        mutable = self.particles_mean(mutable)
        return dict(
            loss=loss,
            bound=bound,
            log_weights=log_w,
            signals=signals,
            log_q_discrete=log_q_disc,
            mutable_state=mutable,
        )

    # ------------------------------------------------------------------ one particle
    def _particle(self, key, param_map, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        """(log w (B,), sum of non-reparameterised log q (B,), mutable state dict) of one draw."""
        model_trace, guide_trace = importance_traces(model, guide, param_map, key, args, kwargs)
        log_w, log_q_disc = per_datum_terms(model_trace, guide_trace, self.plate)
        return log_w, log_q_disc, mutable_values(model_trace, guide_trace)
