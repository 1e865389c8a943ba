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
