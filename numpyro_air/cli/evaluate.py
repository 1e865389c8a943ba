"""Evaluate a trained AIR checkpoint on an evaluation file or a directory of images.

    numpyro-air evaluate --checkpoint runs/air --data test.npz [--json] [--iwae 100]

``--checkpoint`` takes a run directory (its ``checkpoint.npz``), a checkpoint or a params-only
file. ``--data`` is read by :func:`numpyro_air.data.load_images`: an ``.npz`` in the layout of
:mod:`numpyro_air.data.eval_io` (``images`` (N, H, W) or (N, H, W, 3) uint8 or float in [0, 1];
optional ``counts`` (N,) int, ``boxes`` (N, K, 4), ``labels``) or a directory of PNG/JPEG files
of one size, of the model's canvas. With ``counts`` it reports count accuracy from one guide
sample per image (Pyro's metric) and from the guide's most probable path, accuracy per true count
and localisation against ``boxes`` when present (Hungarian matching on centre distance). Without
``counts`` it reports the ELBO (nats per image). ``--iwae K`` adds the IWAE-K log-likelihood and
the ELBO. ``--importance K`` adds a third count: the argmax of the model's count posterior
estimated from K guide draws weighted by p(x, z) / q(z | x)
(:func:`numpyro_air.analysis.likelihood.count_posterior`). ``--count-evidence K`` adds a fourth:
the argmax over n of the model's log p(x, n), each count's evidence estimated from K guide draws
with the first n objects switched on (:func:`numpyro_air.analysis.likelihood.count_evidence`):
whether the model itself prefers the true count where the guide misses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import ALLOCATOR_HELP, choose_allocator, example_epilog, set_platform


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        epilog=example_epilog("evaluate"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="run directory, checkpoint or params file")
    p.add_argument(
        "--data", required=True, help="evaluation .npz (images[, counts, boxes, labels]) or a directory of PNG/JPEG files"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the guide samples")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--iwae", type=int, default=0, metavar="K", help="also estimate log p(x) with K importance samples")
    p.add_argument("--iwae-images", type=int, default=1000, help="images used for --iwae (first N)")
    p.add_argument(
        "--importance",
        type=int,
        default=0,
        metavar="K",
        help="also count by the argmax of the count posterior from K importance-weighted guide draws",
    )
    p.add_argument(
        "--count-evidence",
        type=int,
        default=0,
        metavar="K",
        help="also count by the argmax over n of the model's log p(x, n), each estimated from K guide draws with "
        "the first n objects switched on",
    )
    p.add_argument(
        "-t",
        "--model-steps",
        type=int,
        metavar="T",
        help="run the model and guide for T steps instead of the trained number (the networks are shared across "
        "steps), e.g. to count more objects than the training scenes held",
    )
    p.add_argument(
        "--weights",
        choices=["auto", "average", "last"],
        default="auto",
        help="which parameters of a checkpoint: the moving average a run trained with --average-decay keeps, or "
        "the last step's (auto: the average when there is one)",
    )
    p.add_argument("--device", choices=["cpu", "gpu", "tpu"])
    p.add_argument("--system-allocator", action="store_true", help=ALLOCATOR_HELP)
    p.add_argument("--figures", type=str, help="also write boxes/reconstruction/prior/window/confusion PNGs here")
    p.add_argument(
        "--discrete",
        action="store_true",
        help="relaxed-presence (Concrete) models: evaluate the discrete AIR model they approximate "
        "(z_pres ~ Bernoulli of the same guide logits, the same prior probabilities)",
    )
    return p


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its ``checkpoint.npz`` (or the ``checkpoint_seed<N>.npz`` of the
    lowest N: the first seed)."""
    from numpyro_air.train.checkpoint import seed_files

    path = Path(path)
    if not path.is_dir():
        return path
    for cand in [path / "checkpoint.npz", *seed_files(path / "checkpoint.npz")]:
        if cand.is_file():
            return cand
    raise SystemExit(f"error: run directory {path} holds no checkpoint.npz or checkpoint_seed*.npz")


def discrete_reading(air):
    """The discrete AIR model a relaxed-presence config approximates (zero-temperature limit):
    same networks and z_pres prior probabilities, Bernoulli presence, no baseline networks."""
    import dataclasses

    if not air.relaxed_presence:
        raise SystemExit(f"error: --discrete is for relaxed-presence models; this one uses {air.presence_estimator!r}")
    return dataclasses.replace(air, presence_estimator="nvil", use_baselines=False)


