"""One process of a 2-process CPU training run on localhost (see tests/test_parallel.py).

    python multihost_train.py PROCESS_ID PORT OUT_DIR      # PROCESS_ID -1: one process, one device

Trains a tiny AIR for 3 steps with a global batch of 8 through ``numpyro_air.train.loop.train``
(each process builds only its half of every batch); prints the logged ELBOs as JSON."""

import json
import sys
from pathlib import Path

pid, port, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
import numpy as np  # noqa: E402

from numpyro_air import AIRConfig, OptimConfig  # noqa: E402
from numpyro_air.train.loop import TrainConfig, train  # noqa: E402
from numpyro_air.train.parallel import initialize_distributed  # noqa: E402

if pid >= 0:
    initialize_distributed(f"localhost:{port}", 2, pid)
import jax  # noqa: E402


class Set:
    def __init__(self, images, counts):
        self.images, self.counts = images, counts


cfg = AIRConfig.tutorial(
    image_size=20,
    window_size=10,
    rnn_hidden_size=16,
    z_what_size=4,
    encoder_net=(16,),
    decoder_net=(16,),
    predict_net=(8,),
    bl_predict_net=(8,),
)
rng = np.random.default_rng(0)
train_set = Set((rng.uniform(0, 0.5, (32, 20, 20)) * 255).astype(np.uint8), rng.integers(0, 3, 32))
test_set = Set(train_set.images[:8], train_set.counts[:8])
tc = TrainConfig(num_steps=3, batch_size=8, seed=5, progress_every=1, eval_batch_size=8, save_every=0)
train(cfg, OptimConfig.tutorial(), tc, train_set, test_set, out, progress=False, log=lambda s: None, devices=jax.devices())
rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if pid <= 0 else []
print(
    json.dumps(
        {
            "process_count": jax.process_count(),
            "elbos": [r["elbo"] for r in rows if r["kind"] == "train"],
            "files": sorted(p.name for p in out.iterdir()) if out.exists() else [],
        }
    )
)
