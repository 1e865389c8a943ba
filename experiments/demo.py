"""Thin wrapper: `python experiments/demo.py ...` = `numpyro-air demo ...` (see numpyro_air/cli/demo.py)."""

from numpyro_air.cli.demo import main

if __name__ == "__main__":
    main()