def count_metrics(true, inferred, num_steps: int, suffix: str = "") -> dict:
    """``count_accuracy``, ``confusion`` and ``accuracy_by_count`` (each name + ``suffix``) of
    inferred counts (N,) against the true ones (N,)."""
    from numpyro_air.analysis.inference import confusion_matrix
    from numpyro_air.analysis.metrics import accuracy_by_count

    return {
        f"count_accuracy{suffix}": float((inferred == true).mean()),
        f"confusion{suffix}": confusion_matrix(true, inferred, num_steps).tolist(),
        f"accuracy_by_count{suffix}": accuracy_by_count(true, inferred),
    }


def evaluate_file(params, air, ev, key, batch_size: int) -> dict:
    """Counts (sampled and greedy), per-count accuracy and localisation of one evaluation set
    (``ev.counts`` (N,); ``ev.images`` (N, H, W) or (N, H, W, C) uint8 or float in [0, 1])."""
    from numpyro_air.analysis.inference import infer_batched
    from numpyro_air.analysis.metrics import localisation
    from numpyro_air.data import to_float

    out = {}
    images = to_float(ev.images)
    for name, greedy in (("", False), ("_greedy", True)):
        res = infer_batched(params, images, key, air, greedy, batch_size, reconstruct=False)
        out |= count_metrics(ev.counts, res["counts"], air.num_steps, name)
        if ev.boxes is not None:
            out[f"localisation{name}"] = localisation(ev.boxes, ev.counts, res["boxes"], res["z_pres"] > 0)
    return out


