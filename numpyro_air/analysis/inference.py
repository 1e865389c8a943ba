"""Inference API: trained params + images -> counts, boxes, presence, z_what, reconstructions."""

from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from ..core.config import AIRConfig
from ..core.guide import guide
from ..core.model import latent_sites, model, presence_site, register_decoder, split_decoded, validate_images
from ..core.transform import bounding_boxes

# Relaxed presence: an object counts while the running product of presences is >= this.
COUNT_THRESHOLD = 0.5
# Relaxed presence, sample_prior with counts: logit(z_pres) that makes sigmoid exactly 1 / 0 in float32.
_HARD_LOGIT = 1e4


def hard_presence(weights: jnp.ndarray, threshold: float = COUNT_THRESHOLD) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Counting rule for relaxed presence, from running products of presences.

    :param weights: (..., T) running products w_t = prod_{s<=t} z_pres_s (non-increasing in t).
    :return: hard presence (..., T) float32 in {0, 1}, 1 for the steps before the running product
        first falls below ``threshold`` (0.5), and counts (...,) int32: the number of such steps.
    """
    hard = jnp.cumprod((weights >= threshold).astype(jnp.int32), axis=-1)
    return hard.astype(jnp.float32), jnp.sum(hard, axis=-1).astype(jnp.int32)


def relaxed_counts(z_pres: jnp.ndarray, threshold: float = COUNT_THRESHOLD) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """:func:`hard_presence` from the per-step relaxed presences z_pres (..., T) in [0, 1]: the
    count is the number of steps before prod_{s<=t} z_pres_s falls below ``threshold``."""
    return hard_presence(jnp.cumprod(z_pres, axis=-1), threshold)


@partial(jax.jit, static_argnames=("config", "greedy", "reconstruct"))
def infer(
    params: dict,
    images: jnp.ndarray,
    key: jax.Array,
    config: AIRConfig,
    greedy: bool = False,
    reconstruct: bool = True,
    temperature: Optional[jnp.ndarray] = None,
) -> Dict[str, jnp.ndarray]:
    """Run the guide (and the model on its latents) on a batch.

    :param params: constrained parameters (``svi.get_params(state)``).
    :param images: (B, *config.image_shape) float32 in [0, 1]: (B, H, W) or (B, H, W, C).
    :param key: PRNG key for the guide's samples.
    :param greedy: most probable path (z_pres = [p > 0.5], means of z_where/z_what) instead of a sample.
    :param reconstruct: also run the model on the inferred latents (skip it when only counting).
    :param temperature: relaxed presence only: the guide's temperature (default: the config's).
    :return: ``counts`` (B,) int32, ``z_pres`` (B, T) in {0, 1}, ``pres_prob`` (B, T), ``z_where``
        (B, T, 3), ``z_what`` (B, T, z), ``boxes`` (B, T, 4) pixel (x0, y0, w, h), ``reconstruction``
        (B, *image_shape). With relaxed presence also ``pres_weight`` (B, T): the soft running product of
        presences that weights each object in the reconstruction; ``z_pres`` and ``counts`` follow
        :func:`hard_presence` (an object counts while the running product is >= 0.5).
    """
    g = handlers.seed(handlers.substitute(guide, data=params), key)
    with handlers.trace() as guide_trace:
        out = g(images, config, greedy=greedy, temperature=temperature)
    result = {k: out[k] for k in ("z_pres", "pres_prob", "z_where", "z_what")}
    if config.relaxed_presence:
        result["pres_weight"] = out["z_pres"]
        result["z_pres"], result["counts"] = hard_presence(out["z_pres"])
    else:
        result["counts"] = jnp.sum(out["z_pres"], axis=1).astype(jnp.int32)
    result["boxes"] = bounding_boxes(out["z_where"], config.image_shape)
    if reconstruct:
        latents = {k: guide_trace[k]["value"] for k in latent_sites(config)}
        m = handlers.seed(handlers.substitute(model, data={**params, **latents}), jax.random.fold_in(key, 1))
        with handlers.trace() as model_trace:
            m(images, config, temperature=temperature)
        result["reconstruction"] = model_trace["canvas"]["value"]
    return result


@partial(jax.jit, static_argnames=("config",))
def decode_windows(params: dict, z_what: jnp.ndarray, config: AIRConfig) -> jnp.ndarray:
    """Each object's decoded window before placement: z_what (..., z) -> (..., w, w) grayscale or
    (..., w, w, C) colour, with the model's decoder (``params["decode$params"]``), e.g.
    ``infer(...)["z_what"]`` (B, T, z). With ``composition="over"``: the colour times the
    opacity (what the object shows where nothing covers it); with ``object_colour="single"``: the
    shape times the object's colour."""
    if z_what.shape[-1:] != (config.z_what_size,):
        raise ValueError(f"z_what must end in ({config.z_what_size},), got shape {z_what.shape}")
    flat = handlers.substitute(lambda: register_decoder(config)(z_what.reshape(-1, config.z_what_size)), data=params)()
    window, paint = split_decoded(flat.reshape(z_what.shape[:-1] + flat.shape[-1:]), config)
    if paint is not None:
        window = window[..., None] * paint[..., None, None, :]
    elif config.composition == "over":
        window = window[..., : config.channels] * window[..., config.channels :]
    return window.reshape(z_what.shape[:-1] + config.window_shape)


