"""Time to count accuracy: train a recipe from scratch and time reaching 90% / 95%.

Usage:  python benchmarks/time_to_accuracy.py [--preset NAME] [--max-steps 12000]
                                              [--eval-every 250] [--eval-images 2000]
                                              [--seed 0] [--batch-size 64] [--targets 0.90 0.95] [--stop-at]
                                              [--device cpu|gpu|tpu] [--json]

Trains a recipe of ``numpyro_air.PRESETS`` (``--preset``: ``tutorial`` is Pyro's recipe) (one seed,
its optimiser settings and learning-rate schedule, batch ``--batch-size``) on the cached multi-MNIST
(``load_multi_mnist(MultiMNISTConfig())``: 60,000 training canvases of 0-2 digits) with the loop's
own pieces: ``numpyro_air.train.step.make_step`` and ``numpyro_air.train.step.BatchSource`` (data set on the
device, batch i of the seed's order at step i), reading back the losses every 100 steps as the
loop does. Every ``--eval-every`` steps it blocks, stops the training clock and measures held-out
count accuracy (``numpyro_air.analysis.inference.count_accuracy``: one guide sample per image, Pyro's
metric) on the first ``--eval-images`` images of the held-out split (a fixed subset; with 2,000
images one accuracy has a standard error of about 0.5 points at 95%).

``--whole-command N``: instead, time the command a user types, ``numpyro-air train --preset P -n N
--seed S --out D --no-progress`` (plus ``--extra`` flags), as a fresh process per seed of
``--seeds`` (default: ``--seed``), from start to exit (imports, data from the cache, compilation,
steps, final evaluation on the held-out split, figures); reports each run's wall seconds and its
final held-out accuracy (one guide sample) from ``D/summary.json``. The data cache is filled
before the first timed run.

Reports the training seconds (the first step's compilation included, evaluation excluded; the
evaluation seconds separately), and for each target the first evaluated step whose accuracy is
>= the target and the training seconds up to it (None if never reached). ``--stop-at`` stops once
the last target is reached. Progress lines go to stderr with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import add_allocator_option, apply_allocator  # noqa: E402
from machine import cpu_model as _cpu_model
from machine import nproc as _nproc
from machine import pick_device as _pick_device

SYNC_EVERY = 100  # the loop's default progress_every: losses are read back (a device sync) this often


class Trainer:
    """One seed of the tutorial recipe, stepped with the loop's step builder and BatchSource."""

    def __init__(self, recipe, tcfg, train_images: np.ndarray):
        from numpyro_air import make_svi
        from numpyro_air.data import to_float
        from numpyro_air.train.loop import initial_states
        from numpyro_air.train.step import BatchSource, make_step

        self.svi, self.tcfg, self.step = make_svi(recipe), tcfg, 0
        self.batches = BatchSource(train_images, tcfg.batch_size, [tcfg.seed_of(0)])
        self.states, _, _, _ = initial_states(self.svi, tcfg, jnp.asarray(to_float(train_images[: tcfg.batch_size])))
        self.step_fn = make_step(self.svi, recipe.air, 1)
        self.pending, self.skipped, self.losses = [], 0, []

    def run(self, n: int) -> None:
        """``n`` more steps; reads the losses back every SYNC_EVERY steps and blocks at the end."""
        for _ in range(n):
            self.states, info = self.step_fn(self.states, self.batches(self.step), jnp.asarray(self.step + 1, jnp.int32))
            self.step += 1
            self.pending.append(info)
            if self.step % SYNC_EVERY == 0:
                self._collect()
        self._collect()
        jax.block_until_ready(self.states)

    def _collect(self) -> None:
        for info in self.pending:
            self.losses.append(float(np.asarray(info.loss).reshape(-1)[0]))
            self.skipped += int(np.asarray(info.skipped).reshape(-1)[0])
        self.pending.clear()

    def params(self):
        return self.svi.get_params(jax.tree.map(lambda a: a[0], self.states))


