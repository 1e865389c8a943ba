"""AIR inference network (guide) as a NumPyro function, with NVIL baseline networks.

Parameter sites (all registered *before* the scan; NumPyro cannot register params inside it):
``embed$params`` (optional), ``rnn$params``, ``predict$params``, ``encode$params``, ``h_init``,
``c_init``, ``z_where_init``, ``z_what_init``; with baseline networks
(:attr:`AIRConfig.uses_baseline_nets`) ``bl_embed$params`` (optional), ``bl_rnn$params``,
``bl_predict$params``, ``bl_h_init``, ``bl_c_init``; with ``guide_input="difference"`` (DAIR)
the model's ``decode$params`` (one set of decoder weights, shared with the model through the
site name). Every baseline parameter name starts with ``bl_`` (see :mod:`numpyro_air.core.sites`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.contrib.module import flax_module

from .config import AIRConfig
from .model import (
    CanvasState,
    add_object,
    batch_size_of,
    empty_canvas,
    presence_mask,
    prior_loc_scale,
    register_decoder,
    sample_presence,
    temperatures,
    validate_images,
)
from .nets import AIRLSTM, BaselinePredict, Predict, embed_module, encoder_module
from .sites import BASELINE_PREFIX, BASELINE_SITE
from .transform import image_to_window

State = Tuple[jnp.ndarray, jnp.ndarray]


class GuideCarry(NamedTuple):
    """State carried between the guide's steps (all (B, ...), B = batch).

    ``h``, ``c`` (B, rnn_hidden): LSTM state; ``z_where`` (B, 3), ``z_what`` (B, z): the previous
    step's samples; ``z_pres`` (B,): the previous step's effective presence, i.e. the running
    product of presences (1 before step 0); ``bl``: the baseline LSTM's (h, c), or None without
    baseline networks; ``canvas``: DAIR only (else None), the reconstruction of steps < t as the
    model's :data:`CanvasState` (canvas (B, *image_shape), transmittance or None).
    """

    h: jnp.ndarray
    c: jnp.ndarray
    z_where: jnp.ndarray
    z_what: jnp.ndarray
    z_pres: jnp.ndarray
    bl: Optional[State] = None
    canvas: Optional[CanvasState] = None


class RecurrentNet(NamedTuple):
    """Embed + LSTM: ``project`` (B, H*W*C) -> (B, 4 * rnn_hidden) is the image block of the LSTM's input
    weights (after the optional embed net); ``step(img_proj, latents (B, L), (h, c))`` -> (h, c)."""

    project: Callable[[jnp.ndarray], jnp.ndarray]
    step: Callable[[jnp.ndarray, jnp.ndarray, State], State]
    h0: jnp.ndarray  # (1, rnn_hidden)
    c0: jnp.ndarray  # (1, rnn_hidden)


class GuideNets(NamedTuple):
    rnn: RecurrentNet
    predict: Callable
    encode: Callable
    z_where0: jnp.ndarray  # (1, 3)
    z_what0: jnp.ndarray  # (1, z)
    bl_rnn: Optional[RecurrentNet]
    bl_predict: Optional[Callable]
    decode: Optional[Callable]  # DAIR only: the model's decoder, parameters detached


def _recurrent_net(prefix: str, config: AIRConfig, num_pixels: int) -> RecurrentNet:
    """Register embed + LSTM + initial state under ``prefix``."""
    H = config.rnn_hidden_size
    module, features = embed_module(config)
    embed = None if module is None else flax_module(prefix + "embed", module, jnp.zeros((1, num_pixels)))
    lat_size = 3 + config.z_what_size + 1
    zeros_h = jnp.zeros((1, H))
    rnn = flax_module(
        prefix + "rnn",
        AIRLSTM(H, config.init, config.compute_dtype),
        jnp.zeros((1, features)),
        jnp.zeros((1, lat_size)),
        (zeros_h, zeros_h),
    )
    h0 = numpyro.param(prefix + "h_init", jnp.zeros((1, H)))
    c0 = numpyro.param(prefix + "c_init", jnp.zeros((1, H)))

    def project(x_flat: jnp.ndarray) -> jnp.ndarray:
        return rnn(x_flat if embed is None else embed(x_flat), method="project_image")

    def step(img_proj: jnp.ndarray, lat: jnp.ndarray, state: State) -> State:
        return rnn(img_proj, lat, state, method="step")

    return RecurrentNet(project, step, h0, c0)


def _detached_decoder(config: AIRConfig) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The model's decoder (same param site ``decode$params``, so SVI keeps one copy) with its
    parameters behind ``stop_gradient``: z_what (B, z) -> (B, ``config.decoder_output_size``) (see
    ``model.split_decoded``).

    Gradient flow through DAIR's residual: the decoder is trained by the model's terms only
    (log p(x | z)), exactly as in AIR, while gradients w.r.t. the guide's own reparameterised
    z_what / z_where (and relaxed z_pres) still flow through the rendered canvas into later steps,
    so the guide's pathwise gradient stays exact. Letting the guide's terms reach the decoder would
    (1) feed NVIL's score-function surrogate log q(z_pres_t | residual_t) * (cost - baseline), a
    high-variance signal, into the decoder's weights, and (2) let the guide's objective pull the
    decoder towards reconstructions that make inference easy rather than the data likely; it also
    keeps the decoder's gradient identical between AIR and DAIR, so they differ only in the guide.
    """
    decode = register_decoder(config)
    if not (isinstance(decode, partial) and decode.args):  # flax_module returns partial(apply, params)
        raise RuntimeError("numpyro's flax_module no longer returns partial(apply_fn, params): update the guide")
    return partial(decode.func, jax.lax.stop_gradient(decode.args[0]), *decode.args[1:], **decode.keywords)


