"""Training loop, checkpoints (exact resume, corruption, config mismatch, no silent overwrite),
the CLI scripts (train.py, evaluate.py, plot.py) and the inference API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_TRAINING

from numpyro_air import AIRConfig, inference, load_params
from numpyro_air.data import generate_multi_mnist, save_eval_npz
from numpyro_air.train.checkpoint import CheckpointError, read_checkpoint, read_npz, save_checkpoint
from numpyro_air.train.loop import TrainConfig, accuracy_summary, train
from numpyro_air.train.recipes import OptimConfig

ROOT = Path(__file__).resolve().parents[1]
CANVAS = TINY_TRAINING["image_size"]
AIR = AIRConfig.tutorial(**TINY_TRAINING)
OPT = OptimConfig(baseline_learning_rate=0.1)


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 blobs standing in for MNIST digits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    d = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(10, 18, 2)
        d[i] = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(10, 30))
    return (d * 200).astype(np.uint8), rng.integers(0, 10, n)


@pytest.fixture(scope="module")
def datasets():
    x, y = fake_digits(40, 0)
    train_set = generate_multi_mnist(x, y, 64, canvas_size=CANVAS, scale_mean=1.3, seed=1)
    test_set = generate_multi_mnist(x, y, 16, canvas_size=CANVAS, scale_mean=1.3, seed=2)
    return train_set, test_set


def tcfg(n: int, **kw) -> TrainConfig:
    base = dict(num_steps=n, batch_size=8, seed=3, progress_every=2, eval_every=0, eval_batch_size=16, save_every=0)
    return TrainConfig(**(base | kw))


def run(tmp: Path, n: int, datasets, **kw):
    return train(
        AIR,
        OPT,
        tcfg(n, **{k: v for k, v in kw.items() if k in TrainConfig.__dataclass_fields__}),
        *datasets,
        tmp,
        progress=False,
        log=lambda s: None,
        **{k: v for k, v in kw.items() if k not in TrainConfig.__dataclass_fields__},
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, datasets):
    out = tmp_path_factory.mktemp("full")
    summary = run(out, 4, datasets)
    return out, summary


def test_outputs_of_a_run(full_run):
    out, summary = full_run
    for name in (
        "metrics.jsonl",
        "checkpoint.npz",
        "summary.json",
        "elbo.png",
        "accuracy.png",
        "boxes.png",
        "reconstructions.png",
        "prior_samples.png",
        "confusion_test.png",
    ):
        assert (out / name).is_file(), name
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 4]
    assert all(np.isfinite(r["elbo"]) for r in train_rows)
    ev = [r for r in recs if r["kind"] == "eval"][-1]
    conf = np.asarray(ev["test_confusion"])
    assert conf.shape == (3, AIR.num_steps + 1) and conf.sum() == 16
    assert ev["test_accuracy"] == pytest.approx(np.trace(conf) / 16)
    by_count = ev["test_accuracy_by_count"]  # per true count, consistent with the confusion matrix
    for c, row in enumerate(conf):
        if row.sum():
            assert by_count[str(c)]["images"] == row.sum()
            assert by_count[str(c)]["accuracy"] == pytest.approx(row[c] / row.sum())
    assert summary["steps"] == 4


def test_resume_matches_uninterrupted(tmp_path, datasets, full_run):
    out_full, _ = full_run
    part = tmp_path / "part"
    run(part, 2, datasets, final_figures=False)
    # rows logged after the checkpoint (step 2) by a run killed before its next checkpoint: dropped on resume
    train2, eval2 = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    with open(part / "metrics.jsonl", "a") as f:
        for row in (
            {**train2, "step": 3, "elbo": 1e9},
            {**train2, "step": 4, "elbo": 1e9},
            {**eval2, "step": 4, "test_accuracy": 0.0},
        ):
            f.write(json.dumps(row) + "\n")
    run(part, 4, datasets, load=part / "checkpoint.npz", final_figures=False)
    m_full, leaves_full = read_checkpoint(out_full / "checkpoint.npz")
    m_res, leaves_res = read_checkpoint(part / "checkpoint.npz")
    assert m_full["step"] == m_res["step"] == 4
    assert sorted(leaves_full) == sorted(leaves_res) and len(leaves_full) > 50
    for name in leaves_full:
        np.testing.assert_array_equal(leaves_full[name], leaves_res[name], err_msg=name)
    # the log was continued, not restarted
    rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("train", 2), ("eval", 2), ("train", 4), ("eval", 4)]
    full_rows = [json.loads(line) for line in (out_full / "metrics.jsonl").read_text().splitlines()]
    assert [r["elbo"] for r in rows if r["kind"] == "train"] == [r["elbo"] for r in full_rows if r["kind"] == "train"]
    assert rows[-1]["test_accuracy"] == [r for r in full_rows if r["kind"] == "eval"][-1]["test_accuracy"]


def test_same_run_twice_gives_bit_identical_checkpoints(tmp_path, datasets, full_run):
    """The same run again on the same machine ends with the same checkpoint, bit for bit: every
    array (parameters, optimiser moments and counts, mutable state if any, PRNG key) and the log."""
    out_full, _ = full_run
    again = tmp_path / "again"
    run(again, 4, datasets, final_figures=False)  # the call that made full_run (figures only read the state)
    meta_a, a = read_checkpoint(out_full / "checkpoint.npz")
    meta_b, b = read_checkpoint(again / "checkpoint.npz")
    meta_a.pop("wall_time"), meta_b.pop("wall_time")
    assert meta_a == meta_b  # also the digest of all arrays
    assert sorted(a) == sorted(b) and "state/rng_key" in a
    assert any(n.startswith("params/") for n in a) and any(n.startswith("state/optim_state/") for n in a)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name

    def logged(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]

    assert logged(out_full) == logged(again)


def test_seed_k_alone_starts_as_seed_k_of_a_multi_seed_run(datasets):
    """``--seed k`` alone and the k-th seed of ``--num-seeds K --seed 1`` (vmapped) start from the
    same step-0 state, exactly (every array: parameters, optimiser state, PRNG key), and draw the
    same batches."""
    from numpyro_air import make_svi
    from numpyro_air.cli.train import build_parser, configs_from_args
    from numpyro_air.data import to_float
    from numpyro_air.train.checkpoint import named_arrays
    from numpyro_air.train.loop import initial_states, seed_slice
    from numpyro_air.train.step import BatchSource

    def cli(*args) -> TrainConfig:  # the loop settings of `numpyro-air train -b 8 ARGS`
        return configs_from_args(build_parser().parse_args(["-b", "8", *args]))[2]

    K = 2
    many = cli("--num-seeds", str(K), "--seed", "1")
    svi = make_svi(AIR, OPT)
    example = jnp.asarray(to_float(datasets[0].images[:8]))  # as the loop's init example
    images = np.asarray(datasets[0].images)
    states, start, _, _ = initial_states(svi, many, example)
    assert start == 0

    def source(tcfg: TrainConfig) -> BatchSource:  # as the loop builds it
        return BatchSource(images, tcfg.batch_size, [tcfg.seed_of(k) for k in range(tcfg.num_seeds)])

    feed_many = source(many)
    for k in range(1, K + 1):
        alone = cli("--seed", str(k))
        single, _, _, _ = initial_states(svi, alone, example)
        a, b = named_arrays(seed_slice(single, 0)), named_arrays(seed_slice(states, k - 1))
        assert sorted(a) == sorted(b) and "state/rng_key" in a and any(n.startswith("params/") for n in a)
        for name in a:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), (k, name)
        for i in range(4):
            np.testing.assert_array_equal(source(alone).indices(i)[0], feed_many.indices(i)[k - 1])
    # the seeds do differ: the comparison can tell one seed from another
    first, second = (named_arrays(seed_slice(states, k)) for k in (0, 1))
    assert not np.array_equal(first["state/rng_key"], second["state/rng_key"])
    assert any(not np.array_equal(first[n], second[n]) for n in first if n.startswith("params/"))


def test_existing_output_is_not_overwritten(full_run, datasets):
    out, _ = full_run
    before = (out / "checkpoint.npz").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        run(out, 2, datasets)
    assert (out / "checkpoint.npz").read_bytes() == before


def test_corrupt_checkpoint(tmp_path, full_run, datasets):
    out, _ = full_run
    raw = bytearray((out / "checkpoint.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(bad)
    (tmp_path / "trunc.msgpack").write_bytes(bytes(raw[:20]))
    with pytest.raises(CheckpointError, match="not a numpyro-air checkpoint"):
        read_checkpoint(tmp_path / "trunc.msgpack")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.msgpack")


def test_config_mismatch_is_refused(tmp_path, full_run, datasets):
    out, _ = full_run
    other = AIR.replace(z_pres_prior=0.5)
    with pytest.raises(CheckpointError, match="z_pres_prior"):
        train(other, OPT, tcfg(6), *datasets, tmp_path / "x", load=out / "checkpoint.npz", progress=False, log=lambda s: None)


def test_altered_arrays_with_the_stored_digest_are_refused(tmp_path):
    """The SHA-256 in ``__meta__`` is compared with the arrays read back: an array changed after
    writing (a valid npz, valid CRCs, the original ``__meta__`` and digest kept) is refused with a
    CheckpointError naming the file and the checksum mismatch; the same rewrite with the arrays
    unchanged still loads."""
    state = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(4, jnp.int32)}
    path = save_checkpoint(tmp_path / "ckpt.npz", state, {"step": 7})
    with np.load(path) as z:
        stored = {k: z[k] for k in z.files}
    meta = json.loads(str(stored["__meta__"]))
    assert len(meta["sha256"]) == 64 and {"state/a", "state/b"} <= set(stored)

    same = tmp_path / "same.npz"
    np.savez(same, **stored)  # rewritten unchanged: the stored digest matches
    got_meta, got = read_checkpoint(same)
    assert got_meta["sha256"] == meta["sha256"] and got_meta["step"] == 7
    np.testing.assert_array_equal(got["state/a"], np.arange(6.0).reshape(2, 3))

    altered = dict(stored)
    altered["state/a"] = stored["state/a"].copy()
    altered["state/a"][1, 2] += 1.0  # same name, shape and dtype; different bytes
    bad = tmp_path / "altered.npz"
    np.savez(bad, **altered)
    with np.load(bad) as z:  # the digest really is the original one
        assert json.loads(str(z["__meta__"]))["sha256"] == meta["sha256"]
    for reader in (read_npz, read_checkpoint):
        with pytest.raises(CheckpointError, match="checksum mismatch") as err:
            reader(bad)
        assert str(bad) in str(err.value)


def test_save_checkpoint_refuses_overwrite(tmp_path):
    p = save_checkpoint(tmp_path / "c.msgpack", {"a": jnp.ones(2)}, {"x": 1})
    with pytest.raises(CheckpointError, match="refusing"):
        save_checkpoint(p, {"a": jnp.ones(2)}, {"x": 1}, overwrite=False)


def test_inference_api(full_run, datasets):
    out, _ = full_run
    air, params = load_params(out / "checkpoint.npz")
    assert air == AIR and read_npz(out / "checkpoint.npz")[0]["step"] == 4
    images = jnp.asarray(datasets[1].images[:5].astype(np.float32) / 255)
    res = inference.infer(params, images, jax.random.PRNGKey(0), air)
    T = air.num_steps
    assert res["counts"].shape == (5,) and res["counts"].dtype == jnp.int32
    np.testing.assert_array_equal(res["counts"], res["z_pres"].sum(1))
    assert res["boxes"].shape == (5, T, 4) and res["z_what"].shape == (5, T, air.z_what_size)
    assert res["reconstruction"].shape == (5, CANVAS, CANVAS)
    # box geometry: width = H / s, centre = (1 - x / s) H / 2
    s, x = res["z_where"][..., 0], res["z_where"][..., 1]
    np.testing.assert_allclose(res["boxes"][..., 2], CANVAS / jnp.abs(s), rtol=1e-5)
    np.testing.assert_allclose(res["boxes"][..., 0] + res["boxes"][..., 2] / 2, (1 - x / s) * CANVAS / 2, rtol=1e-4, atol=1e-4)
    # the reconstruction is the sum of the present objects: all-absent images reconstruct to 0
    empty = np.asarray(res["counts"]) == 0
    assert np.all(np.asarray(res["reconstruction"])[empty] == 0)
    counts_only = inference.infer(params, images, jax.random.PRNGKey(0), air, reconstruct=False)
    assert "reconstruction" not in counts_only
    np.testing.assert_array_equal(counts_only["counts"], res["counts"])  # same key, same guide sample
    greedy = inference.infer(params, images, jax.random.PRNGKey(0), air, greedy=True)
    np.testing.assert_array_equal(greedy["z_pres"], (greedy["pres_prob"] > 0.5) * np.cumprod(greedy["pres_prob"] > 0.5, 1))
    # both counts in one program (evaluation's) = count_accuracy of each, chunk by chunk (7 images
    # in chunks of 3: the last one padded), with the keys count_accuracy's callers derive
    images7 = datasets[1].images[:7].astype(np.float32) / 255
    counts7, key = np.asarray(datasets[1].counts[:7]), jax.random.PRNGKey(3)
    both = inference.count_accuracies(params, images7, counts7, key, air, batch_size=3)
    for mode, g in (("sample", False), ("greedy", True)):
        alone = inference.count_accuracy(params, images7, counts7, jax.random.fold_in(key, int(g)), air, g, batch_size=3)
        assert both[mode] == alone
    # chunk 0 of the sample pass is infer's guide sample with key fold_in(fold_in(key, 0), 0)
    chunk0 = inference.infer(params, jnp.asarray(images7[:3]), jax.random.fold_in(jax.random.fold_in(key, 0), 0), air)
    first = inference.count_accuracies(params, images7[:3], counts7[:3], key, air, batch_size=3)["sample"]
    assert first["accuracy"] == np.mean(np.asarray(chunk0["counts"]) == counts7[:3])


def test_confusion_and_summary():
    m = inference.confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 3]), 3)
    np.testing.assert_array_equal(m, [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]])
    assert accuracy_summary([0.99, 0.96, 0.5]) == {">=90%": 2, ">=95%": 2, ">=98%": 1, "num_seeds": 3}


BAD_OPTIONS = ((["--num-seeds", "0"], "num_seeds"), (["--device", "tpu"], "tpu"), (["--window-size", "60"], "window_size"))


def cli_commands(workdir: Path, run) -> tuple[Path, dict, object]:
    """``experiments/train.py`` twice (the second refused), ``evaluate.py`` on an evaluation file and
    on a corrupt checkpoint, ``plot.py``: the commands of ``test_cli_train_evaluate_plot``."""
    x, y = fake_digits(60, 5)
    np.savez(workdir / "mnist.npz", x_train=x, y_train=y, x_test=x[:30], y_test=y[:30])
    out = workdir / "run"
    args = ["--preset", "tutorial", "-n", "2", "-b", "8", "--mnist", str(workdir / "mnist.npz")]
    args += ["--data-dir", str(workdir / "cache"), "--num-train", "32", "--num-test", "16", "--rnn-hidden-size", "16"]
    args += ["--encoder-latent-size", "4", "--encoder-net", "16", "--decoder-net", "16", "--predict-net", "8"]
    args += ["--bl-predict-net", "8", "--progress-every", "1", "--out", str(out), "--no-progress", "--seed", "1"]
    script = {name: [sys.executable, str(ROOT / "experiments" / f"{name}.py")] for name in ("train", "evaluate", "plot")}
    procs = {"train": run(script["train"] + args), "again": run(script["train"] + args)}
    x2, y2 = fake_digits(30, 6)
    ds = generate_multi_mnist(x2, y2, 12, canvas_size=50, seed=9)
    save_eval_npz(workdir / "eval.npz", ds)
    evaluation = ["--data", str(workdir / "eval.npz")]
    procs["evaluate"] = run(script["evaluate"] + ["--checkpoint", str(out), *evaluation, "--json", "--iwae", "3"])
    (workdir / "bad.msgpack").write_bytes(b"garbage")
    procs["bad"] = run(script["evaluate"] + ["--checkpoint", str(workdir / "bad.msgpack"), *evaluation])
    procs["plot"] = run(script["plot"] + [str(out), "--no-model-figures", "--out", str(workdir / "figs")])
    return workdir, procs, ds


def bad_option_commands(workdir: Path, run) -> tuple[Path, list]:
    """``experiments/train.py`` with each of ``BAD_OPTIONS``."""
    train_py = [sys.executable, str(ROOT / "experiments" / "train.py"), "--out", str(workdir / "o")]
    return workdir, [run(train_py + bad) for bad, _ in BAD_OPTIONS]


BACKGROUND = (cli_commands, bad_option_commands)


def test_cli_train_evaluate_plot(background):
    tmp_path, procs, ds = background.result(cli_commands)
    out = tmp_path / "run"
    proc = procs["train"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoint.npz").is_file() and (out / "command.txt").is_file()
    # refusing to overwrite without --overwrite
    again = procs["again"]
    assert again.returncode != 0 and "already exists" in again.stderr
    # evaluate.py on an evaluation file (a run directory as the checkpoint)
    ev = procs["evaluate"]
    assert ev.returncode == 0, ev.stderr[-3000:]
    res = json.loads(ev.stdout.strip().splitlines()[-1])
    conf = np.asarray(res["confusion"])
    assert conf.sum() == 12 and 0.0 <= res["count_accuracy"] <= 1.0
    assert res["count_accuracy"] == pytest.approx(np.trace(conf[:, : conf.shape[0]]) / 12)
    assert sum(v["images"] for v in res["accuracy_by_count"].values()) == 12
    # --iwae K: IWAE-K and 1-sample ELBO means (nats per image) over the file's images
    assert res["iwae_samples"] == 3 and res["iwae_images"] == 12
    assert np.isfinite(res["log_likelihood_iwae"]) and np.isfinite(res["elbo"])
    loc = res["localisation"]  # the evaluation file has ground-truth boxes
    assert loc["true_objects"] == int(ds.counts.sum()) and 0.0 <= loc["matched_within_radius"] <= 1.0
    # a corrupt checkpoint gives a clear error, not a traceback
    bad = procs["bad"]
    assert bad.returncode != 0 and "not a numpyro-air checkpoint" in bad.stderr
    # plot.py regenerates the curves from the log
    pl = procs["plot"]
    assert pl.returncode == 0, pl.stderr[-3000:]
    assert (tmp_path / "figs" / "elbo.png").is_file() and (tmp_path / "figs" / "accuracy.png").is_file()


def test_cli_rejects_bad_options(background):
    tmp_path, procs = background.result(bad_option_commands)
    for (args, msg), proc in zip(BAD_OPTIONS, procs, strict=True):
        assert proc.returncode != 0 and msg in proc.stderr, (args, proc.stderr[-2000:])
    assert not (tmp_path / "o").exists()


def test_loop_uses_the_annealed_prior_of_each_step_and_logs_elbo_per_image(tmp_path, datasets):
    """Step s of the loop runs with ``z_pres_prior_probs(s)`` (1-based) and the logged ``elbo`` is
    +ELBO per image of that step's batch, computed here independently with ``NVIL_ELBO.loss``."""
    from numpyro_air import make_svi, model, z_pres_prior_probs
    from numpyro_air.core.guide import guide
    from numpyro_air.data import batch_at_step
    from numpyro_air.train.loop import initial_states, run_meta

    air = AIR.replace(anneal_prior="lin", anneal_prior_to=1e-4, anneal_prior_duration=3)
    assert not np.allclose(z_pres_prior_probs(air, 1), z_pres_prior_probs(air, 2))
    out = tmp_path / "anneal"
    kw = dict(progress=False, log=lambda s: None)
    train(air, OPT, tcfg(1, progress_every=1, final_figures=False), *datasets, out, **kw)
    assert (out / "summary.json").is_file() and not list(out.glob("*.png"))  # final_figures=False: none drawn
    tc2 = tcfg(2, progress_every=1, final_figures=False)
    state1, start, _, _ = initial_states(
        make_svi(air, OPT),
        tc2,
        jnp.zeros((8, CANVAS, CANVAS)),
        out / "checkpoint.npz",
        lambda k, s: run_meta(air, OPT, tc2, {}, k, s),
    )
    assert start == 1
    train(air, OPT, tc2, *datasets, out, load=out / "checkpoint.npz", **kw)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elbo2 = [r["elbo"] for r in logged if r["kind"] == "train" and r["step"] == 2]
    assert len(elbo2) == 1
    svi = make_svi(air, OPT)
    state = jax.tree.map(lambda a: a[0], state1)
    images = jnp.asarray(batch_at_step(datasets[0].images, 8, 3, 1))  # 0-based step index 1 = step 2
    _, key = jax.random.split(state.rng_key)  # the step's ELBO key, as svi.update draws it
    params = svi.optim.get_params(state.optim_state)  # no constrained sites: these are the params

    loss = jax.jit(lambda prior: svi.loss.loss(key, params, model, guide, images, config=air, z_pres_prior=prior))

    def elbo_per_image(t: int) -> float:
        return -float(loss(jnp.asarray(z_pres_prior_probs(air, t)))) / images.shape[0]

    assert elbo2[0] == pytest.approx(elbo_per_image(2), rel=1e-5)
    # the test can tell: the previous step's prior moves the ELBO by far more than the tolerance
    assert abs(elbo_per_image(1) - elbo_per_image(2)) > 10 * 1e-5 * abs(elbo_per_image(2))


