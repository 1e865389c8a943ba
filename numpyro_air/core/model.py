"""AIR generative model as a NumPyro function (scan over a fixed number of steps with masking)."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.contrib.module import flax_module

from .config import AIRConfig
from .distributions import PresenceBernoulli, probs_to_logits, relaxed_presence_logit
from .nets import decoder_module
from .prior import base_prior
from .transform import window_to_image


def validate_images(images, image_shape, name: str = "images") -> jnp.ndarray:
    """Check a batch (B, *image_shape) of floats in [0, 1]; returns it as float32.

    ``image_shape`` is one scene's shape, e.g. ``AIRConfig.image_shape`` ((H, W) or (H, W, C)),
    or an int n for (n, n). Shape and dtype are always checked; values (NaN/inf, range) only when
    concrete (not under jit).
    """
    shape = (image_shape, image_shape) if isinstance(image_shape, int) else tuple(image_shape)
    if not hasattr(images, "shape") or not hasattr(images, "dtype"):
        images = np.asarray(images)
    if images.ndim != 1 + len(shape) or tuple(images.shape[1:]) != shape:
        raise ValueError(f"{name} must have shape (B, {', '.join(map(str, shape))}), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(images.shape)})")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a float array with values in [0, 1], got dtype {images.dtype} "
            "(convert uint8 images with x.astype(np.float32) / 255)"
        )
    if not isinstance(images, jax.core.Tracer):
        arr = np.asarray(images)
        if not np.all(np.isfinite(arr)):
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(f"{name} contains NaN/inf, first at index {tuple(int(i) for i in bad)}")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name} values must lie in [0, 1], got min {lo:.6g}, max {hi:.6g}")
    return jnp.asarray(images, jnp.float32)


def prior_loc_scale(config: AIRConfig):
    """z_where prior loc and sd, each (3,), ordered (s, x, y)."""
    loc = jnp.array([config.scale_prior_mean, config.pos_prior_mean, config.pos_prior_mean], jnp.float32)
    sd = jnp.array([config.scale_prior_sd, config.pos_prior_sd, config.pos_prior_sd], jnp.float32)
    return loc, sd


def batch_size_of(images, batch_size: Optional[int]) -> int:
    if images is not None:
        if batch_size is not None and batch_size != images.shape[0]:
            raise ValueError(f"batch_size={batch_size} does not match images.shape[0]={images.shape[0]}")
        return int(images.shape[0])
    if batch_size is None or int(batch_size) <= 0:
        raise ValueError(f"without images, batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def prior_probs(config: AIRConfig, z_pres_prior) -> jnp.ndarray:
    """Per-step z_pres prior probabilities (num_steps,): given (possibly annealed, traced) or the
    config's un-annealed schedule."""
    if z_pres_prior is None:
        return jnp.asarray(base_prior(config), jnp.float32)
    p = jnp.asarray(z_pres_prior, jnp.float32)
    if p.shape != (config.num_steps,):
        raise ValueError(f"z_pres_prior must have shape ({config.num_steps},), got {p.shape}")
    return p


DECODER_NAME = "decode"  # param site "decode$params": the model's, shared with the DAIR guide


def presence_site(config: AIRConfig) -> str:
    """Name of the z_pres sample site: ``"z_pres"`` (values 0/1) or, with relaxed presence,
    ``"z_pres_logit"`` (logit-space values; the relaxed z_pres is the deterministic ``"z_pres"``)."""
    return "z_pres_logit" if config.relaxed_presence else "z_pres"


def latent_sites(config: AIRConfig) -> Tuple[str, str, str]:
    """The sample sites shared by model and guide, e.g. to substitute the guide's latents."""
    return (presence_site(config), "z_where", "z_what")


def temperatures(config: AIRConfig, temperature=None) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """(guide, prior) temperatures of the relaxed z_pres as float32 scalars.

    ``temperature`` (scalar, may be traced, e.g. annealed) is the guide's, default
    ``config.concrete_temperature``; the prior's is it times ``config.prior_temperature_ratio``.
    """
    t = jnp.asarray(config.concrete_temperature if temperature is None else temperature, jnp.float32)
    if t.shape != ():
        raise ValueError(f"temperature must be a scalar, got shape {t.shape}")
    return t, t * config.prior_temperature_ratio


def register_decoder(config: AIRConfig) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Register the decoder's parameters (site ``decode$params``) and return z_what (B, z) ->
    (B, ``config.decoder_output_size``): the window flattened from (w, w) or (w, w, C') (channels
    last), then the object's colour with ``object_colour="single"`` (see :func:`split_decoded`)."""
    module = decoder_module(config)
    return flax_module(DECODER_NAME, module, jnp.zeros((1, config.z_what_size)))


