"""``numpyro-air train ARGS`` whose checkpoint writes pause for 3 s after writing the temporary
file and before the rename, printing SAVING (fault injection for tests/test_interrupt.py)."""

import sys
import time

import numpy as np

import numpyro_air.train.checkpoint as ckpt
from numpyro_air.cli.train import main

_savez = np.savez


def slow_savez(f, *args, **kw):
    _savez(f, *args, **kw)
    print("SAVING", flush=True)
    time.sleep(3.0)


ckpt.np.savez = slow_savez  # checkpoint.py calls np.savez on the temporary file, then os.replace

if __name__ == "__main__":
    main(sys.argv[1:], prog=f"python {sys.argv[0]}")
