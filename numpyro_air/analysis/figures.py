"""Figures (PNG) with matplotlib's object API (the global backend is never touched): inferred
boxes, reconstructions, prior samples, decoded windows, learning curves.

Scenes are (H, W) grayscale or (H, W, 3) colour (channels last, float in [0, 1] or uint8), on
any canvas: grayscale is drawn with the gray colormap, colour as RGB (clipped to [0, 1]); boxes
are in pixel coordinates (x0 horizontal, y0 vertical; :func:`numpyro_air.bounding_boxes`) and
each panel follows the canvas's aspect ratio (with the area of a square panel).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

STEP_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:cyan")


def _subplots(*args, figsize, **kw):
    """A ``matplotlib.figure.Figure`` and its axes, outside pyplot (safe in notebooks)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kw)


def _grid(n: int, ncols: int):
    ncols = max(1, min(ncols, n))
    return int(np.ceil(n / ncols)), ncols


def displayable(image: np.ndarray) -> np.ndarray:
    """``image`` (h, w), (h, w, 1) or (h, w, 3), float in [0, 1] or uint8, as float in [0, 1]:
    (h, w) for grayscale, (h, w, 3) for colour."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
        raise ValueError(f"an image to draw must be (H, W), (H, W, 1) or (H, W, 3), got shape {a.shape}")
    return np.clip(a, 0.0, 1.0)


def imshow(ax, image: np.ndarray, **kw):
    """Draw a grayscale image with the gray colormap on [0, 1], a colour one as RGB (no colormap)."""
    a = displayable(image)
    if a.ndim == 2:
        return ax.imshow(a, cmap="gray", vmin=0, vmax=1, **kw)
    return ax.imshow(a, **kw)


def panel_size(image_shape: Sequence[int], side: float) -> tuple:
    """(width, height) in inches of a panel for images of ``image_shape`` (H, W[, C]): the area
    of a ``side`` x ``side`` square with the canvas's aspect ratio W / H (square canvases keep
    ``side`` x ``side``)."""
    h, w = image_shape[:2]
    r = np.sqrt(w / h)
    return float(side * r), float(side / r)


def _title_room(image_shape: Sequence[int], title: str) -> float:
    """Inches added for a figure title over panels of a non-square canvas (square panels give
    the title room by shrinking a little, as they always have)."""
    h, w = image_shape[:2]
    return 0.3 if title and h != w else 0.0


def draw_boxes(ax, boxes: np.ndarray, z_pres: np.ndarray) -> None:
    from matplotlib.patches import Rectangle

    for t, (box, pres) in enumerate(zip(boxes, z_pres)):
        if pres > 0:
            x0, y0, w, h = box
            # pixel (x0, y0) is the box's outer corner; imshow centres pixel i at i
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, lw=1.5, ec=STEP_COLOURS[t % len(STEP_COLOURS)]))


def show_scene(ax, image: np.ndarray, boxes: np.ndarray, z_pres: np.ndarray) -> None:
    """An image (H, W) or (H, W, 3) without axes, pixel-aligned limits, with its inferred boxes
    (T, 4) = (x0, y0, width, height) in pixels of the H x W canvas, for ``z_pres`` (T,) > 0."""
    ax.axis("off")
    imshow(ax, image)
    H, W = np.shape(image)[:2]
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    draw_boxes(ax, boxes, z_pres)


def save_boxes_figure(
    path: str | os.PathLike,
    images: np.ndarray,
    boxes: np.ndarray,
    z_pres: np.ndarray,
    true_counts: Optional[np.ndarray] = None,
    ncols: int = 8,
    title: str = "",
) -> Path:
    """Images (N, H, W) or (N, H, W, 3) with inferred boxes (N, T, 4) coloured by step (red,
    green, blue, ...)."""
    n = len(images)
    rows, cols = _grid(n, ncols)
    pw, ph = panel_size(np.shape(images)[1:], 1.6)
    height = (ph + 0.1) * rows + _title_room(np.shape(images)[1:], title)
    fig, axes = _subplots(rows, cols, figsize=(pw * cols, height), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        show_scene(ax, images[i], boxes[i], z_pres[i])
        label = f"n={int(np.sum(z_pres[i]))}"
        if true_counts is not None:
            label += f" (true {int(true_counts[i])})"
        ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_reconstruction_figure(
    path: str | os.PathLike,
    images: np.ndarray,
    reconstructions: np.ndarray,
    boxes: np.ndarray,
    z_pres: np.ndarray,
    title: str = "",
) -> Path:
    """Two rows: data with boxes, and the model's reconstruction (canvas clipped to [0, 1]);
    images and reconstructions (N, H, W) or (N, H, W, 3)."""
    n = len(images)
    pw, ph = panel_size(np.shape(images)[1:], 1.5)
    height = 2 * ph + 0.2 + _title_room(np.shape(images)[1:], title)
    fig, axes = _subplots(2, n, figsize=(pw * n, height), squeeze=False)
    for i in range(n):
        for r, img in enumerate((images[i], reconstructions[i])):
            show_scene(axes[r, i], img, boxes[i], z_pres[i])
    axes[0, 0].set_title("data", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_prior_samples_figure(path: str | os.PathLike, canvases: np.ndarray, boxes: np.ndarray, z_pres: np.ndarray) -> Path:
    """Scenes sampled from the model's prior (canvas clipped to [0, 1] for display)."""
    return save_boxes_figure(
        path, canvases, boxes, z_pres, title="samples from the generative model (object count fixed per scene)"
    )