def split_decoded(flat: jnp.ndarray, config: AIRConfig) -> Tuple[jnp.ndarray, Optional[jnp.ndarray]]:
    """The decoder's output (..., ``decoder_output_size``) -> (window (..., w, w) or (..., w, w, C'),
    object colour (..., C) or None): None unless ``object_colour="single"``, where the window is
    the one-channel shape (..., w, w)."""
    w, D = config.window_size, config.decoder_channels
    lead = flat.shape[:-1]
    window = flat[..., : w * w * D].reshape(lead + ((w, w) if D == 1 else (w, w, D)))
    if config.object_colour != "single":
        return window, None
    return window, flat[..., w * w * D :]


CanvasState = Tuple[jnp.ndarray, Optional[jnp.ndarray]]
"""The canvas so far (B, *image_shape) and, with ``composition="over"``, the transmittance
(B, H, W) that objects drawn later (behind) still show through; None with "add"."""


def empty_canvas(config: AIRConfig, batch: int) -> CanvasState:
    """The state before any object: a black canvas, fully transmissive with "over"."""
    canvas = jnp.zeros((batch,) + config.image_shape, jnp.float32)
    trans = jnp.ones((batch, config.height, config.width), jnp.float32) if config.composition == "over" else None
    return canvas, trans


def render(decode: Callable, z_what: jnp.ndarray, z_where: jnp.ndarray, config: AIRConfig):
    """One object per image, unweighted: the decoder's window of z_what (B, z) placed at z_where
    (B, 3) by ``window_to_image``. Returns (colour, opacity (B, H, W) or None): the colour
    (B, *image_shape), or with ``object_colour="single"`` and "over" the object's colour
    (B, 1, 1[, C]), which broadcasts; the opacity is the decoder's extra channel (the shape with
    "single") with ``composition="over"``, None with "add"."""
    B, C, D = z_what.shape[0], config.channels, config.decoder_channels
    window, paint = split_decoded(decode(z_what), config)
    placed = window_to_image(z_where, window, (config.height, config.width) + (() if D == 1 else (D,)))
    if paint is not None:
        paint = paint.reshape((B, 1, 1) + ((C,) if C > 1 else ()))
        if config.composition == "add":
            return (placed if C == 1 else placed[..., None]) * paint, None
        return paint, placed
    if config.composition == "add":
        return placed, None
    colour = placed[..., 0] if C == 1 else placed[..., :C]
    return colour, placed[..., C]


def add_object(
    state: CanvasState, decode: Callable, z_what: jnp.ndarray, z_where: jnp.ndarray, w: jnp.ndarray, config: AIRConfig
) -> CanvasState:
    """Draw one object per scene, weighted by its effective presence w (B,), onto the canvas.

    "add": canvas + w * colour. "over" (front to back, earlier objects in front): with coverage
    k = w * opacity, canvas + T * k * colour and transmittance T * (1 - k).
    """
    canvas, trans = state
    colour, opacity = render(decode, z_what, z_where, config)
    if opacity is None:
        return canvas + colour * per_scene(w, config), None
    cover = opacity * w[:, None, None]
    seen = trans * cover
    canvas = canvas + colour * (seen if config.channels == 1 else seen[..., None])
    return canvas, trans * (1.0 - cover)


def per_scene(w: jnp.ndarray, config: AIRConfig) -> jnp.ndarray:
    """Weights w (B,) broadcast against images (B, *image_shape): (B, 1, 1) or (B, 1, 1, 1)."""
    return w[:, None, None] if config.channels == 1 else w[:, None, None, None]


def sample_presence(
    config: AIRConfig, logits: jnp.ndarray, z_pres_prev: jnp.ndarray, temperature, obs=None, infer=None
) -> jnp.ndarray:
    """Sample one step's presence (inside ``plate("data", B)``); returns the effective presence
    (B,) = z_pres * z_pres_prev, i.e. the running product of presences.

    Discrete: site ``z_pres`` ~ PresenceBernoulli(logits, z_pres_prev) (0 is absorbing; a
    substituted 1 after a 0 counts as 0). Relaxed: site ``z_pres_logit`` = logit(z_pres) with
    z_pres ~ RelaxedBernoulliLogits(temperature, logits) (not gated by z_pres_prev: the product
    does the gating), and the deterministic site ``z_pres`` (B,) in (0, 1).
    :param logits: (B,); :param z_pres_prev: (B,) previous effective presence (1 at step 0);
    :param obs: optional observed value of the sample site (logit space when relaxed).
    """
    if config.relaxed_presence:
        y = numpyro.sample("z_pres_logit", relaxed_presence_logit(logits, temperature), obs=obs, infer=infer)
        return numpyro.deterministic("z_pres", jax.nn.sigmoid(y)) * z_pres_prev
    z_pres = numpyro.sample("z_pres", PresenceBernoulli(logits, z_pres_prev), obs=obs, infer=infer)
    return z_pres * z_pres_prev


