"""Regenerate the figures of a training run from its logs (and checkpoint, if present).

    python experiments/plot.py runs/air            # curves from metrics.jsonl (+ figures from the checkpoint)

Writes elbo.png and accuracy.png (against step and wall-clock time), the final confusion
matrices and, when ``checkpoint.msgpack`` exists, boxes / reconstructions / prior samples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", help="figure directory (default: the run directory)")
    p.add_argument("--no-model-figures", action="store_true", help="only curves and confusion matrices")
    args = p.parse_args(argv)
    from numpyro_air import viz

    run = Path(args.run_dir)
    out = Path(args.out) if args.out else run
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise SystemExit(f"error: {metrics} not found (expected the metrics log of a training run)")
    records = viz.read_jsonl(metrics)
    paths = viz.save_curves(records, out)
    evals = [r for r in records if r.get("kind") == "eval"]
    if evals:
        last_step = max(r["step"] for r in evals)
        for r in (r for r in evals if r["step"] == last_step):
            for split in ("test", "train"):
                if f"{split}_confusion" in r:
                    paths.append(viz.save_confusion_figure(out / f"confusion_{split}_seed{r['seed']}.png", r[f"{split}_confusion"],
                                                           f"{split}, step {last_step}: accuracy {r[f'{split}_accuracy']:.4f}"))
    ckpt = run / "checkpoint.msgpack"
    if ckpt.is_file() and not args.no_model_figures:
        import jax

        from numpyro_air.checkpoint import load_trained
        from numpyro_air.data import MultiMNISTConfig, load_multi_mnist, to_float
        from numpyro_air.training import save_figures

        air, params, meta = load_trained(ckpt)
        data = meta.get("data", {})
        cfg = MultiMNISTConfig(**{k: v for k, v in data.items() if k in MultiMNISTConfig.__dataclass_fields__})
        _, test = load_multi_mnist(cfg, source=None if data.get("mnist") in (None, "embedded") else data["mnist"], progress=False)
        paths += save_figures(params, air, to_float(test.images[:16]), test.counts[:16], jax.random.PRNGKey(0), out)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
