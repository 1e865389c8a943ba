"""One preset table for Python and the CLI, every default once (in the dataclasses), one default
for VIMCO's particles, and one version number."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from numpyro.infer import Trace_ELBO

import numpyro_air
from numpyro_air import NVIL_ELBO, PRESETS, RWS_ELBO, VIMCO_ELBO, AIRConfig, OptimConfig, Recipe, make_svi
from numpyro_air.cli import train as cli
from numpyro_air.data import MultiDSpritesConfig, MultiMNISTConfig, ScatteredMNISTConfig
from numpyro_air.train import loop as training
from numpyro_air.train import recipes as recipes_module
from numpyro_air.train import svi as svi_module
from numpyro_air.train.checkpoint import CheckpointError
from numpyro_air.train.loop import TrainConfig, check_meta, run_meta

ROOT = Path(__file__).resolve().parents[1]
_SCHEDULE = ("warmup_steps", "decay_steps", "final_lr_fraction")


def configs(*argv):
    return cli.configs_from_args(cli.build_parser().parse_args(list(argv)))


def test_the_table_holds_the_named_recipes():
    assert list(PRESETS) == ["pyro-default", "tutorial", "concrete", "fast", "minute"]
    assert PRESETS["pyro-default"] == Recipe.pyro_default() == Recipe(AIRConfig(), OptimConfig())
    assert PRESETS["tutorial"] == Recipe.tutorial() and PRESETS["concrete"] == Recipe.concrete()
    assert PRESETS["fast"] == Recipe.fast()
    assert PRESETS["fast"].optim.learning_rate == pytest.approx(3 * PRESETS["concrete"].optim.learning_rate)
    minute = PRESETS["minute"]
    assert minute == Recipe.minute() and minute.air == Recipe.fast().air
    assert minute.optim == dataclasses.replace(
        Recipe.fast().optim, learning_rate=2e-3, warmup_steps=100, decay_steps=1100, final_lr_fraction=0.05
    )
    assert dict(minute.train) == {"num_steps": 1200, "eval_train_images": 2000}
    assert all(not PRESETS[name].train for name in ("pyro-default", "tutorial", "concrete", "fast"))
    with pytest.raises(TypeError):
        PRESETS["mine"] = Recipe.tutorial()  # read-only


@pytest.mark.parametrize("name", ["pyro-default", "tutorial", "concrete", "fast", "minute"])
def test_cli_preset_is_the_table_entry_and_the_dataclass_defaults(name):
    air, opt, tcfg, data = configs("--preset", name)
    assert (air, opt) == (PRESETS[name].air, PRESETS[name].optim)
    assert tcfg == TrainConfig(**dict(PRESETS[name].train)) and data == MultiMNISTConfig(canvas_size=air.image_size)


def test_no_preset_is_pyro_default_and_only_given_flags_override():
    assert configs()[:2] == (PRESETS["pyro-default"].air, PRESETS["pyro-default"].optim)
    air, opt, tcfg, data = configs(
        "--preset",
        "tutorial",
        "-b",
        "32",
        "--z-pres-prior",
        "0.2",
        "--num-train",
        "100",
        "--pyro-loss-scale",
        "--no-masking",
        "--viz",
    )
    assert air == dataclasses.replace(Recipe.tutorial().air, z_pres_prior=0.2, use_masking=False)
    assert opt == dataclasses.replace(Recipe.tutorial().optim, loss_scale=100 / 32)
    assert tcfg == TrainConfig(batch_size=32, viz_every=cli.VIZ_EVERY)
    assert data == MultiMNISTConfig(num_train=100)


def test_the_cli_reads_the_table_and_the_dataclasses(monkeypatch):
    """Another table and other TrainConfig defaults change what the CLI builds and what its help
    shows: neither is written a second time in the CLI."""
    mine = Recipe(AIRConfig(z_what_size=7), OptimConfig(learning_rate=5e-5))
    monkeypatch.setattr(recipes_module, "PRESETS", {"pyro-default": mine, "mine": mine})

    @dataclasses.dataclass(frozen=True)
    class OtherTrainConfig(TrainConfig):
        num_steps: int = 1234
        batch_size: int = 17

    monkeypatch.setattr(training, "TrainConfig", OtherTrainConfig)
    air, opt, tcfg, _ = configs("--preset", "mine")
    assert (air, opt) == (mine.air, mine.optim)
    assert (tcfg.num_steps, tcfg.batch_size) == (1234, 17)
    text = " ".join(cli.build_parser().format_help().split())
    assert "optimisation steps (default 1234 here" in text and "minibatch size (17)" in text
    assert "z_what size (7)" in text and "pyro-default, mine (default pyro-default)" in text


def test_help_shows_each_default_and_the_presets_that_differ():
    text = " ".join(cli.build_parser().format_help().split())  # argparse wraps lines
    assert f"minibatch size ({TrainConfig().batch_size})" in text
    assert f"(default {TrainConfig().num_steps} here; Pyro: 1e8)" in text
    assert f"training scenes ({MultiMNISTConfig().num_train})" in text
    assert f"scattered MNIST: digit side in pixels ({ScatteredMNISTConfig().digit_size})" in text
    assert f"multi-dSprites: largest sprite size in pixels ({MultiDSpritesConfig().max_size})" in text
    tutorial = Recipe.tutorial()
    assert f"({AIRConfig().z_pres_prior}; tutorial, concrete, fast, minute: {tutorial.air.z_pres_prior})" in text
    assert (
        f"({OptimConfig().baseline_learning_rate}; tutorial, concrete, fast, minute: {tutorial.optim.baseline_learning_rate})"
    ) in text
    lr_fast, lr_minute = Recipe.fast().optim.learning_rate, Recipe.minute().optim.learning_rate
    assert f"({OptimConfig().learning_rate}; fast: {lr_fast}; minute: {lr_minute})" in text
    assert f"ELBO particles (1; --estimator vimco: {VIMCO_ELBO().num_particles}; rws: {RWS_ELBO().num_particles})" in text


def test_schedule_flags_set_the_optimiser_and_old_checkpoints_still_resume():
    """--warmup-steps/--decay-steps/--final-lr-fraction set OptimConfig's schedule fields; a
    checkpoint written before they existed (no such keys) matches a run without a schedule, and one
    with another schedule is refused."""
    _, opt, _, _ = configs("--preset", "fast", "--warmup-steps", "10", "--decay-steps", "90", "--final-lr-fraction", "0.1")
    assert opt == dataclasses.replace(Recipe.fast().optim, warmup_steps=10, decay_steps=90, final_lr_fraction=0.1)
    air, plain, tcfg, _ = configs("--preset", "fast")
    now = run_meta(air, plain, tcfg, {}, 0, 5)
    older = dict(now, optim_config={k: v for k, v in now["optim_config"].items() if k not in _SCHEDULE})
    check_meta(older, now, "ckpt.npz")
    with pytest.raises(CheckpointError, match="decay_steps: checkpoint 0 vs now 90"):
        check_meta(older, run_meta(air, opt, tcfg, {}, 0, 5), "ckpt.npz")
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 0"):
        OptimConfig(warmup_steps=-5)
    # a bool is an int to Python, never a step count; each schedule field is checked
    for field, value in (("warmup_steps", True), ("decay_steps", False), ("average_start", True)):
        with pytest.raises(ValueError, match=f"{field} must be an integer >= 0, got {value}"):
            OptimConfig(**{field: value}, **({"average_decay": 0.99} if field == "average_start" else {}))
    with pytest.raises(ValueError, match="final_lr_fraction must be in"):
        OptimConfig(decay_steps=10, final_lr_fraction=True)


def test_no_figures_flag():
    assert configs()[2].final_figures and not configs("--no-figures")[2].final_figures


def test_a_recipe_sets_its_own_loop_defaults(monkeypatch):
    """``Recipe.train`` gives the loop settings of a preset (e.g. its step count): used by the CLI
    where no flag is given, overridden by flags."""
    mine = Recipe(AIRConfig(), OptimConfig(), train=(("num_steps", 321), ("eval_train_images", 50)))
    monkeypatch.setattr(recipes_module, "PRESETS", {"pyro-default": Recipe.pyro_default(), "mine": mine})
    assert configs("--preset", "mine")[2] == TrainConfig(num_steps=321, eval_train_images=50)
    assert configs("--preset", "mine", "-n", "7")[2] == TrainConfig(num_steps=7, eval_train_images=50)
    text = "".join(cli.build_parser().format_help().split())  # argparse wraps lines, also at hyphens
    assert "wherenoflagisgiven:mine:--num-steps321,--eval-train-images50" in text


def test_unknown_preset_is_an_error_naming_the_presets():
    with pytest.raises(ValueError, match="--preset must be one of pyro-default, tutorial, concrete, fast, minute, got 'fastest'"):
        configs("--preset", "fastest")
    with pytest.raises(SystemExit, match="error: --preset must be one of"):
        cli.main(["--preset", "fastest", "--out", "unused"])


def test_one_default_for_vimco_particles():
    """``num_particles=None`` (OptimConfig's default and the CLI's) is the estimator's default:
    VIMCO_ELBO's K, one particle otherwise; checkpoints record the number used."""
    assert OptimConfig().num_particles is None
    K = VIMCO_ELBO().num_particles
    assert K == 4  # what `numpyro-air train --estimator vimco` has always used
    assert OptimConfig().for_estimator("vimco").num_particles == K
    assert OptimConfig().for_estimator("nvil").num_particles == OptimConfig().for_estimator("concrete").num_particles == 1
    assert OptimConfig(num_particles=8).for_estimator("vimco").num_particles == 8
    assert OptimConfig().for_estimator("rws").num_particles == RWS_ELBO().num_particles
    air_rws, opt_rws, _, _ = configs("--preset", "fast", "--estimator", "rws", "--rws-continuous", "wake")
    rws = svi_module.make_elbo(air_rws, opt_rws)
    assert isinstance(rws, RWS_ELBO) and rws.continuous == "wake" and rws.num_particles == RWS_ELBO().num_particles
    assert svi_module.make_elbo(air_rws, OptimConfig()).continuous == RWS_ELBO().continuous == OptimConfig().rws_continuous
    air, opt, _, _ = configs("--preset", "tutorial", "--estimator", "vimco")
    assert svi_module.make_elbo(air, opt).num_particles == K
    meta = run_meta(air, opt, TrainConfig(), {}, 0, 10)
    assert meta["optim_config"]["num_particles"] == K
    older = run_meta(air, dataclasses.replace(opt, num_particles=K), TrainConfig(), {}, 0, 10)
    check_meta(older, meta, "ckpt.npz")  # a checkpoint that stored K explicitly still resumes
    with pytest.raises(ValueError, match="num_particles >= 2"):
        svi_module.make_elbo(air, OptimConfig(num_particles=1))


