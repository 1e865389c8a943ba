"""AIR inference network (guide) as a NumPyro function, with NVIL baseline networks.

Parameter sites (all registered *before* the scan; NumPyro cannot register params inside it):
``embed$params`` (optional), ``rnn$params``, ``predict$params``, ``encode$params``, ``h_init``,
``c_init``, ``z_where_init``, ``z_what_init`` and, with baselines, ``bl_embed$params``
(optional), ``bl_rnn$params``, ``bl_predict$params``, ``bl_h_init``, ``bl_c_init``. Every
baseline parameter name starts with ``bl_`` (see :func:`numpyro_air.is_baseline_param`).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.contrib.module import flax_module

from .config import AIRConfig
from .distributions import PresenceBernoulli
from .model import batch_size_of, prior_loc_scale, validate_images
from .nets import AIRLSTM, MLP, BaselinePredict, Encoder, Predict
from .transform import image_to_window

BASELINE_PREFIX = "bl_"
BASELINE_SITE = "z_pres_baseline"


def is_baseline_param(name: str) -> bool:
    """True for parameter sites that belong to the baseline networks (own learning rate)."""
    return name.startswith(BASELINE_PREFIX)


def _recurrent_net(prefix: str, config: AIRConfig, x_flat: jnp.ndarray):
    """Register embed + LSTM + initial state under ``prefix`` and return (step function, h0
    (1, H), c0 (1, H)); the step function closes over the image projection (B, 4H), computed once."""
    H = config.rnn_hidden_size
    if config.embed_net is not None:
        embed = flax_module(
            prefix + "embed",
            MLP(config.embed_net, config.non_linearity, output_nl=True, init_scheme=config.init),
            jnp.zeros((1, x_flat.shape[-1])),
        )
        x_emb = embed(x_flat)
    else:
        x_emb = x_flat
    lat_size = 3 + config.z_what_size + 1
    zeros_h = jnp.zeros((1, H))
    rnn = flax_module(
        prefix + "rnn",
        AIRLSTM(H, config.init),
        jnp.zeros((1, x_emb.shape[-1])),
        jnp.zeros((1, lat_size)),
        (zeros_h, zeros_h),
    )
    h0 = numpyro.param(prefix + "h_init", jnp.zeros((1, H)))
    c0 = numpyro.param(prefix + "c_init", jnp.zeros((1, H)))
    # The image enters every step unchanged: project it once (the dominant FLOPs), not T times.
    img_proj = rnn(x_emb, method="project_image")
    step = lambda lat, carry: rnn(img_proj, lat, carry, method="step")  # noqa: E731
    return step, h0, c0


def guide(
    images,
    config: Optional[AIRConfig] = None,
    *,
    z_pres_prior=None,
    batch_size: Optional[int] = None,
    greedy: bool = False,
):
    """AIR's guide: an LSTM that attends to one object per step.

    :param images: (B, H, H) float32 in [0, 1].
    :param config: :class:`AIRConfig`.
    :param z_pres_prior: unused (accepted so model and guide share SVI's arguments).
    :param batch_size: unused (must match images if given).
    :param greedy: instead of sampling, take z_pres = [p > 0.5] and the means of z_where and
        z_what (sites become observed); used for "most probable count" evaluation only.
    :return: dict with ``z_pres`` (B, T), ``z_where`` (B, T, 3), ``z_what`` (B, T, z),
        ``pres_prob`` (B, T) (= sigmoid(logit) * previous z_pres), ``z_where_loc`` (B, T, 3)
        and, with baselines, ``baseline`` (B, T).
    """
    del z_pres_prior
    config = AIRConfig() if config is None else config
    images = validate_images(images, config.image_size)
    B = batch_size_of(images, batch_size)
    T, w = config.num_steps, config.window_size
    x_flat = images.reshape(B, -1)

    rnn_step, h0, c0 = _recurrent_net("", config, x_flat)
    predict = flax_module(
        "predict",
        Predict(config.predict_net, config.non_linearity, config.init),
        jnp.zeros((1, config.rnn_hidden_size)),
    )
    encode = flax_module(
        "encode",
        Encoder(config.encoder_net, config.z_what_size, config.non_linearity, config.init),
        jnp.zeros((1, w * w)),
    )
    z_where0 = numpyro.param("z_where_init", jnp.zeros((1, 3)))
    z_what0 = numpyro.param("z_what_init", jnp.zeros((1, config.z_what_size)))
    if config.use_baselines:
        bl_step, bl_h0, bl_c0 = _recurrent_net(BASELINE_PREFIX, config, x_flat)
        bl_predict = flax_module(
            BASELINE_PREFIX + "predict",
            BaselinePredict(config.bl_predict_net, config.non_linearity, config.init),
            jnp.zeros((1, config.rnn_hidden_size)),
        )
    where_loc, where_sd = prior_loc_scale(config)
    pres_infer = {"baseline": {"baseline_value": BASELINE_SITE}} if config.use_baselines else {}

    def step(carry, _):
        h, c, z_where_prev, z_what_prev, z_pres_prev = carry[:5]
        lat = jnp.concatenate([z_where_prev, z_what_prev, z_pres_prev[:, None]], axis=-1)
        h, c = rnn_step(lat, (h, c))
        logit, loc_offset, scale_factor = predict(h)
        loc, sd = loc_offset + where_loc, scale_factor * where_sd
        extra = {}
        if config.use_baselines:
            # NVIL baseline: same inputs as the guide *before* z_pres_t, detached from the guide.
            bl_h, bl_c = bl_step(jax.lax.stop_gradient(lat), carry[5])
            b = bl_predict(bl_h)
            if config.use_masking:
                b = b * z_pres_prev
            if config.baseline_scalar is not None:
                b = b * config.baseline_scalar
            extra["baseline"] = b
        with numpyro.plate("data", B):
            if config.use_baselines:
                numpyro.deterministic(BASELINE_SITE, extra["baseline"])
            pres_d = PresenceBernoulli(logit, z_pres_prev)
            pres_obs = jnp.where((jax.nn.sigmoid(logit) > 0.5) & (z_pres_prev > 0), 1.0, 0.0) if greedy else None
            z_pres = numpyro.sample("z_pres", pres_d, obs=pres_obs, infer=pres_infer)
            z_pres = z_pres * z_pres_prev  # absorbing: a (substituted) 1 after a 0 counts as 0
            mask = (z_pres > 0) if config.use_masking else None
            where_d = dist.Normal(loc, sd).to_event(1)
            z_where = numpyro.sample(
                "z_where", where_d.mask(mask) if mask is not None else where_d, obs=loc if greedy else None
            )
            x_att = image_to_window(z_where, images, w).reshape(B, w * w)
            what_loc, what_sd = encode(x_att)
            what_d = dist.Normal(what_loc, what_sd).to_event(1)
            z_what = numpyro.sample(
                "z_what", what_d.mask(mask) if mask is not None else what_d, obs=what_loc if greedy else None
            )
        new_carry = (h, c, z_where, z_what, z_pres)
        if config.use_baselines:
            new_carry = new_carry + ((bl_h, bl_c),)
        out = dict(
            z_pres=z_pres,
            z_where=z_where,
            z_what=z_what,
            pres_prob=jax.nn.sigmoid(logit) * z_pres_prev,
            z_where_loc=loc,
            **extra,
        )
        return new_carry, out

    bcast = lambda p: jnp.broadcast_to(p, (B, p.shape[-1]))  # noqa: E731
    init = (bcast(h0), bcast(c0), bcast(z_where0), bcast(z_what0), jnp.ones((B,), jnp.float32))
    if config.use_baselines:
        init = init + ((bcast(bl_h0), bcast(bl_c0)),)
    _, ys = scan(step, init, None, length=T)
    return {k: jnp.swapaxes(v, 0, 1) for k, v in ys.items()}
