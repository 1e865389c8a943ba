"""Resuming checks a checkpoint's run description; older checkpoints of the same run still resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from numpyro_air.core.config import AIRConfig
from numpyro_air.data import MultiDSpritesConfig, MultiMNISTConfig, ScatteredMNISTConfig
from numpyro_air.train.checkpoint import CheckpointError
from numpyro_air.train.loop import TrainConfig, check_meta, run_meta
from numpyro_air.train.recipes import OptimConfig


def _meta(air=None, opt=None):
    air = AIRConfig.tutorial() if air is None else air
    opt = OptimConfig.tutorial() if opt is None else opt
    return run_meta(air, opt, TrainConfig(batch_size=64, seed=1), {"cache": "x"}, 0, 500)


def test_same_run_passes():
    check_meta(_meta(), _meta(), "ckpt.npz")


def test_older_checkpoint_without_newer_fields_resumes():
    old = _meta()
    for field in ("concrete_anneal_steps", "concrete_temperature_to", "concrete_prior_temperature"):
        del old["air_config"][field]  # fields added after the checkpoint was written, now at their defaults
    del old["optim_config"]["signal_decay"]
    check_meta(old, _meta(), "ckpt.npz")


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda m: m["air_config"].__setitem__("z_what_size", 10), "z_what_size"),
        (lambda m: m["optim_config"].__setitem__("learning_rate", 3e-4), "learning_rate"),
        (lambda m: m.__setitem__("seed", 7), "seed"),
        (lambda m: m["air_config"].__setitem__("no_such_field", 1), "no_such_field"),
    ],
)
def test_a_different_run_is_refused_naming_the_field(change, field):
    old = _meta()
    change(old)
    with pytest.raises(CheckpointError, match=field):
        check_meta(old, _meta(), "ckpt.npz")


def test_estimator_change_is_refused():
    other = _meta(air=dataclasses.replace(AIRConfig.tutorial(), presence_estimator="concrete", use_baselines=False))
    with pytest.raises(CheckpointError, match="presence_estimator"):
        check_meta(other, _meta(), "ckpt.npz")


def test_concrete_preset_is_the_recipe_of_the_seeds_run():
    """`--preset concrete` = `--preset tutorial --estimator concrete` (experiments/results/seeds) =
    Recipe.concrete(), so its checkpoints resume under either spelling; flags still override it."""
    from numpyro_air.cli.train import build_parser, configs_from_args
    from numpyro_air.train.recipes import Recipe

    cfg = lambda *argv: configs_from_args(build_parser().parse_args(list(argv)))[:2]  # noqa: E731
    a_air, a_opt = cfg("--preset", "concrete")
    b_air, b_opt = cfg("--preset", "tutorial", "--estimator", "concrete")
    assert (a_air, a_opt) == (b_air, b_opt) == (Recipe.concrete().air, Recipe.concrete().optim)
    assert a_air.relaxed_presence and not a_air.uses_baseline_nets
    assert cfg("--preset", "concrete", "--estimator", "nvil")[0] == AIRConfig.tutorial()


def test_fast_preset_is_concrete_with_three_times_the_learning_rate_in_bfloat16():
    """`--preset fast` = Recipe.fast() = `--preset concrete -lr 3e-4 --compute-dtype bfloat16`;
    an explicit -lr or --compute-dtype still wins."""
    from numpyro_air.cli.train import build_parser, configs_from_args
    from numpyro_air.train.recipes import Recipe

    cfg = lambda *argv: configs_from_args(build_parser().parse_args(list(argv)))[:2]  # noqa: E731
    fast = cfg("--preset", "fast")
    concrete_bf16 = cfg("--preset", "concrete", "-lr", "3e-4", "--compute-dtype", "bfloat16")
    assert fast == concrete_bf16 == (Recipe.fast().air, Recipe.fast().optim)
    assert fast[0] == Recipe.concrete().air.replace(compute_dtype="bfloat16") and fast[1].learning_rate == 3e-4
    assert fast[1].baseline_learning_rate == Recipe.concrete().optim.baseline_learning_rate
    assert cfg("--preset", "fast", "-lr", "1e-4")[1] == Recipe.concrete().optim
    assert cfg("--preset", "fast", "--compute-dtype", "float32")[0] == Recipe.concrete().air


def test_different_data_description_is_refused_naming_the_difference():
    """A checkpoint of a run on other data does not resume: the error names ``data``, the field of
    the description that differs and both values; the same description still resumes."""
    here = _meta()
    check_meta(here, _meta(), "ckpt.npz")
    other = _meta()
    other["data"] = {"cache": "y", "num_train": 100}
    with pytest.raises(CheckpointError) as err:
        check_meta(other, here, "ckpt.npz")
    msg = str(err.value)
    assert msg.startswith("ckpt.npz: data does not match the current run"), msg
    assert "cache: checkpoint 'y' vs now 'x'" in msg and "num_train: checkpoint 100 vs now (absent)" in msg, msg
    assert "air_config" not in msg and "optim_config" not in msg  # only the data differs


def test_parameter_averaging_may_start_or_stop_at_a_resume():
    """``--average-decay`` reaches OptimConfig; a checkpoint resumes with averaging added, changed
    or removed (it never changes the updates), while any other optimiser field still must match."""
    from numpyro_air.cli.train import build_parser, configs_from_args

    opt = configs_from_args(build_parser().parse_args(["--preset", "tutorial", "--average-decay", "0.999"]))[1]
    assert opt == dataclasses.replace(OptimConfig.tutorial(), average_decay=0.999)
    averaged = _meta(opt=opt)
    check_meta(_meta(), averaged, "ckpt.npz")
    check_meta(averaged, _meta(), "ckpt.npz")
    later = configs_from_args(
        build_parser().parse_args(["--preset", "tutorial", "--average-decay", "0.999", "--average-from", "40"])
    )[1]
    assert later == dataclasses.replace(opt, average_start=40)
    check_meta(_meta(), _meta(opt=later), "ckpt.npz")  # a run averaging from a later step resumes any of them
    check_meta(_meta(opt=later), averaged, "ckpt.npz")
    with pytest.raises(CheckpointError, match="learning_rate"):
        check_meta(_meta(opt=dataclasses.replace(opt, learning_rate=1e-3)), _meta(), "ckpt.npz")


@pytest.mark.parametrize("config", [MultiMNISTConfig, ScatteredMNISTConfig, MultiDSpritesConfig])
def test_later_fields_are_omitted_from_cache_keys_at_their_value_of_before(config):
    """Each generator declares the fields it gained later once (``LATER_FIELDS``): at their value of
    before, ``to_dict`` (hence the cache key) is what it was before the field existed."""
    for field, before in config.LATER_FIELDS.items():
        assert field in dataclasses.asdict(config()) and field not in config(**{field: before}).to_dict()
    assert set(config().to_dict()) >= {f.name for f in dataclasses.fields(config)} - set(config.LATER_FIELDS)


def _data_meta(data):
    return run_meta(AIRConfig.tutorial(), OptimConfig.tutorial(), TrainConfig(batch_size=64, seed=1), data, 0, 500)


def test_checkpoint_from_before_the_overlap_bound_resumes_unbounded_scenes_only():
    """A scattered-MNIST checkpoint written before ``max_overlap`` existed drew unbounded scenes: it
    resumes with ``--max-overlap none`` and is refused, naming the field, with SPAIR's bound."""
    later = ScatteredMNISTConfig.LATER_FIELDS
    before = {"dataset": "scattered-mnist", "canvas_size": 48, "digit_size": 14, "mnist": "embedded"}
    check_meta(_data_meta(before), _data_meta(before | {"max_overlap": None}), "ckpt.npz", later)
    with pytest.raises(CheckpointError, match=r"max_overlap: checkpoint \(absent\) vs now None"):
        check_meta(_data_meta(before), _data_meta(before | {"max_overlap": None}), "ckpt.npz")  # not told: refused
    with pytest.raises(CheckpointError, match="max_overlap: checkpoint None vs now 98"):
        check_meta(_data_meta(before), _data_meta(before | {"max_overlap": 98}), "ckpt.npz", later)
    check_meta(_data_meta(before | {"max_overlap": 98}), _data_meta(before | {"max_overlap": 98}), "ckpt.npz", later)


