"""Multi-dSprites generator: determinism, ground truth against pixels, shapes and the cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from numpyro_air.data import (
    SHAPES,
    MultiDSprites,
    MultiDSpritesConfig,
    dsprites_cache_path,
    generate_multi_dsprites,
    load_multi_dsprites,
    validate_eval_arrays,
)
from numpyro_air.data import dsprites as ds_mod
from numpyro_air.data.dsprites import _render


@pytest.fixture(scope="module")
def scenes() -> MultiDSprites:
    return generate_multi_dsprites(3000, seed=7)


def _arrays(d: MultiDSprites) -> tuple[np.ndarray, ...]:
    return d.images, d.counts, d.labels, d.boxes


def test_deterministic_by_seed():
    a = generate_multi_dsprites(40, seed=3)
    b = generate_multi_dsprites(40, seed=3)
    c = generate_multi_dsprites(40, seed=4)
    for x, y in zip(_arrays(a), _arrays(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images, c.images)


def test_shapes_dtypes_and_eval_layout(scenes):
    n, k = 3000, 3
    assert len(scenes) == n and scenes.max_objects == k
    assert scenes.images.shape == (n, 64, 64, 3) and scenes.images.dtype == np.uint8
    assert scenes.counts.shape == (n,) and scenes.counts.dtype == np.int32
    assert scenes.labels.shape == (n, k) and scenes.labels.dtype == np.int32
    assert scenes.boxes.shape == (n, k, 4) and scenes.boxes.dtype == np.float32
    validate_eval_arrays(scenes.images, scenes.counts, scenes.boxes, scenes.labels)
    present = np.arange(k)[None, :] < scenes.counts[:, None]
    assert np.all((scenes.labels >= 0) == present) and np.all(scenes.labels < len(SHAPES))
    assert np.all(scenes.boxes[~present] == 0)
    sub = scenes.subset(slice(0, 5))
    assert len(sub) == 5 and sub.images_float().dtype == np.float32


def test_counts_uniform(scenes):
    observed = np.bincount(scenes.counts, minlength=4)
    assert observed.size == 4 and scenes.counts.min() >= 0
    expected = len(scenes) / 4
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 16.27, observed  # chi-square, 3 dof, p = 0.001


def test_boxes_inside_canvas_and_sized(scenes):
    present = np.arange(3)[None, :] < scenes.counts[:, None]
    x0, y0, w, h = (scenes.boxes[present][:, i] for i in range(4))
    assert np.all(x0 >= 0) and np.all(y0 >= 0) and np.all(x0 + w <= 64) and np.all(y0 + h <= 64)
    big = np.maximum(w, h)
    # unrotated larger side in [9, 18]; rotation can grow it to sqrt(2) x, or shrink the
    # ellipse's to ~0.8 x; anti-aliasing adds up to a pixel per side
    assert big.min() >= 0.75 * 9 and big.max() <= 18 * np.sqrt(2) + 2
    assert np.all(np.minimum(w, h) >= 4)
    assert 9 <= np.median(big) <= 24


def test_ground_truth_matches_pixels(scenes):
    lit = scenes.images.max(axis=-1) > 0
    for i in range(300):
        c = int(scenes.counts[i])
        covered = np.zeros((64, 64), dtype=bool)
        for j in range(c):
            x0, y0, w, h = (int(v) for v in scenes.boxes[i, j])
            inside = lit[i, y0 : y0 + h, x0 : x0 + w]
            assert inside.sum() > 0
            # tight: the box's border rows and columns are lit (by it or an occluder)
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0 : y0 + h, x0 : x0 + w] = True
        assert not np.any(lit[i] & ~covered), f"scene {i} has lit pixels outside its boxes"
        if c == 0:
            assert not scenes.images[i].any()
        if c == 1:  # a lone sprite's box is exactly the lit pixels' tight box
            rows, cols = np.nonzero(lit[i])
            box = (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
            np.testing.assert_array_equal(scenes.boxes[i, 0], box)


def test_colours_saturated(scenes):
    singles = np.flatnonzero(scenes.counts == 1)[:200]
    for i in singles:
        x0, y0, w, h = (int(v) for v in scenes.boxes[i, 0])
        patch = scenes.images[i, y0 : y0 + h, x0 : x0 + w].reshape(-1, 3).astype(int)
        brightest = patch[patch.max(axis=1).argmax()]
        assert brightest.max() >= 125  # value >= 0.5 at full coverage
        assert brightest.max() - brightest.min() >= 0.45 * brightest.max()  # saturation >= 0.5


def test_all_shapes_with_distinct_fill(scenes):
    singles = scenes.counts == 1
    labels = scenes.labels[singles, 0]
    assert set(labels.tolist()) == set(range(len(SHAPES)))
    lit = scenes.images[singles].max(axis=-1) > 0
    boxes = scenes.boxes[singles, 0]
    fill = lit.reshape(len(lit), -1).sum(axis=1) / (boxes[:, 2] * boxes[:, 3])
    mean = {SHAPES[s]: float(fill[labels == s].mean()) for s in range(len(SHAPES))}
    assert mean["square"] > mean["triangle"] + 0.1, mean
    # unrotated and large, the shapes fill their boxes 1, pi/4, ~0.61 and 1/2 of the area
    area = {}
    for s, name in enumerate(SHAPES):
        alpha, _, _ = _render(s, 40.0, 0.0, 32.0, 32.0, 64, 4)
        rows, cols = np.nonzero(alpha >= 0.5)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        area[name] = float((alpha >= 0.5).sum()) / box
    assert area["square"] > 0.97 and 0.74 < area["ellipse"] < 0.83, area
    assert 0.55 < area["heart"] < 0.67 and 0.45 < area["triangle"] < 0.54, area


def test_train_and_test_streams_differ(tmp_path):
    cfg = MultiDSpritesConfig(num_train=30, num_test=30, seed=5)
    train, test = load_multi_dsprites(cfg, cache_dir=tmp_path, progress=False)
    assert len(train) == 30 and len(test) == 30
    assert not np.array_equal(train.images, test.images)
    assert not np.array_equal(train.counts, test.counts)
    again = load_multi_dsprites(MultiDSpritesConfig(num_train=30, num_test=30, seed=6), cache_dir=tmp_path, progress=False)
    assert not np.array_equal(again[0].images, train.images)


def test_cache_written_once_and_reused(tmp_path, monkeypatch):
    cfg = MultiDSpritesConfig(num_train=20, num_test=10, max_objects=2, seed=1)
    train, test = load_multi_dsprites(cfg, cache_dir=tmp_path, progress=False)
    path = dsprites_cache_path(cfg, tmp_path)
    assert path.exists() and list(tmp_path.iterdir()) == [path]

    def boom(*args, **kwargs):
        raise AssertionError("regenerated despite a valid cache")

    monkeypatch.setattr(ds_mod, "generate_multi_dsprites", boom)
    train2, test2 = load_multi_dsprites(cfg, cache_dir=tmp_path, progress=False)
    for x, y in zip(_arrays(train) + _arrays(test), _arrays(train2) + _arrays(test2)):
        np.testing.assert_array_equal(x, y)
    assert dsprites_cache_path(MultiDSpritesConfig(num_train=20, num_test=10, max_objects=2, seed=2), tmp_path) != path


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_corrupt_cache_regenerated(tmp_path, caplog, damage):
    cfg = MultiDSpritesConfig(num_train=12, num_test=6, seed=2)
    train, _ = load_multi_dsprites(cfg, cache_dir=tmp_path, progress=False)
    path = dsprites_cache_path(cfg, tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not an npz")
    else:  # valid npz whose arrays no longer match the checksum
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["train_images"] = arrays["train_images"].copy()
        arrays["train_images"][0, 0, 0, 0] ^= 1
        np.savez(path, **arrays)
    with caplog.at_level(logging.WARNING, logger=ds_mod.__name__):
        train2, _ = load_multi_dsprites(cfg, cache_dir=tmp_path, progress=False)
    assert "unusable" in caplog.text
    np.testing.assert_array_equal(train.images, train2.images)
    ds_mod._read_cache(path, cfg)  # rewritten and valid


def test_invalid_parameters():
    with pytest.raises(ValueError, match="min_size"):
        MultiDSpritesConfig(min_size=20.0, max_size=10.0)
    with pytest.raises(ValueError, match="canvas_size"):
        MultiDSpritesConfig(canvas_size=20)
    with pytest.raises(ValueError, match="max_objects"):
        generate_multi_dsprites(3, max_objects=-1)
    with pytest.raises(TypeError):
        load_multi_dsprites("multi-dsprites")  # type: ignore[arg-type]


def test_other_canvas_and_max_objects():
    d = generate_multi_dsprites(50, max_objects=5, canvas_size=40, min_size=6.0, max_size=10.0, seed=0)
    assert d.images.shape == (50, 40, 40, 3) and d.max_objects == 5 and d.counts.max() <= 5
