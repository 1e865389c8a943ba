"""Benchmarks by name: the DATASETS table, ``--dataset`` and its recipes, make_eval_set.py for each
generator, ``evaluate --model-steps`` and the unrolled seeds of convolutional models."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_data import write_mnist_npz
from test_data_provenance import TEST_LABELS, TEST_LEVELS, TRAIN_LABELS, TRAIN_LEVELS, check_split, fake_mnist

from numpyro_air import DATASET_RECIPES, PRESETS, AIRConfig, OptimConfig
from numpyro_air.cli import train as cli
from numpyro_air.data import (
    DATASETS,
    MultiDSpritesConfig,
    ScatteredMNISTConfig,
    dataset_config,
    generate_dataset,
    load_dataset,
    load_eval_npz,
)
from numpyro_air.train.step import over_seeds

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "numpyro_air" / "weights" / "air_multi_mnist.npz"


def configs(*argv):
    return cli.configs_from_args(cli.build_parser().parse_args(list(argv)))


# ------------------------------------------------------------------------------------ the table
def test_table_configs_and_errors():
    assert list(DATASETS) == list(DATASET_RECIPES) == ["multi-mnist", "multi-dsprites", "scattered-mnist"]
    assert [DATASETS[n].channels for n in DATASETS] == [1, 3, 1]
    cfg = dataset_config("scattered-mnist", max_digits=9)
    assert cfg == ScatteredMNISTConfig(max_digits=9)
    assert DATASETS["scattered-mnist"].count_range(cfg) == (1, 9)
    assert DATASETS["multi-dsprites"].count_range(MultiDSpritesConfig()) == (0, 3)
    with pytest.raises(ValueError, match="multi-dsprites has no option max_digits"):
        dataset_config("multi-dsprites", max_digits=2)
    with pytest.raises(ValueError, match="dataset must be one of"):
        dataset_config("clevr")
    with pytest.raises(TypeError, match="needs a MultiDSpritesConfig"):
        load_dataset("multi-dsprites", ScatteredMNISTConfig())
    with pytest.raises(ValueError, match="not built from MNIST"):
        load_dataset("multi-dsprites", MultiDSpritesConfig(num_train=1, num_test=1), source="x.npz")


def test_generate_dataset_draws_from_the_split_asked_for(tmp_path):
    source = write_mnist_npz(tmp_path / "fake.npz", fake_mnist())
    cfg = ScatteredMNISTConfig(canvas_size=40, min_digits=1, max_digits=3)
    test = generate_dataset("scattered-mnist", cfg, 12, np.random.SeedSequence(5), source=source)
    check_split(test, set(TEST_LABELS.tolist()), TEST_LEVELS, 255)
    train = generate_dataset("scattered-mnist", cfg, 12, np.random.SeedSequence(5), split="train", source=source)
    check_split(train, set(TRAIN_LABELS.tolist()), TRAIN_LEVELS, 255)
    again = generate_dataset("scattered-mnist", cfg, 12, np.random.SeedSequence(5), source=source)
    assert np.array_equal(again.images, test.images) and np.array_equal(again.boxes, test.boxes)
    sprites = generate_dataset("multi-dsprites", MultiDSpritesConfig(canvas_size=32), 6, np.random.SeedSequence(1))
    assert sprites.images.shape == (6, 32, 32, 3) and sprites.counts.max() <= 3


# ----------------------------------------------------------------------------- --dataset (CLI)
@pytest.mark.parametrize("name", ["multi-mnist", "multi-dsprites", "scattered-mnist"])
def test_dataset_alone_is_its_recipe(name):
    air, opt, tcfg, data = configs("--dataset", name)
    want = DATASET_RECIPES[name]
    assert air == want.recipe.air and opt == want.recipe.optim and data == want.data
    assert tcfg.num_steps == want.train_steps
    assert air.image_size == data.canvas_size and air.channels == DATASETS[name].channels
    assert air.num_steps >= DATASETS[name].count_range(data)[1]


def test_dataset_recipes_fit_their_scenes():
    ds = DATASET_RECIPES["multi-dsprites"].recipe.air
    assert (ds.image_size, ds.channels, ds.num_steps) == (64, 3, 3) and ds.conv_embed is not None
    assert ds.composition == "over" and ds.decoder_output_use_sigmoid  # sprites occlude each other
    assert ds.image_size / ds.scale_prior_mean >= 18  # a window holds the largest sprite
    sc = DATASET_RECIPES["scattered-mnist"].recipe.air
    assert (sc.image_size, sc.channels, sc.num_steps, sc.window_size) == (48, 1, 5, 14)
    assert sc.image_size / sc.scale_prior_mean == pytest.approx(14, abs=0.5)  # a window is one digit
    assert sc.guide_input == "difference" and sc.glimpse_input == "image"  # DAIR, the image glimpse
    sc_opt, sc_steps = DATASET_RECIPES["scattered-mnist"].recipe.optim, DATASET_RECIPES["scattered-mnist"].train_steps
    assert sc.scale_prior_sd == 0.1 and (sc_opt.average_decay, sc_opt.average_start, sc_steps) == (0.999, 10_000, 14_000)
    assert configs("--dataset", "scattered-mnist", "--average-from", "500")[1].average_start == 500  # flags override
    plain = configs("--dataset", "scattered-mnist", "--average-decay", "none")[1]
    assert (plain.average_decay, plain.average_start) == (None, 0)  # and turn the recipe's average off
    assert configs("--dataset", "scattered-mnist", "--no-dair")[0].guide_input == "image"  # AIR's recipe
    assert configs("--dataset", "multi-mnist", "--dair")[0].guide_input == "difference"
    assert DATASET_RECIPES["multi-mnist"].recipe == PRESETS["fast"]


def test_dataset_flags_override_and_model_steps_follow_the_counts():
    air, _, tcfg, data = configs("--dataset", "scattered-mnist", "--max-digits", "7", "-n", "50")
    assert data.max_digits == 7 and air.num_steps == 7 and tcfg.num_steps == 50
    air, _, _, _ = configs("--dataset", "scattered-mnist", "--max-digits", "7", "-t", "4")
    assert air.num_steps == 4  # -t given: kept
    assert configs("--dataset", "scattered-mnist", "--max-overlap", "98")[3].max_overlap == 98
    assert configs("--dataset", "scattered-mnist", "--max-overlap", "none")[3].max_overlap is None
    air, opt, tcfg, data = configs("--dataset", "multi-dsprites", "--preset", "tutorial", "--window-size", "20")
    assert opt == PRESETS["tutorial"].optim and air.presence_estimator == "nvil"  # the preset's recipe
    assert (air.image_size, air.channels, air.window_size) == (64, 3, 20) and data == MultiDSpritesConfig()
    assert tcfg.num_steps != DATASET_RECIPES["multi-dsprites"].train_steps
    assert configs("--dataset", "multi-dsprites", "--composition", "add")[0].composition == "add"
    air, _, _, data = configs("--dataset", "multi-dsprites", "--canvas-size", "48", "--max-objects", "2")
    assert air.image_size == 48 and data.canvas_size == 48 and data.max_objects == 2
    # no --dataset: Pyro's defaults on multi-MNIST, as before
    air, opt, _, data = configs()
    assert air == AIRConfig() and opt == OptimConfig() and data.canvas_size == 50


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "multi-dsprites", "--max-digits", "2"], "--max-digits: not an option of --dataset multi-dsprites"),
        (["--dataset", "scattered-mnist", "--max-objects", "2"], "--max-objects: not an option of --dataset scattered"),
        (["--dataset", "multi-dsprites", "--mnist", "m.npz"], "--mnist: --dataset multi-dsprites is not built from MNIST"),
        (["--dataset", "multi-dsprites", "--canvas-size", "16"], "canvas_size=16 cannot hold a rotated sprite"),
        (["--dataset", "scattered-mnist", "--canvas-size", "12", "--digit-size", "8"], "window_size (14)"),
        (["--dataset", "scattered-mnist", "--min-digits", "4", "--max-digits", "2"], "min_digits"),
        (["--dataset", "multi-dsprites", "--max-overlap", "98"], "--max-overlap: not an option of --dataset multi-dsprites"),
        (["--dataset", "scattered-mnist", "--max-overlap", "-1"], "max_overlap must be >= 0"),
    ],
)
def test_dataset_bad_flags_are_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--out", "never-written"])
    assert message in str(e.value) and str(e.value).startswith("error: ") and "\n" not in str(e.value)
    assert not Path("never-written").exists()


def test_dataset_and_own_data_exclude_each_other(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 20, 20), np.uint8))
    with pytest.raises(SystemExit, match="--dataset: options of the generated benchmarks, which --data replaces"):
        cli.main(["--data", str(tmp_path / "d.npz"), "--dataset", "multi-dsprites", "--out", str(tmp_path / "o")])


def test_scenes_that_cannot_be_drawn_are_one_error_line(tmp_path, monkeypatch):
    """Two 14x14 digits on a 14x14 canvas cannot share at most 0 pixels: the generator gives up
    (after 3 draws here) and the CLI prints one line naming the remedy, no traceback."""
    from numpyro_air.data import scattered_mnist

    monkeypatch.setattr(scattered_mnist, "_MAX_ATTEMPTS", 3)
    source = write_mnist_npz(tmp_path / "fake.npz", fake_mnist())
    argv = ["--dataset", "scattered-mnist", "--canvas-size", "14", "--min-digits", "2", "--max-digits", "2"]
    argv += ["--max-overlap", "0", "--num-train", "2", "--num-test", "2", "--mnist", str(source)]
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--data-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "never")])
    msg = str(e.value)
    assert msg.startswith("error: could not place 2 digits of 14x14 on a 14x14 canvas") and "\n" not in msg, msg
    assert "squares sharing more than 0 pixels" in msg and "a larger max_overlap" in msg
    assert not (tmp_path / "never").exists()


def test_plot_regenerates_the_recorded_benchmark(tmp_path, monkeypatch):
    """``numpyro-air plot`` draws a run's figures on the test split of the benchmark its
    checkpoint records (multi-MNIST where none is recorded), not always multi-MNIST."""
    from numpyro_air.cli.plot import generated_test_split

    monkeypatch.setenv("NUMPYRO_AIR_DATA", str(tmp_path / "cache"))
    cfg = MultiDSpritesConfig(canvas_size=32, num_train=3, num_test=5, seed=4)
    test = generated_test_split({"dataset": "multi-dsprites"} | dataclasses.asdict(cfg))
    assert test.images.shape == (5, 32, 32, 3)
    assert np.array_equal(test.images, load_dataset("multi-dsprites", cfg, progress=False)[1].images)
    source = write_mnist_npz(tmp_path / "fake.npz", fake_mnist())
    scattered = ScatteredMNISTConfig(canvas_size=30, min_digits=1, max_digits=2, num_train=3, num_test=4)
    desc = {"dataset": "scattered-mnist", "mnist": str(source)} | dataclasses.asdict(scattered)
    test = generated_test_split(desc)
    assert test.images.shape == (4, 30, 30) and test.counts.min() >= 1
    check_split(test, set(TEST_LABELS.tolist()), TEST_LEVELS, 255)
    with pytest.raises(SystemExit, match="records dataset 'shapes', not one of multi-mnist"):
        generated_test_split({"dataset": "shapes"})


# ------------------------------------------------------------------------ make_eval_set.py
def test_make_eval_set_multi_dsprites(tmp_path, make_eval_set, capsys):
    out = tmp_path / "ds.npz"
    make_eval_set.main(["--dataset", "multi-dsprites", "--out", str(out), "--per-count", "3", "--canvas-size", "32"])
    assert "0: 3, 1: 3, 2: 3, 3: 3" in capsys.readouterr().out
    ev = load_eval_npz(out)
    assert ev.images.shape == (12, 32, 32, 3) and np.bincount(ev.counts).tolist() == [3, 3, 3, 3]
    present = np.arange(3)[None, :] < ev.counts[:, None]
    assert set(ev.labels[present].tolist()) <= {0, 1, 2, 3} and np.all(ev.labels[~present] == -1)
    assert np.all(ev.images[ev.counts == 0] == 0) and np.all(ev.images[ev.counts > 0].max(axis=(1, 2, 3)) > 0)
    with pytest.raises(SystemExit, match="--max-digits: not an option of multi-dsprites"):
        make_eval_set.main(["--dataset", "multi-dsprites", "--out", str(tmp_path / "x.npz"), "--max-digits", "2"])
    assert not (tmp_path / "x.npz").exists()


def test_make_eval_set_scattered_more_digits_than_trained(tmp_path, make_eval_set):
    source = write_mnist_npz(tmp_path / "fake.npz", fake_mnist())
    out = tmp_path / "sc.npz"
    argv = ["--dataset", "scattered-mnist", "--out", str(out), "--per-count", "2", "--mnist", str(source)]
    make_eval_set.main([*argv, "--min-digits", "6", "--max-digits", "7", "--canvas-size", "48", "--digit-size", "8"])
    ev = load_eval_npz(out)
    assert ev.images.shape == (4, 48, 48) and sorted(ev.counts.tolist()) == [6, 6, 7, 7]
    present = np.arange(7)[None, :] < ev.counts[:, None]
    assert set(ev.labels[present].tolist()) <= set(TEST_LABELS.tolist())  # MNIST test digits only
    # SPAIR's bound at 0: the digits' squares, hence their tight boxes, never intersect
    apart = tmp_path / "apart.npz"
    make_eval_set.main(
        [*argv[:2], "--out", str(apart), *argv[4:], "--max-digits", "7", "--digit-size", "8", "--max-overlap", "0"]
    )
    ev = load_eval_npz(apart)
    for i in range(len(ev.counts)):
        x0, y0, w, h = ev.boxes[i, : ev.counts[i]].T
        dx = np.minimum(x0[:, None] + w[:, None], x0 + w) - np.maximum(x0[:, None], x0)
        dy = np.minimum(y0[:, None] + h[:, None], y0 + h) - np.maximum(y0[:, None], y0)
        inter = np.clip(dx, 0, None) * np.clip(dy, 0, None)
        assert np.all(inter[~np.eye(len(x0), dtype=bool)] == 0)
    with pytest.raises(SystemExit, match="max_overlap must be >= 0"):
        make_eval_set.main([*argv[:2], "--out", str(tmp_path / "no.npz"), *argv[4:], "--max-overlap", "-1"])
    assert not (tmp_path / "no.npz").exists()


def test_make_eval_set_reproduces_the_unbounded_scattered_file(tmp_path, make_eval_set):
    """``--max-overlap none`` draws the scenes of before SPAIR's bound: the committed held-out file
    of those results, byte for byte in every array."""
    committed = ROOT / "experiments" / "results" / "scenes" / "evalsets" / "scattered_1to5.npz"
    out = tmp_path / "again.npz"
    make_eval_set.main(["--dataset", "scattered-mnist", "--per-count", "500", "--max-overlap", "none", "--out", str(out)])
    a, b = load_eval_npz(committed), load_eval_npz(out)
    for name in ("images", "counts", "labels", "boxes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# -------------------------------------------------------------------- evaluate --model-steps
def more_steps_commands(workdir: Path, run) -> tuple[Path, list]:
    """A 0-4-digit held-out file from ``make_eval_set.py`` and two evaluations of the shipped
    weights: with 4 importance draws and count evidence from 3, and run for 5 steps."""
    out = workdir / "e.npz"
    made = run(
        [
            sys.executable,
            str(ROOT / "experiments" / "make_eval_set.py"),
            "--out",
            str(out),
            "--max-digits",
            "4",
            "--per-count",
            "2",
        ]
    )
    evaluate = [sys.executable, "-m", "numpyro_air.cli", "evaluate", "--checkpoint", str(WEIGHTS), "--data", str(out), "--json"]
    if made.returncode:
        return out, [made]
    return out, [made, run([*evaluate, "--importance", "4", "--count-evidence", "3"]), run([*evaluate, "--model-steps", "5"])]


BACKGROUND = (more_steps_commands,)


def test_evaluate_with_more_steps_than_trained(background):
    from numpyro_air.cli import evaluate

    out, procs = background.result(more_steps_commands)
    assert [p.returncode for p in procs] == [0, 0, 0], [p.stderr[-2000:] for p in procs]
    three, five = (json.loads(p.stdout.strip().splitlines()[-1]) for p in procs[1:])
    assert three["model_steps"] == 3 and five["model_steps"] == 5
    # --importance: a third count, the argmax of the count posterior from 4 weighted draws
    assert three["importance_samples"] == 4 and sum(map(sum, three["confusion_importance"])) == 10
    assert sum(three["confusion_importance"][n][n] for n in range(3)) >= 5  # 0-2 digits: the trained range
    assert three["count_accuracy_importance"] == sum(three["confusion_importance"][n][n] for n in range(4)) / 10
    # --count-evidence: a fourth, the argmax of log p(x, n) from 3 draws per count; the shipped
    # weights count 0-2 digits of every test scene right (the other three counts agree)
    assert three["evidence_samples"] == 3 and sum(map(sum, three["confusion_evidence"])) == 10
    assert [three["confusion_evidence"][n][n] for n in range(3)] == [2, 2, 2]
    assert three["count_accuracy_evidence"] == sum(three["confusion_evidence"][n][n] for n in range(4)) / 10
    assert len(three["confusion"][0]) == 4 and len(five["confusion"][0]) == 6  # columns: 0..T objects
    assert sum(map(sum, five["confusion"])) == 10
    with pytest.raises(SystemExit, match="--model-steps must be >= 1"):
        evaluate.main(["--checkpoint", str(WEIGHTS), "--data", str(out), "--model-steps", "0"])
    with pytest.raises(SystemExit, match="--importance must be >= 1"):
        evaluate.main(["--checkpoint", str(WEIGHTS), "--data", str(out), "--importance", "-1"])
    with pytest.raises(SystemExit, match="--count-evidence must be >= 1"):
        evaluate.main(["--checkpoint", str(WEIGHTS), "--data", str(out), "--count-evidence", "-2"])


# ------------------------------------------------------------ seeds of convolutional models
def test_unrolled_seeds_equal_each_seed_alone():
    """K seeds of a convolutional model run as K plain updates in one program (the loop's choice
    for ``config.uses_convolutions``): each seed's new state is its own one-seed update."""
    conv = AIRConfig(image_size=16, window_size=8, conv_embed=(4,), conv_embed_features=8)
    assert conv.uses_convolutions and not dataclasses.replace(conv, conv_embed=None).uses_convolutions

    def update(state, images, t):  # a stand-in with a reduction across the batch, as the ELBO
        new = {"w": state["w"] * jnp.mean(images) + t, "b": state["b"] - jnp.sum(images, axis=0)}
        return new, jnp.sum(new["w"])

    states = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((2, 4, 4))}
    images = jax.random.uniform(jax.random.PRNGKey(0), (2, 5, 4, 4))
    both, infos = jax.jit(over_seeds(update, 2, sequential=True))(states, images, jnp.float32(1))
    vmapped, _ = jax.jit(over_seeds(update, 2))(states, images, jnp.float32(1))
    for k in range(2):
        alone, info = jax.jit(update)(jax.tree.map(lambda a: a[k], states), images[k], jnp.float32(1))
        for a, b in zip(jax.tree.leaves((alone, info)), jax.tree.leaves(jax.tree.map(lambda x: x[k], (both, infos)))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(vmapped)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
