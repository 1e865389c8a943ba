"""Scattered MNIST: determinism, split provenance, ground truth against the pixels, cache, config.

Two fake MNIST sources keep the tests fast and make every digit identifiable:

* ``fake_mnist()`` (from :mod:`test_data_provenance`): constant squares whose intensity encodes
  the split and the class (train 20..60, test 150..230);
* ``textured_digits()``: random 28x28 digits with a blank border, whose "labels" are their own
  indices, so each slot names the exact source digit and the whole canvas can be rebuilt from the
  ground truth.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_data import write_mnist_npz
from test_data_provenance import TEST_LEVELS, TRAIN_LEVELS, check_split, fake_mnist

from numpyro_air.data import (
    MultiMNIST,
    ScatteredMNISTConfig,
    generate_scattered_mnist,
    load_scattered_mnist,
    scattered_cache_path,
)
from numpyro_air.data import scattered_mnist as sm
from numpyro_air.data.multi_mnist import _resize

FIELDS = ("images", "counts", "labels", "boxes")


def textured_digits(m: int = 40, seed: int = 0) -> np.ndarray:
    """(m, 28, 28) uint8 random digits: low intensities (sums of 5 stay <= 255), blank border of
    varying width so tight boxes are smaller than the resized square."""
    rng = np.random.default_rng(seed)
    d = np.zeros((m, 28, 28), np.uint8)
    for i in range(m):
        t, b, lft, r = rng.integers(2, 8, size=4)
        d[i, t : 28 - b, lft : 28 - r] = rng.integers(1, 50, size=(28 - b - t, 28 - r - lft))
    return d


def assert_same(a: MultiMNIST, b: MultiMNIST) -> None:
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def test_shapes_dtypes_and_defaults():
    cfg = ScatteredMNISTConfig()
    assert (cfg.canvas_size, cfg.digit_size, cfg.min_digits, cfg.max_digits) == (48, 14, 1, 5)
    assert cfg.max_overlap == 14 * 14 // 2  # SPAIR's bound: half a digit's square
    ds = generate_scattered_mnist(textured_digits(), np.arange(40), 37, seed=1)
    assert isinstance(ds, MultiMNIST) and len(ds) == 37
    assert ds.images.shape == (37, 48, 48) and ds.images.dtype == np.uint8
    assert ds.counts.shape == (37,) and ds.counts.dtype == np.int32
    assert ds.labels.shape == (37, 5) and ds.labels.dtype == np.int32
    assert ds.boxes.shape == (37, 5, 4) and ds.boxes.dtype == np.float32
    assert ds.max_digits == 5


def test_determinism_by_seed():
    digits, labels = textured_digits(), np.arange(40)
    a = generate_scattered_mnist(digits, labels, 30, seed=7)
    b = generate_scattered_mnist(digits, labels, 30, seed=7)
    c = generate_scattered_mnist(digits, labels, 30, seed=8)
    assert_same(a, b)
    assert not np.array_equal(a.images, c.images)


def test_counts_uniform_over_min_max():
    ds = generate_scattered_mnist(textured_digits(), np.arange(40), 3000, min_digits=2, max_digits=6, seed=0)
    assert ds.counts.min() == 2 and ds.counts.max() == 6
    freq = np.bincount(ds.counts, minlength=7)[2:] / len(ds)
    np.testing.assert_allclose(freq, 0.2, atol=0.035)
    assert np.all(np.bincount(ds.counts, minlength=7)[:2] == 0)


@pytest.mark.parametrize("canvas,size,lo,hi", [(48, 14, 1, 5), (40, 20, 0, 3), (14, 14, 1, 1)])
def test_ground_truth_rebuilds_the_canvas(canvas, size, lo, hi):
    """Boxes lie inside the canvas, are the tight box of the resized digit, and summing every slot's
    resized source digit at the position implied by its box gives back the canvas exactly (so the
    pixels inside each box are that digit wherever no other digit overlaps)."""
    digits = textured_digits()
    ds = generate_scattered_mnist(
        digits, np.arange(40), 60, canvas_size=canvas, digit_size=size, min_digits=lo, max_digits=hi, seed=3
    )
    assert lo <= ds.counts.min() and ds.counts.max() <= hi
    overlapped = 0
    for i in range(len(ds)):
        c = int(ds.counts[i])
        assert np.all(ds.labels[i, c:] == -1) and not ds.boxes[i, c:].any()
        rebuilt = np.zeros((canvas, canvas), np.int64)
        cover = np.zeros((canvas, canvas), np.int64)
        for j in range(c):
            x0, y0, w, h = (int(v) for v in ds.boxes[i, j])
            assert 0 <= x0 and 0 <= y0 and x0 + w <= canvas and y0 + h <= canvas
            assert 0 < w <= size and 0 < h <= size
            patch, (left, top, right, bottom) = _resize(digits[ds.labels[i, j]], size)
            assert (w, h) == (right - left, bottom - top)
            r, q = y0 - top, x0 - left  # the digit's square, fully inside the canvas
            assert 0 <= r <= canvas - size and 0 <= q <= canvas - size
            rebuilt[r : r + size, q : q + size] += patch
            cover[r : r + size, q : q + size] += 1
        np.testing.assert_array_equal(ds.images[i], rebuilt, err_msg=f"image {i}")
        overlapped += int((cover > 1).any())
    if hi >= 3 and canvas < 2 * size + 20:
        assert overlapped > 0  # overlapping digits do occur (they are summed)


def _squares(ds: MultiMNIST, i: int, digits: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of image i's digit squares, in drawing order, from its boxes and labels."""
    rows, cols = [], []
    for j in range(int(ds.counts[i])):
        x0, y0, _, _ = (int(v) for v in ds.boxes[i, j])
        _, (left, top, _, _) = _resize(digits[ds.labels[i, j]], size)
        rows.append(y0 - top)
        cols.append(x0 - left)
    return np.array(rows), np.array(cols)


