"""Tests of numpyro_air.analysis.metrics (hand-made scenes) and experiments/make_eval_set.py (fake MNIST)."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_air.analysis.metrics import accuracy_by_count, box_centres, box_iou, localisation
from numpyro_air.core.transform import bounding_boxes, window_to_image
from numpyro_air.data import load_eval_npz

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# accuracy_by_count
# ------------------------------------------------------------------------------------------------


def test_accuracy_by_count_hand_example():
    true = np.array([0, 0, 1, 1, 1, 3, 3, 3, 3])
    inferred = np.array([0, 1, 1, 1, 0, 3, 2, 3, 3])
    out = accuracy_by_count(true, inferred)
    assert out == {
        "0": {"accuracy": 0.5, "images": 2},
        "1": {"accuracy": pytest.approx(2 / 3), "images": 3},
        "3": {"accuracy": 0.75, "images": 4},
    }
    assert list(out) == ["0", "1", "3"]  # numeric order, only counts present
    assert isinstance(out["1"]["images"], int) and isinstance(out["1"]["accuracy"], float)
    json.dumps(out)  # JSON-friendly
    # numeric (not lexicographic) key order; jax arrays and integral floats are accepted
    out = accuracy_by_count(jnp.array([10, 2, 2]), np.array([10.0, 2.0, 1.0]))
    assert list(out) == ["2", "10"] and out["2"] == {"accuracy": 0.5, "images": 2}
    assert accuracy_by_count(np.zeros(0, int), np.zeros(0, int)) == {}


@pytest.mark.parametrize(
    "true, inferred, match",
    [
        (np.zeros((2, 2), int), np.zeros((2, 2), int), r"true_counts must have shape \(N,\)"),
        (np.array([0, 1]), np.array([0, 1, 2]), r"inferred_counts has 3 entries, expected 2"),
        (np.array([0, -1]), np.array([0, 1]), r"true_counts must be >= 0"),
        (np.array([0.0, np.nan]), np.array([0, 1]), r"true_counts contains NaN"),
        (np.array([0, 1]), np.array([0.5, 1]), r"inferred_counts must hold whole numbers"),
        (np.array([True, False]), np.array([0, 1]), r"true_counts must be a numeric"),
    ],
)
def test_accuracy_by_count_validation(true, inferred, match):
    with pytest.raises(ValueError, match=match):
        accuracy_by_count(true, inferred)


# ------------------------------------------------------------------------------------------------
# localisation
# ------------------------------------------------------------------------------------------------

# Two images, K = 3 slots: image 0 has two objects, image 1 one (unused slots hold junk on purpose).
TRUE_BOXES = np.array(
    [
        [[2, 3, 10, 12], [30, 20, 8, 8], [np.nan, 0, 0, 0]],
        [[15, 15, 14, 10], [99, 99, -5, 1], [0, 0, 0, 0]],
    ],
    dtype=np.float32,
)
TRUE_COUNTS = np.array([2, 1])


def perfect_inference(t_steps: int = 3):
    boxes = np.zeros((2, t_steps, 4))
    boxes[0, :2] = TRUE_BOXES[0, :2]
    boxes[1, 0] = TRUE_BOXES[1, 0]
    present = np.zeros((2, t_steps), bool)
    present[0, :2] = present[1, 0] = True
    return boxes, present


def test_box_helpers():
    assert np.allclose(box_centres([[2, 3, 10, 12]]), [[7, 9]])
    assert box_iou([0, 0, 4, 4], [2, 0, 4, 4]) == pytest.approx(8 / 24)
    assert box_iou([0, 0, 4, 4], [4, 0, 4, 4]) == 0.0  # touching edges do not overlap
    assert box_iou([1, 1, 0, 0], [1, 1, 0, 0]) == 0.0  # empty boxes: IoU 0, no division warning
    assert box_iou(np.zeros((3, 1, 4)) + [0, 0, 2, 2], np.zeros((1, 5, 4)) + [0, 0, 2, 2]).shape == (3, 5)


def test_perfect_inference():
    boxes, present = perfect_inference()
    out = localisation(TRUE_BOXES, TRUE_COUNTS, boxes, present)
    assert out == {
        "mean_centre_error": 0.0,
        "matched_within_radius": 1.0,
        "mean_iou": 1.0,
        "true_objects": 3,
        "inferred_objects": 3,
        "matched_pairs": 3,
        "match_radius": 3.0,
    }
    json.dumps(out)


def test_known_shift_gives_error_5():
    boxes, present = perfect_inference()
    boxes[..., 0] += 3.0
    boxes[..., 1] += 4.0
    out = localisation(TRUE_BOXES, TRUE_COUNTS, boxes, present, match_radius=3.0)
    assert out["mean_centre_error"] == pytest.approx(5.0)
    assert out["matched_within_radius"] == 0.0
    assert out["matched_pairs"] == 3
    # IoU of the shifted boxes, by hand: (10-3)*(12-4)/(2*120 - 56), (8-3)*(8-4)/(2*64 - 20), (11*6)/(2*140 - 66)
    expected = np.mean([56 / 184, 20 / 108, 66 / 214])
    assert out["mean_iou"] == pytest.approx(expected)
    # the radius is inclusive: at exactly 5 px every object counts
    assert localisation(TRUE_BOXES, TRUE_COUNTS, boxes, present, match_radius=5.0)["matched_within_radius"] == 1.0


def test_hungarian_handles_swapped_order():
    # image 0's objects come in swapped order and at non-prefix slots; a greedy slot-by-slot
    # comparison would report large errors.
    boxes, present = perfect_inference(4)
    boxes[0] = 0.0
    present[0] = False
    boxes[0, 1] = TRUE_BOXES[0, 1]
    boxes[0, 3] = TRUE_BOXES[0, 0]
    present[0, [1, 3]] = True
    out = localisation(TRUE_BOXES, TRUE_COUNTS, boxes, present)
    assert out["mean_centre_error"] == 0.0 and out["mean_iou"] == 1.0
    assert out["matched_within_radius"] == 1.0 and out["matched_pairs"] == 3


def test_hungarian_is_globally_optimal():
    # Centres on one row: true A at x=0, B at x=10; inferred p at x=9, q at x=20. Greedy nearest
    # matching takes B-p (1 px) and is left with A-q (20 px): mean 10.5, half within 10 px. The
    # optimal assignment A-p (9) + B-q (10) has mean 9.5 and finds both within 10 px.
    true = np.array([[[-1, 0, 2, 2], [9, 0, 2, 2]]], float)
    inferred = np.array([[[8, 0, 2, 2], [19, 0, 2, 2]]], float)
    out = localisation(true, [2], inferred, [[1, 1]], match_radius=10.0)
    assert out["mean_centre_error"] == pytest.approx(9.5)
    assert out["matched_within_radius"] == 1.0


def test_extra_and_missing_objects():
    boxes, present = perfect_inference()
    # an extra, far-away inferred object in image 1: still all true objects found exactly
    boxes[1, 2] = [40, 40, 5, 5]
    present[1, 2] = True
    out = localisation(TRUE_BOXES, TRUE_COUNTS, boxes, present)
    assert out["inferred_objects"] == 4 and out["matched_pairs"] == 3
    assert out["mean_centre_error"] == 0.0 and out["matched_within_radius"] == 1.0 and out["mean_iou"] == 1.0
    # a missing one: image 0's second object not inferred -> 2 of 3 true objects found
    present[0, 1] = False
    out = localisation(TRUE_BOXES, TRUE_COUNTS, boxes, present.astype(np.int32))
    assert out["inferred_objects"] == 3 and out["matched_pairs"] == 2
    assert out["matched_within_radius"] == pytest.approx(2 / 3)
    assert out["mean_centre_error"] == 0.0 and out["mean_iou"] == 1.0
    # nothing inferred at all: every true object is a miss, means are undefined
    out = localisation(TRUE_BOXES, TRUE_COUNTS, boxes, np.zeros_like(present))
    assert out["matched_within_radius"] == 0.0 and out["matched_pairs"] == 0
    assert out["mean_centre_error"] is None and out["mean_iou"] is None
    # no true objects at all
    out = localisation(TRUE_BOXES, [0, 0], boxes, present)
    assert out["true_objects"] == 0 and out["matched_within_radius"] is None and out["matched_pairs"] == 0


def test_bounding_boxes_convention_matches_ground_truth():
    """A window placed to cover a generator-style tight box exactly gives error 0 and IoU 1.

    Also checks that the z_where really covers the box: pasting a w x w window of ones with
    ``window_to_image`` lights up exactly the pixels of the ground-truth box (columns x0..x0+w-1).
    """
    n = 50
    gt = np.array([[[10, 7, 20, 20], [31, 22, 14, 14]]], np.float32)  # tight boxes (x0, y0, w, h)
    z = []
    for x0, y0, w, _ in gt[0]:
        s = n / w
        cx, cy = x0 + w / 2, y0 + w / 2  # pixel-edge centre
        z.append([s, (1 - 2 * cx / n) * s, (1 - 2 * cy / n) * s])
    z_where = jnp.asarray(z, jnp.float32)
    for j, (x0, y0, w, _) in enumerate(gt[0].astype(int)):
        img = np.asarray(window_to_image(z_where[j : j + 1], jnp.ones((1, w, w)), n))[0]
        lit = img > 1e-4
        rows, cols = np.flatnonzero(lit.any(1)), np.flatnonzero(lit.any(0))
        assert (cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1) == (x0, y0, w, w)
    inferred = np.asarray(bounding_boxes(z_where[None], n))  # (1, 2, 4)
    out = localisation(gt, [2], inferred[:, ::-1], [[True, True]])
    assert out["mean_centre_error"] == pytest.approx(0.0, abs=1e-4)
    assert out["mean_iou"] == pytest.approx(1.0, abs=1e-5)
    assert out["matched_within_radius"] == 1.0
    # the pixel-index centre x0 + (w - 1) / 2 would be off by 0.5 px per axis
    assert np.allclose(box_centres(inferred[0]), gt[0, :, :2] + gt[0, :, 2:] / 2, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(true_boxes=np.zeros((2, 3, 3))), r"true_boxes must have shape \(N, K, 4\)"),
        (dict(inferred_boxes=np.zeros((3, 3, 4))), r"inferred_boxes must have shape \(2, K, 4\)"),
        (dict(inferred_present=np.ones((2, 2), bool)), r"inferred_present must have shape \(2, 3\)"),
        (dict(inferred_present=np.full((2, 3), 2)), r"inferred_present must be bool or hold only 0 and 1"),
        (dict(inferred_present=np.full((2, 3), np.nan)), r"inferred_present must be bool or hold only 0 and 1"),
        (dict(true_counts=[2, -1]), r"true_counts must be >= 0"),
        (dict(true_counts=[2, 4]), r"true_counts reach 4 but true_boxes has only K=3"),
        (dict(true_counts=[2]), r"true_counts has 1 entries, expected 2"),
        (dict(true_counts=[3, 1]), r"true_boxes contains NaN or inf in a used slot \(first in image 0\)"),
        (dict(true_counts=[2, 2]), r"true_boxes has a negative width or height.*image 1"),
        (dict(match_radius=-1.0), r"match_radius must be finite and >= 0"),
        (dict(match_radius=float("nan")), r"match_radius must be finite and >= 0"),
        (dict(match_radius="3"), r"match_radius must be a real number"),
    ],
)
def test_localisation_validation(kwargs, match):
    boxes, present = perfect_inference()
    args = dict(true_boxes=TRUE_BOXES, true_counts=TRUE_COUNTS, inferred_boxes=boxes, inferred_present=present)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        localisation(**args)


def test_localisation_nan_in_inferred_boxes():
    boxes, present = perfect_inference()
    boxes[1, 2] = np.nan  # an absent slot: ignored
    assert localisation(TRUE_BOXES, TRUE_COUNTS, boxes, present)["mean_centre_error"] == 0.0
    boxes[1, 0, 1] = np.inf  # a present slot: rejected
    with pytest.raises(ValueError, match=r"inferred_boxes contains NaN or inf in a used slot \(first in image 1\)"):
        localisation(TRUE_BOXES, TRUE_COUNTS, boxes, present)


# ------------------------------------------------------------------------------------------------
# experiments/make_eval_set.py
# ------------------------------------------------------------------------------------------------


def fake_mnist_npz(path: Path) -> Path:
    """Small fake MNIST: train digits are labelled 0..4, test digits 5..9 (so the split is visible)."""
    rng = np.random.default_rng(0)

    def digits(n):
        d = np.zeros((n, 28, 28), np.uint8)
        d[:, 6:22, 6:22] = (rng.integers(1, 60, size=(n, 16, 16)) * (rng.random((n, 16, 16)) > 0.5)).astype(np.uint8)
        return d

    np.savez(path, x_train=digits(30), y_train=np.arange(30) % 5, x_test=digits(20), y_test=5 + np.arange(20) % 5)
    return path


def test_make_eval_set_writes_balanced_test_split_file(tmp_path, make_eval_set, capsys):
    src = fake_mnist_npz(tmp_path / "fake_mnist.npz")
    out = tmp_path / "sub" / "eval.npz"
    argv = ["--out", str(out), "--max-digits", "2", "--per-count", "7", "--seed", "3", "--canvas-size", "40", "--mnist", str(src)]
    assert make_eval_set.main(argv) == out
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "0: 7, 1: 7, 2: 7" in printed[0] and str(out) in printed[0]
    ev = load_eval_npz(out)
    assert ev.images.shape == (21, 40, 40)
    assert np.bincount(ev.counts).tolist() == [7, 7, 7]
    assert ev.labels.shape == (21, 2) and ev.boxes.shape == (21, 2, 4)
    present = np.arange(2)[None, :] < ev.counts[:, None]
    assert np.all(ev.labels[present] >= 5)  # every digit comes from the test split
    assert np.all(ev.labels[~present] == -1)
    assert np.all(ev.images[ev.counts == 0] == 0) and np.all(ev.images[ev.counts > 0].max(axis=(1, 2)) > 0)

    # refuses to overwrite; --overwrite with the same options reproduces the same file
    with pytest.raises(SystemExit, match="already exists"):
        make_eval_set.main(argv)
    before = {k: np.asarray(v) for k, v in ev._asdict().items()}
    make_eval_set.main([*argv, "--overwrite"])
    again = load_eval_npz(out)
    for k, v in again._asdict().items():
        assert np.array_equal(before[k], v), k
    # another seed gives another set
    make_eval_set.main([*argv, "--overwrite", "--seed", "4"])
    assert not np.array_equal(load_eval_npz(out).images, before["images"])


def test_make_eval_set_errors(tmp_path, make_eval_set):
    with pytest.raises(SystemExit, match=r"error: .*missing"):
        make_eval_set.main(["--out", str(tmp_path / "e.npz"), "--mnist", str(tmp_path / "missing.npz")])
    with pytest.raises(SystemExit):  # argparse: --per-count must be >= 1
        make_eval_set.main(["--out", str(tmp_path / "e.npz"), "--per-count", "0"])
    assert not (tmp_path / "e.npz").exists()
