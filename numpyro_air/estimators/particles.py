"""What the multi-particle estimators (:mod:`.vimco`, :mod:`.rws`) share: a NumPyro ``ELBO``
that draws its K particles at once, per datum of a plate, and computes everything in one
``components`` call, of which ``loss`` and ``loss_with_mutable_state`` are views."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
from numpyro.infer.elbo import ELBO

from .traces import DATA_PLATE


class ParticlesELBO(ELBO):
    """Base class: K particles per datum of ``plate``; a subclass defines :meth:`components`.

    :param int num_particles: K particles per datum (a subclass checks its own minimum).
    :param str plate: name of the data plate (per-datum weights).
    :param vectorize_particles: ``vmap`` (True), ``lax.map`` (False) or a callable over particles.
    """

    can_infer_discrete = True

    def __init__(self, num_particles: int, plate: str = DATA_PLATE, vectorize_particles: bool = True):
        super().__init__(num_particles=int(num_particles), vectorize_particles=vectorize_particles)
        self.plate = plate

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs):
        return self.components(rng_key, param_map, model, guide, *args, **kwargs)["loss"]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        out = self.components(rng_key, param_map, model, guide, *args, **kwargs)
        return {"loss": out["loss"], "mutable_state": out["mutable_state"]}

    def components(self, rng_key, param_map, model, guide, *args, **kwargs) -> Dict[str, Any]:
        """A dict with at least ``loss`` (the surrogate) and ``mutable_state`` (or None)."""
        raise NotImplementedError

    def all_particles(self, rng_key, param_map, model, guide, args: tuple, kwargs: dict):
        """The subclass's ``_particle`` (one draw's per-datum outputs) for each of the K particle
        keys ``random.split(rng_key, K)``, stacked on a leading (K,) axis by
        ``vectorize_particles_fn``."""
        keys = jax.random.split(rng_key, self.num_particles)
        return self.vectorize_particles_fn(lambda key: self._particle(key, param_map, model, guide, args, kwargs), keys)

    @staticmethod
    def bound(log_w: jnp.ndarray) -> jnp.ndarray:
        """The K-sample bound (IWAE) per datum: log-weights (K, B) -> (B,) logsumexp_k - log K."""
        return jax.nn.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])

    @staticmethod
    def particles_mean(mutable: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """The particles' mutable state (leaves (K, ...)) averaged over K, or None if there is none."""
        return jax.tree.map(lambda x: jnp.mean(x, 0), mutable) if mutable else None
