"""Build ``docs/tutorial.ipynb``: the tutorial's cells, executed here, saved with their outputs.

    python docs/build_tutorial.py            # full sizes (a few minutes on a 2-core CPU)

The cells are the ``CELLS`` list below (markdown and code). Each code cell runs in one namespace;
its printed text and every matplotlib figure it leaves open are stored as the cell's outputs
(PNG). ``NUMPYRO_AIR_TUTORIAL_STEPS`` (default 1500) and ``NUMPYRO_AIR_TUTORIAL_SCALE`` (default
1.0) shorten the training cells and shrink the evaluation sets; ``tests/test_tutorial.py`` runs
every code cell of the saved notebook with small values. Needs no Jupyter: the notebook file is
written in nbformat 4 JSON directly.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "tutorial.ipynb"

CELLS = [
    (
        "markdown",
        """# Attend, Infer, Repeat with numpyro-air

AIR (Eslami et al., NeurIPS 2016) explains an image as a variable number of objects. At each
step a recurrent guide decides whether one more object is present (`z_pres`, absorbing at 0),
where its window is (`z_where = (s, x, y)`) and what is inside (`z_what`); a decoder draws the
window and a spatial transformer places it on the canvas. Nobody tells the model how many
objects there are: a trained model counts and locates them on its own.

This notebook walks through the package on multi-MNIST: the data, the generative model, the
guide and its attention window, the estimators, a short training run, inference with the shipped
pretrained weights, several seeds with `vmap`, and your own images.""",
    ),
    (
        "code",
        """import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import numpyro_air as air
from numpyro_air.analysis.figures import show_scene
from numpyro_air.data import to_float

STEPS = int(os.environ.get("NUMPYRO_AIR_TUTORIAL_STEPS", 1500))  # training steps of the short run
SCALE = float(os.environ.get("NUMPYRO_AIR_TUTORIAL_SCALE", 1.0))  # fraction of the evaluation sets
print(jax.devices(), "steps:", STEPS)""",
    ),
    (
        "markdown",
        """## Multi-MNIST

Pyro's recipe: 50x50 canvases with 0-2 MNIST digits, each scaled and placed at random. The
package builds it offline from an embedded copy of MNIST and caches it; the held-out split is
made of MNIST *test* digits.""",
    ),
    (
        "code",
        """train, test = air.load_multi_mnist(progress=False)
print(train.images.shape, train.images.dtype, "counts:", np.bincount(train.counts))
fig, axes = plt.subplots(1, 8, figsize=(12, 1.9))
for ax, image, count in zip(axes, train.images[:8], train.counts[:8]):
    ax.imshow(image, cmap="gray"); ax.set_title(f"{count} digits", fontsize=9); ax.axis("off")""",
    ),
    (
        "markdown",
        """## The generative model

For t = 1..T (T = 3): `z_pres_t ~ Bernoulli(p_t) * z_pres_{t-1}` (once absent, every later
object is absent), `z_where_t ~ Normal` (scale s, position x, y), `z_what_t ~ Normal(0, I)`
(50 numbers); the decoder turns `z_what_t` into a 28x28 window, the spatial transformer places it
at `z_where_t`, and the image is `Normal(sum of the placed windows, 0.3)`. Scenes drawn from the
prior of the pretrained model, one row per number of objects:""",
    ),
    (
        "code",
        """from numpyro_air.analysis.inference import sample_prior

config, params = air.pretrained()

counts = jnp.arange(8) % (config.num_steps + 1)
prior = sample_prior(params, jax.random.PRNGKey(0), config, 8, counts)
fig, axes = plt.subplots(1, 8, figsize=(12, 1.9))
for ax, canvas, boxes, z_pres in zip(axes, prior["canvas"], prior["boxes"], prior["z_pres"]):
    show_scene(ax, np.clip(np.asarray(canvas), 0, 1), np.asarray(boxes), np.asarray(z_pres))""",
    ),
    (
        "markdown",
        """## The guide and the spatial transformer