def read_jsonl(path: str | os.PathLike) -> list:
    """Records of a metrics log (one JSON object per line)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def save_curves(records: Iterable[dict], out_dir: str | os.PathLike, prefix: str = "") -> list:
    """ELBO per image and count accuracy against step and wall-clock time.

    ``records``: metrics-log entries; ``kind == "train"`` rows carry ``elbo``, ``kind == "eval"``
    rows carry ``test_accuracy`` / ``train_accuracy`` (and ``*_greedy``), or ``test_elbo`` for
    held-out images without counts. Each row may carry a ``seed``; one line per seed. A panel
    without any of its values is not drawn. Returns the written paths.
    """
    records = list(records)
    out_dir = Path(out_dir)
    paths = []
    seeds = sorted({r.get("seed", 0) for r in records})
    panels = [  # (file name, [(row kind, key), ...], y label)
        ("elbo", [("train", "elbo"), ("eval", "test_elbo")], "ELBO per image (nats)"),
        (
            "accuracy",
            [("eval", k) for k in ("test_accuracy", "test_accuracy_greedy", "train_accuracy", "train_accuracy_greedy")],
            "count accuracy",
        ),
    ]
    for name, series, ylabel in panels:
        if not any(r.get("kind") == kind and r.get(key) is not None for r in records for kind, key in series):
            continue
        fig, axes = _subplots(1, 2, figsize=(10, 3.6))
        for ax, xkey, xlabel in ((axes[0], "step", "step"), (axes[1], "wall_time", "wall-clock minutes")):
            for seed in seeds:
                for kind, key in series:
                    srows = [r for r in records if r.get("kind") == kind and r.get("seed", 0) == seed]
                    pts = [(r[xkey], r[key]) for r in srows if r.get(key) is not None]
                    if not pts:
                        continue
                    x, y = map(np.asarray, zip(*pts))
                    if xkey == "wall_time":
                        x = x / 60.0
                    label = key if len(seeds) == 1 else f"{key} (seed {seed})"
                    ax.plot(x, y, label=label, lw=1.2)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        if name == "accuracy":
            axes[0].set_ylim(0, 1.0)
            axes[1].set_ylim(0, 1.0)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, out_dir / f"{prefix}{name}.png"))
    return paths


def save_confusion_figure(path: str | os.PathLike, confusion: Sequence[Sequence[int]], title: str = "") -> Path:
    """Confusion matrix (true count x inferred count) with row-normalised shading and counts."""
    m = np.asarray(confusion)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = _subplots(figsize=(1 + 0.8 * m.shape[1], 1 + 0.7 * m.shape[0]))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8, color="black" if norm[i, j] < 0.6 else "white")
    ax.set_xlabel("inferred count")
    ax.set_ylabel("true count")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib ``Figure`` to ``path`` (its folder created), at ``dpi``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)  # Agg canvas attached by Figure itself; nothing global to close
    return path


def save_windows_figure(
    path: str | os.PathLike,
    images: np.ndarray,
    windows: np.ndarray,
    boxes: np.ndarray,
    z_pres: np.ndarray,
    title: str = "",
) -> Path:
    """One row per scene: the image (N, H, W[, 3]) with its inferred boxes, then each step's
    decoded window (N, T, w, w[, 3]) before placement (absent objects drawn faded and labelled
    "absent"). The scene's column is as wide as its aspect ratio W / H times a window's."""
    n, T = windows.shape[:2]
    H, W = np.shape(images)[1:3]
    ratio = W / H
    fig, axes = _subplots(
        n,
        T + 1,
        figsize=(1.4 * (T + ratio), 1.45 * n),
        squeeze=False,
        gridspec_kw={"width_ratios": [ratio] + [1] * T},
    )
    for i in range(n):
        show_scene(axes[i, 0], images[i], boxes[i], z_pres[i])
        for t in range(T):
            ax = axes[i, t + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            present = bool(z_pres[i, t])
            imshow(ax, windows[i, t], alpha=1.0 if present else 0.25)
            for side in ax.spines.values():
                side.set_color(STEP_COLOURS[t % len(STEP_COLOURS)] if present else "lightgray")
                side.set_linewidth(2 if present else 1)
            if not present:
                ax.set_title("absent", fontsize=6, color="gray")
            elif i == 0:
                ax.set_title(f"step {t + 1}", fontsize=7)
    axes[0, 0].set_title("scene", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
