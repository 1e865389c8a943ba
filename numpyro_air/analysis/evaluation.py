"""Evaluation during and after training: count accuracy (one guide sample and the most probable
path) with confusion matrices, and the figures of one seed's parameters."""

from __future__ import annotations

from pathlib import Path
from typing import List

import jax
import jax.numpy as jnp
import numpy as np

from ..core.config import AIRConfig
from ..core.one_shot import one_shot_jit
from ..data.batches import to_float
from . import figures as viz
from .inference import count_accuracies, decode_windows, infer, sample_prior
from .likelihood import elbo_per_image

ACCURACY_THRESHOLDS = (0.90, 0.95, 0.98)


def evaluate(params, tcfg, air: AIRConfig, test_set, train_set, key) -> dict:
    """Count accuracy (one guide sample, Pyro's metric, and the guide's most probable path) with
    confusion matrices on the held-out test set (primary) and the training images.

    A set whose ``counts`` are None has no count accuracy: the test set then gets ``test_elbo``
    (+ELBO per image, one guide sample, the un-annealed prior; see :func:`heldout_elbo`) and the
    training images nothing (their ELBO is in the training rows). ``test_set`` may be None.
    """
    out = {}
    n_train = len(train_set.images) if tcfg.eval_train_images is None else min(tcfg.eval_train_images, len(train_set.images))
    for split, ds, n in (("test", test_set, None), ("train", train_set, n_train)):
        if ds is None:
            continue
        images = to_float(ds.images if n is None else ds.images[:n])
        if getattr(ds, "counts", None) is None:
            if split == "test":
                out["test_elbo"] = heldout_elbo(params, air, images, key, tcfg.eval_batch_size)
                out["test_images"] = int(len(images))
            continue
        counts = np.asarray(ds.counts if n is None else ds.counts[:n])
        both = count_accuracies(params, images, counts, key, air, tcfg.eval_batch_size)
        for mode, suffix in (("sample", ""), ("greedy", "_greedy")):
            res = both[mode]
            out[f"{split}_accuracy{suffix}"] = res["accuracy"]
            out[f"{split}_confusion{suffix}"] = res["confusion"]
            out[f"{split}_accuracy_by_count{suffix}"] = res["accuracy_by_count"]
        out[f"{split}_images"] = int(len(counts))
    return out


def heldout_elbo(params, air: AIRConfig, images: np.ndarray, key, batch_size: int) -> float:
    """Mean +ELBO per image (nats) of ``images`` (N, H, W) or (N, H, W, C) float32 in [0, 1]: one
    guide sample per image under the config's un-annealed prior (as ``evaluate --iwae``), in
    chunks of ``batch_size`` (the last one padded, so one compilation serves every chunk)."""
    n = len(images)
    bs = min(batch_size, n)
    total = 0.0
    for i, start in enumerate(range(0, n, bs)):
        chunk = images[start : start + bs]
        pad = bs - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        elbo = elbo_per_image(params, jnp.asarray(chunk), jax.random.fold_in(key, i), air)
        total += float(np.sum(np.asarray(elbo)[: bs - pad]))
    return total / n


def save_figures(params, air: AIRConfig, images: np.ndarray, true_counts, key, out_dir: Path, tag: str = "") -> list:
    """Boxes on data, reconstructions, prior samples and each object's decoded window for one
    seed's params: ``boxes{tag}.png``, ``reconstructions{tag}.png``, ``prior_samples{tag}.png``
    and ``windows{tag}.png`` in ``out_dir``. ``images`` (N, H, W) or (N, H, W, C) float in
    [0, 1] on the config's canvas; ``true_counts`` (N,) or None."""
    res, windows, prior = jax.device_get(_figure_arrays(params, jnp.asarray(images), key, air))
    return [
        viz.save_boxes_figure(
            out_dir / f"boxes{tag}.png",
            images,
            res["boxes"],
            res["z_pres"],
            true_counts,
            title="inferred boxes (step 1 red, 2 green, 3 blue)",
        ),
        viz.save_reconstruction_figure(
            out_dir / f"reconstructions{tag}.png", images[:10], res["reconstruction"][:10], res["boxes"][:10], res["z_pres"][:10]
        ),
        viz.save_prior_samples_figure(out_dir / f"prior_samples{tag}.png", prior["canvas"], prior["boxes"], prior["z_pres"]),
        viz.save_windows_figure(
            out_dir / f"windows{tag}.png",
            images[:6],
            windows,
            res["boxes"][:6],
            res["z_pres"][:6],
            title="each object's decoded window (one guide sample)",
        ),
    ]


def figure_arrays(params, images: jnp.ndarray, key, air: AIRConfig) -> tuple:
    """What :func:`save_figures` draws, as one program: ``infer`` of ``images`` (N, *image_shape)
    with reconstructions, the decoded windows (6, T, *window_shape) of the first 6 images'
    objects, and ``sample_prior`` of 16 scenes with 0, 1, ..., T, 0, ... objects."""
    res = infer(params, images, key, air)
    windows = decode_windows(params, res["z_what"][:6], air)
    counts = jnp.arange(16) % (air.num_steps + 1)
    return res, windows, sample_prior(params, jax.random.fold_in(key, 7), air, 16, counts)


# Figures are drawn once per run (or every viz_every steps): one program compiled for speed of
# compilation (on the CPU 1.2-1.5 s to compile and run instead of 2.5-2.8 s for the three programs it
# replaces, benchmarks/eval_programs.py).
_figure_arrays = one_shot_jit(figure_arrays, static_argnames=("air",))


def accuracy_summary(final_acc: List[float]) -> dict:
    """How many seeds reached each accuracy threshold."""
    return {f">={t:.0%}": int(sum(a >= t for a in final_acc)) for t in ACCURACY_THRESHOLDS} | {"num_seeds": len(final_acc)}