The guide is an LSTM that reads the image (and its own previous latents) and proposes the next
object. `image_to_window` is the transformer the guide uses to look at a proposed window: it
samples a `window_size` x `window_size` crop at `z_where`; `window_to_image` is its inverse, which
the model uses to draw. Here the guide's first window on a held-out scene, cut out and put back:""",
    ),
    (
        "code",
        """scenes = air.heldout_scenes(max(int(1000 * SCALE), 32))
images = jnp.asarray(to_float(scenes.images))
out = air.infer(params, images[:8], jax.random.PRNGKey(1), config, greedy=True)
z_where = out["z_where"][:, 0]  # the first object's (s, x, y) in each scene
windows = air.image_to_window(z_where, images[:8], config.window_size)
placed = air.window_to_image(z_where, windows, config.image_size)
fig, axes = plt.subplots(3, 8, figsize=(12, 5))
for i in range(8):
    show_scene(axes[0, i], np.asarray(images[i]), np.asarray(out["boxes"][i, :1]), np.asarray(out["z_pres"][i, :1]))
    axes[1, i].imshow(np.asarray(windows[i]), cmap="gray"); axes[1, i].axis("off")
    axes[2, i].imshow(np.asarray(placed[i]), cmap="gray"); axes[2, i].axis("off")
axes[0, 0].set_title("scene, first window", fontsize=9, loc="left")
axes[1, 0].set_title("the window (28x28)", fontsize=9, loc="left")
axes[2, 0].set_title("put back", fontsize=9, loc="left")""",
    ),
    (
        "markdown",
        """## Discrete presence: NVIL or a Concrete relaxation

`z_where` and `z_what` are reparameterised, but `z_pres` is a coin flip, so its gradient needs
either a score-function estimator or a relaxation. Pyro's example uses NVIL: the score function
with learned baselines that predict each step's reward-to-go (`--preset tutorial`). The package
also has VIMCO (several samples, leave-one-out baselines) and a Concrete relaxation (a soft
`z_pres` in (0, 1), temperature 1, everything differentiable; `--preset concrete` and `--preset
fast`). The relaxation learned to count in every seed tried, and faster, so the run below uses
`fast`.""",
    ),
    (
        "code",
        """recipe = air.PRESETS["fast"]
svi = air.make_svi(recipe)
step = jax.jit(air.make_update(svi, recipe.air))
batch = lambda i: jnp.asarray(to_float(train.images[(np.arange(64) + 64 * i) % len(train.images)]))
state = svi.init(jax.random.PRNGKey(0), batch(0))
held = jnp.asarray(to_float(test.images[: max(int(2000 * SCALE), 64)]))
held_counts = test.counts[: held.shape[0]]
log, every = {"step": [], "elbo": [], "eval": [], "accuracy": []}, max(STEPS // 6, 1)
for i in range(STEPS):
    state, info = step(state, batch(i), jnp.asarray(i + 1))
    log["step"].append(i + 1); log["elbo"].append(-float(info.loss))
    if (i + 1) % every == 0 or i + 1 == STEPS:
        counted = air.infer(svi.get_params(state), held, jax.random.PRNGKey(2), recipe.air, greedy=True, reconstruct=False)
        log["eval"].append(i + 1); log["accuracy"].append(float(np.mean(np.asarray(counted["counts"]) == held_counts)))
print(f"held-out count accuracy after {STEPS} steps: {log['accuracy'][-1]:.3f}")
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3))
a.plot(log["step"], log["elbo"], lw=0.5); a.set_xlabel("step"); a.set_ylabel("ELBO per image")
b.plot(log["eval"], log["accuracy"], marker="o"); b.set_xlabel("step"); b.set_ylabel("held-out count accuracy")
b.set_ylim(0, 1)""",
    ),
    (
        "markdown",
        """## Inference with the pretrained weights

The package ships the weights of a `--preset fast` run (20,000 steps). The guide's most probable
path counts the held-out scenes; boxes, reconstructions and each object's decoded window:""",
    ),
    (
        "code",
        """res = air.infer(params, images, jax.random.PRNGKey(3), config, greedy=True)
accuracy = np.mean(np.asarray(res["counts"]) == scenes.counts)
print(f"count accuracy on {len(scenes.counts)} held-out scenes: {accuracy:.3f}")
decoded = air.decode_windows(params, res["z_what"][:6], config)  # (6, T, 28, 28)
fig, axes = plt.subplots(2 + config.num_steps, 6, figsize=(10, 8.5))
for i in range(6):
    boxes, z_pres = np.asarray(res["boxes"][i]), np.asarray(res["z_pres"][i])
    show_scene(axes[0, i], np.asarray(images[i]), boxes, z_pres)
    show_scene(axes[1, i], np.clip(np.asarray(res["reconstruction"][i]), 0, 1), boxes, z_pres)
    for t in range(config.num_steps):
        window = np.asarray(decoded[i, t])
        axes[2 + t, i].imshow(window * float(res["z_pres"][i, t]), cmap="gray", vmin=0, vmax=1); axes[2 + t, i].axis("off")
axes[0, 0].set_title("boxes", fontsize=9, loc="left"); axes[1, 0].set_title("reconstruction", fontsize=9, loc="left")
axes[2, 0].set_title("decoded windows, steps 1-3", fontsize=9, loc="left")""",
    ),
    (
        "markdown",
        """## Several seeds in one program

`make_update` is a pure function of `(state, images, step)`, so `jax.vmap` trains K seeds at
once: stack K initial states, give each seed its own batch, and vmap the update (the CLI does the
same with `--num-seeds K`).""",
    ),
    (
        "code",
        """K = 3
states = jax.vmap(svi.init, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(10), K), batch(0))
seeds_step = jax.jit(jax.vmap(air.make_update(svi, recipe.air), in_axes=(0, 0, None)))
for i in range(max(STEPS // 30, 2)):
    per_seed = jnp.stack([batch(i + 1000 * k) for k in range(K)])
    states, infos = seeds_step(states, per_seed, jnp.asarray(i + 1))
print("ELBO per image of each seed:", np.round(-np.asarray(infos.loss), 1))""",
    ),
    (
        "markdown",
        """## Your own images

Any `.npz` with `images` (N, H, W) or (N, H, W, 3), uint8 or float in [0, 1], or a directory of
PNG/JPEG files of one size, trains the same way: `numpyro-air train --data train.npz --test-data
test.npz --window-size W`. With `counts` in the file the count accuracy is reported; without, the
held-out ELBO. Here: coloured sprites written to an `.npz`, trained for a few steps through the
command-line entry point (a real run wants thousands: `numpyro-air train --dataset
multi-dsprites` has the recipe).""",
    ),
    (
        "code",
        """import contextlib
import io
import tempfile
from pathlib import Path

from numpyro_air.cli import train as train_cli
from numpyro_air.data import generate_multi_dsprites, load_images

work = Path(tempfile.mkdtemp())
for name, seed in (("train", 0), ("test", 1)):
    s = generate_multi_dsprites(256, seed=seed)
    np.savez(work / f"{name}.npz", images=s.images, counts=s.counts, boxes=s.boxes)
mine = load_images(work / "train.npz")
print(mine.shape, mine.images.dtype, "counts:", np.bincount(mine.counts))
with contextlib.redirect_stdout(io.StringIO()):  # the command's own log
    summary = train_cli.main([
        "--data", str(work / "train.npz"), "--test-data", str(work / "test.npz"), "--preset", "fast",
        "--window-size", "24", "--scale-prior-mean", "2.5", "--scale-prior-sd", "0.5", "--conv-embed", "16", "32",
        "-n", str(max(STEPS // 30, 2)), "--no-progress", "--out", str(work / "run"),
    ])
print("written:", sorted(p.name for p in (work / "run").glob("*.png")))
fig, ax = plt.subplots(1, 1, figsize=(14, 4)); ax.axis("off")
ax.imshow(plt.imread(work / "run" / "boxes.png"))""",
    ),
]


