"""The shipped pretrained weights, `decode_windows` and the `numpyro-air demo` command."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpyro_air
from numpyro_air import pretrained_model as pt
from numpyro_air.analysis.inference import decode_windows, infer_batched
from numpyro_air.core.nets import Decoder
from numpyro_air.train.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def shipped():
    return numpyro_air.pretrained()


@pytest.fixture(scope="module")
def scenes():
    return pt.heldout_scenes(1000)


def test_weights_file_checksum_size_and_names(shipped):
    path = pt.weights_dir() / pt.WEIGHTS_FILE
    man = pt.manifest()
    assert pt.file_sha256(path) == man["sha256"]
    assert path.stat().st_size == man["bytes"] <= 16 * 2**20
    config, params = shipped
    assert isinstance(config, numpyro_air.AIRConfig)
    names = set(params)
    assert {"rnn$params", "predict$params", "encode$params", "decode$params"} <= names
    leaves = jax.tree.leaves(params)
    assert all(x.dtype == jnp.float32 for x in leaves)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    with np.load(path) as z:  # stored as float16, named leaves
        assert all(z[k].dtype == np.float16 for k in z.files if k.startswith("params/"))


def test_heldout_scenes_are_deterministic_and_from_test_digits(scenes):
    again = pt.heldout_scenes(1000)
    np.testing.assert_array_equal(again.images, scenes.images)
    np.testing.assert_array_equal(again.counts, scenes.counts)
    assert scenes.images.shape == (1000, 50, 50) and set(np.unique(scenes.counts)) == {0, 1, 2}
    with pytest.raises(ValueError, match="num must be >= 1"):
        pt.heldout_scenes(0)


def test_pretrained_counts_at_least_98_percent_of_heldout_scenes(shipped, scenes):
    config, params = shipped
    res = infer_batched(params, scenes.images_float(), jax.random.PRNGKey(0), config, greedy=True, reconstruct=False)
    acc = float((res["counts"] == scenes.counts).mean())
    assert acc >= 0.98, f"most-probable-path count accuracy {acc:.4f} on 1,000 held-out scenes"
    recorded = pt.manifest()["accuracy"]["float16_file"]["heldout_scenes_1000"]["most_probable_path"]
    assert abs(acc - recorded) <= 0.003  # what export_pretrained.py measured (platform rounding aside)


def test_corrupt_or_missing_weights_are_named(tmp_path, monkeypatch):
    shutil.copytree(pt.weights_dir(), tmp_path / "weights")
    monkeypatch.setattr(pt, "weights_dir", lambda: tmp_path / "weights")
    raw = bytearray((tmp_path / "weights" / pt.WEIGHTS_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "weights" / pt.WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt: SHA-256"):
        pt.pretrained()
    (tmp_path / "weights" / pt.WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        pt.pretrained()


def test_decode_windows_is_the_models_decoder(shipped):
    config, params = shipped
    z = jax.random.normal(jax.random.PRNGKey(3), (4, 3, config.z_what_size))
    got = decode_windows(params, z, config)
    dec = Decoder(
        config.decoder_net,
        config.window_size**2,
        config.decoder_output_bias,
        config.decoder_output_use_sigmoid,
        config.non_linearity,
        config.init,
    )
    want = dec.apply({"params": params["decode$params"]}, z.reshape(-1, config.z_what_size))
    assert got.shape == (4, 3, config.window_size, config.window_size)
    np.testing.assert_allclose(np.asarray(got).reshape(12, -1), np.asarray(want), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="z_what must end in"):
        decode_windows(params, z[..., :5], config)


def test_demo_command_writes_figures_and_reports_accuracy(tmp_path, capsys, shipped):
    from numpyro_air.cli import main

    summary_status = main(["demo", "--out", str(tmp_path), "--num", "200", "--show", "6"])
    assert summary_status == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "demo.json").read_text())
    for name in ("demo_boxes.png", "demo_reconstructions.png", "demo_windows.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    config, params = shipped
    demo_scenes = pt.heldout_scenes(200)
    res = infer_batched(params, demo_scenes.images_float(), jax.random.PRNGKey(0), config, greedy=True, reconstruct=False)
    assert summary["accuracy_most_probable_path"] == pytest.approx(float((res["counts"] == demo_scenes.counts).mean()))
    assert f"{summary['accuracy_most_probable_path']:.2%} of 200 held-out scenes" in out
    assert len([ln for ln in out.splitlines() if ln[:5].strip().isdigit()]) == 6  # one line per shown scene


def test_discrete_reading_of_the_relaxed_model(shipped):
    from numpyro_air.cli.evaluate import discrete_reading

    config, params = shipped
    assert config.relaxed_presence
    disc = discrete_reading(config)
    assert disc.presence_estimator == "nvil" and not disc.uses_baseline_nets and not disc.relaxed_presence
    same = ("z_what_size", "rnn_hidden_size", "decoder_net", "z_pres_prior", "likelihood_sd")
    assert all(getattr(disc, f) == getattr(config, f) for f in same)
    images = pt.heldout_scenes(200).images_float()
    key = jax.random.PRNGKey(1)
    relaxed = infer_batched(params, images, key, config, greedy=True, reconstruct=False)
    discrete = infer_batched(params, images, key, disc, greedy=True, reconstruct=False)
    # the most probable path thresholds the same presence probabilities in both readings
    np.testing.assert_array_equal(relaxed["counts"], discrete["counts"])
    where = lambda r: r["z_where"] * r["z_pres"][..., None]  # noqa: E731
    # (the relaxed path feeds its soft presence to the next step: boxes agree to a few 1e-4)
    np.testing.assert_allclose(where(relaxed), where(discrete), atol=3e-3)
    with pytest.raises(SystemExit, match="--discrete is for relaxed-presence"):
        discrete_reading(disc)
