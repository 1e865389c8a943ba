"""Ablation: NVIL with the score term divided by a *fixed* number instead of the running sd.

    python experiments/signal_divisor_ablation.py --divisor 50 -- --preset tutorial -n 3000 ... --out DIR

Everything after ``--`` is passed to ``numpyro-air train`` (NVIL, without ``--normalize-signal``);
the run's objective is NVIL whose score-function weight is ``sg(cost - b) / divisor``: no
centring, no running statistics, the learned baseline regressing the un-normalised cost as
before. With ``--divisor`` about the running sd that ``--normalize-signal`` reaches (45-55 nats
per step in the first 1,500 steps of the tutorial recipe), this separates the two things signal
normalisation does: shrinking the score term against the pathwise terms (kept here) and the
running-statistics arithmetic (removed here). ``--divisor 1`` is plain NVIL.
"""

from __future__ import annotations

import argparse
import sys

from jax.lax import stop_gradient
from numpyro.infer import SVI

import numpyro_air.train.loop as training
from numpyro_air.cli import main as cli_main
from numpyro_air.core.guide import guide
from numpyro_air.core.model import model
from numpyro_air.estimators.nvil import NVIL_ELBO, with_signal_stats


class FixedDivisorNVIL(NVIL_ELBO):
    """NVIL whose score-function weight is ``sg(cost - b) / divisor``. Built on the normalising
    code path (so the guide declares the statistics' site, left unchanged), with the running
    statistics replaced by the constant."""

    def __init__(self, divisor: float, **kwargs):
        super().__init__(normalize_signal=True, **kwargs)
        self.divisor = float(divisor)

    def _normalise(self, name, guide_trace, signal, log_q, scan_site):
        state_name = self.signal_stats_state.format(name)
        return stop_gradient(signal / self.divisor), (state_name, guide_trace[state_name]["value"])


def fixed_divisor_svi(divisor: float):
    """A replacement for ``make_svi`` that trains plain NVIL's recipe with :class:`FixedDivisorNVIL`."""

    def make_svi(air, opt):
        if air.presence_estimator != "nvil" or opt.normalize_signal:
            raise SystemExit("the ablation replaces plain NVIL: use the nvil estimator without --normalize-signal")
        tx = opt.optimizer()
        elbo = FixedDivisorNVIL(divisor, num_particles=opt.num_particles, loss_scale=opt.loss_scale)
        return SVI(model, with_signal_stats(guide, {"z_pres": (air.num_steps,)}), tx, elbo, config=air)

    return make_svi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--divisor", type=float, required=True)
    ours, rest = sys.argv[1:], []
    if "--" in ours:
        i = ours.index("--")
        ours, rest = ours[:i], ours[i + 1 :]
    args = ap.parse_args(ours)
    training.make_svi = fixed_divisor_svi(args.divisor)
    sys.exit(cli_main(["train", *rest]))


if __name__ == "__main__":
    main()
