"""The absorbing presence distribution used for z_pres in model and guide."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax, random
from numpyro.distributions import constraints
from numpyro.distributions.distribution import Distribution
from numpyro.distributions.util import promote_shapes


def probs_to_logits(p: jnp.ndarray) -> jnp.ndarray:
    """logit(p) with p clamped to [tiny, 1 - eps] so p = 0 or 1 stay finite."""
    p = jnp.asarray(p, jnp.float32)
    p = jnp.clip(p, jnp.finfo(jnp.float32).tiny, 1.0 - jnp.finfo(jnp.float32).epsneg)
    return jnp.log(p) - jnp.log1p(-p)


class PresenceBernoulli(Distribution):
    """Bernoulli(sigmoid(logits)) gated by the previous presence ``prev`` in {0, 1}.

    Equivalent to Pyro AIR's ``Bernoulli(p * prev)``: where prev = 0 the sample is 0 with
    probability 1 (0 is absorbing) and ``log_prob(0) == 0`` exactly. Unlike ``Bernoulli(probs=p *
    prev)`` it is NaN-safe: the log-probability is computed from logits and the absorbed branch is
    selected with ``jnp.where``, so no 0 * inf reaches the gradient. Samples are float32 0./1.

    Absorbed steps carry no information: where prev = 0 the value is ignored (model and guide use
    the effective presence ``value * prev``), so ``log_prob`` is exactly 0 for either value there.
    """

    arg_constraints = {"logits": constraints.real, "prev": constraints.boolean}
    support = constraints.boolean
    is_discrete = True
    has_enumerate_support = False
    pytree_data_fields = ("logits", "prev")

    def __init__(self, logits, prev, *, validate_args=None):
        self.logits, self.prev = promote_shapes(jnp.asarray(logits), jnp.asarray(prev, jnp.float32))
        batch_shape = lax.broadcast_shapes(jnp.shape(self.logits), jnp.shape(self.prev))
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    @property
    def probs(self) -> jnp.ndarray:
        """Effective success probability sigmoid(logits) * prev."""
        return jax.nn.sigmoid(self.logits) * self.prev

    @property
    def mean(self) -> jnp.ndarray:
        return self.probs

    @property
    def variance(self) -> jnp.ndarray:
        p = self.probs
        return p * (1 - p)

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape
        u = random.uniform(key, shape)
        on = u < jax.nn.sigmoid(self.logits)
        return jnp.where(on & (self.prev > 0), 1.0, 0.0).astype(jnp.float32)

    def log_prob(self, value):
        value = jnp.asarray(value, jnp.float32)
        lp = value * jax.nn.log_sigmoid(self.logits) + (1.0 - value) * jax.nn.log_sigmoid(-self.logits)
        return jnp.where(self.prev > 0, lp, 0.0)


def relaxed_presence_logit(logits: jnp.ndarray, temperature) -> Distribution:
    """Distribution of y = logit(z) for z ~ ``RelaxedBernoulliLogits(temperature, logits)``.

    It is NumPyro's own ``RelaxedBernoulliLogits(temperature, logits).base_dist``, i.e.
    ``Logistic(logits / temperature, 1 / temperature)``: the binary Concrete of Maddison et al.
    (2017) in logit space, reparameterised, with z = sigmoid(y) in (0, 1). Sampling y rather than
    z keeps the density exact: a float32 z within 6e-8 of 1 (y > ~17, common at low temperature
    or for a confident guide) loses y, so log p(z) evaluated from z alone (the model's side, which
    never sees the guide's intermediates) would be wrong or clipped. The KL is invariant under
    this change of variables, so the ELBO is that of the relaxed Bernoulli z.

    :param logits: (B,) log-odds; :param temperature: positive scalar (may be traced).
    """
    import numpyro.distributions as dist

    return dist.RelaxedBernoulliLogits(temperature, logits).base_dist
