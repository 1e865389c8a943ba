"""The ``numpyro-air`` console command: ``numpyro-air train | evaluate | plot ...``.

Each subcommand is a module of this package with ``main(argv)``; ``python experiments/<name>.py``
runs the same code. JAX is imported only after the options are parsed (``--device``).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Optional, Sequence

COMMANDS = {
    "train": "train AIR (Pyro's example flags plus seeds, devices, data options)",
    "evaluate": "count accuracy, per-count accuracy, localisation (and IWAE) of a checkpoint",
    "plot": "regenerate a run's figures from its log and checkpoint",
    "demo": "run the shipped pretrained model on held-out scenes: counts, accuracy, figures",
}

# The example each help text ends with: command lines that run as typed, in this order, in one
# directory of a checkout (tests/test_cli_examples.py runs them with fewer steps and scenes).
EXAMPLES = {
    "numpyro-air": ("numpyro-air demo --out demo",),
    "train": ("numpyro-air train --preset fast -n 20000 --eval-every 1000 --out runs/fast",),
    "evaluate": (
        "python experiments/make_eval_set.py --out test_0to3.npz",
        "numpyro-air evaluate --checkpoint runs/fast --data test_0to3.npz",
    ),
    "plot": ("numpyro-air plot runs/fast",),
    "demo": ("numpyro-air demo --out demo",),
}


def example_epilog(command: str) -> str:
    """The last lines of a help text: the example of ``command``."""
    return "example:\n" + "\n".join(f"  {line}" for line in EXAMPLES[command])


def set_platform(device: Optional[str]) -> None:
    """Select the JAX platform for ``--device`` before JAX is imported; an explicit
    ``JAX_PLATFORMS`` that excludes it is an error naming both."""
    if not device:
        return
    env = os.environ.get("JAX_PLATFORMS", "")
    platforms = [p.strip() for p in env.split(",") if p.strip()]
    aliases = {"gpu": {"gpu", "cuda", "rocm"}}.get(device, {device})
    if platforms and not aliases & set(platforms):
        raise SystemExit(f"error: --device {device} contradicts JAX_PLATFORMS={env!r}; unset one of them")
    if not platforms:
        os.environ["JAX_PLATFORMS"] = device


ALLOCATOR_HELP = (
    "leave glibc's malloc at its defaults and JAX's CPU dispatch asynchronous; by default freed host memory stays "
    "in the process and CPU steps run on the calling thread, which saves the compiled step's page faults (about "
    "10%% of the step at batch 256 on a 2-core CPU)"
)


def choose_allocator(system: bool) -> str:
    """Unless ``system`` (``--system-allocator``), keep freed host memory in the process and run
    CPU computations on the calling thread, whose heap that keeps (``numpyro_air.train.allocator``:
    :func:`retain_freed_memory`, :func:`synchronous_cpu_dispatch`; nothing changes off glibc).
    Call it before the first computation. Returns what the process runs with: "retain" (freed
    memory kept) or "system"."""
    if system:
        return "system"
    from numpyro_air.train.allocator import retain_freed_memory, synchronous_cpu_dispatch

    if not retain_freed_memory():
        return "system"
    synchronous_cpu_dispatch()
    return "retain"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit status (the subcommands' ``main`` return results)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
        msg = "usage: numpyro-air {" + ",".join(COMMANDS) + "} [options]\n\n" + "\n".join(lines)
        msg += "\n\n" + example_epilog("numpyro-air")
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"{msg}\n\nerror: unknown command {argv[0]!r}")
        print(msg)
        return 0
    module = importlib.import_module(f"numpyro_air.cli.{argv[0]}")
    module.main(argv[1:], prog=f"numpyro-air {argv[0]}")
    return 0
