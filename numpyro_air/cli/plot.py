"""Regenerate the figures of a training run from its logs (and checkpoint, if present).

    numpyro-air plot runs/air            # curves from metrics.jsonl (+ figures from the checkpoint)

Writes elbo.png and accuracy.png (against step and wall-clock time), the final confusion
matrices and, when ``checkpoint.npz`` exists, boxes / reconstructions / prior samples / each
object's decoded window (in colour for colour runs, panels with the canvas's aspect ratio).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from . import example_epilog


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog=example_epilog("plot"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir")
    p.add_argument("--out", help="figure directory (default: the run directory)")
    p.add_argument("--no-model-figures", action="store_true", help="only curves and confusion matrices")
    return p


def confusion_figures(records: list, out: Path) -> list:
    """Confusion matrices of the last evaluation of every seed."""
    from numpyro_air.analysis import figures as viz

    evals = [r for r in records if r.get("kind") == "eval"]
    if not evals:
        return []
    last = max(r["step"] for r in evals)
    paths = []
    for r in (r for r in evals if r["step"] == last):
        for split in ("test", "train"):
            if f"{split}_confusion" in r:
                title = f"{split}, step {last}: accuracy {r[f'{split}_accuracy']:.4f}"
                paths.append(
                    viz.save_confusion_figure(out / f"confusion_{split}_seed{r['seed']}.png", r[f"{split}_confusion"], title)
                )
    return paths


def own_images(data: dict):
    """The held-out (else training) images of a run trained with ``--data``, read again from the
    path its checkpoint records and checked against the recorded SHA-256."""
    from numpyro_air.data import DataError, load_images

    desc = data["test"] or data["train"]
    try:
        images = load_images(desc["path"])
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    if images.sha256() != desc["sha256"]:
        raise SystemExit(f"error: {desc['path']} has changed since training (SHA-256 differs from the checkpoint's)")
    return images


def generated_test_split(data: dict):
    """The test split of a run trained on a generated benchmark, regenerated (or read from the
    cache) from the generator configuration its checkpoint records (``dataset``, default
    multi-MNIST: checkpoints from before the benchmarks record none)."""
    from numpyro_air.data import DATASETS, load_dataset

    name = data.get("dataset", "multi-mnist")
    if name not in DATASETS:
        raise SystemExit(f"error: the checkpoint records dataset {name!r}, not one of {', '.join(DATASETS)}")
    ds = DATASETS[name]
    cfg = ds.config_type(**{k: v for k, v in data.items() if k in ds.config_type.__dataclass_fields__})
    source = None if not ds.uses_mnist or data.get("mnist") in (None, "embedded") else data["mnist"]
    return load_dataset(ds.name, cfg, source=source, progress=False)[1]


def model_figures(ckpt: Path, out: Path) -> list:
    """Boxes, reconstructions, prior samples and decoded windows on the run's own held-out split."""
    import jax

    from numpyro_air.analysis.evaluation import save_figures
    from numpyro_air.data import to_float
    from numpyro_air.train.checkpoint import load_params, read_npz

    air, params = load_params(ckpt)
    data = read_npz(ckpt)[0].get("data", {})
    test = own_images(data) if data.get("source") == "images" else generated_test_split(data)
    counts = None if test.counts is None else test.counts[:16]
    return save_figures(params, air, to_float(test.images[:16]), counts, jax.random.PRNGKey(0), out)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> list:
    args = build_parser(prog).parse_args(argv)
    from numpyro_air.analysis import figures as viz
    from numpyro_air.train.checkpoint import seed_files

    run = Path(args.run_dir)
    out = Path(args.out) if args.out else run
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"error: {metrics} not found (expected the metrics log of a training run)")
    records = viz.read_jsonl(metrics)
    paths = viz.save_curves(records, out) + confusion_figures(records, out)
    ckpt = next((p for p in [run / "checkpoint.npz", *seed_files(run / "checkpoint.npz")] if p.is_file()), None)
    if ckpt is not None and not args.no_model_figures:
        paths += model_figures(ckpt, out)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