def _outputs(namespace: dict, source: str) -> list:
    import matplotlib.pyplot as plt

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<tutorial cell>", "exec"), namespace)
    outputs = []
    if out.getvalue():
        outputs.append({"output_type": "stream", "name": "stdout", "text": out.getvalue().splitlines(keepends=True)})
    for num in plt.get_fignums():
        buf = io.BytesIO()
        plt.figure(num).savefig(buf, format="png", dpi=72, bbox_inches="tight")
        outputs.append(
            {"output_type": "display_data", "data": {"image/png": base64.b64encode(buf.getvalue()).decode()}, "metadata": {}}
        )
    plt.close("all")
    return outputs


def build(path: Path = NOTEBOOK, execute: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict = {"__name__": "__tutorial__"}
    cells, count = [], 0
    for kind, source in CELLS:
        lines = source.splitlines(keepends=True)
        if kind == "markdown":
            cells.append({"cell_type": "markdown", "metadata": {}, "source": lines})
            continue
        count += 1
        outputs = _outputs(namespace, source) if execute else []
        cells.append({"cell_type": "code", "execution_count": count, "metadata": {}, "outputs": outputs, "source": lines})
        print(f"cell {count} done", file=sys.stderr, flush=True)
    nb = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1) + "\n")
    return path


if __name__ == "__main__":
    print(build())