def test_console_command_and_device_contradiction(tmp_path):
    exe = Path(sys.executable).parent / "numpyro-air"
    assert exe.is_file(), "the console command is installed by `pip install -e .`"
    top = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert top.returncode == 0 and all(c in top.stdout for c in ("train", "evaluate", "plot"))
    bad = subprocess.run([str(exe), "nonsense"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown command" in bad.stderr
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    clash = subprocess.run(
        [str(exe), "train", "--device", "gpu", "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=300
    )
    assert clash.returncode != 0 and "--device gpu" in clash.stderr and "JAX_PLATFORMS='cpu'" in clash.stderr
    assert not (tmp_path / "o").exists()


def test_exception_in_the_loop_writes_the_last_good_state(tmp_path, datasets, monkeypatch):
    import numpyro_air.train.loop as training

    def broken_evaluation(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(training, "evaluate", broken_evaluation)
    out = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run(out, 6, datasets, eval_every=3)
    meta, arrays = read_checkpoint(out / "checkpoint.npz")
    assert meta["step"] == 3  # the state of the last step that finished, saved before propagating
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 3]  # log closed with the pending row
    monkeypatch.undo()
    run(out, 6, datasets, load=out / "checkpoint.npz", final_figures=False)  # and the run resumes from it
    assert read_checkpoint(out / "checkpoint.npz")[0]["step"] == 6


def test_resume_on_other_data_is_refused(tmp_path, full_run, datasets):
    """The checkpoint records the data description; resuming it with another one is refused
    before any step, naming the field that differs (``full_run`` was trained with ``{}``)."""
    out, _ = full_run
    with pytest.raises(
        CheckpointError, match=r"data does not match the current run \(cache: checkpoint \(absent\) vs now 'other'\)"
    ):
        run(tmp_path / "x", 6, datasets, load=out / "checkpoint.npz", data_desc={"cache": "other"})
    assert not (tmp_path / "x" / "checkpoint.npz").exists()
    # a data field added later resumes at its value of before only when train() is told so
    with pytest.raises(CheckpointError, match=r"crowding: checkpoint \(absent\) vs now 0"):
        run(tmp_path / "y", 4, datasets, load=out / "checkpoint.npz", data_desc={"crowding": 0})
    with pytest.raises(CheckpointError, match=r"crowding: checkpoint 0 vs now 3"):
        run(tmp_path / "y", 4, datasets, load=out / "checkpoint.npz", data_desc={"crowding": 3}, data_later={"crowding": 0})
    summary = run(tmp_path / "y", 4, datasets, load=out / "checkpoint.npz", data_desc={"crowding": 0}, data_later={"crowding": 0})
    assert summary["steps"] == 4, summary


def test_batch_source_reshuffles_every_epoch():
    """The loop's on-device BatchSource: the indices of each epoch (steps e*S .. e*S + S - 1) are a
    permutation of all examples, a different one every epoch and for every seed, and equal
    ``batch_indices`` (hence ``batch_at_step``) of that seed and step."""
    from numpyro_air.data import batch_indices
    from numpyro_air.train.step import BatchSource

    N, B = 24, 4  # 6 steps per epoch, no ragged tail: an epoch visits every example once
    images = np.arange(N * 2 * 2, dtype=np.uint8).reshape(N, 2, 2)
    tc = TrainConfig(num_steps=18, batch_size=B, seed=5, num_seeds=2)
    feed = BatchSource(images, tc.batch_size, [tc.seed_of(k) for k in range(tc.num_seeds)])
    S = N // B
    epochs = [np.concatenate([feed.indices(i) for i in range(e * S, (e + 1) * S)], axis=1) for e in range(3)]  # (K, N)
    for order in epochs:
        for k in range(tc.num_seeds):
            np.testing.assert_array_equal(np.sort(order[k]), np.arange(N))  # each epoch: a permutation
            assert not np.array_equal(order[k], np.arange(N))  # shuffled
    for e in range(2):
        for k in range(tc.num_seeds):
            assert not np.array_equal(epochs[e][k], epochs[e + 1][k]), f"epoch {e + 1} repeats epoch {e} (seed {k})"
    assert not np.array_equal(epochs[0][0], epochs[0][1])  # seeds shuffle differently
    for i in (0, S - 1, S, 2 * S + 3):
        np.testing.assert_array_equal(feed.indices(i)[1], batch_indices(N, B, tc.seed_of(1), i))
    data, idx = feed(S + 1)  # the step's arguments: the uint8 data set on the device and (K, B) int32
    assert idx.dtype == jnp.int32 and idx.shape == (2, B)
    np.testing.assert_array_equal(np.asarray(data), images)
    np.testing.assert_array_equal(np.asarray(idx), epochs[1][:, B : 2 * B])


def test_resumed_metrics_log_drops_rows_after_the_checkpoint(tmp_path):
    """Rows written after the checkpoint's step (a run killed between a log write and the next
    checkpoint) are dropped on resume: every (kind, step, seed) is logged once, steps increase,
    and the rows after the checkpoint are those of the resumed run."""
    from numpyro_air.analysis.figures import read_jsonl
    from numpyro_air.train.loop import MetricsLog

    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, None)
    for s in range(1, 6):
        for seed in (0, 1):
            log.write({"kind": "train", "step": s, "seed": seed, "elbo": -s})
        if s % 2 == 0:
            log.write({"kind": "eval", "step": s, "seed": 0, "test_accuracy": 1 / s})
    log.close()
    log = MetricsLog(path, 3)  # resumed from a checkpoint at step 3
    for s in (4, 5):
        for seed in (0, 1):
            log.write({"kind": "train", "step": s, "seed": seed, "elbo": 10.0 * s})
    log.close()
    rows = read_jsonl(path)
    keys = [(r["kind"], r["step"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)), keys
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps), steps
    resumed = [(r["step"], r["elbo"]) for r in rows if r["kind"] == "train" and r["seed"] == 1]
    assert resumed == [(1, -1), (2, -2), (3, -3), (4, 40.0), (5, 50.0)]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2]
    assert not path.with_name(path.name + ".tmp").exists()


def test_loop_compiles_its_step_once_and_a_failing_action_logs_each_row_once(tmp_path, datasets, monkeypatch):
    """Across steps, periodic actions and an evaluation in between, the loop traces its step once.
    An action failing after another wrote rows at the same step (progress, then evaluation, at
    step 4) leaves each row once, and the checkpoint of that step."""
    import numpyro_air.train.loop as training
    import numpyro_air.train.step as step_mod

    traces, evaluations = [], []
    real_update, real_evaluate = step_mod.make_update, training.evaluate

    def counting_update(svi, config, **kwargs):
        update = real_update(svi, config, **kwargs)
        return lambda *args: (traces.append(1), update(*args))[1]

    def evaluate_then_fail(*args, **kwargs):
        evaluations.append(1)
        if len(evaluations) == 2:
            raise RuntimeError("evaluation failed")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(step_mod, "make_update", counting_update)
    monkeypatch.setattr(training, "evaluate", evaluate_then_fail)
    out = tmp_path / "fail4"
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run(out, 6, datasets, progress_every=2, eval_every=2)
    assert len(traces) == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in rows] == [("train", 2), ("eval", 2), ("train", 4)]
    assert read_checkpoint(out / "checkpoint.npz")[0]["step"] == 4


