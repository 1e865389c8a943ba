"""Evaluate every seed of a multi-seed run on held-out files and summarise: count accuracy (one
guide sample and the most probable path), accuracy per true count, localisation, every seed's
held-out accuracy curve, boxes and reconstructions.

    python experiments/summarize_scenes.py RUN_DIR --eval NAME=FILE[:STEPS] [--eval ...] --out DIR
        [--target 0.95] [--figures-seed K]

``NAME=FILE`` is an evaluation file of ``experiments/make_eval_set.py``; ``:STEPS`` evaluates it
with the model run for that many steps (``numpyro-air evaluate --model-steps``). For each seed
checkpoint of RUN_DIR (``checkpoint.npz`` or ``checkpoint_seed<N>.npz``) and each file it runs
``numpyro-air evaluate --json`` and writes ``DIR/evals/<NAME>_seed<N>.json``; then
``summary.json``, ``summary.md`` (tables per seed and per true count), ``accuracy.png`` (each
seed's held-out accuracy during training, from RUN_DIR/metrics.jsonl) and, for the seed of
``--figures-seed`` (default: the first), ``<NAME>_boxes.png`` and ``<NAME>_reconstructions.png``.
Every seed is reported, failed ones included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summarize_seeds import figure  # noqa: E402

from numpyro_air.analysis import figures as viz  # noqa: E402
from numpyro_air.cli import evaluate  # noqa: E402
from numpyro_air.train.checkpoint import seed_files  # noqa: E402


def _seed_of(path: Path) -> int:
    from numpyro_air.train.checkpoint import read_npz

    return int(read_npz(path)[0]["seed"])


def run_evals(run: Path, evals: dict, out: Path, figures_seed: int | None, weights: str = "auto") -> dict:
    """{name: {seed: evaluate's JSON}}; writes each JSON under out/evals. ``weights`` as
    ``numpyro-air evaluate --weights`` (the parameter average of runs that keep one, or the last)."""
    paths = [p for p in [run / "checkpoint.npz", *seed_files(run / "checkpoint.npz")] if p.is_file()]
    by_seed = {_seed_of(p): p for p in paths}
    first = min(by_seed) if figures_seed is None else figures_seed
    (out / "evals").mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name, (file, steps) in evals.items():
        results[name] = {}
        for seed, ckpt in sorted(by_seed.items()):
            argv = ["--checkpoint", str(ckpt), "--data", str(file), "--json", "--weights", weights]
            if steps is not None:
                argv += ["--model-steps", str(steps)]
            if seed == first:
                argv += ["--figures", str(out / f"figures_{name}")]
            r = evaluate.main(argv)
            (out / "evals" / f"{name}_seed{seed}.json").write_text(json.dumps(r, indent=1))
            results[name][seed] = r
    return results


def summarize(run: Path, results: dict, target: float) -> dict:
    trains = [r for r in viz.read_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"]
    first, last = min(trains, key=lambda r: r["wall_time"]), max(trains, key=lambda r: r["wall_time"])
    out: dict = {"run": run.name, "target": target, "files": {}}
    for name, per_seed in results.items():
        rows = {}
        for seed, r in per_seed.items():
            loc = r.get("localisation_greedy") or {}
            rows[seed] = {
                "step": r["step"],
                "model_steps": r["model_steps"],
                "accuracy": r["count_accuracy"],
                "accuracy_greedy": r["count_accuracy_greedy"],
                "by_count": {c: v["accuracy"] for c, v in r["accuracy_by_count"].items()},
                "by_count_greedy": {c: v["accuracy"] for c, v in r["accuracy_by_count_greedy"].items()},
                "centre_error_px": loc.get("mean_centre_error"),
                "matched_within_radius": loc.get("matched_within_radius"),
                "mean_iou": loc.get("mean_iou"),
            }
        out["files"][name] = {
            "images": next(iter(per_seed.values()))["num_images"],
            "seeds": rows,
            "seeds_reaching_target": {
                "one_sample": sum(r["accuracy"] >= target for r in rows.values()),
                "greedy": sum(r["accuracy_greedy"] >= target for r in rows.values()),
                "of": len(rows),
            },
        }
    out["steps"] = last["step"]
    out["wall_minutes_incl_eval"] = last["wall_time"] / 60
    out["steps_per_s_incl_eval"] = (last["step"] - first["step"]) / max(last["wall_time"] - first["wall_time"], 1e-9)
    return out


def _f(x, spec=".1%"):
    return "-" if x is None else format(x, spec)


def markdown(s: dict) -> str:
    lines = []
    for name, f in s["files"].items():
        seeds = f["seeds"]
        counts = list(next(iter(seeds.values()))["by_count_greedy"])
        lines += [
            f"### {name} ({f['images']} held-out scenes, model run for {next(iter(seeds.values()))['model_steps']} steps)",
            "",
            "| seed | step | count accuracy (one sample) | most probable path | "
            + " | ".join(f"true {c}" for c in counts)
            + " | centre error (px) | matched within radius | mean IoU |",
            "|---" * (7 + len(counts)) + "|",
        ]
        for seed, r in seeds.items():
            lines.append(
                f"| {seed} | {r['step']} | {_f(r['accuracy'])} | {_f(r['accuracy_greedy'])} | "
                + " | ".join(_f(r["by_count_greedy"][c]) for c in counts)
                + f" | {_f(r['centre_error_px'], '.2f')} | {_f(r['matched_within_radius'])} | {_f(r['mean_iou'], '.3f')} |"
            )
        reach = f["seeds_reaching_target"]
        lines += [
            "",
            f"Accuracy per true count and localisation: most probable path. Seeds at >= {s['target']:.0%}: "
            f"{reach['one_sample']} of {reach['of']} (one sample), {reach['greedy']} of {reach['of']} (most probable path).",
            "",
        ]
    lines.append(
        f"{s['steps']} steps; {s['wall_minutes_incl_eval']:.1f} wall minutes including evaluations "
        f"({s['steps_per_s_incl_eval']:.2f} steps/s for all seeds together)."
    )
    return "\n".join(lines) + "\n"


def _eval_arg(text: str) -> tuple[str, tuple[Path, int | None]]:
    name, _, rest = text.partition("=")
    file, _, steps = rest.partition(":")
    if not name or not file:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE[:STEPS], got {text!r}")
    return name, (Path(file), int(steps) if steps else None)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--eval", type=_eval_arg, action="append", required=True, metavar="NAME=FILE[:STEPS]")
    p.add_argument("--out", required=True)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--figures-seed", type=int)
    p.add_argument("--weights", choices=["auto", "average", "last"], default="auto", help="as numpyro-air evaluate --weights")
    a = p.parse_args(argv)
    run, out = Path(a.run), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run_evals(run, dict(a.eval), out, a.figures_seed, a.weights)
    s = summarize(run, results, a.target)
    s["accuracy_mean_sd"] = {
        name: [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None]
        for name, v in ((n, [r["accuracy_greedy"] for r in f["seeds"].values()]) for n, f in s["files"].items())
    }
    (out / "summary.json").write_text(json.dumps(s, indent=1))
    (out / "summary.md").write_text(markdown(s))
    figure(run, out, thresholds=(a.target,), ylim=(0.0, 1.0))
    print(markdown(s))
    return s


if __name__ == "__main__":
    main()