def evaluate(trainer: Trainer, air, images: np.ndarray, counts: np.ndarray, seed: int) -> dict:
    """Held-out count accuracy (one guide sample per image) and the seconds it took."""
    from numpyro_air.analysis.inference import count_accuracy

    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.PRNGKey(seed + 1_000_003), trainer.step)  # as training.eval_rows
    res = count_accuracy(trainer.params(), images, counts, key, air, greedy=False, batch_size=min(1000, len(images)))
    recent = [x for x in trainer.losses[-SYNC_EVERY:] if np.isfinite(x)]
    return {
        "accuracy": res["accuracy"],
        "confusion": res["confusion"],
        "eval_sec": time.perf_counter() - t0,
        "elbo_per_image": -float(np.mean(recent)) if recent else None,
    }


def train_to_targets(args, log) -> dict:
    """The training run: evaluations every ``args.eval_every`` steps, targets' steps and seconds."""
    from numpyro_air import PRESETS, load_multi_mnist
    from numpyro_air.data import MultiMNISTConfig, to_float
    from numpyro_air.train.loop import TrainConfig

    recipe = PRESETS[args.preset]
    train_set, test_set = load_multi_mnist(MultiMNISTConfig(), progress=False)
    eval_images = to_float(test_set.images[: args.eval_images])
    eval_counts = np.asarray(test_set.counts[: args.eval_images])
    tcfg = TrainConfig(num_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed)
    trainer = Trainer(recipe, tcfg, np.asarray(train_set.images))
    t0 = time.perf_counter()
    trainer.run(1)
    compile_sec = train_sec = time.perf_counter() - t0
    evals, reached, eval_sec = [], {t: None for t in args.targets}, 0.0
    while trainer.step < args.max_steps or not evals:
        t0 = time.perf_counter()
        trainer.run(min(args.eval_every - trainer.step % args.eval_every, args.max_steps - trainer.step))
        train_sec += time.perf_counter() - t0
        ev = evaluate(trainer, recipe.air, eval_images, eval_counts, args.seed)
        eval_sec += ev["eval_sec"]
        evals.append({"step": trainer.step, "train_sec": train_sec, **ev, "skipped_steps": trainer.skipped})
        log(
            f"step {trainer.step}: accuracy {ev['accuracy']:.4f}, elbo/img {ev['elbo_per_image']}, "
            f"train {train_sec:.1f} s, eval {ev['eval_sec']:.1f} s"
        )
        for t in args.targets:
            if reached[t] is None and ev["accuracy"] >= t:
                reached[t] = {"step": trainer.step, "train_sec": train_sec}
        if args.stop_at and reached[max(args.targets)] is not None:
            break
    return {
        "steps": trainer.step,
        "train_sec": train_sec,
        "compile_sec": compile_sec,
        "eval_sec": eval_sec,
        "skipped_steps": trainer.skipped,
        "reached": {str(t): r for t, r in reached.items()},
        "evals": evals,
        "num_train_images": len(train_set),
        "eval_images": int(len(eval_counts)),
    }


def _console_script() -> str:
    """``numpyro-air`` of this interpreter's environment (beside ``sys.executable``), else of PATH."""
    here = Path(sys.executable).parent / "numpyro-air"
    return str(here) if here.exists() else "numpyro-air"


