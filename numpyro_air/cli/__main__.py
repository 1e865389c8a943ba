"""``python -m numpyro_air.cli train ...`` = ``numpyro-air train ...``."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