def _worst_overlap(ds: MultiMNIST, digits: np.ndarray, size: int) -> np.ndarray:
    """(N,) per image: the most pixels one digit's square shares with the squares before it."""
    worst = np.zeros(len(ds), np.int64)
    for i in range(len(ds)):
        r, c = _squares(ds, i, digits, size)
        for j in range(1, len(r)):
            shared = np.maximum(size - np.abs(r[:j] - r[j]), 0) * np.maximum(size - np.abs(c[:j] - c[j]), 0)
            worst[i] = max(worst[i], int(shared.sum()))
    return worst


@pytest.mark.parametrize("bound", [98, 0])
def test_max_overlap_bounds_the_shared_pixels(bound):
    """SPAIR's bound: each digit's square shares at most ``max_overlap`` pixels with the squares
    drawn before it (summed), checked from the ground truth; without it the same seed breaks it."""
    digits = textured_digits()
    kw = dict(min_digits=3, max_digits=6, seed=4)
    bounded = generate_scattered_mnist(digits, np.arange(40), 80, max_overlap=bound, **kw)
    free = generate_scattered_mnist(digits, np.arange(40), 80, max_overlap=None, **kw)
    assert _worst_overlap(bounded, digits, 14).max() <= bound
    assert (_worst_overlap(free, digits, 14) > bound).sum() >= 10
    np.testing.assert_array_equal(bounded.counts, free.counts)  # counts are drawn first, as before
    if bound == 0:  # squares apart: every present slot's pixels are its own digit's
        assert bounded.images.max() <= 49 < free.images.max()


def test_max_overlap_that_never_binds_draws_the_same_scenes():
    """A bound no scene can exceed moves no digit and uses no randomness: the output equals the
    unbounded generator's (so ``max_overlap=None`` draws the scenes of before the bound)."""
    digits = textured_digits()
    a = generate_scattered_mnist(digits, np.arange(40), 40, max_overlap=14 * 14 * 4, seed=2)
    assert_same(a, generate_scattered_mnist(digits, np.arange(40), 40, max_overlap=None, seed=2))


def test_real_mnist_digits_fit_their_boxes():
    from numpyro_air.data import load_mnist

    x, y, _, _ = load_mnist(None)
    ds = generate_scattered_mnist(x[:500], y[:500], 40, seed=0)
    present = np.arange(5)[None, :] < ds.counts[:, None]
    assert set(ds.labels[present].tolist()) <= set(range(10))
    w, h = ds.boxes[..., 2][present], ds.boxes[..., 3][present]
    assert w.min() > 0 and h.min() > 0 and w.max() <= 14 and h.max() <= 14
    assert h.max() >= 12  # MNIST digits fill most of the 20-px-high area of their 28x28 frame
    for i in range(len(ds)):  # every ink pixel lies in some box
        mask = np.zeros((48, 48), bool)
        for x0, y0, bw, bh in ds.boxes[i, : ds.counts[i]].astype(int):
            mask[y0 : y0 + bh, x0 : x0 + bw] = True
        assert not ds.images[i][~mask].any()
    assert ds.images.max() > 200


def test_splits_come_from_their_own_mnist_digits(tmp_path):
    source = write_mnist_npz(tmp_path / "fake_mnist.npz", fake_mnist())
    cfg = ScatteredMNISTConfig(num_train=40, num_test=30, max_digits=3, seed=2)
    train, test = load_scattered_mnist(cfg, source=source, cache_dir=tmp_path / "cache", progress=False)
    assert (len(train), len(test)) == (40, 30)
    check_split(train, set(range(5)), TRAIN_LEVELS, max_pixel=3 * max(TRAIN_LEVELS))
    check_split(test, set(range(5, 10)), TEST_LEVELS, max_pixel=max(TEST_LEVELS))
    assert len(set(train.labels[train.labels >= 0].tolist())) >= 3
    assert len(set(test.labels[test.labels >= 0].tolist())) >= 3
    # every fake digit is a full 14x14 square: the boxes are exactly the digit size
    for ds in (train, test):
        present = np.arange(3)[None, :] < ds.counts[:, None]
        assert np.all(ds.boxes[..., 2:][present] == 14)


