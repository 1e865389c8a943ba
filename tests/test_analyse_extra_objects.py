"""experiments/analyse_extra_objects.py: distances of the extra window of overcounted scenes, on
hand-placed boxes whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import experiment_script


@pytest.fixture(scope="module")
def script():
    return experiment_script("analyse_extra_objects")


def box(cx: float, cy: float, side: float = 10.0) -> list:
    return [cx - side / 2, cy - side / 2, side, side]


def test_extra_window_distances(script):
    # scene 0: one digit at (20, 20); window 0 misplaced at (28, 26) (10 px off), window 1 on the digit;
    #   its padding row (absent object) sits on window 0, so reading it as an object would give 0 px
    # scene 1: one digit, counted right; scene 2: two digits, counted three (extra on a digit too)
    # scene 3: one digit at (20, 20), window 0 at (23, 24) (5 px off), window 1 2 px beside the digit
    true = np.array(
        [
            [box(20, 20), box(28, 26)],
            [box(30, 30), box(0, 0)],
            [box(10, 10), box(40, 10)],
            [box(20, 20), box(23, 24)],
        ]
    )
    inferred = np.array(
        [
            [box(28, 26), box(20, 20), box(0, 0)],
            [box(30, 30), box(0, 0), box(0, 0)],
            [box(10, 10), box(34, 10), box(40, 10)],
            [box(23, 24), box(20, 22), box(0, 0)],
        ]
    )
    res = {
        "boxes": inferred,
        "counts": np.array([2, 1, 3, 2]),
        "pres_prob": np.array([[0.9, 0.8, 0.0], [0.9, 0.1, 0.0], [0.9, 0.9, 0.6], [0.9, 0.6, 0.0]]),
    }
    out = script.analyse(res, np.array([1, 1, 2, 1]), true)
    assert sorted(out) == ["1", "2"]
    one = out["1"]
    assert (one["scenes"], one["overcounted"]) == (3, 2)
    # extra-to-earlier distances 10 and sqrt(9 + 4); true-object distances 0 and 2; first windows 10 and 5
    d = np.array([10.0, np.hypot(3, 2)])
    assert one["extra_to_earlier_window_px"]["median"] == pytest.approx(d.mean())
    assert one["extra_to_earlier_window_px"]["q10"] == pytest.approx(np.quantile(d, 0.1))
    assert one["extra_to_earlier_window_px"]["q90"] == pytest.approx(np.quantile(d, 0.9))
    assert one["extra_to_true_object_px"]["median"] == pytest.approx(1.0)
    assert one["first_to_true_object_px"]["median"] == pytest.approx(7.5)
    assert one["extra_presence_prob"] == pytest.approx(0.7)
    two = out["2"]
    assert two["extra_to_earlier_window_px"]["median"] == pytest.approx(6.0)  # (40, 10) vs (34, 10)
    assert two["extra_to_true_object_px"]["median"] == pytest.approx(0.0)
    assert two["extra_presence_prob"] == pytest.approx(0.6)