def _register_nets(config: AIRConfig) -> GuideNets:
    num_pixels = config.num_pixels
    rnn = _recurrent_net("", config, num_pixels)
    predict = flax_module(
        "predict",
        Predict(config.predict_net, config.non_linearity, config.init, config.compute_dtype),
        jnp.zeros((1, config.rnn_hidden_size)),
    )
    encode = flax_module(
        "encode",
        encoder_module(config),
        jnp.zeros((1, config.window_size**2 * config.glimpse_channels)),
    )
    z_where0 = numpyro.param("z_where_init", jnp.zeros((1, 3)))
    z_what0 = numpyro.param("z_what_init", jnp.zeros((1, config.z_what_size)))
    bl_rnn = bl_predict = None
    if config.uses_baseline_nets:
        bl_rnn = _recurrent_net(BASELINE_PREFIX, config, num_pixels)
        bl_predict = flax_module(
            BASELINE_PREFIX + "predict",
            BaselinePredict(config.bl_predict_net, config.non_linearity, config.init, config.compute_dtype),
            jnp.zeros((1, config.rnn_hidden_size)),
        )
    decode = _detached_decoder(config) if config.guide_input == "difference" else None
    return GuideNets(rnn, predict, encode, z_where0, z_what0, bl_rnn, bl_predict, decode)


def _baseline_value(config: AIRConfig, b: jnp.ndarray, z_pres_prev: jnp.ndarray) -> jnp.ndarray:
    """NVIL baseline (B,) from the baseline net's output, masked and scaled as Pyro."""
    if config.use_masking:
        b = b * z_pres_prev
    if config.baseline_scalar is not None:
        b = b * config.baseline_scalar
    return b


def _initial_carry(nets: GuideNets, config: AIRConfig, B: int) -> GuideCarry:
    bcast = lambda p: jnp.broadcast_to(p, (B, p.shape[-1]))  # noqa: E731
    return GuideCarry(
        bcast(nets.rnn.h0),
        bcast(nets.rnn.c0),
        bcast(nets.z_where0),
        bcast(nets.z_what0),
        jnp.ones((B,), jnp.float32),
        None if nets.bl_rnn is None else (bcast(nets.bl_rnn.h0), bcast(nets.bl_rnn.c0)),
        None if nets.decode is None else empty_canvas(config, B),
    )