def whole_command(args) -> dict:
    """Wall seconds and final held-out accuracy of ``numpyro-air train`` per seed (fresh processes)."""
    import shlex
    import subprocess
    import tempfile

    from numpyro_air.data import load_multi_mnist

    load_multi_mnist(progress=False)  # the cache is filled before timing
    runs = []
    for seed in args.seeds or [args.seed]:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [_console_script(), "train", "--preset", args.preset, "-n", str(args.whole_command), "--seed", str(seed)]
            cmd += ["--out", tmp, "--no-progress", *shlex.split(args.extra)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            final = json.loads((Path(tmp) / "summary.json").read_text())["final"][0]
        runs.append(
            {
                "seed": seed,
                "wall_sec": round(wall, 2),
                "test_accuracy": final["test_accuracy"],
                "test_images": final["test_images"],
            }
        )
        print(f"seed {seed}: {wall:.1f} s, held-out accuracy {final['test_accuracy']:.4f}", file=sys.stderr, flush=True)
    return {
        "command": " ".join(
            [
                "numpyro-air train --preset",
                args.preset,
                "-n",
                str(args.whole_command),
                "--seed S --out D --no-progress",
                args.extra,
            ]
        ).strip(),
        "runs": runs,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu_model": _cpu_model(),
        "nproc": _nproc(),
        "jax_version": jax.__version__,
    }


def main(argv=None) -> dict:
    from numpyro_air import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="tutorial",
        help="a recipe of numpyro_air.PRESETS (tutorial: Pyro's recipe)",
    )
    ap.add_argument("--max-steps", type=int, default=12000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-images", type=int, default=2000, help="first N images of the held-out split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95])
    ap.add_argument("--stop-at", action="store_true", help="stop once the last (highest) target is reached")
    ap.add_argument("--device", choices=("cpu", "gpu", "tpu"), default=None, help="default: JAX's default backend")
    ap.add_argument("--json", action="store_true", help="print one JSON object (progress on stderr)")
    ap.add_argument("--whole-command", type=int, metavar="N", help="time `numpyro-air train -n N` as a user runs it")
    ap.add_argument("--seeds", type=int, nargs="+", help="--whole-command: one fresh run per seed (default --seed)")
    ap.add_argument("--extra", default="", help="--whole-command: more `numpyro-air train` flags, one string")
    add_allocator_option(ap)  # the whole command sets its own (pass --extra=--system-allocator)
    args = ap.parse_args(argv)
    if args.whole_command is not None:
        res = whole_command(args)
        print(json.dumps(res) if args.json else json.dumps(res, indent=1))
        return res
    if min(args.max_steps, args.eval_every, args.eval_images, args.batch_size) < 1:
        ap.error("--max-steps, --eval-every, --eval-images, --batch-size must be >= 1")
    if not all(0 < t <= 1 for t in args.targets):
        ap.error("--targets must lie in (0, 1]")
    args.targets = sorted(set(args.targets))
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))

    allocator = apply_allocator(args.system_allocator)
    device = _pick_device(args.device)
    with jax.default_device(device):
        res = train_to_targets(args, log)
    res |= {
        "allocator": allocator,
        "recipe": f"PRESETS[{args.preset!r}]",
        "batch_size": args.batch_size,
        "seed": args.seed,
        "max_steps": args.max_steps,
        "eval_every": args.eval_every,
        "targets": args.targets,
        "device": str(device),
        "backend": device.platform,
        "device_kind": getattr(device, "device_kind", None),
        "cpu_model": _cpu_model(),
        "nproc": _nproc(),
        "jax_version": jax.__version__,
    }
    print(json.dumps(res) if args.json else _text(res))
    return res


def _text(r: dict) -> str:
    out = [
        f"device {r['device']} ({r['backend']}), cpu {r['cpu_model']}, nproc {r['nproc']}, jax {r['jax_version']}",
        f"{r['recipe']}, batch {r['batch_size']}, seed {r['seed']}: {r['steps']} steps, training "
        f"{r['train_sec']:.1f} s (first step incl. compile {r['compile_sec']:.1f} s), evaluation {r['eval_sec']:.1f} s "
        f"on {r['eval_images']} held-out images, {r['skipped_steps']} skipped steps",
        f"{'target':>7} {'step':>7} {'train s':>9}",
    ]
    for t, hit in r["reached"].items():
        out.append(f"{float(t):>7.2f} " + (f"{hit['step']:>7} {hit['train_sec']:>9.1f}" if hit else f"{'not reached':>17}"))
    return "\n".join(out)


if __name__ == "__main__":
    main()