# ----------------------------------------------------------------------------- parameter averaging

OPT_AVG = OptimConfig(baseline_learning_rate=0.1, average_decay=0.5)


def test_param_average_keeps_the_updates_and_averages_their_parameters():
    import optax

    from numpyro_air.train.optim import average_rate, averaged_params, with_param_average

    inner = optax.sgd(0.1)
    tx = with_param_average(inner, decay=0.9)
    params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
    grad = lambda p: jax.tree.map(lambda v: 2 * v + 1, p)  # noqa: E731
    p, p_plain = params, params
    state, plain = tx.init(params), inner.init(params)
    want = jax.tree.map(np.asarray, params)
    for n in range(1, 31):
        u, state = tx.update(grad(p), state, p)
        u_plain, plain = inner.update(grad(p_plain), plain)
        p, p_plain = optax.apply_updates(p, u), optax.apply_updates(p_plain, u_plain)
        r = min(0.9, (1 + n) / (10 + n))
        assert float(average_rate(0.9, n)) == pytest.approx(r)
        want = jax.tree.map(lambda a, v: r * a + (1 - r) * np.asarray(v), want, p)
    for k in params:  # the updates are the inner optimiser's; the average follows the recursion
        np.testing.assert_array_equal(p[k], p_plain[k])
        np.testing.assert_allclose(averaged_params(state)[k], want[k], rtol=1e-6)
        assert not np.allclose(want[k], p[k], atol=1e-3)  # an average of the path, not the last point
    assert int(state.average_count) == 30 and averaged_params(plain) is None
    with pytest.raises(ValueError, match="parameters"):
        tx.update(grad(p), state)
    for bad in (0.0, 1.0, -0.5, True):
        with pytest.raises(ValueError, match="average_decay"):
            OptimConfig(average_decay=bad)