def guide(
    images,
    config: Optional[AIRConfig] = None,
    *,
    z_pres_prior=None,
    temperature=None,
    batch_size: Optional[int] = None,
    greedy: bool = False,
):
    """AIR's guide: an LSTM that attends to one object per step.

    :param images: (B, H, W) or (B, H, W, C) (``config.image_shape``) float32 in [0, 1].
    :param config: :class:`AIRConfig`.
    :param z_pres_prior: unused (accepted so model and guide share SVI's arguments).
    :param temperature: relaxed presence only: the guide's temperature (scalar, may be traced;
        default ``config.concrete_temperature``). Ignored otherwise.
    :param batch_size: unused (must match images if given).
    :param greedy: instead of sampling, take z_pres = [p > 0.5] (relaxed: y = logit / temperature,
        the mode of logit(z_pres)) and the means of z_where and z_what (sites become observed);
        used for "most probable count" evaluation only.
    :return: dict with ``z_pres`` (B, T) (the effective presence: 0/1, or with relaxed presence the
        running product of relaxed presences in (0, 1)), ``z_where`` (B, T, 3), ``z_what`` (B, T, z),
        ``pres_prob`` (B, T) (= sigmoid(logit) * previous effective presence), ``z_where_loc``
        (B, T, 3), with baseline networks ``baseline`` (B, T), and with DAIR ``residual``
        (B, T, *image_shape), the image minus the reconstruction of steps < t that the recurrent net read,
        and ``glimpse`` (B, T, *window_shape), what the glimpse encoder read.

    ``guide_input="difference"`` (DAIR): at step t the recurrent and baseline networks read the
    residual x - canvas_t, the canvas of steps < t (w_s-weighted objects, w_s the effective
    presence, added or occluding as ``composition`` says), drawn with the model's decoder and
    ``window_to_image`` exactly as the model's canvas (see
    :func:`_detached_decoder` for the gradient flow). The glimpse encoder reads the image, or with
    ``glimpse_input="residual"`` the same residual (the DAIR paper's glimpse), or with "both" the
    image's and the residual's crops as channels (``glimpse`` then (B, T, w, w, 2C)).
    The image projection can no longer be computed once: the LSTM's image block is applied to the
    residual at every step.
    """
    del z_pres_prior
    config = AIRConfig() if config is None else config
    images = validate_images(images, config.image_shape)
    B = batch_size_of(images, batch_size)
    nets = _register_nets(config)
    temp = temperatures(config, temperature)[0]
    difference = nets.decode is not None
    x_flat = images.reshape(B, -1)
    # AIR: the image enters every step unchanged: project it once (the dominant FLOPs), not T times.
    img_proj = None if difference else nets.rnn.project(x_flat)
    bl_img_proj = None if difference or nets.bl_rnn is None else nets.bl_rnn.project(x_flat)
    where_loc, where_sd = prior_loc_scale(config)

    def step(carry: GuideCarry, _):
        extra = {}
        proj, bl_proj = img_proj, bl_img_proj
        if difference:
            extra["residual"], proj, bl_proj = _project_residual(nets, images, carry.canvas[0])
        lat = jnp.concatenate([carry.z_where, carry.z_what, carry.z_pres[:, None]], axis=-1)
        h, c = nets.rnn.step(proj, lat, (carry.h, carry.c))
        logit, loc_offset, scale_factor = nets.predict(h)
        loc, sd = loc_offset + where_loc, scale_factor * where_sd
        bl_state = None
        if nets.bl_rnn is not None:
            # NVIL baseline: same inputs as the guide *before* z_pres_t, detached from the guide.
            bl_state = nets.bl_rnn.step(bl_proj, jax.lax.stop_gradient(lat), carry.bl)
            extra["baseline"] = _baseline_value(config, nets.bl_predict(bl_state[0]), carry.z_pres)
        with numpyro.plate("data", B):
            z_pres = _sample_presence(config, logit, carry.z_pres, temp, greedy, extra.get("baseline"))
            source = _glimpse_source(config, images, extra.get("residual"))
            z_where, z_what, glimpse = _sample_where_what(config, nets.encode, source, loc, sd, z_pres, greedy)
        if difference:
            extra["glimpse"] = glimpse
        canvas = None
        if difference:
            canvas = add_object(carry.canvas, nets.decode, z_what, z_where, z_pres, config)
        new_carry = GuideCarry(h, c, z_where, z_what, z_pres, bl_state, canvas)
        out = dict(
            z_pres=z_pres,
            z_where=z_where,
            z_what=z_what,
            pres_prob=jax.nn.sigmoid(logit) * carry.z_pres,
            z_where_loc=loc,
            **extra,
        )
        return new_carry, out

    _, ys = scan(step, _initial_carry(nets, config, B), None, length=config.num_steps)
    return {k: jnp.swapaxes(v, 0, 1) for k, v in ys.items()}


