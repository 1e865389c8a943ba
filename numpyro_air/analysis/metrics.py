"""Evaluation metrics: count accuracy per true count, and localisation against ground-truth boxes.

Box convention (shared by both box sources, so no conversion is applied)
    A box is ``(x0, y0, w, h)`` in pixels, x = column, y = row, read as the continuous rectangle
    ``[x0, x0 + w) x [y0, y0 + h)`` in *pixel-edge* coordinates, where pixel column j covers
    ``[j, j + 1)``. Its centre is ``(x0 + w / 2, y0 + h / 2)``.

    * Ground-truth boxes (:mod:`numpyro_air.data.multi_mnist`) are tight boxes of non-zero pixels
      covering columns ``x0 .. x0 + w - 1``: exactly the edge-coordinate rectangle
      ``[x0, x0 + w)``. (In pixel-*index* coordinates the centre would be ``x0 + (w - 1) / 2``;
      that differs by a constant 0.5 from the edge centre, so mixing the two would bias every
      error by 0.5 px per axis. We use edge coordinates for both sources.)
    * Inferred boxes from :func:`numpyro_air.core.transform.bounding_boxes` are the attention window's
      footprint with ``align_corners=False`` semantics: normalised -1 / +1 are the outer edges of
      the first / last pixel, i.e. edge coordinates 0 and ``image_size``. A window of side
      ``image_size / s`` centred on edge coordinate ``(1 - x / s) * image_size / 2`` covers the
      continuous rectangle ``[x0, x0 + w)`` returned by ``bounding_boxes``; pasting a ``w x w``
      window there lights up exactly pixel columns ``x0 .. x0 + w - 1`` when x0 and w are
      integers. So the two sources agree: a window that exactly covers a ground-truth box has
      centre error 0 and IoU 1.

IoU is that of the continuous axis-aligned rectangles; it is 0 when the union has zero area.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["accuracy_by_count", "box_centres", "box_iou", "localisation"]


# ----------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------


def _numeric(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must be a numeric (integer or float) array, got dtype {a.dtype}")
    return a


def _counts(name: str, a: Any, n: int | None = None) -> np.ndarray:
    """(N,) non-negative integer-valued array -> int64; ValueError naming ``name`` otherwise."""
    a = _numeric(name, a)
    if a.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries, expected {n}")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf")
        if np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold whole numbers, got non-integer values")
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must be >= 0, got negative count {a.min()}")
    return a.astype(np.int64)


def _boxes(name: str, a: Any, n: int | None = None) -> np.ndarray:
    """(N, K, 4) numeric array -> float64 (values not checked here)."""
    a = _numeric(name, a)
    if a.ndim != 3 or a.shape[-1] != 4 or (n is not None and a.shape[0] != n):
        want = "(N, K, 4)" if n is None else f"({n}, K, 4)"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    return a.astype(np.float64)


def _check_used_boxes(name: str, boxes: np.ndarray, used: np.ndarray) -> None:
    """NaN/inf and negative sizes are errors in the slots that are used (``used`` (N, K) bool)."""
    sel = boxes[used]  # (M, 4)
    if not np.all(np.isfinite(sel)):
        n = int(np.flatnonzero((~np.isfinite(boxes).all(-1) & used).any(-1))[0])
        raise ValueError(f"{name} contains NaN or inf in a used slot (first in image {n})")
    if sel.size and sel[:, 2:].min() < 0:
        n = int(np.flatnonzero(((boxes[..., 2:] < 0).any(-1) & used).any(-1))[0])
        raise ValueError(f"{name} has a negative width or height in a used slot (first in image {n})")


# ----------------------------------------------------------------------------------------------
# count accuracy
# ----------------------------------------------------------------------------------------------


def accuracy_by_count(true_counts: Any, inferred_counts: Any) -> dict[str, dict[str, float | int]]:
    """Count accuracy split by the true count.

    Args:
        true_counts: (N,) non-negative whole numbers, the true number of objects per image.
        inferred_counts: (N,) non-negative whole numbers, the inferred number per image.

    Returns:
        A JSON-friendly dict keyed by each true count present, as a decimal string, in
        increasing numeric order: ``{"0": {"accuracy": a0, "images": n0}, "1": {...}, ...}``,
        where ``images`` (int) is the number of images with that true count and ``accuracy``
        (float in [0, 1]) the fraction of them whose inferred count equals it. Counts that do
        not occur are absent; N = 0 gives ``{}``.

    Raises:
        ValueError: wrong shapes, mismatched lengths, non-numeric, NaN/inf, non-integer or
            negative values (the message names the argument).
    """
    t = _counts("true_counts", true_counts)
    p = _counts("inferred_counts", inferred_counts, t.shape[0])
    out: dict[str, dict[str, float | int]] = {}
    if t.size == 0:
        return out
    values, inverse, images = np.unique(t, return_inverse=True, return_counts=True)
    correct = np.bincount(inverse, weights=(t == p).astype(np.float64), minlength=len(values))
    for c, k, n in zip(values.tolist(), correct.tolist(), images.tolist()):
        out[str(c)] = {"accuracy": float(k / n), "images": int(n)}
    return out


# ----------------------------------------------------------------------------------------------
# localisation
# ----------------------------------------------------------------------------------------------


def box_centres(boxes: Any) -> np.ndarray:
    """Centres (..., 2) = ``(x0 + w / 2, y0 + h / 2)`` of boxes (..., 4) ``(x0, y0, w, h)``
    (pixel-edge convention, see the module docstring)."""
    b = np.asarray(boxes, dtype=np.float64)
    return b[..., :2] + b[..., 2:] / 2.0


def box_iou(a: Any, b: Any) -> np.ndarray:
    """IoU of axis-aligned boxes ``(x0, y0, w, h)``; a (..., 4) and b (..., 4) broadcast -> (...).

    Boxes are the continuous rectangles ``[x0, x0 + w) x [y0, y0 + h)``; the IoU is 0 where the
    union has zero area (e.g. two empty boxes).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    lo = np.maximum(a[..., :2], b[..., :2])
    hi = np.minimum(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    union = np.prod(a[..., 2:], axis=-1) + np.prod(b[..., 2:], axis=-1) - inter
    return np.divide(inter, union, out=np.zeros(np.broadcast(inter, union).shape), where=union > 0)


def localisation(
    true_boxes: Any,
    true_counts: Any,
    inferred_boxes: Any,
    inferred_present: Any,
    match_radius: float = 3.0,
) -> dict[str, float | int | None]:
    """Localisation of inferred objects against ground-truth boxes.

    Per image n, the true objects are slots ``j < true_counts[n]`` of ``true_boxes[n]`` and the
    inferred objects the slots t with ``inferred_present[n, t]`` (any positions, not necessarily a
    prefix). They are matched one-to-one with the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`) minimising the summed Euclidean distance
    between box centres, giving ``min(#true, #inferred)`` pairs. Boxes and centres follow the
    pixel-edge convention of the module docstring (ground truth from the data generator,
    inferred boxes from :func:`numpyro_air.core.transform.bounding_boxes`, both ``(x0, y0, w, h)``).

    Args:
        true_boxes: (N, K, 4) ground-truth ``(x0, y0, w, h)`` pixel boxes; slots j >= counts[n]
            are ignored (may hold anything).
        true_counts: (N,) whole numbers in 0..K.
        inferred_boxes: (N, T, 4) inferred ``(x0, y0, w, h)`` pixel boxes; slots that are not
            present are ignored.
        inferred_present: (N, T) bool, or numbers in {0, 1}.
        match_radius: pixels; a true object counts as found when its matched inferred object's
            centre lies within this distance (``<=``).

    Returns:
        JSON-friendly dict:

        * ``mean_centre_error``: mean centre distance (pixels) over matched pairs (None if none);
        * ``matched_within_radius``: fraction of TRUE objects matched to an inferred object whose
          centre is within ``match_radius``; unmatched true objects count as misses (None when
          there are no true objects);
        * ``mean_iou``: mean IoU over matched pairs (None if none);
        * ``true_objects``, ``inferred_objects``, ``matched_pairs`` (ints);
        * ``match_radius`` (float), echoed.

    Raises:
        ValueError: wrong shapes or dtypes, NaN/inf or negative sizes in used boxes, negative or
            non-integer counts, counts > K, presence values other than 0/1, or an invalid
            ``match_radius`` (the message names the problem).
    """
    tb = _boxes("true_boxes", true_boxes)
    n, k = tb.shape[:2]
    tc = _counts("true_counts", true_counts, n)
    if tc.size and tc.max() > k:
        raise ValueError(f"true_counts reach {tc.max()} but true_boxes has only K={k} slots")
    ib = _boxes("inferred_boxes", inferred_boxes, n)
    t_steps = ib.shape[1]
    pres = np.asarray(inferred_present)
    if pres.shape != (n, t_steps):
        raise ValueError(f"inferred_present must have shape ({n}, {t_steps}) like inferred_boxes, got {pres.shape}")
    if pres.dtype != np.bool_:
        pres = _numeric("inferred_present", pres)
        if not np.all((pres == 0) | (pres == 1)):
            raise ValueError("inferred_present must be bool or hold only 0 and 1 (NaN and other values are invalid)")
        pres = pres == 1
    if isinstance(match_radius, bool) or not isinstance(match_radius, (int, float, np.integer, np.floating)):
        raise ValueError(f"match_radius must be a real number, got {match_radius!r}")
    if not (math.isfinite(match_radius) and match_radius >= 0):
        raise ValueError(f"match_radius must be finite and >= 0, got {match_radius}")

    used_true = np.arange(k)[None, :] < tc[:, None]  # (N, K)
    _check_used_boxes("true_boxes", tb, used_true)
    _check_used_boxes("inferred_boxes", ib, pres)
    # Zero the unused slots so arbitrary padding (NaN, inf) never enters the arithmetic.
    tb = np.where(used_true[..., None], tb, 0.0)
    ib = np.where(pres[..., None], ib, 0.0)

    # All pairwise centre distances and IoUs at once: (N, K, T).
    dist = np.linalg.norm(box_centres(tb)[:, :, None, :] - box_centres(ib)[:, None, :, :], axis=-1)
    iou = box_iou(tb[:, :, None, :], ib[:, None, :, :])

    dists: list[np.ndarray] = []
    ious: list[np.ndarray] = []
    for i in range(n):
        c = int(tc[i])
        present = np.flatnonzero(pres[i])
        if c == 0 or present.size == 0:
            continue
        rows, cols = linear_sum_assignment(dist[i, :c][:, present])
        dists.append(dist[i, rows, present[cols]])
        ious.append(iou[i, rows, present[cols]])
    d = np.concatenate(dists) if dists else np.zeros(0)
    u = np.concatenate(ious) if ious else np.zeros(0)
    true_objects = int(tc.sum())
    return {
        "mean_centre_error": float(d.mean()) if d.size else None,
        "matched_within_radius": float(np.sum(d <= match_radius) / true_objects) if true_objects else None,
        "mean_iou": float(u.mean()) if u.size else None,
        "true_objects": true_objects,
        "inferred_objects": int(pres.sum()),
        "matched_pairs": int(d.size),
        "match_radius": float(match_radius),
    }