def test_checkpoint_from_before_crowding_resumes_pyro_scenes_only():
    """The same for multi-MNIST's ``crowding``: absent from a checkpoint means Pyro's scenes (0)."""
    later = MultiMNISTConfig.LATER_FIELDS
    before = {"dataset": "multi-mnist", "max_digits": 2, "mnist": "embedded"}
    check_meta(_data_meta(before), _data_meta(before | {"crowding": 0}), "ckpt.npz", later)
    with pytest.raises(CheckpointError, match="crowding: checkpoint 0 vs now 3"):
        check_meta(_data_meta(before), _data_meta(before | {"crowding": 3}), "ckpt.npz", later)


def test_a_checkpoint_of_0_3_0_resumes_on_pyro_scenes():
    """0.3.0 described multi-MNIST data without ``dataset`` and ``crowding``: the CLI's fields of
    before resume it on the same scenes and refuse it on crowded ones or another generator."""
    from numpyro_air.cli.train import data_fields_of_before

    config = MultiMNISTConfig()
    old = dataclasses.asdict(config) | {"mnist": "embedded"}
    del old["crowding"]
    now = {"dataset": "multi-mnist"} | dataclasses.asdict(config) | {"mnist": "embedded"}
    later = data_fields_of_before("multi-mnist", config)
    assert later == {"dataset": "multi-mnist", "crowding": 0}
    check_meta(_data_meta(old), _data_meta(now), "ckpt.npz", later)
    with pytest.raises(CheckpointError, match="crowding: checkpoint 0 vs now 3"):
        check_meta(_data_meta(old), _data_meta(now | {"crowding": 3}), "ckpt.npz", later)
    scattered = data_fields_of_before("scattered-mnist", ScatteredMNISTConfig())
    assert scattered == {"max_overlap": None}
    with pytest.raises(CheckpointError, match=r"dataset: checkpoint \(absent\) vs now 'scattered-mnist'"):
        check_meta(_data_meta(old), _data_meta(now | {"dataset": "scattered-mnist"}), "ckpt.npz", scattered)
    assert data_fields_of_before("multi-dsprites", MultiDSpritesConfig()) == {}


@pytest.mark.parametrize("dataset, config", [("scattered-mnist", ScatteredMNISTConfig), ("multi-mnist", MultiMNISTConfig)])
def test_train_cli_gives_the_loop_its_generators_later_fields(tmp_path, monkeypatch, dataset, config):
    """``numpyro-air train --dataset X`` hands the loop X's fields of before for the resume check."""
    from test_data import write_mnist_npz
    from test_data_provenance import fake_mnist

    from numpyro_air.cli import train as cli
    from numpyro_air.train import loop

    seen = {}

    def fake_train(air, opt, tcfg, train_set, test_set, out_dir, **kw):
        seen.update(kw)
        Path(out_dir).mkdir()
        return {}

    monkeypatch.setattr(loop, "train", fake_train)
    source = write_mnist_npz(tmp_path / "fake.npz", fake_mnist())
    argv = ["--dataset", dataset, "--num-train", "2", "--num-test", "2", "--mnist", str(source)]
    cli.main([*argv, "--data-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--no-progress"])
    assert seen["data_later"] == cli.data_fields_of_before(dataset, config())
    assert set(seen["data_later"]) >= set(config.LATER_FIELDS) and seen["data_desc"]["dataset"] == dataset