def _glimpse_source(config: AIRConfig, images: jnp.ndarray, residual: Optional[jnp.ndarray]) -> jnp.ndarray:
    """What the glimpse encoder crops (``config.glimpse_input``): the images (B, H, W[, C]), DAIR's
    residual of the same shape, or both as channels (B, H, W, 2C): the image's C, then the residual's."""
    if config.glimpse_input == "image":
        return images
    if config.glimpse_input == "residual":
        return residual
    if config.channels == 1:
        return jnp.stack([images, residual], axis=-1)
    return jnp.concatenate([images, residual], axis=-1)


def _project_residual(nets: GuideNets, images: jnp.ndarray, canvas: jnp.ndarray):
    """DAIR: residual (B, *image_shape) = images - canvas and its LSTM image-block projections (B, 4H) for
    the guide and (detached input, None without baselines) for the baseline network."""
    residual = images - canvas
    flat = residual.reshape(residual.shape[0], -1)
    proj = nets.rnn.project(flat)
    bl_proj = None if nets.bl_rnn is None else nets.bl_rnn.project(jax.lax.stop_gradient(flat))
    return residual, proj, bl_proj


def _sample_where_what(
    config: AIRConfig,
    encode: Callable,
    images: jnp.ndarray,
    loc: jnp.ndarray,
    sd: jnp.ndarray,
    z_pres: jnp.ndarray,
    greedy: bool,
) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Sites z_where ~ N(loc, sd) (B, 3) and z_what (B, z) from the encoder's glimpse (B, w, w[, C])
    of ``images`` (the image or DAIR's residual) at z_where, masked by :func:`presence_mask` (inside
    the data plate); greedy: their means. Returns (z_where, z_what, glimpse)."""
    mask = presence_mask(config, z_pres)
    where_d = dist.Normal(loc, sd).to_event(1)
    z_where = numpyro.sample("z_where", where_d.mask(mask) if mask is not None else where_d, obs=loc if greedy else None)
    glimpse = image_to_window(z_where, images, config.window_size)  # (B, w, w[, C])
    what_loc, what_sd = encode(glimpse.reshape(glimpse.shape[0], -1))
    what_d = dist.Normal(what_loc, what_sd).to_event(1)
    z_what = numpyro.sample("z_what", what_d.mask(mask) if mask is not None else what_d, obs=what_loc if greedy else None)
    return z_where, z_what, glimpse


def _sample_presence(
    config: AIRConfig,
    logit: jnp.ndarray,
    z_pres_prev: jnp.ndarray,
    temp: jnp.ndarray,
    greedy: bool,
    baseline: Optional[jnp.ndarray],
) -> jnp.ndarray:
    """Step t's presence site (inside the data plate), with the NVIL baseline (B,) if given;
    returns the effective presence (B,)."""
    infer = {}
    if baseline is not None:
        numpyro.deterministic(BASELINE_SITE, baseline)
        infer = {"baseline": {"baseline_value": BASELINE_SITE}}
    obs = None
    if greedy and config.relaxed_presence:
        obs = logit / temp  # the mode (location) of logit(z_pres) ~ Logistic(logit / temp, 1 / temp)
    elif greedy:
        obs = jnp.where((jax.nn.sigmoid(logit) > 0.5) & (z_pres_prev > 0), 1.0, 0.0)
    return sample_presence(config, logit, z_pres_prev, temp, obs=obs, infer=infer)
