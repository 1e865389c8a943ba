"""Provenance of the multi-MNIST splits: through the real data path (:func:`load_multi_mnist` with a
fake MNIST source and a temporary cache), the training canvases are built only from MNIST *train*
digits and labels, and the held-out canvases only from MNIST *test* digits and labels.

The fake MNIST makes every source digit identifiable from its pixels: each digit is a full 28x28
square of one constant intensity (Pillow's bicubic resize keeps a constant image exactly constant),
and the intensity encodes both the split and the label:

* train digits have labels 0..4 and intensity 20 + 10 * label (20..60; two overlapping ones sum to
  at most 120);
* test digits have labels 5..9 and intensity 150 + 20 * (label - 5) (150..230; two of them overlap
  above 255, so the generator redraws such placements: test canvases hold only non-overlapping
  test digits).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_data import write_idx_dir, write_mnist_npz

from numpyro_air.data import MultiMNIST, MultiMNISTConfig, load_multi_mnist

N_TRAIN_DIGITS, N_TEST_DIGITS = 30, 20
TRAIN_LABELS = np.arange(N_TRAIN_DIGITS) % 5  # 0..4
TEST_LABELS = 5 + np.arange(N_TEST_DIGITS) % 5  # 5..9


def level(label):
    """The constant intensity of a source digit of class ``label`` (train: 0..4, test: 5..9)."""
    label = np.asarray(label)
    return np.where(label < 5, 20 + 10 * label, 150 + 20 * (label - 5))


TRAIN_LEVELS = set(level(np.arange(5)).tolist())  # {20, 30, 40, 50, 60}
TEST_LEVELS = set(level(np.arange(5, 10)).tolist())  # {150, 170, 190, 210, 230}


def fake_mnist():
    def digits(labels):
        return np.broadcast_to(level(labels).astype(np.uint8)[:, None, None], (len(labels), 28, 28)).copy()

    return (digits(TRAIN_LABELS), TRAIN_LABELS.astype(np.uint8), digits(TEST_LABELS), TEST_LABELS.astype(np.uint8))


def check_split(ds: MultiMNIST, labels_allowed: set, levels_allowed: set, max_pixel: int):
    """Every digit of every canvas comes from the split whose labels/levels are given."""
    assert len(ds) > 0 and ds.counts.max() >= 1
    present = ds.labels[ds.labels >= 0]
    assert set(present.tolist()) <= labels_allowed, sorted(set(present.tolist()) - labels_allowed)
    values = set(np.unique(ds.images).tolist()) - {0}
    assert values and max(values) <= max_pixel and min(values) >= min(levels_allowed), sorted(values)
    n_checked = 0
    for i in range(len(ds)):
        c = int(ds.counts[i])
        assert np.all(ds.labels[i, c:] == -1)
        if c == 0:
            assert not ds.images[i].any()
            continue
        covered = np.zeros(ds.images[i].shape, bool)
        regions = []
        for j in range(c):
            x0, y0, w, h = (int(v) for v in ds.boxes[i, j])
            box = np.zeros_like(covered)
            box[y0 : y0 + h, x0 : x0 + w] = True
            regions.append(box)
            covered |= box
        assert not ds.images[i][~covered].any()  # nothing outside the digits' boxes
        for j in range(c):
            others = np.zeros_like(covered)
            for k in range(c):
                if k != j:
                    others |= regions[k]
            own = regions[j] & ~others
            # where only digit j lies, the canvas shows that digit's intensity: the digit's pixels,
            # its label and its split agree
            if own.any():
                lab = int(ds.labels[i, j])
                assert int(level(lab)) in levels_allowed
                np.testing.assert_array_equal(ds.images[i][own], level(lab), err_msg=f"image {i} slot {j}")
                n_checked += 1
    assert n_checked >= len(ds) // 2  # the per-digit check really ran


@pytest.mark.parametrize("source_kind", ["npz", "idx"])
def test_train_and_test_canvases_come_from_their_own_mnist_split(tmp_path, source_kind):
    arrays = fake_mnist()
    if source_kind == "npz":
        source = write_mnist_npz(tmp_path / "fake_mnist.npz", arrays)
    else:
        source = write_idx_dir(tmp_path / "fake_idx", arrays, gz=True)
    cfg = MultiMNISTConfig(num_train=48, num_test=32, seed=5)
    cache = tmp_path / "cache"
    for attempt in ("generated", "cached"):  # the cache round trip must keep the splits apart too
        train, test = load_multi_mnist(cfg, source=source, cache_dir=cache, progress=False)
        assert len(train) == 48 and len(test) == 32, attempt
        check_split(train, set(range(5)), TRAIN_LEVELS, max_pixel=2 * max(TRAIN_LEVELS))
        check_split(test, set(range(5, 10)), TEST_LEVELS, max_pixel=max(TEST_LEVELS))
        # and each split does use digits of several classes (not one repeated digit)
        assert len(set(train.labels[train.labels >= 0].tolist())) >= 3
        assert len(set(test.labels[test.labels >= 0].tolist())) >= 3
    assert len(list(cache.iterdir())) == 1


def test_pretrained_heldout_scenes_come_from_mnist_test_digits(monkeypatch):
    """``pretrained.heldout_scenes`` (the scenes the shipped weights are scored on) is built from
    the MNIST *test* split only: with the fake MNIST in place of the embedded one, every digit of
    every scene is a test digit (labels 5..9, test intensities), and several classes occur."""
    import numpyro_air.data as data_pkg
    from numpyro_air import pretrained_model

    calls = []

    def fake_load_mnist(source=None):
        calls.append(source)
        return fake_mnist()

    monkeypatch.setattr(data_pkg, "load_mnist", fake_load_mnist)
    scenes = pretrained_model.heldout_scenes(40, seed=3)
    assert calls == [None]  # the embedded MNIST (here the fake one) was read once
    assert len(scenes) == 40 and scenes.images.shape == (40, 50, 50)
    check_split(scenes, set(range(5, 10)), TEST_LEVELS, max_pixel=max(TEST_LEVELS))
    assert len(set(scenes.labels[scenes.labels >= 0].tolist())) >= 3
