"""Thin wrapper: `python experiments/plot.py ...` = `numpyro-air plot ...` (see numpyro_air/cli/plot.py)."""

from numpyro_air.cli.plot import main

if __name__ == "__main__":
    main()