def presence_mask(config: AIRConfig, z_pres: jnp.ndarray) -> Optional[jnp.ndarray]:
    """Mask (B,) bool for the z_where/z_what log-densities (present objects only), or None:
    without masking, and always with relaxed presence (all latents continuous, never masked)."""
    return (z_pres > 0) if config.use_masking and not config.relaxed_presence else None


def model(
    images=None,
    config: Optional[AIRConfig] = None,
    *,
    z_pres_prior=None,
    temperature=None,
    batch_size: Optional[int] = None,
):
    """AIR's generative model.

    :param images: (B, H, W) or (B, H, W, C) (``config.image_shape``) float32 in [0, 1], or None
        to sample scenes from the prior.
    :param config: :class:`AIRConfig` (default: Pyro's defaults).
    :param z_pres_prior: per-step z_pres success probabilities (num_steps,), e.g. from
        :func:`numpyro_air.z_pres_prior_probs` (pass it as an array so annealing never retraces);
        default: the config's un-annealed prior.
    :param temperature: relaxed presence only: the guide's temperature (scalar, may be traced so
        annealing never recompiles; default ``config.concrete_temperature``); the prior's is it
        times ``config.prior_temperature_ratio``. Ignored otherwise.
    :param batch_size: number of scenes when ``images`` is None.
    :return: the canvas (B, *image_shape) (the placed objects, added or, with
        ``composition="over"``, occluding each other front to back; no clamp).

    Sites: ``z_pres`` (T, B), ``z_where`` (T, B, 3), ``z_what`` (T, B, z) from a scan over
    T = num_steps with ``plate("data", B)`` inside, ``canvas`` (deterministic) and ``obs``
    (B, H*W*C): every pixel and channel an independent Normal(canvas, likelihood_sd).

    Relaxed presence (``presence_estimator="concrete"``): step t draws y_t = logit(z_pres_t) at
    site ``z_pres_logit`` (T, B) with z_pres_t ~ RelaxedBernoulliLogits(prior temperature,
    logit(p_t)) independently of earlier steps, records z_pres_t in (0, 1) as the deterministic
    ``z_pres``, and weights object t in the canvas by the running product w_t = prod_{s<=t} z_pres_s.
    As the temperature goes to 0 the z_pres_t become Bernoulli(p_t) and the product the absorbing
    chain of the discrete model (same count prior): an object after a ~0 presence vanishes.
    z_where and z_what are never masked there: every step is drawn from its prior and contributes
    its log-density (a proper joint density of a model that weights objects only in rendering).
    """
    config = AIRConfig() if config is None else config
    if images is not None:
        images = validate_images(images, config.image_shape)
    B = batch_size_of(images, batch_size)
    T, D = config.num_steps, config.num_pixels
    decode = register_decoder(config)
    logits = probs_to_logits(prior_probs(config, z_pres_prior))
    prior_temp = temperatures(config, temperature)[1]
    where_loc, where_sd = prior_loc_scale(config)

    def step(carry, logit_t):
        state, z_pres_prev = carry
        with numpyro.plate("data", B):
            z_pres = sample_presence(config, jnp.broadcast_to(logit_t, (B,)), z_pres_prev, prior_temp)
            mask = presence_mask(config, z_pres)
            where_d = dist.Normal(where_loc, where_sd).expand((B, 3)).to_event(1)
            what_d = dist.Normal(0.0, 1.0).expand((B, config.z_what_size)).to_event(1)
            z_where = numpyro.sample("z_where", where_d.mask(mask) if mask is not None else where_d)
            z_what = numpyro.sample("z_what", what_d.mask(mask) if mask is not None else what_d)
        return (add_object(state, decode, z_what, z_where, z_pres, config), z_pres), None

    init = (empty_canvas(config, B), jnp.ones((B,), jnp.float32))
    ((canvas, _), _), _ = scan(step, init, logits, length=T)
    numpyro.deterministic("canvas", canvas)
    with numpyro.plate("data", B):
        numpyro.sample(
            "obs",
            dist.Normal(canvas.reshape(B, D), config.likelihood_sd).to_event(1),
            obs=None if images is None else images.reshape(B, D),
        )
    return canvas