def test_param_average_from_a_later_update_is_a_resume_that_starts_averaging():
    """``start``: the average is the parameters until the inner Adam has applied ``start`` updates
    (a skipped step does not count), then it follows what a run resumed at that update with
    averaging added (average = its parameters, count 0) computes, bit for bit."""
    import optax

    from numpyro_air.train.optim import ParamAverageState, adam_or_skip, averaged_params, with_param_average

    inner, start, decay = adam_or_skip(0.05), 4, 0.9
    later = with_param_average(inner, decay, start=start)
    grad = lambda p: jax.tree.map(lambda v: 2 * v + 1, p)  # noqa: E731
    params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
    p, state = params, later.init(params)
    for n in range(start + 1):  # one of them skipped
        value = jnp.float32(jnp.nan if n == 2 else 1.0)
        u, state = later.update(grad(p), state, p, value=value)
        p = optax.apply_updates(p, u)
        assert int(state.average_count) == 0
        for k in p:
            np.testing.assert_array_equal(averaged_params(state)[k], p[k])
    resumed = ParamAverageState(state.optimizer_state, jnp.zeros([], jnp.int32), p)  # the resume's state
    q, fresh = p, with_param_average(inner, decay)
    for _ in range(6):
        u, state = later.update(grad(p), state, p, value=jnp.float32(1.0))
        v, resumed = fresh.update(grad(q), resumed, q, value=jnp.float32(1.0))
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    assert int(state.average_count) == int(resumed.average_count) == 6
    for k in p:
        np.testing.assert_array_equal(averaged_params(state)[k], averaged_params(resumed)[k])
        assert not np.allclose(averaged_params(state)[k], p[k], atol=1e-4)
    with pytest.raises(ValueError, match="Adam state"):  # the count it reads
        with_param_average(optax.sgd(0.1), decay, start=2).update(
            grad(params), with_param_average(optax.sgd(0.1), decay).init(params), params
        )
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="average_start"):
            OptimConfig(average_decay=0.9, average_start=bad)
    with pytest.raises(ValueError, match="needs average_decay"):
        OptimConfig(average_start=10)


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory, datasets):
    """A run of 2 steps without averaging, resumed to step 4 with averaging."""
    out = tmp_path_factory.mktemp("avg")
    run(out, 2, datasets, final_figures=False)
    _, at2 = read_checkpoint(out / "checkpoint.npz")
    lines = []
    train(
        AIR, OPT_AVG, tcfg(4, final_figures=False), *datasets, out, load=out / "checkpoint.npz", progress=False, log=lines.append
    )
    assert any("parameter averaging starts here" in line for line in lines), lines
    return out, at2


