"""Your own images: ``numpyro_air.data.load_images`` on good and bad ``.npz`` files and PNG/JPEG
directories, and ``numpyro-air train --data/--test-data`` and ``evaluate --data`` through the CLI
(one-line errors, nothing written; a short run on images without counts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST_COMPILE_FLAGS
from PIL import Image

from numpyro_air import AIRConfig
from numpyro_air.data import DataError, DataNotFoundError, ImageSet, load_images
from numpyro_air.train.checkpoint import CheckpointError, read_checkpoint
from numpyro_air.train.loop import TrainConfig, check_meta, run_meta
from numpyro_air.train.recipes import OptimConfig

COLOUR = hasattr(AIRConfig(), "channels")  # non-square and RGB canvases in the model
TINY = ["-n", "3", "-b", "4", "--window-size", "8", "--rnn-hidden-size", "16", "--encoder-net", "16", "--decoder-net", "16"]
TINY += ["--predict-net", "8", "--bl-predict-net", "8", "--encoder-latent-size", "4", "--no-progress", "--progress-every", "1"]


def scenes(n: int, h: int = 20, w: int = 20, c: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, h, w[, c]) uint8 scenes of 0-2 bright squares and their counts (n,)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, h, w) + ((c,) if c else ()), np.uint8)
    counts = np.arange(n) % 3
    for i, k in enumerate(counts):
        for _ in range(k):
            r, q = rng.integers(0, h - 6), rng.integers(0, w - 6)
            x[i, r : r + 6, q : q + 6] = rng.integers(150, 256)
    return x, counts


def write_pngs(d: Path, images: np.ndarray, mode: str | None = None, suffix: str = ".png") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a, mode).save(d / f"img{i:03d}{suffix}")
    return d


CLI_ENV = dict(JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE_FLAGS)  # over the session's


def cli_argv(*args: str) -> list:
    """``numpyro-air ARGS`` for this interpreter (no PATH lookup)."""
    return [sys.executable, "-m", "numpyro_air.cli", *args]


# ------------------------------------------------------------------------------------------------
# good inputs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
@pytest.mark.parametrize("channels", [0, 1, 3])
def test_npz_gray_and_rgb(tmp_path, dtype, channels):
    x, counts = scenes(5, 12, 14, channels)
    images = x if dtype == "uint8" else (x / 255.0).astype(dtype)
    np.savez(tmp_path / "d.npz", images=images, counts=counts)
    s = load_images(tmp_path / "d.npz")
    assert isinstance(s, ImageSet) and s.source == str(tmp_path / "d.npz") and len(s) == 5
    want_shape = (12, 14, 3) if channels == 3 else (12, 14)  # (N, H, W, 1) is read as grayscale
    assert s.shape == want_shape and s.images.shape == (5, *want_shape)
    assert (s.height, s.width, s.channels) == (12, 14, 3 if channels == 3 else 1)
    assert s.images.dtype == (np.uint8 if dtype == "uint8" else np.float32)
    np.testing.assert_allclose(s.images, images.reshape(s.images.shape), rtol=1e-6)
    assert s.counts.dtype == np.int32 and np.array_equal(s.counts, counts)
    assert s.boxes is None and s.labels is None


def test_npz_without_counts_and_with_boxes_labels(tmp_path):
    x, counts = scenes(4)
    np.savez(tmp_path / "plain.npz", images=x)
    s = load_images(tmp_path / "plain.npz")
    assert s.counts is None and s.boxes is None and s.labels is None
    boxes = np.zeros((4, 2, 4), np.float32)
    labels = np.where(np.arange(2)[None] < counts[:, None], 3, -1)
    np.savez(tmp_path / "full.npz", images=x, counts=counts, boxes=boxes, labels=labels)
    f = load_images(tmp_path / "full.npz")
    assert f.boxes.shape == (4, 2, 4) and np.array_equal(f.labels, labels)
    assert f.head(2).images.shape == (2, 20, 20) and np.array_equal(f.head(2).counts, counts[:2])


def test_png_directory_gray_in_file_name_order(tmp_path):
    x, _ = scenes(4, 10, 16)
    x[:, 0, 0] = [3, 1, 2, 0]  # file i holds marker i; written in another order
    d = tmp_path / "gray"
    d.mkdir()
    for i in (2, 0, 3, 1):
        Image.fromarray(x[i], "L").save(d / f"scene_{i}.png")
    (d / ".DS_Store").write_bytes(b"hidden files are skipped")
    s = load_images(d)
    assert s.images.dtype == np.uint8 and s.images.shape == (4, 10, 16) and s.counts is None
    assert s.images[:, 0, 0].tolist() == [3, 1, 2, 0]  # scene_0, scene_1, ...
    assert np.array_equal(s.images, x)


def test_png_directory_rgb_opaque_alpha_palette_and_jpeg(tmp_path):
    x, _ = scenes(3, 8, 12, 3)
    s = load_images(write_pngs(tmp_path / "rgb", x))
    assert s.shape == (8, 12, 3) and s.channels == 3 and np.array_equal(s.images, x)
    rgba = np.concatenate([x, np.full(x.shape[:3] + (1,), 255, np.uint8)], -1)
    s = load_images(write_pngs(tmp_path / "rgba", rgba, "RGBA"))  # fully opaque: alpha dropped
    assert np.array_equal(s.images, x)
    pal = tmp_path / "pal"
    pal.mkdir()
    for i in range(2):
        Image.fromarray(x[i]).convert("P", palette=Image.Palette.ADAPTIVE).save(pal / f"{i}.png")
    assert load_images(pal).shape == (8, 12, 3)
    g = write_pngs(tmp_path / "jpg", scenes(2, 8, 8)[0], "L", ".JPG")
    assert load_images(g).shape == (8, 8)


def test_sha256_follows_the_pixels_and_check_meta_ignores_the_path(tmp_path):
    x, counts = scenes(4)
    np.savez(tmp_path / "a.npz", images=x, counts=counts)
    np.savez(tmp_path / "b.npz", images=x)
    a, b = load_images(tmp_path / "a.npz"), load_images(tmp_path / "b.npz")
    da, db = a.describe(), b.describe()
    assert da["path"] == str(tmp_path / "a.npz") and da["images"] == 4 and da["shape"] == [20, 20]
    assert da["sha256"] == db["sha256"] and len(da["sha256"]) == 64
    y = x.copy()
    y[0, 0, 0] ^= 1
    np.savez(tmp_path / "c.npz", images=y)
    assert load_images(tmp_path / "c.npz").sha256() != da["sha256"]

    def meta(desc):
        return run_meta(AIRConfig(), OptimConfig(), TrainConfig(batch_size=4), {"source": "images", "train": desc}, 0, 3)

    check_meta(meta(da), meta(db), "ckpt.npz")  # same pixels elsewhere: resumes
    other = load_images(tmp_path / "c.npz").describe()
    with pytest.raises(CheckpointError, match="ckpt.npz: data does not match the current run.*train"):
        check_meta(meta(da), meta(other), "ckpt.npz")


# ------------------------------------------------------------------------------------------------
# bad inputs: one DataError naming the file and the problem
# ------------------------------------------------------------------------------------------------


def _npz(tmp_path, name="bad.npz", **arrays) -> Path:
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def _bad(path: Path, pattern: str, exc=DataError, names: Path | None = None) -> str:
    with pytest.raises(exc, match=pattern) as e:
        load_images(path)
    msg = str(e.value)
    assert str(names or path) in msg, msg
    return msg


def test_bad_mixed_image_sizes(tmp_path):
    d = write_pngs(tmp_path / "mixed", scenes(2, 10, 10)[0], "L")
    Image.fromarray(np.zeros((12, 10), np.uint8), "L").save(d / "img005.png")
    msg = _bad(d, "images of different sizes")
    assert "img000.png is 10x10" in msg and "img005.png is 12x10" in msg and "height x width" in msg


def test_bad_mixed_gray_and_rgb(tmp_path):
    d = write_pngs(tmp_path / "modes", scenes(2, 10, 10)[0], "L")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(d / "img009.png")
    msg = _bad(d, "img000.png is grayscale but img009.png is RGB")
    assert "one mode" in msg


def test_bad_file_that_is_not_an_image(tmp_path):
    d = write_pngs(tmp_path / "txt", scenes(2, 10, 10)[0], "L")
    (d / "notes.txt").write_text("hello")
    _bad(d, "notes.txt: not an image file", names=d / "notes.txt")


def test_bad_png_that_does_not_decode(tmp_path):
    d = write_pngs(tmp_path / "junk", scenes(2, 10, 10)[0], "L")
    (d / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    _bad(d, "img001.png: not a readable PNG/JPEG image", names=d / "img001.png")


def test_bad_transparent_png(tmp_path):
    rgba = np.zeros((2, 8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[1, 0, 0, 3] = 0
    d = write_pngs(tmp_path / "alpha", rgba, "RGBA")
    _bad(d, r"img001.png: RGBA image with transparent pixels \(1 with alpha < 255\); flatten", names=d / "img001.png")


def test_bad_16_bit_png(tmp_path):
    d = tmp_path / "deep"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(d / "a.png")
    _bad(d, "a.png: image mode I.* is not read", names=d / "a.png")


def test_bad_nan_in_float_images(tmp_path):
    x = np.zeros((3, 5, 5), np.float32)
    x[1, 2, 3] = np.nan
    _bad(_npz(tmp_path, images=x), r"float 'images' contain NaN or inf \(first at index \(1, 2, 3\)\)")


def test_bad_float_values_outside_unit_interval(tmp_path):
    _bad(_npz(tmp_path, images=np.full((3, 5, 5), 255.0, np.float32)), r"must lie in \[0, 1\], got 255.0..255.0")
    _bad(_npz(tmp_path, "neg.npz", images=-np.ones((3, 5, 5), np.float32)), r"must lie in \[0, 1\]")


def test_bad_channels(tmp_path):
    _bad(
        _npz(tmp_path, images=np.zeros((3, 5, 5, 4), np.uint8)), r"'images' has C=4 channels .*expected C = 1 \(grayscale\) or 3"
    )
    msg = _bad(_npz(tmp_path, "chw.npz", images=np.zeros((3, 3, 5, 5), np.uint8)), "C=5 channels")
    assert "channels-first" in msg and "np.moveaxis" in msg


def test_bad_fewer_than_three_dimensions(tmp_path):
    """A 2-D array is refused (one (H, W) image, or N flattened images?); so are 1-D and 0-D."""
    msg = _bad(_npz(tmp_path, images=np.zeros((4, 100), np.uint8)), r"'images' must have shape .* got 2 dimensions \(4, 100\)")
    assert "images[None]" in msg
    _bad(_npz(tmp_path, "one.npz", images=np.zeros(7, np.uint8)), r"got 1 dimensions \(7,\)")
    _bad(_npz(tmp_path, "zero.npz", images=np.uint8(3)), r"got 0 dimensions")


def test_bad_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_text("")
    _bad(tmp_path / "empty", "empty directory; expected PNG/JPEG files")


def test_bad_subdirectory(tmp_path):
    d = write_pngs(tmp_path / "nested", scenes(1, 8, 8)[0], "L")
    (d / "more").mkdir()
    _bad(d, "more: a subdirectory", names=d / "more")


def test_bad_counts_of_the_wrong_length(tmp_path):
    _bad(
        _npz(tmp_path, images=np.zeros((4, 5, 5), np.uint8), counts=np.zeros(3, int)),
        "'counts' has 3 entries but there are 4 images",
    )


def test_bad_boxes_without_counts(tmp_path):
    _bad(_npz(tmp_path, images=np.zeros((4, 5, 5), np.uint8), boxes=np.zeros((4, 1, 4))), "'boxes' needs 'counts'")


def test_bad_dtype_and_no_images(tmp_path):
    _bad(_npz(tmp_path, images=np.zeros((2, 5, 5), np.int16)), "must be uint8 or float in \\[0, 1\\], got dtype int16")
    _bad(_npz(tmp_path, "none.npz", images=np.zeros((0, 5, 5), np.uint8)), "holds no images")
    _bad(_npz(tmp_path, "nokey.npz", pixels=np.zeros((2, 5, 5), np.uint8)), r"missing keys \['images'\]")


def test_bad_missing_file(tmp_path):
    _bad(tmp_path / "nowhere.npz", "no such file or directory", exc=DataNotFoundError)


def test_bad_corrupt_npz(tmp_path):
    p = tmp_path / "corrupt.npz"
    p.write_bytes(b"PK\x03\x04 not really a zip archive")
    _bad(p, "unreadable .npz")


def test_bad_single_image_file(tmp_path):
    d = write_pngs(tmp_path / "one", scenes(1, 8, 8)[0], "L")
    _bad(d / "img000.png", "a single image file; pass the directory")


# ------------------------------------------------------------------------------------------------
# the CLI
# ------------------------------------------------------------------------------------------------


def test_cli_canvas_comes_from_the_data(tmp_path):
    from numpyro_air.cli.train import build_parser, configs_from_args

    x, counts = scenes(6)
    np.savez(tmp_path / "d.npz", images=x, counts=counts)
    images = load_images(tmp_path / "d.npz")
    parse = build_parser().parse_args
    air, _, _, data = configs_from_args(parse(["--preset", "tutorial", "--window-size", "8", "--data", "x"]), images)
    assert data is None and air.image_size == 20 and air.window_size == 8
    with pytest.raises(ValueError, match="window_size 28 is larger than the 20x20 images of .*d.npz: pass --window-size"):
        configs_from_args(parse(["--preset", "tutorial"]), images)
    with pytest.raises(ValueError, match="--num-train: options of the generated benchmarks"):
        configs_from_args(parse(["--window-size", "8", "--num-train", "10"]), images)


@pytest.mark.skipif(not COLOUR, reason="needs AIRConfig image_width/channels (non-square and colour canvases)")
def test_cli_canvas_of_non_square_colour_data(tmp_path):
    from numpyro_air.cli.train import build_parser, configs_from_args

    x, counts = scenes(6, 20, 24, 3)
    np.savez(tmp_path / "d.npz", images=x, counts=counts)
    air, *_ = configs_from_args(build_parser().parse_args(["--window-size", "8"]), load_images(tmp_path / "d.npz"))
    assert (air.image_size, air.image_width, air.channels) == (20, 24, 3) and air.image_shape == (20, 24, 3)


def write_files(d: Path) -> Path:
    """Small grayscale data in ``d``: train.npz with counts, a test PNG directory without, bad files."""
    x, counts = scenes(12, seed=1)
    np.savez(d / "train.npz", images=x, counts=counts)
    write_pngs(d / "test_png", scenes(6, seed=2)[0], "L")
    nan = (x / 255.0).astype(np.float32)
    nan[0, 0, 0] = np.nan
    np.savez(d / "nan.npz", images=nan)
    np.savez(d / "counts.npz", images=x, counts=counts[:5])
    np.savez(d / "small.npz", images=x[:, :10, :10])
    return d


BAD_DATA = {  # id: (arguments of `numpyro-air train`, the one error line's message)
    "nan": (["--data", "nan.npz"], "nan.npz: float 'images' contain NaN"),
    "counts-length": (["--data", "counts.npz"], "counts.npz: 'counts' has 5 entries but there are 12 images"),
    "missing": (["--data", "missing.npz"], "missing.npz: no such file or directory"),
    "window": (["--data", "train.npz"], "window_size 28 is larger than the 20x20 images of train.npz: pass --window-size"),
    "test-shape": (
        ["--data", "train.npz", "--test-data", "small.npz", "--window-size", "8"],
        "small.npz: images of shape (10, 10)",
    ),
    "test-alone": (["--test-data", "small.npz"], "--test-data needs --data"),
    "generator-flag": (
        ["--data", "train.npz", "--window-size", "8", "--num-train", "5"],
        "--num-train: options of the generated",
    ),
    "batch": (["--data", "train.npz", "--window-size", "8", "-b", "64"], "batch_size 64 exceeds the 12 training images"),
}


def own_data_commands(workdir: Path, run) -> tuple[Path, dict]:
    """Every CLI command of the grayscale tests below, on ``write_files(workdir)``, in order."""
    write_files(workdir)

    def cli_(*args: str) -> subprocess.CompletedProcess:
        return run(cli_argv(*args), env=run.env(**CLI_ENV), cwd=workdir)

    procs = {name: cli_("train", *args, "--out", str(workdir / f"never-{name}")) for name, (args, _) in BAD_DATA.items()}
    out = workdir / "run"
    procs["train"] = cli_("train", "--data", "train.npz", "--test-data", "test_png", "--out", str(out), *TINY)
    procs["evaluate"] = cli_("evaluate", "--checkpoint", str(out), "--data", "test_png", "--json")
    procs["evaluate-nan"] = cli_("evaluate", "--checkpoint", str(out), "--data", "nan.npz")
    procs["other-data"] = cli_("train", "--data", "test_png", "--out", str(out), "--load", str(out / "checkpoint.npz"), *TINY)
    return workdir, procs


def rgb_commands(workdir: Path, run) -> tuple[Path, dict]:
    """Train on a non-square RGB npz (held out: RGB PNGs), evaluate with figures, plot."""
    x, counts = scenes(12, 20, 24, 3, seed=3)
    x[..., 1] //= 3  # magenta squares
    np.savez(workdir / "rgb.npz", images=x, counts=counts)
    y = scenes(4, 20, 24, 3, seed=4)[0]
    y[..., 0] //= 3  # cyan squares
    write_pngs(workdir / "rgb_png", y)
    out = workdir / "run"
    procs = {
        "train": run(
            cli_argv("train", "--data", "rgb.npz", "--test-data", "rgb_png", "--out", str(out), *TINY),
            env=run.env(**CLI_ENV),
            cwd=workdir,
        )
    }
    ev = cli_argv("evaluate", "--checkpoint", str(out), "--data", "rgb.npz", "--figures", "eval_figs", "--json")
    procs["evaluate"] = run(ev, env=run.env(**CLI_ENV), cwd=workdir)
    procs["plot"] = run(cli_argv("plot", str(out), "--out", "plot_figs"), env=run.env(**CLI_ENV), cwd=workdir)
    return workdir, procs


BACKGROUND = (own_data_commands, rgb_commands)


@pytest.fixture(scope="module")
def own_data(background) -> tuple[Path, dict]:
    return background.result(own_data_commands)


@pytest.mark.parametrize("name", list(BAD_DATA))
def test_cli_bad_data_is_one_error_line_and_writes_nothing(own_data, name):
    files, procs = own_data
    proc, message = procs[name], BAD_DATA[name][1]
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("error:") and message in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (files / f"never-{name}").exists()


def test_cli_trains_on_own_data_and_evaluates_without_counts(own_data):
    files, procs = own_data
    out = files / "run"
    proc = procs["train"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3] and all(np.isfinite(r["elbo"]) for r in train_rows)
    (ev,) = [r for r in rows if r["kind"] == "eval"]
    # the training images have counts, the held-out PNGs not: accuracy for one, the ELBO for the other
    assert np.isfinite(ev["test_elbo"]) and ev["test_images"] == 6
    assert "test_accuracy" not in ev and 0.0 <= ev["train_accuracy"] <= 1.0 and ev["train_images"] == 12
    meta, _ = read_checkpoint(out / "checkpoint.npz")
    data = meta["data"]
    assert data["source"] == "images" and data["train"]["path"] == str(files / "train.npz")
    assert data["train"]["images"] == 12 and data["train"]["shape"] == [20, 20]
    assert data["train"]["sha256"] == load_images(files / "train.npz").sha256()
    assert data["test"]["path"] == str(files / "test_png") and data["test"]["images"] == 6
    assert meta["air_config"]["image_size"] == 20 and meta["air_config"]["window_size"] == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["seeds_reaching"]["num_seeds"] == 1
    # evaluate on the PNG directory: no counts, so the ELBO only
    ev = procs["evaluate"]
    assert ev.returncode == 0, ev.stderr[-3000:]
    res = json.loads(ev.stdout.strip().splitlines()[-1])
    assert res["num_images"] == 6 and np.isfinite(res["elbo"]) and "count_accuracy" not in res
    # a bad --data for evaluate is one error line too
    bad = procs["evaluate-nan"]
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: nan.npz: float 'images'")
    assert "Traceback" not in bad.stderr
    # resuming on other data is refused, naming the data
    other = procs["other-data"]
    assert other.returncode != 0 and "data does not match the current run" in other.stderr, other.stderr[-2000:]
    assert "Traceback" not in other.stderr


@pytest.mark.skipif(not COLOUR, reason="needs AIRConfig image_width/channels (non-square and colour canvases)")
def test_cli_trains_on_non_square_rgb_npz(background):
    tmp_path, procs = background.result(rgb_commands)
    out = tmp_path / "run"
    proc = procs["train"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["elbo"]) for r in rows if r["kind"] == "train")
    (ev,) = [r for r in rows if r["kind"] == "eval"]
    assert np.isfinite(ev["test_elbo"]) and "train_accuracy" in ev
    meta, _ = read_checkpoint(out / "checkpoint.npz")
    assert (meta["air_config"]["image_size"], meta["air_config"]["image_width"], meta["air_config"]["channels"]) == (20, 24, 3)
    # the figures of the run, of `evaluate --figures` and of `plot`: colour PNGs
    figures = ("boxes.png", "reconstructions.png", "prior_samples.png", "windows.png")
    ev = procs["evaluate"]
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert (tmp_path / "eval_figs" / "confusion.png").is_file()
    plot = procs["plot"]
    assert plot.returncode == 0, plot.stderr[-3000:]
    for d in (out, tmp_path / "eval_figs", tmp_path / "plot_figs"):
        for name in figures:
            px = np.asarray(Image.open(d / name).convert("RGB")).astype(int)
            assert np.any(px[..., 0] != px[..., 1]), d / name
    assert (tmp_path / "plot_figs" / "elbo.png").is_file()