def test_cache_written_once_reused_and_regenerated_when_corrupt(tmp_path, monkeypatch, caplog):
    source = write_mnist_npz(tmp_path / "fake_mnist.npz", fake_mnist())
    cache = tmp_path / "cache"
    cfg = ScatteredMNISTConfig(num_train=12, num_test=8, max_digits=3, seed=4)
    calls = []
    real = sm.generate_scattered_mnist

    def counting(*args, **kwargs):
        calls.append(kwargs["desc"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sm, "generate_scattered_mnist", counting)
    first = load_scattered_mnist(cfg, source=source, cache_dir=cache, progress=False)
    assert len(calls) == 2
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("scattered_mnist_v1_")
    mtime = files[0].stat().st_mtime_ns
    second = load_scattered_mnist(cfg, source=source, cache_dir=cache, progress=False)
    assert len(calls) == 2 and files[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    for a, b in zip(first, second):
        assert_same(a, b)

    # a flipped byte in the file: regenerated (same arrays), with a warning
    raw = bytearray(files[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    files[0].write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger=sm.__name__):
        third = load_scattered_mnist(cfg, source=source, cache_dir=cache, progress=False)
    assert len(calls) == 4 and "unusable" in caplog.text
    for a, b in zip(first, third):
        assert_same(a, b)
    assert len(calls) == 4
    load_scattered_mnist(cfg, source=source, cache_dir=cache, progress=False)
    assert len(calls) == 4  # the regenerated file is good

    # a valid file for another config under this config's name: rejected by its metadata
    other = ScatteredMNISTConfig(num_train=12, num_test=8, max_digits=3, seed=5)
    load_scattered_mnist(other, source=source, cache_dir=cache, progress=False)
    assert len(calls) == 6
    path, other_path = (scattered_cache_path(c, sm._source_id(source, fake_mnist()), cache) for c in (cfg, other))
    assert path == files[0]
    other_path.replace(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=sm.__name__):
        fourth = load_scattered_mnist(cfg, source=source, cache_dir=cache, progress=False)
    assert len(calls) == 8 and "metadata mismatch" in caplog.text
    for a, b in zip(first, fourth):
        assert_same(a, b)


def test_cache_path_keyed_by_every_field():
    base = ScatteredMNISTConfig()
    changes = dict(canvas_size=50, digit_size=12, min_digits=0, max_digits=6, num_train=5, num_test=5, seed=1, max_overlap=None)
    assert "max_overlap" not in ScatteredMNISTConfig(max_overlap=None).to_dict()  # unbounded: the keys they had
    paths = {scattered_cache_path(base, "m", "/c")}
    for name, value in changes.items():
        paths.add(scattered_cache_path(ScatteredMNISTConfig(**{name: value}), "m", "/c"))
    paths.add(scattered_cache_path(base, "other-mnist", "/c"))
    assert len(paths) == len(changes) + 2


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(digit_size=49), "digit_size=49 is larger than canvas_size=48"),
        (dict(canvas_size=10), "digit_size=14 is larger than canvas_size=10"),
        (dict(min_digits=4, max_digits=3), "min_digits=4 is larger than max_digits=3"),
        (dict(min_digits=-1), "min_digits must be >= 0"),
        (dict(max_digits=2.5), "max_digits must be an int"),
        (dict(digit_size=0), "digit_size must be >= 1"),
        (dict(canvas_size=True), "canvas_size must be an int"),
        (dict(num_train=-1), "num_train must be >= 0"),
        (dict(num_test="5"), "num_test must be an int"),
        (dict(seed=-3), "seed must be >= 0"),
        (dict(max_overlap=-1), "max_overlap must be >= 0"),
        (dict(max_overlap=9.5), "max_overlap must be an int"),
    ],
)
def test_config_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScatteredMNISTConfig(**kwargs)


def test_generate_rejects_bad_arguments():
    digits = textured_digits(5)
    with pytest.raises(ValueError, match="digit_size=30 is larger than canvas_size=20"):
        generate_scattered_mnist(digits, np.arange(5), 3, canvas_size=20, digit_size=30)
    with pytest.raises(ValueError, match="num_images must be >= 0"):
        generate_scattered_mnist(digits, np.arange(5), -1)
    with pytest.raises(sm.DataError, match="digits must be"):
        generate_scattered_mnist(digits.astype(np.float32), np.arange(5), 3)
    with pytest.raises(TypeError, match="ScatteredMNISTConfig"):
        load_scattered_mnist(object())  # type: ignore[arg-type]


def test_impossible_layout_raises(monkeypatch):
    """Two saturated full-canvas digits can never be summed without overflow: a clear DataError."""
    monkeypatch.setattr(sm, "_MAX_ATTEMPTS", 20)
    digits = np.full((3, 28, 28), 200, np.uint8)
    with pytest.raises(sm.DataError, match="could not place 2 digits"):
        generate_scattered_mnist(digits, np.arange(3), 2, canvas_size=14, min_digits=2, max_digits=2)
