"""Tests of numpyro_air.data: MNIST sources, multi-MNIST generation and cache, batches, eval files."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import numpyro_air.data.multi_mnist as mm
from numpyro_air.data import (
    MNIST_SHA256,
    DataError,
    DataNotFoundError,
    EvalSet,
    MultiMNIST,
    MultiMNISTConfig,
    batch_at_step,
    batch_indices,
    cache_path,
    default_cache_dir,
    epoch_permutation,
    generate_multi_mnist,
    iterate_batches,
    load_eval_npz,
    load_mnist,
    load_multi_mnist,
    mnist_fingerprint,
    save_eval_npz,
    steps_per_epoch,
    to_float,
)
from numpyro_air.data.mnist import CANONICAL_FINGERPRINT, array_sha256

TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def big(mnist):
    """The one large generation of the suite: 3000 canvases from MNIST train digits."""
    return generate_multi_mnist(mnist[0], mnist[1], 3000, seed=11)


def synthetic_mnist(n_train: int = 40, n_test: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)

    def digits(n):
        d = np.zeros((n, 28, 28), np.uint8)
        strokes = rng.integers(1, 256, size=(n, 20, 20)) * (rng.random((n, 20, 20)) > 0.6)
        d[:, 4:24, 4:24] = strokes.astype(np.uint8)
        return d

    return (
        digits(n_train),
        (np.arange(n_train) % 10).astype(np.uint8),
        digits(n_test),
        (np.arange(n_test) % 10).astype(np.uint8),
    )


def write_idx(path: Path, array: np.ndarray, gz: bool, magic: int | None = None) -> None:
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


IDX_NAMES = {
    False: ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    True: ["train-images.idx3-ubyte", "train-labels.idx1-ubyte", "t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte"],
}


def write_idx_dir(directory: Path, arrays, gz: bool = False, dotted: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, a in zip(IDX_NAMES[dotted], arrays):
        write_idx(directory / (name + (".gz" if gz else "")), a, gz)
    return directory


def write_mnist_npz(path: Path, arrays, **overrides) -> Path:
    d = dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays))
    d.update(overrides)
    d = {k: v for k, v in d.items() if v is not None}
    np.savez(path, **d)
    return path


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1


def pil_resize(digit: np.ndarray, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize((w, w), Image.Resampling.BICUBIC))


# ------------------------------------------------------------------------------------------------
# MNIST sources
# ------------------------------------------------------------------------------------------------


def test_embedded_mnist_is_canonical(mnist):
    x_train, y_train, x_test, y_test = mnist
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert all(a.dtype == np.uint8 for a in mnist)
    assert np.bincount(y_train, minlength=10).tolist() == TRAIN_LABEL_COUNTS
    assert np.bincount(y_test, minlength=10).tolist() == TEST_LABEL_COUNTS
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    for name, a in zip(("train_images", "train_labels", "test_images", "test_labels"), mnist):
        assert array_sha256(a) == MNIST_SHA256[name], name
    assert MNIST_SHA256["train_images"] == "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757"
    assert mnist_fingerprint(mnist) == CANONICAL_FINGERPRINT
    assert abs(x_train.mean() / 255 - 0.1306604763) < 1e-9


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_idx_source(tmp_path, gz, dotted):
    arrays = synthetic_mnist()
    loaded = load_mnist(write_idx_dir(tmp_path / "idx", arrays, gz=gz, dotted=dotted))
    for a, b in zip(arrays, loaded):
        assert b.dtype == np.uint8 and np.array_equal(a, b)


def test_idx_bad_magic(tmp_path):
    d = write_idx_dir(tmp_path / "idx", synthetic_mnist())
    write_idx(d / "train-images-idx3-ubyte", synthetic_mnist()[0], gz=False, magic=0x00000801)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*magic.*0x00000803"):
        load_mnist(d)


def test_idx_truncated_and_corrupt_gzip(tmp_path):
    d = write_idx_dir(tmp_path / "idx", synthetic_mnist())
    f = d / "t10k-labels-idx1-ubyte"
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*truncated"):
        load_mnist(d)
    d2 = write_idx_dir(tmp_path / "idx2", synthetic_mnist(), gz=True)
    g = d2 / "train-labels-idx1-ubyte.gz"
    g.write_bytes(g.read_bytes()[:15])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*gzip"):
        load_mnist(d2)


def test_idx_missing_file_and_missing_dir(tmp_path):
    d = write_idx_dir(tmp_path / "idx", synthetic_mnist())
    (d / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match=r"idx.*t10k-images-idx3-ubyte") as e:
        load_mnist(d)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError, match="nowhere.*does not exist.*IDX"):
        load_mnist(missing)


def test_idx_label_out_of_range(tmp_path):
    x_tr, y_tr, x_te, y_te = synthetic_mnist()
    y_tr = y_tr.copy()
    y_tr[3] = 10
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9"):
        load_mnist(write_idx_dir(tmp_path / "idx", (x_tr, y_tr, x_te, y_te)))


def test_npz_source(tmp_path):
    arrays = synthetic_mnist()
    p = write_mnist_npz(tmp_path / "m.npz", arrays, y_train=arrays[1].astype(np.int64))
    loaded = load_mnist(p)
    for a, b in zip(arrays, loaded):
        assert b.dtype == np.uint8 and np.array_equal(a, b)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ({"y_test": None}, r"missing keys \['y_test'\]"),
        ({"x_train": np.zeros((40, 28, 27), np.uint8)}, r"shape \(N, 28, 28\)"),
        ({"x_train": np.zeros((40, 28, 28), np.float32)}, "dtype float32"),
        ({"y_train": np.zeros((39,), np.uint8)}, "40 images but 39 labels"),
        ({"y_test": np.full((20,), -1, np.int64)}, r"0\.\.9"),
        ({"x_test": np.zeros((0, 28, 28), np.uint8), "y_test": np.zeros((0,), np.uint8)}, "empty"),
    ],
)
def test_npz_source_errors(tmp_path, override, pattern):
    p = write_mnist_npz(tmp_path / "m.npz", synthetic_mnist(), **override)
    with pytest.raises(DataError, match=pattern) as e:
        load_mnist(p)
    assert str(p) in str(e.value)


def test_corrupt_npz_and_unknown_file(tmp_path):
    p = tmp_path / "m.npz"
    p.write_bytes(b"PK\x03\x04 definitely not a zip archive" * 10)
    with pytest.raises(DataError, match=r"m\.npz.*unreadable"):
        load_mnist(p)
    q = tmp_path / "m.txt"
    q.write_text("hello")
    with pytest.raises(DataError, match=r"m\.txt.*unrecognised"):
        load_mnist(q)


# ------------------------------------------------------------------------------------------------
# config and generation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_digits": -1}, "max_digits"),
        ({"max_digits": 1.5}, "max_digits"),
        ({"canvas_size": 0}, "canvas_size"),
        ({"canvas_size": 20}, "canvas_size"),  # smaller than int(28 / 1.3) = 21
        ({"num_train": -1}, "num_train"),
        ({"num_test": -5}, "num_test"),
        ({"scale_mean": 0.0}, "scale_mean"),
        ({"scale_mean": float("nan")}, "scale_mean"),
        ({"scale_sd": -0.1}, "scale_sd"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"crowding": -1}, "crowding"),
        ({"crowding": 1}, "crowding"),  # fewer than max_digits
        ({"max_digits": 3, "crowding": 2}, "crowding"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MultiMNISTConfig(**kwargs)


def test_config_defaults_and_frozen():
    c = MultiMNISTConfig()
    assert (c.max_digits, c.canvas_size, c.num_train, c.num_test, c.scale_mean, c.scale_sd, c.seed) == (
        2,
        50,
        60000,
        10000,
        1.3,
        0.1,
        0,
    )
    with pytest.raises(AttributeError):
        c.seed = 1  # type: ignore[misc]
    assert MultiMNISTConfig(max_digits=3, canvas_size=20, scale_mean=2.0).max_digits == 3


def test_generated_structure_and_counts_uniform(big):
    n = len(big)
    assert big.images.shape == (n, 50, 50) and big.images.dtype == np.uint8
    assert big.counts.dtype == np.int32 and big.labels.dtype == np.int32 and big.boxes.dtype == np.float32
    assert big.labels.shape == (n, 2) and big.boxes.shape == (n, 2, 4)
    observed = np.bincount(big.counts, minlength=3)
    assert observed.sum() == n and len(observed) == 3
    chi2 = (((observed - n / 3) ** 2) / (n / 3)).sum()
    assert chi2 < 13.8, observed  # p = 0.001 for 2 degrees of freedom
    present = np.arange(2)[None] < big.counts[:, None]
    assert np.all((big.labels >= 0) & (big.labels <= 9) | ~present)
    assert np.all(big.labels[~present] == -1) and np.all(big.boxes[~present] == 0)
    assert np.all(big.images[big.counts == 0] == 0)
    assert np.all(big.images.reshape(n, -1).max(1)[big.counts > 0] > 0)
    assert big.images.max() <= 255 and big.images.max() > 200


def test_boxes_consistent_with_pixels(big):
    h = big.images.shape[1]
    for i in range(len(big)):
        img, c = big.images[i], int(big.counts[i])
        covered = np.zeros(img.shape, bool)
        for j in range(c):
            x0, y0, w, hh = big.boxes[i, j].astype(int)
            assert np.array_equal(big.boxes[i, j], [x0, y0, w, hh])  # integral pixels
            assert w > 0 and hh > 0 and x0 >= 0 and y0 >= 0 and x0 + w <= h and y0 + hh <= h
            patch = img[y0 : y0 + hh, x0 : x0 + w]
            # tight: every edge row/column of the box has a non-zero pixel
            assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
            covered[y0 : y0 + hh, x0 : x0 + w] = True
        assert not img[~covered].any(), f"image {i}: non-zero pixels outside its boxes"
        if c == 1:
            assert tuple(big.boxes[i, 0].astype(int)) == tight_box(img > 0)


def test_placement_matches_pillow_bicubic(mnist):
    """One source digit and scale_sd=0: every digit is that digit resized to int(28/1.3)=21."""
    digit = mnist[0][:1]
    ds = generate_multi_mnist(digit, mnist[1][:1], 400, scale_sd=0.0, seed=3)
    ref = pil_resize(digit[0], 21)
    r0, c0 = np.flatnonzero(ref.any(1))[0], np.flatnonzero(ref.any(0))[0]
    offsets = []
    for i in range(len(ds)):
        c = int(ds.counts[i])
        canvas = np.zeros((50, 50), np.int64)
        for j in range(c):
            x0, y0 = ds.boxes[i, j, :2].astype(int)
            r, q = y0 - r0, x0 - c0
            assert 0 <= r <= 50 - 21 - 1 and 0 <= q <= 50 - 21 - 1
            canvas[r : r + 21, q : q + 21] += ref
            offsets += [r, q]
        assert canvas.max() <= 255
        assert np.array_equal(canvas, ds.images[i]), i
    assert ds.labels[ds.counts > 0, 0].tolist() == [int(mnist[1][0])] * int((ds.counts > 0).sum())
    assert min(offsets) == 0 and max(offsets) == 28  # offsets span [0, canvas - w - 1]


def test_overlap_rejection():
    """Solid 255 squares: any overlap would exceed 255, so accepted digits never overlap."""
    squares = np.full((5, 28, 28), 255, np.uint8)
    ds = generate_multi_mnist(squares, np.arange(5), 300, canvas_size=30, scale_mean=28 / 12.5, scale_sd=0.0, seed=0)
    two = np.flatnonzero(ds.counts == 2)
    assert len(two) > 50
    assert set(np.unique(ds.images).tolist()) <= {0, 255}
    for i in two:
        (ax, ay, aw, ah), (bx, by, bw, bh) = ds.boxes[i]
        assert aw == bw == 12
        overlap = ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
        assert not overlap, (i, ds.boxes[i])
        assert int(ds.images[i].astype(int).sum()) == 2 * 12 * 12 * 255


def test_rejection_gives_up_when_impossible(monkeypatch):
    monkeypatch.setattr(mm, "_MAX_ATTEMPTS", 300)
    squares = np.full((2, 28, 28), 255, np.uint8)
    with pytest.raises(DataError, match="could not place 2 digits.*300 draws"):
        generate_multi_mnist(squares, np.arange(2), 50, canvas_size=12, scale_mean=2.3, scale_sd=0.0, seed=0)


def test_generation_determinism_and_options(mnist):
    x, y = mnist[0][:2000], mnist[1][:2000]
    a = generate_multi_mnist(x, y, 200, seed=5)
    b = generate_multi_mnist(x, y, 200, seed=5)
    c = generate_multi_mnist(x, y, 200, seed=6)
    for f in ("images", "counts", "labels", "boxes"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert not np.array_equal(a.images, c.images)
    ss = np.random.SeedSequence(5)
    assert np.array_equal(
        generate_multi_mnist(x, y, 50, seed=ss).images, generate_multi_mnist(x, y, 50, seed=ss).images
    )  # seed sequence not consumed
    g = generate_multi_mnist(x, y, 300, max_digits=3, canvas_size=64, scale_mean=1.0, scale_sd=0.0, seed=1, progress=True)
    assert g.images.shape == (300, 64, 64) and g.labels.shape == (300, 3) and g.boxes.shape == (300, 3, 4)
    assert set(np.unique(g.counts).tolist()) == {0, 1, 2, 3}
    assert g.boxes[..., 2:].max() <= 28  # scale 1.0: digits keep 28 px
    empty = generate_multi_mnist(x, y, 0)
    assert empty.images.shape == (0, 50, 50) and len(empty) == 0
    with pytest.raises(ValueError, match="num_images"):
        generate_multi_mnist(x, y, -1)
    with pytest.raises(DataError, match="digits"):
        generate_multi_mnist(x.astype(np.float32), y, 3)


def test_multimnist_container(big):
    f = big.images_float()
    assert f.dtype == np.float32 and f.shape == big.images.shape and f.max() <= 1.0 and f.min() >= 0.0
    assert np.allclose(f * 255, big.images)
    sub = big.subset(slice(0, 10))
    assert len(sub) == 10 and sub.max_digits == 2
    with pytest.raises(DataError, match="counts"):
        MultiMNIST(big.images, big.counts.astype(np.int64), big.labels, big.boxes)
    with pytest.raises(DataError, match="boxes"):
        MultiMNIST(big.images, big.counts, big.labels, big.boxes[:, :1])


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------

SMALL = MultiMNISTConfig(num_train=60, num_test=30, seed=2)


@pytest.fixture
def npz_source(tmp_path):
    x_tr, y_tr, _, _ = synthetic_mnist()
    # the same digits for train and test: their canvases must still differ (different streams)
    return write_mnist_npz(tmp_path / "src.npz", (x_tr, y_tr, x_tr, y_tr))


def _same(a: MultiMNIST, b: MultiMNIST) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("images", "counts", "labels", "boxes"))


def _forbid_generation(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("regenerated although a valid cache exists")

    monkeypatch.setattr(mm, "generate_multi_mnist", boom)


def test_cache_roundtrip_and_train_test_streams(tmp_path, npz_source, monkeypatch):
    cache = tmp_path / "cache"
    cfg = MultiMNISTConfig(num_train=40, num_test=40, seed=2)
    train, test = load_multi_mnist(cfg, source=npz_source, cache_dir=cache, progress=False)
    assert len(train) == 40 and len(test) == 40
    assert not np.array_equal(train.images, test.images)  # same digits, different derived seeds
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].startswith("multi_mnist_v") and files[0].endswith(".npz")
    _forbid_generation(monkeypatch)
    train2, test2 = load_multi_mnist(cfg, source=npz_source, cache_dir=cache, progress=False)
    assert _same(train, train2) and _same(test, test2)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "tamper", "meta"])
def test_corrupt_cache_is_regenerated(tmp_path, npz_source, caplog, damage):
    cache = tmp_path / "cache"
    train, test = load_multi_mnist(SMALL, source=npz_source, cache_dir=cache, progress=False)
    (path,) = cache.iterdir()
    if damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if damage == "tamper":
            arrays["train_images"] = arrays["train_images"].copy()
            arrays["train_images"][0, 0, 0] ^= 1
        else:
            arrays["meta"] = np.array(str(arrays["meta"][()]).replace('"seed": 2', '"seed": 3'))
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    with caplog.at_level(logging.WARNING, logger="numpyro_air.data"):
        train2, test2 = load_multi_mnist(SMALL, source=npz_source, cache_dir=cache, progress=False)
    assert any("unusable" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    assert _same(train, train2) and _same(test, test2)
    assert [p.name for p in cache.iterdir()] == [path.name]  # rewritten in place, no temp files left
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="numpyro_air.data"):
        load_multi_mnist(SMALL, source=npz_source, cache_dir=cache, progress=False)
    assert not caplog.records  # the rewritten cache is valid


def test_cache_key_depends_on_every_parameter_and_source(tmp_path, npz_source):
    base = cache_path(SMALL, "src")
    variants = [
        MultiMNISTConfig(**{**SMALL.to_dict(), field: value})
        for field, value in [
            ("max_digits", 3),
            ("canvas_size", 51),
            ("num_train", 61),
            ("num_test", 31),
            ("scale_mean", 1.31),
            ("scale_sd", 0.11),
            ("seed", 3),
            ("crowding", 3),
        ]
    ]
    # crowding off keeps the key of Pyro's scenes (the caches written before the option existed)
    assert "crowding" not in SMALL.to_dict() and MultiMNISTConfig(**SMALL.to_dict(), crowding=3).to_dict()["crowding"] == 3
    names = {cache_path(c, "src").name for c in variants} | {base.name, cache_path(SMALL, "other").name}
    assert len(names) == len(variants) + 2
    assert cache_path(MultiMNISTConfig(scale_mean=1), "src") == cache_path(MultiMNISTConfig(scale_mean=1.0), "src")
    # a different MNIST source gives a different cache file
    cache = tmp_path / "cache"
    load_multi_mnist(SMALL, source=npz_source, cache_dir=cache, progress=False)
    other = write_mnist_npz(tmp_path / "other.npz", synthetic_mnist(seed=9))
    load_multi_mnist(SMALL, source=other, cache_dir=cache, progress=False)
    load_multi_mnist(MultiMNISTConfig(num_train=60, num_test=30, seed=4), source=npz_source, cache_dir=cache, progress=False)
    assert len(list(cache.iterdir())) == 3


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMPYRO_AIR_DATA", str(tmp_path / "data"))
    assert default_cache_dir() == tmp_path / "data"
    assert cache_path(SMALL, "x").parent == tmp_path / "data"
    monkeypatch.delenv("NUMPYRO_AIR_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "numpyro_air"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "numpyro_air"


def test_embedded_source_cache_hit_skips_mnist(tmp_path, monkeypatch):
    cfg = MultiMNISTConfig(num_train=20, num_test=10)
    train, _ = load_multi_mnist(cfg, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(mm, "load_mnist", lambda *a: (_ for _ in ()).throw(AssertionError("loaded MNIST")))
    _forbid_generation(monkeypatch)
    train2, _ = load_multi_mnist(cfg, cache_dir=tmp_path, progress=False)
    assert _same(train, train2)


# ------------------------------------------------------------------------------------------------
# batches
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_images():
    return np.random.default_rng(0).integers(0, 256, size=(103, 6, 5), dtype=np.uint8)


def test_batch_shapes_range_and_epochs(small_images):
    it = iterate_batches(small_images, 10, 0)
    assert steps_per_epoch(103, 10) == 10
    seen = []
    for _ in range(10):
        b = next(it)
        assert b.shape == (10, 6, 5) and b.dtype == np.float32 and 0.0 <= b.min() and b.max() <= 1.0
        seen.append(b)
    epoch0 = np.concatenate(seen)
    assert len({x.tobytes() for x in epoch0}) == 100  # no repeats within an epoch, tail dropped
    epoch1 = np.concatenate([next(it) for _ in range(10)])
    assert not np.array_equal(epoch0, epoch1)  # reshuffled
    idx0 = np.concatenate([batch_indices(103, 10, 0, s) for s in range(10)])
    assert np.array_equal(to_float(small_images[idx0]), epoch0)
    assert np.array_equal(idx0, epoch_permutation(103, 0, 0)[:100])
    assert not np.array_equal(epoch_permutation(103, 0, 0), epoch_permutation(103, 0, 1))
    assert not np.array_equal(epoch_permutation(103, 0, 0), epoch_permutation(103, 1, 0))


def test_batches_resume_determinism(small_images):
    full = list(iterate_batches(small_images, 8, 42, num_steps=40))
    resumed = list(iterate_batches(small_images, 8, 42, start_step=17, num_steps=23))
    assert len(full) == 40 and len(resumed) == 23
    for a, b in zip(full[17:], resumed):
        assert np.array_equal(a, b)
    for step in (0, 11, 12, 13, 39):  # 12 steps per epoch: covers epoch boundaries
        assert np.array_equal(batch_at_step(small_images, 8, 42, step), full[step])
    assert not np.array_equal(batch_at_step(small_images, 8, 43, 5), full[5])


def test_batches_accept_jax_keys_and_datasets(small_images, big):
    import jax

    k = jax.random.key(7)
    a = batch_at_step(small_images, 16, k, 9)
    assert np.array_equal(a, batch_at_step(small_images, 16, jax.random.key(7), 9))
    assert np.array_equal(a, batch_at_step(small_images, 16, jax.random.PRNGKey(7), 9))
    assert not np.array_equal(a, batch_at_step(small_images, 16, jax.random.key(8), 9))
    assert np.array_equal(next(iterate_batches(small_images, 16, k, start_step=9)), a)
    b = batch_at_step(big, 32, 0, 3)
    assert b.shape == (32, 50, 50) and np.array_equal(b, big.images_float()[batch_indices(len(big), 32, 0, 3)])
    floats = small_images.astype(np.float64) / 255
    assert np.allclose(batch_at_step(floats, 16, 1, 2), batch_at_step(small_images, 16, 1, 2))


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"batch_size": 200}, ValueError),
        ({"batch_size": 0}, ValueError),
        ({"step": -1}, ValueError),
        ({"seed": -3}, ValueError),
        ({"seed": True}, TypeError),
        ({"seed": np.array([0.5, 1.0])}, TypeError),
    ],
)
def test_batch_errors(small_images, kwargs, exc):
    args = {"batch_size": 10, "step": 0, "seed": 0, **kwargs}
    with pytest.raises(exc):
        batch_at_step(small_images, args["batch_size"], args["seed"], args["step"])


# ------------------------------------------------------------------------------------------------
# evaluation files
# ------------------------------------------------------------------------------------------------


def test_eval_npz_roundtrip(tmp_path, big):
    ds = big.subset(slice(0, 100))
    p = save_eval_npz(tmp_path / "sub" / "eval.npz", ds)
    assert p == tmp_path / "sub" / "eval.npz" and p.is_file()
    e = load_eval_npz(p)
    assert isinstance(e, EvalSet)
    assert e.images.dtype == np.float32 and np.array_equal(e.images, ds.images_float())
    assert e.counts.dtype == np.int32 and np.array_equal(e.counts, ds.counts)
    assert np.array_equal(e.boxes, ds.boxes) and np.array_equal(e.labels, ds.labels)
    with np.load(p) as z:
        assert z["images"].dtype == np.uint8 and sorted(z.files) == ["boxes", "counts", "images", "labels"]
    # minimal layout: float images, no boxes/labels
    q = tmp_path / "min.npz"
    np.savez(q, images=ds.images_float().astype(np.float64), counts=ds.counts.astype(np.int64))
    m = load_eval_npz(q)
    assert m.boxes is None and m.labels is None and m.images.dtype == np.float32
    assert np.allclose(m.images, e.images) and m.counts.dtype == np.int32
    save_eval_npz(tmp_path / "again.npz", m)
    assert load_eval_npz(tmp_path / "again.npz").boxes is None


def _eval_arrays():
    images = np.zeros((4, 10, 10), np.uint8)
    counts = np.array([0, 1, 2, 1], np.int32)
    boxes = np.zeros((4, 2, 4), np.float32)
    labels = np.array([[-1, -1], [3, -1], [1, 7], [0, -1]], np.int32)
    return {"images": images, "counts": counts, "boxes": boxes, "labels": labels}


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda d: d.pop("counts"), r"missing keys \['counts'\]"),
        (lambda d: d.pop("images"), r"missing keys \['images'\]"),
        (lambda d: d.update(images=np.zeros((4, 100), np.uint8)), r"'images' must have shape"),
        (lambda d: d.update(images=np.zeros((4, 10, 10), np.int16)), "uint8 or float"),
        (lambda d: d.update(images=np.full((4, 10, 10), np.nan, np.float32)), "NaN"),
        (lambda d: d.update(images=np.full((4, 10, 10), 2.0, np.float32)), r"\[0, 1\]"),
        (lambda d: d.update(counts=np.array([0, 1, 2], np.int32)), "3 entries but there are 4 images"),
        (lambda d: d.update(counts=np.array([0, 1, 2, 1], np.float32)), "integer dtype"),
        (lambda d: d.update(counts=np.array([0, -1, 2, 1])), ">= 0"),
        (lambda d: d.update(counts=np.array([0, 1, 3, 1])), "only K=2"),
        (lambda d: d.update(boxes=np.zeros((4, 2, 3), np.float32)), r"'boxes' must have shape"),
        (lambda d: d.update(boxes=np.full((4, 2, 4), np.nan, np.float32)), "'boxes' contain NaN"),
        (lambda d: d.update(boxes=-np.ones((4, 2, 4), np.float32)), "widths and heights"),
        (lambda d: d.update(labels=np.zeros((4, 3), np.int32)), "K=3 slots but 'boxes' has K=2"),
        (lambda d: d["labels"].__setitem__((2, 1), 10), r"0\.\.9"),
        (lambda d: d["labels"].__setitem__((0, 0), 4), "absent slots"),
    ],
)
def test_eval_npz_errors(tmp_path, change, pattern):
    d = _eval_arrays()
    change(d)
    p = tmp_path / "bad.npz"
    np.savez(p, **d)
    with pytest.raises(DataError, match=pattern) as e:
        load_eval_npz(p)
    assert str(p) in str(e.value)


def test_eval_npz_bad_files(tmp_path):
    with pytest.raises(DataNotFoundError, match="missing.npz"):
        load_eval_npz(tmp_path / "missing.npz")
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="junk.npz.*unreadable"):
        load_eval_npz(p)
    q = tmp_path / "single.npz"
    with open(q, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataError, match="single.npz.*not an .npz archive"):
        load_eval_npz(q)
    r = tmp_path / "obj.npz"
    np.savez(r, images=np.zeros((1, 2, 2), np.uint8), counts=np.array([None], dtype=object))
    with pytest.raises(DataError, match="obj.npz"):
        load_eval_npz(r)
    with pytest.raises(DataError, match="'counts'"):
        save_eval_npz(tmp_path / "w.npz", EvalSet(np.zeros((2, 3, 3), np.uint8), np.zeros(3, np.int32), None, None))
    assert not (tmp_path / "w.npz").exists()


def _closest_pair(ds: MultiMNIST, count: int) -> np.ndarray:
    """Distance (px) between the two closest digit-box centres of each ``count``-digit scene."""
    out = []
    for boxes in ds.boxes[ds.counts == count]:
        centres = boxes[:count, :2] + boxes[:count, 2:] / 2
        d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
        out.append(d[np.triu_indices(count, 1)].min())
    return np.asarray(out)


def test_crowded_pairs_are_spaced_like_three_digit_scenes(mnist):
    """crowding=3: the two digits of a 2-digit scene are the closest pair of three drawn, so their
    spacing follows the closest pair of Pyro's 3-digit scenes (two-sample KS test), not that of
    its 2-digit scenes; counts, labels and boxes stay consistent with the pixels."""
    from scipy.stats import ks_2samp

    x, y = mnist[2], mnist[3]
    three = _closest_pair(generate_multi_mnist(x, y, 2400, max_digits=3, seed=1), 3)
    two = _closest_pair(generate_multi_mnist(x, y, 1800, max_digits=2, seed=1), 2)
    crowded_set = generate_multi_mnist(x, y, 1800, max_digits=2, seed=1, crowding=3)
    crowded = _closest_pair(crowded_set, 2)
    assert len(three) > 450 and len(crowded) > 450
    assert ks_2samp(three, crowded).pvalue > 0.01, (three.mean(), crowded.mean())
    assert ks_2samp(two, crowded).pvalue < 1e-8 and crowded.mean() < two.mean() - 3
    # the stream of counts is Pyro's: same counts as the uncrowded scenes of the same seed
    plain = generate_multi_mnist(x, y, 1800, max_digits=2, seed=1)
    np.testing.assert_array_equal(crowded_set.counts, plain.counts)
    single = crowded_set.counts == 1
    assert not np.array_equal(crowded_set.images[single], plain.images[single])  # own draws, still Pyro's recipe
    for i in np.flatnonzero(crowded_set.counts == 2)[:200]:
        img, covered = crowded_set.images[i], np.zeros((50, 50), bool)
        for x0, y0, w, h in crowded_set.boxes[i, :2].astype(int):
            covered[y0 : y0 + h, x0 : x0 + w] = True
        assert not img[~covered].any()
    # a pure function of the seed
    again = generate_multi_mnist(x, y, 1800, max_digits=2, seed=1, crowding=3)
    assert np.array_equal(again.images, crowded_set.images)
