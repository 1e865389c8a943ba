"""What NVIL's signal normalisation does to the expected z_pres gradient of a trained AIR.

    python experiments/analyse_signal_normalisation.py CHECKPOINT [--draws 100] [--json OUT]

``CHECKPOINT`` is a training checkpoint of an NVIL run (plain or ``--normalize-signal``). For a
batch of held-out images, the score-function part of the gradient is split by time step with the
estimator's own options: running statistics with variance 0 (no scaling) at step t and a huge
variance at the other steps isolate step t's score term g_t; the same draws with every step
suppressed give the pathwise part, which is subtracted. Averaged over ``--draws`` independent
draws, E[g_t] is step t's contribution to the exact ELBO gradient (centring and baselines are
control variates). The normalised estimator's expected score gradient is sum_t E[g_t] / s_t, with
s_t the divisor of step t (``max(1, running sd_t)``, from the checkpoint when it holds running
statistics, else from the signals' sd measured on the same draws, as the estimator counts them); the exact one is sum_t E[g_t].

Printed (and written as JSON): per step the divisor s_t, the norm of E[g_t] and its cosine with
the exact score gradient; the cosine between the exact and the normalised expected gradients, for
all guide parameters and for the z_pres logit's output weights; and the same for one divisor
shared by every step (a positive multiple of the exact gradient by construction).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_air.core.guide import guide
from numpyro_air.core.model import model
from numpyro_air.core.prior import z_pres_prior_probs
from numpyro_air.data import load_multi_mnist, to_float
from numpyro_air.estimators.nvil import NVIL_ELBO, with_signal_stats
from numpyro_air.train.checkpoint import config_from_meta, read_checkpoint, restore_into
from numpyro_air.train.recipes import OptimConfig
from numpyro_air.train.svi import make_svi

STATS = "z_pres_signal_stats"
HUGE = 1e30  # a running variance that makes a step's normalised weight ~1e-15 of its signal


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _logit_out(grads) -> np.ndarray:
    """The z_pres logit's output weights (kernel column 0 and bias 0 of the predict net's last layer)."""
    layers = grads["predict$params"]["MLP_0"]
    last = layers[sorted(layers)[-1]]
    return np.concatenate([np.asarray(last["kernel"][:, 0]), np.asarray(last["bias"][:1])]).astype(np.float64)


def _shared_layers(means, pathwise, div) -> dict:
    """Norms of the expected gradient of the guide's layers that serve z_pres *and* z_where/z_what
    (embed, LSTM, the predict net's hidden layers): pathwise part, score part as plain NVIL has
    it, and score part after normalisation (sum_t g_t / s_t)."""
    out = {}
    for site in ("embed$params", "rnn$params", "predict$params"):
        if site not in pathwise:
            continue
        sub = lambda tree: (
            tree[site]
            if site != "predict$params"
            else {  # noqa: E731
                k: v for k, v in tree[site]["MLP_0"].items() if k != sorted(tree[site]["MLP_0"])[-1]
            }
        )
        plain = sum(_flat(sub(m)) for m in means)
        normed = sum(_flat(sub(m)) / s for m, s in zip(means, div))
        out[site if site != "predict$params" else "predict$params (hidden layers)"] = {
            "pathwise_norm": float(np.linalg.norm(_flat(sub(pathwise)))),
            "score_norm_plain": float(np.linalg.norm(plain)),
            "score_norm_normalised": float(np.linalg.norm(normed)),
        }
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def score_grads_per_step(params, config, images, key, draws: int, step: int):
    """Per-step expected score gradients (list of pytrees), the expected pathwise gradient (every
    step's score term suppressed) and each draw's batch variance of the signals l = cost - b over the
    entries whose score function is active, as the estimator's statistics count them (draws, T)."""
    T = config.num_steps
    elbo = NVIL_ELBO(normalize_signal=True)
    g = with_signal_stats(guide, {"z_pres": (T,)})
    kwargs = {"z_pres_prior": z_pres_prior_probs(config, jnp.asarray(step))}

    def grad_with(key, var):
        stats = {STATS: {"mean": jnp.zeros(T), "var": var}}

        def loss(p):
            out = elbo.components(key, {**p, **stats}, model, g, images, config=config, **kwargs)
            return out["surrogate_loss"], out

        grads, out = jax.grad(loss, has_aux=True)(params)
        return grads, out["score_weights"]["z_pres"], out["mutable_state"][STATS]

    grad_with = jax.jit(grad_with)
    none = jnp.full((T,), HUGE)
    sums = [None] * T
    path_sum = None
    signals = []
    for d in range(draws):
        k = jax.random.fold_in(key, d)
        base, _, _ = grad_with(k, none)
        base64 = jax.tree.map(lambda a: np.asarray(a, np.float64), base)
        path_sum = base64 if path_sum is None else jax.tree.map(np.add, path_sum, base64)
        for t in range(T):
            gt, w, _ = grad_with(k, none.at[t].set(0.0))
            diff = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), gt, base)
            sums[t] = diff if sums[t] is None else jax.tree.map(np.add, sums[t], diff)
        # statistics updated from zero: (1 - decay) * the batch variance of the active signals
        _, _, new = grad_with(k, jnp.zeros(T))
        signals.append(np.asarray(new["var"]) / (1.0 - elbo.signal_decay))
        if (d + 1) % 10 == 0:
            print(f"  {d + 1}/{draws} draws", flush=True)
    means = [jax.tree.map(lambda s: s / draws, s) for s in sums]
    return means, jax.tree.map(lambda s: s / draws, path_sum), np.stack(signals)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    meta, arrays = read_checkpoint(args.checkpoint)
    config = config_from_meta(meta, args.checkpoint)
    optim = OptimConfig(**meta["optim_config"])
    svi = make_svi(config, dataclasses.replace(optim, normalize_signal=True))
    _, test = load_multi_mnist(progress=False)
    images = jnp.asarray(to_float(test.images[: args.batch]))
    template = jax.eval_shape(svi.init, jax.random.PRNGKey(0), images)
    if not optim.normalize_signal:  # a plain NVIL checkpoint: no statistics stored
        template = template._replace(mutable_state=None)
    state = restore_into(template, arrays, args.checkpoint)
    params = svi.get_params(state)
    stored = None if state.mutable_state is None else state.mutable_state.get(STATS)

    means, pathwise, signals = score_grads_per_step(
        params, config, images, jax.random.PRNGKey(args.seed), args.draws, meta["step"]
    )
    T = config.num_steps
    measured_sd = np.sqrt(signals.mean(0))
    sd = np.sqrt(np.asarray(stored["var"])) if stored is not None else measured_sd
    div = np.maximum(1.0, sd)
    flat = [_flat(m) for m in means]
    logit = [_logit_out(m) for m in means]
    exact, exact_logit = sum(flat), sum(logit)
    normed = sum(f / s for f, s in zip(flat, div))
    normed_logit = sum(f / s for f, s in zip(logit, div))
    report = {
        "checkpoint": str(args.checkpoint),
        "step": int(meta["step"]),
        "draws": args.draws,
        "batch": args.batch,
        "divisor_source": "checkpoint running statistics" if stored is not None else "signals measured on the draws",
        "per_step": [
            {
                "t": t,
                "divisor": float(div[t]),
                "signal_sd_measured": float(measured_sd[t]),
                "score_grad_norm": float(np.linalg.norm(flat[t])),
                "cos_with_exact_all": _cos(flat[t], exact),
                "logit_out_grad_norm": float(np.linalg.norm(logit[t])),
                "cos_with_exact_logit_out": _cos(logit[t], exact_logit),
            }
            for t in range(T)
        ],
        "shared_layers": _shared_layers(means, pathwise, div),
        "cos_exact_vs_per_step_normalised_all": _cos(exact, normed),
        "cos_exact_vs_per_step_normalised_logit_out": _cos(exact_logit, normed_logit),
        "cos_exact_vs_shared_divisor": _cos(exact, exact / div.max()),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
