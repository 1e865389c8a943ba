"""Thin wrapper: `python experiments/evaluate.py ...` = `numpyro-air evaluate ...` (see numpyro_air/cli/evaluate.py)."""

from numpyro_air.cli.evaluate import main

if __name__ == "__main__":
    main()