def _argmax_counts(scores, ev, key, batch_size: int, desc: str):
    """Counts (N,) = argmax over n of ``scores(images, key_i)`` (B, T + 1), in batches of at most
    250 images, batch i with ``fold_in(key, i)``; a progress bar per batch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm import tqdm

    from numpyro_air.data import to_float

    batch = max(1, min(batch_size, 250))
    counts = []
    for i in tqdm(range(0, len(ev), batch), desc=desc, leave=False):
        x = jnp.asarray(to_float(ev.images[i : i + batch]))
        counts.append(np.asarray(scores(x, jax.random.fold_in(key, i)).argmax(-1)))
    return np.concatenate(counts)


def importance_counts(params, air, ev, key, num_samples: int, batch_size: int) -> dict:
    """Count accuracy, confusion and per-count accuracy of the argmax of the importance-sampled
    count posterior (K = ``num_samples`` draws per image; one chunk of 10 draws at once)."""
    from numpyro_air.analysis.likelihood import count_posterior

    scores = lambda x, k: count_posterior(params, x, k, air, num_samples, min(num_samples, 10))  # noqa: E731
    counts = _argmax_counts(scores, ev, key, batch_size, f"count posterior (K={num_samples})")
    return {"importance_samples": num_samples} | count_metrics(ev.counts, counts, air.num_steps, "_importance")


def evidence_counts(params, air, ev, key, num_samples: int, batch_size: int) -> dict:
    """Count accuracy, confusion and per-count accuracy of argmax_n log p(x, n), each count's
    evidence estimated from ``num_samples`` guide draws with n objects switched on
    (:func:`numpyro_air.analysis.likelihood.count_evidence`; one chunk of 10 draws at once)."""
    from numpyro_air.analysis.likelihood import count_evidence

    scores = lambda x, k: count_evidence(params, x, k, air, num_samples, min(num_samples, 10))  # noqa: E731
    counts = _argmax_counts(scores, ev, key, batch_size, f"count evidence (K={num_samples})")
    return {"evidence_samples": num_samples} | count_metrics(ev.counts, counts, air.num_steps, "_evidence")


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> dict:
    args = build_parser(prog).parse_args(argv)
    set_platform(args.device)
    choose_allocator(args.system_allocator)
    import jax
    import numpy as np

    from numpyro_air.data import DataError, load_images, to_float
    from numpyro_air.train.checkpoint import CheckpointError, chosen_weights, params_from_arrays, read_npz
    from numpyro_air.train.loop import canvas_shape

    ckpt = resolve_checkpoint(args.checkpoint)
    try:
        meta, arrays = read_npz(ckpt)  # read and checksummed once
        air, params = params_from_arrays(meta, arrays, ckpt, weights=args.weights)
        ev = load_images(args.data)
    except (CheckpointError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    if ev.shape != canvas_shape(air):
        raise SystemExit(f"error: {args.data} has images of shape {ev.shape}, the model expects {canvas_shape(air)}")
    if args.discrete:
        air = discrete_reading(air)
    if args.model_steps is not None:
        if args.model_steps < 1:
            raise SystemExit(f"error: --model-steps must be >= 1, got {args.model_steps}")
        air = dataclasses.replace(air, num_steps=args.model_steps)
    if args.limit:
        ev = ev.head(args.limit)
    key = jax.random.PRNGKey(args.seed)
    result = {
        "checkpoint": str(ckpt),
        "data": str(args.data),
        "num_images": len(ev),
        "step": meta.get("step"),
        "seed": meta.get("seed"),
        "presence": "discrete reading of a relaxed-presence model" if args.discrete else air.presence_estimator,
        "model_steps": air.num_steps,
        "weights": chosen_weights(arrays, args.weights, meta.get("weights", "last")),
    }
    for flag, value in (("--importance", args.importance), ("--count-evidence", args.count_evidence)):
        if value < 0:
            raise SystemExit(f"error: {flag} must be >= 1 (0: off), got {value}")
    if ev.counts is not None:
        result |= evaluate_file(params, air, ev, key, args.batch_size)
        if args.importance:
            result |= importance_counts(params, air, ev, jax.random.fold_in(key, 3), args.importance, args.batch_size)
        if args.count_evidence:
            result |= evidence_counts(params, air, ev, jax.random.fold_in(key, 4), args.count_evidence, args.batch_size)
    images = to_float(ev.images[: args.iwae_images])  # --iwae, or the ELBO of data without counts
    if args.iwae:
        from numpyro_air.analysis.likelihood import elbo_per_image, log_marginal_likelihood

        ll = log_marginal_likelihood(params, jax.numpy.asarray(images), jax.random.fold_in(key, 1), air, num_samples=args.iwae)
        elbo = elbo_per_image(params, jax.numpy.asarray(images), jax.random.fold_in(key, 2), air)
        result |= {
            "log_likelihood_iwae": float(np.mean(ll)),
            "iwae_samples": args.iwae,
            "elbo": float(np.mean(elbo)),
            "iwae_images": int(images.shape[0]),
        }
    elif ev.counts is None:
        from numpyro_air.analysis.evaluation import heldout_elbo

        elbo = heldout_elbo(params, air, images, jax.random.fold_in(key, 2), args.batch_size)
        result |= {"elbo": elbo, "elbo_images": int(images.shape[0])}
    if args.figures:
        _figures(args.figures, params, air, ev, key, result)
    print(json.dumps(result) if args.json else _report(result))
    return result


def _figures(out_dir: str, params, air, ev, key, result: dict) -> None:
    from numpyro_air.analysis import figures as viz
    from numpyro_air.analysis.evaluation import save_figures
    from numpyro_air.data import to_float

    out = Path(out_dir)
    save_figures(params, air, to_float(ev.images[:16]), None if ev.counts is None else ev.counts[:16], key, out)
    if "confusion" in result:
        viz.save_confusion_figure(out / "confusion.png", result["confusion"], f"accuracy {result['count_accuracy']:.4f}")


def _report(r: dict) -> str:
    lines = [f"{r['num_images']} images, step {r['step']}"]
    if "confusion" in r:
        lines += [
            f"count accuracy (one guide sample): {r['count_accuracy']:.4f}",
            f"count accuracy (most probable path): {r['count_accuracy_greedy']:.4f}",
            *(
                [f"count accuracy (count posterior, K={r['importance_samples']}): {r['count_accuracy_importance']:.4f}"]
                if "count_accuracy_importance" in r
                else []
            ),
            *(
                [f"count accuracy (count evidence, K={r['evidence_samples']}): {r['count_accuracy_evidence']:.4f}"]
                if "count_accuracy_evidence" in r
                else []
            ),
            "accuracy by true count: "
            + ", ".join(f"{c}: {v['accuracy']:.4f} ({v['images']})" for c, v in r["accuracy_by_count"].items()),
            "confusion (rows: true count, columns: inferred count):",
        ]
        lines += [f"   {row}" for row in r["confusion"]]
    else:
        lines.append("no counts in the data: no count accuracy")
    if "localisation" in r:
        loc = r["localisation"]
        lines.append(
            f"localisation: centre error {loc['mean_centre_error']} px, within {loc['match_radius']} px "
            f"{loc['matched_within_radius']}, mean IoU {loc['mean_iou']}"
        )
    if "log_likelihood_iwae" in r:
        lines.append(
            f"IWAE-{r['iwae_samples']} log p(x): {r['log_likelihood_iwae']:.2f} nats/image, "
            f"ELBO {r['elbo']:.2f} ({r['iwae_images']} images)"
        )
    elif "elbo" in r:
        lines.append(f"ELBO: {r['elbo']:.2f} nats/image ({r['elbo_images']} images, one guide sample)")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