def _chunked(run, images: np.ndarray, batch_size: int) -> Dict[str, np.ndarray]:
    """``run(chunk, i)`` -> dict of (bs, ...) arrays over ``images`` in chunks of ``bs =
    min(batch_size, N)`` (the last one padded, so one compilation serves every chunk), joined."""
    n = images.shape[0]
    bs = min(batch_size, n)
    outs = []
    for i, start in enumerate(range(0, n, bs)):
        chunk = images[start : start + bs]
        pad = bs - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        outs.append({k: np.asarray(v)[: bs - pad] for k, v in run(jnp.asarray(chunk), i).items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def infer_batched(
    params,
    images,
    key,
    config: AIRConfig,
    greedy: bool = False,
    batch_size: int = 1000,
    reconstruct: bool = True,
    temperature=None,
) -> Dict[str, np.ndarray]:
    """:func:`infer` over a large array in fixed-size chunks (the last chunk is padded, so one
    compilation serves every chunk; chunk i uses ``fold_in(key, i)``). Returns numpy arrays."""
    images = np.asarray(validate_images(images, config.image_shape))
    run = lambda chunk, i: infer(params, chunk, jax.random.fold_in(key, i), config, greedy, reconstruct, temperature)  # noqa: E731
    return _chunked(run, images, batch_size)


@partial(jax.jit, static_argnames=("config",))
def _both_counts(params: dict, images: jnp.ndarray, keys: jnp.ndarray, config: AIRConfig) -> Dict[str, jnp.ndarray]:
    """The counts (B,) of one guide sample (``keys[0]``) and of the most probable path
    (``keys[1]``) in one program: one compilation, and the guide's image projection, which does
    not depend on the latents, computed once for both."""
    sample = infer(params, images, keys[0], config, False, False)["counts"]
    return {"sample": sample, "greedy": infer(params, images, keys[1], config, True, False)["counts"]}


def confusion_matrix(true_counts: np.ndarray, inferred: np.ndarray, num_steps: int, max_true: Optional[int] = None) -> np.ndarray:
    """(max_true + 1, num_steps + 1) int matrix: rows true count, columns inferred count."""
    true_counts = np.asarray(true_counts, np.int64)
    inferred = np.asarray(inferred, np.int64)
    max_true = int(true_counts.max()) if max_true is None else max_true
    m = np.zeros((max_true + 1, num_steps + 1), np.int64)
    np.add.at(m, (np.clip(true_counts, 0, max_true), np.clip(inferred, 0, num_steps)), 1)
    return m


def count_accuracy(params, images, true_counts, key, config: AIRConfig, greedy: bool = False, batch_size: int = 1000) -> dict:
    """Count accuracy, accuracy per true count and confusion matrix. ``greedy=False`` is Pyro's
    metric (one guide sample per image); ``greedy=True`` uses the guide's most probable path."""
    out = infer_batched(params, images, key, config, greedy, batch_size, reconstruct=False)
    return _count_summary(true_counts, out["counts"], config)


def count_accuracies(params, images, true_counts, key, config: AIRConfig, batch_size: int = 1000) -> Dict[str, dict]:
    """:func:`count_accuracy` of one guide sample and of the most probable path, as
    ``{"sample": ..., "greedy": ...}``, from one compiled program: the same counts as
    ``count_accuracy(..., fold_in(key, g), config, greedy=g)`` for g = False and True."""
    images = np.asarray(validate_images(images, config.image_shape))
    keys = lambda i: jnp.stack([jax.random.fold_in(jax.random.fold_in(key, g), i) for g in (0, 1)])  # noqa: E731
    out = _chunked(lambda chunk, i: _both_counts(params, chunk, keys(i), config), images, batch_size)
    return {mode: _count_summary(true_counts, out[mode], config) for mode in ("sample", "greedy")}


def _count_summary(true_counts, inferred: np.ndarray, config: AIRConfig) -> dict:
    from .metrics import accuracy_by_count

    conf = confusion_matrix(true_counts, inferred, config.num_steps)
    acc = float(np.mean(np.asarray(true_counts) == inferred))
    return {"accuracy": acc, "confusion": conf.tolist(), "accuracy_by_count": accuracy_by_count(true_counts, inferred)}


def forced_presence(config: AIRConfig, counts) -> Dict[str, jnp.ndarray]:
    """Substitution data that switches on the first ``counts`` (N,) steps of each scene and off the
    rest: the presence site's values (T, N), z_pres in {0, 1}, or with relaxed presence
    logit(z_pres) = +-1e4 (z_pres exactly 1 / 0 in float32), for ``handlers.substitute`` of the
    model or the guide."""
    on = jnp.arange(config.num_steps)[:, None] < jnp.asarray(counts)[None, :]  # (T, N)
    value = jnp.where(on, _HARD_LOGIT, -_HARD_LOGIT) if config.relaxed_presence else on.astype(jnp.float32)
    return {presence_site(config): value}


@partial(jax.jit, static_argnames=("config", "num_scenes"))
def sample_prior(params: dict, key: jax.Array, config: AIRConfig, num_scenes: int, counts=None) -> Dict[str, jnp.ndarray]:
    """Scenes from the generative model: ``canvas`` (N, *image_shape), ``z_pres`` (N, T),
    ``z_where`` (N, T, 3), ``boxes`` (N, T, 4), ``images`` (N, *image_shape) (canvas plus
    likelihood noise); image_shape is (H, W) or (H, W, C).

    ``counts`` (N,) int, optional: sample conditioned on each scene's number of objects (z_pres
    fixed to 1 for the first counts[n] steps). With the tutorial's prior (k = 0.01) 99% of
    unconditioned scenes are empty, so figures condition on counts. With relaxed presence
    ``z_pres`` is hard (:func:`relaxed_counts`) while the canvas uses the soft presences.
    """
    data = dict(params) if counts is None else {**params, **forced_presence(config, counts)}
    m = handlers.seed(handlers.substitute(model, data=data), key)
    with handlers.trace() as tr:
        m(None, config, batch_size=num_scenes)
    z_pres = jnp.swapaxes(tr["z_pres"]["value"], 0, 1)
    if config.relaxed_presence:
        z_pres = relaxed_counts(z_pres)[0]
    z_where = jnp.swapaxes(tr["z_where"]["value"], 0, 1)
    return {
        "canvas": tr["canvas"]["value"],
        "images": tr["obs"]["value"].reshape((num_scenes,) + config.image_shape),
        "z_pres": z_pres,
        "z_where": z_where,
        "boxes": bounding_boxes(z_where, config.image_shape),
    }