@pytest.mark.parametrize(
    "estimator, elbo, particles",
    [("nvil", NVIL_ELBO, 1), ("vimco", VIMCO_ELBO, 4), ("rws", RWS_ELBO, 4), ("concrete", Trace_ELBO, 1)],
)
def test_make_svi_works_for_every_estimator(estimator, elbo, particles):
    """``make_svi(AIRConfig(presence_estimator=...))`` builds, initialises and evaluates (traced:
    shapes and dtypes, no compilation) with every estimator's default particles."""
    config = AIRConfig(
        presence_estimator=estimator,
        image_size=12,
        window_size=6,
        z_what_size=2,
        rnn_hidden_size=4,
        encoder_net=(4,),
        decoder_net=(4,),
        num_steps=2,
    )
    svi = make_svi(config)
    assert type(svi.loss) is elbo and svi.loss.num_particles == particles
    images = jnp.full((2, 12, 12), 0.5)
    state = jax.eval_shape(svi.init, jax.random.PRNGKey(0), images)
    loss = jax.eval_shape(svi.evaluate, state, images)
    assert loss.shape == () and loss.dtype == jnp.float32


def test_the_version_is_defined_once():
    """pyproject.toml takes the version from ``numpyro_air.__version__`` (setuptools reads it)."""
    from setuptools.config.expand import read_attr

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "numpyro_air.__version__"
    assert read_attr(attr, root_dir=ROOT) == numpyro_air.__version__
    assert len(numpyro_air.__version__.split(".")) == 3
