"""Thin wrapper: `python experiments/train.py ...` = `numpyro-air train ...` (see numpyro_air/cli/train.py)."""

from numpyro_air.cli.train import main

if __name__ == "__main__":
    main()