def test_averaged_run_checkpoint_and_readers(averaged_run, full_run, tmp_path):
    from numpyro_air.train.checkpoint import export_params

    out, at2 = averaged_run
    _, plain = read_checkpoint(full_run[0] / "checkpoint.npz")
    _, avg = read_checkpoint(out / "checkpoint.npz")
    params = sorted(n for n in plain if n.startswith("params/"))
    assert sorted(n[len("average/") :] for n in avg if n.startswith("average/")) == [n[len("params/") :] for n in params]
    # the optimiser's moments keep their names, and averaging does not change the updates
    state_names = sorted(n for n in plain if n.startswith("state/"))
    assert sorted(n for n in avg if n.startswith("state/")) == sorted(state_names + ["state/average_count"])
    assert int(avg["state/average_count"]) == 2  # averaging began at the resume, from the step-2 parameters
    for n in params:
        np.testing.assert_allclose(avg[n], plain[n], rtol=1e-4, atol=1e-6, err_msg=n)
    moved = [n for n in params if not np.allclose(avg["average/" + n[7:]], avg[n], atol=1e-7)]
    assert len(moved) > len(params) // 2  # the average lags the last parameters ...
    assert len([n for n in params if not np.allclose(avg["average/" + n[7:]], at2[n], atol=1e-7)]) > len(params) // 2
    name = "decode$params/MLP_0/Dense_0/kernel"  # ... and is not the starting point either
    _, auto = load_params(out / "checkpoint.npz")
    _, last = load_params(out / "checkpoint.npz", weights="last")
    np.testing.assert_array_equal(auto["decode$params"]["MLP_0"]["Dense_0"]["kernel"], avg["average/" + name])
    np.testing.assert_array_equal(last["decode$params"]["MLP_0"]["Dense_0"]["kernel"], avg["params/" + name])
    with pytest.raises(CheckpointError, match="no averaged parameters"):
        load_params(full_run[0] / "checkpoint.npz", weights="average")
    exported = export_params(out / "checkpoint.npz", tmp_path / "w.npz")
    meta, arrays = read_npz(exported)
    assert meta["weights"] == "average" and not any(n.startswith("average/") for n in arrays)
    np.testing.assert_array_equal(arrays["params/" + name], avg["average/" + name])
    _, again = load_params(exported, weights="average")  # a file exported from an average says so
    np.testing.assert_array_equal(again["decode$params"]["MLP_0"]["Dense_0"]["kernel"], avg["average/" + name])
    # what the loop evaluates and draws during training: the average
    from types import SimpleNamespace

    from numpyro_air.train.checkpoint import restore_into
    from numpyro_air.train.loop import Setup
    from numpyro_air.train.svi import make_svi

    svi = make_svi(AIR, OPT_AVG)
    state = restore_into(jax.eval_shape(svi.init, jax.random.PRNGKey(0), jnp.zeros((8, CANVAS, CANVAS))), avg)
    seen = Setup.params(SimpleNamespace(svi=svi), jax.tree.map(lambda a: a[None], state), 0)
    np.testing.assert_array_equal(seen["decode$params"]["MLP_0"]["Dense_0"]["kernel"], avg["average/" + name])


def test_a_run_without_averaging_restores_an_averaged_checkpoint(averaged_run):
    """The state of a run without averaging takes an averaged checkpoint, dropping its average and
    saying so (the loop passes its log as ``note``; ``check_meta`` ignores ``average_decay``)."""
    from numpyro_air.train.checkpoint import leaf_name, restore_into
    from numpyro_air.train.svi import make_svi

    _, avg = read_checkpoint(averaged_run[0] / "checkpoint.npz")
    svi, notes = make_svi(AIR, OPT), []
    template = jax.eval_shape(svi.init, jax.random.PRNGKey(0), jnp.zeros((8, CANVAS, CANVAS)))
    state = restore_into(template, avg, "ckpt.npz", note=notes.append)
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    names = {leaf_name(path): leaf for path, leaf in flat}
    assert not any(n.startswith("average/") for n in names) and "state/average_count" not in names
    np.testing.assert_array_equal(
        names["params/decode$params/MLP_0/Dense_0/kernel"], avg["params/decode$params/MLP_0/Dense_0/kernel"]
    )
    assert len(notes) == 1 and "parameter average is dropped" in notes[0] and notes[0].startswith("ckpt.npz")
