"""experiments/dsprites_apart.py and dsprites_miss_factors.py: the scenes they select and the tables they bin."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import experiment_script

from numpyro_air.data import generate_multi_dsprites, load_images


def boxes_intersect(a: np.ndarray, b: np.ndarray) -> bool:
    """Two (x0, y0, w, h) boxes share an area."""
    return min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])


def any_pair_intersects(boxes: np.ndarray, count: int) -> bool:
    return any(boxes_intersect(boxes[i], boxes[j]) for i in range(count) for j in range(i + 1, count))


def test_apart_keeps_exactly_the_scenes_without_intersecting_boxes_and_writes_them_for_data(tmp_path):
    script = experiment_script("dsprites_apart")
    scenes = generate_multi_dsprites(60, seed=3)
    kept = script.apart(scenes)
    expected = [i for i in range(len(scenes)) if not any_pair_intersects(scenes.boxes[i], int(scenes.counts[i]))]
    assert 0 < len(expected) < len(scenes)  # the seed draws both kinds of scene
    np.testing.assert_array_equal(kept.images, scenes.images[expected])
    np.testing.assert_array_equal(kept.counts, scenes.counts[expected])
    path = tmp_path / "sub" / "apart.npz"
    script.write_scenes(path, kept)
    back = load_images(path)
    np.testing.assert_array_equal(back.images, kept.images)
    np.testing.assert_array_equal(back.counts, kept.counts)
    np.testing.assert_array_equal(back.boxes, kept.boxes)


@pytest.fixture(scope="module")
def factors():
    return experiment_script("dsprites_miss_factors")


def test_closest_colours_only_pairs_whose_boxes_intersect(factors):
    boxes = np.array(
        [
            [[0, 0, 10, 10], [5, 5, 10, 10], [40, 40, 5, 5]],  # 0-1 intersect, 2 apart
            [[0, 0, 10, 10], [10, 0, 10, 10], [0, 0, 0, 0]],  # touching edges only: no area
            [[0, 0, 10, 10], [2, 2, 4, 4], [1, 1, 3, 3]],  # all intersect; slot 2 absent (count 2)
        ],
        np.float32,
    )
    counts = np.array([3, 2, 2])
    colours = np.array(
        [
            [[1, 0, 0], [0, 1, 0], [1, 0, 0.1]],  # the closest pair (0, 2) does not intersect
            [[1, 0, 0], [1, 0, 0], [0, 0, 0]],
            [[0, 0, 1], [0, 0.5, 1], [0, 0, 1]],  # slot 2 equals slot 0 but is absent
        ]
    )
    got = factors.closest_colours(boxes, counts, colours)
    np.testing.assert_allclose(got, [math.sqrt(2.0), math.inf, 0.5])


def test_binned_accuracy_and_open_last_bin(factors):
    values = np.array([0.1, 0.3, 0.3, 0.9, 5.0, math.inf])
    correct = np.array([True, True, False, False, True, True])
    rows = factors.binned(values, correct, (0.0, 0.2, 0.6))
    assert [(r["at_least"], r["below"], r["scenes"]) for r in rows] == [(0.0, 0.2, 1), (0.2, 0.6, 2), (0.6, None, 3)]
    assert [r["accuracy"] for r in rows] == [1.0, 0.5, pytest.approx(2 / 3)]
    empty = factors.binned(values, correct, (10.0, 20.0))
    assert empty[0] == {"at_least": 10.0, "below": 20.0, "scenes": 0, "accuracy": None}


def test_residual_peak_finds_the_unexplained_block(tmp_path):
    refine = experiment_script("refine_counts")
    x = np.zeros((2, 64, 64, 3), np.float32)
    x[0, 20:30, 30:40] = 0.8  # rows 20-29, columns 30-39: centre (35, 25)
    x[1, 50:60, 2:12, 1] = 1.0  # centre (7, 55), one channel only
    reconstruction = np.zeros_like(x)
    reconstruction[0, 0:10, 0:10, 0] = 0.3  # drawn where the image is empty: a smaller residual
    cx, cy = refine.residual_peak(x, reconstruction)
    np.testing.assert_allclose(cx, [35, 7], atol=2)
    np.testing.assert_allclose(cy, [25, 55], atol=2)


def test_scene_refit_places_and_inserts_objects():
    import jax.numpy as jnp

    from numpyro_air.core.config import AIRConfig
    from numpyro_air.core.transform import bounding_boxes

    refit = experiment_script("scene_refit")
    config = AIRConfig(num_steps=3)
    fit = refit.SceneRefit({}, config)
    pose = fit.pose_at(np.array([10.0, 30.5]), np.array([40.0, 5.0]))
    boxes = np.asarray(bounding_boxes(pose, config.image_shape))
    np.testing.assert_allclose(boxes[:, :2] + boxes[:, 2:] / 2, [[10.0, 40.0], [30.5, 5.0]], rtol=1e-5)
    np.testing.assert_allclose(pose[:, 0], config.scale_prior_mean)
    # steps hold their index in every field; insert a new object at step 0, 1 and 2 of three scenes
    T, B, D = 3, 3, config.z_what_size
    q = {
        "where": jnp.broadcast_to(jnp.arange(T, dtype=jnp.float32)[:, None, None], (T, B, 3)),
        "where_log_sd": jnp.zeros((T, B, 3)),
        "what": jnp.broadcast_to(jnp.arange(T, dtype=jnp.float32)[:, None, None], (T, B, D)),
        "what_log_sd": jnp.zeros((T, B, D)),
    }
    new_pose = jnp.full((B, 3), 9.0)
    out = fit.insert(q, new_pose, np.array([0, 1, 2]))
    np.testing.assert_array_equal(np.asarray(out["where"][:, :, 0]).T, [[9, 0, 1], [0, 9, 1], [0, 1, 9]])
    np.testing.assert_array_equal(np.asarray(out["what"][:, :, 0]).T, [[0, 0, 1], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_allclose(
        np.exp(np.asarray(out["what_log_sd"][:, :, 0])).T, [[0.3, 1, 1], [1, 0.3, 1], [1, 1, 0.3]], rtol=1e-6
    )
