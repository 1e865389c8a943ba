"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=2 (see
tests/test_parallel.py): compares sharded (2 CPU devices) and single-device loss, gradients and
SVI steps, for one seed and for K=2 seeds x 2 devices. Prints one JSON object."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import numpyro_air as na
from numpyro_air.estimators.nvil import NVIL_ELBO
from numpyro_air.train import parallel
from numpyro_air.train.recipes import OptimConfig
from numpyro_air.train.step import DeviceRows, make_step, sharded_batch
from numpyro_air.train.svi import make_svi, make_update


def maxdiff(a, b):
    return float(max(np.max(np.abs(np.asarray(x) - np.asarray(y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def maxabs(a):
    return float(max(np.max(np.abs(np.asarray(x))) for x in jax.tree.leaves(a)))


cfg = na.AIRConfig.tutorial(
    image_size=20,
    window_size=10,
    rnn_hidden_size=32,
    z_what_size=8,
    encoder_net=(32,),
    decoder_net=(32,),
    predict_net=(16,),
    bl_predict_net=(16,),
)
B = 8
imgs = jax.random.uniform(jax.random.PRNGKey(0), (2, B, 20, 20)) * 0.5
svi = make_svi(cfg, OptimConfig(baseline_learning_rate=0.1))
devices = parallel.select_devices("cpu", 2)
mesh = parallel.make_mesh(devices)
out = {"num_devices": len(jax.devices())}

# loss and gradients of one particle, single device vs images sharded over 2 devices
states = jax.jit(jax.vmap(svi.init, in_axes=(0, None)))(jnp.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)]), imgs[0])
state0 = jax.tree.map(lambda a: a[0], states)
params = svi.get_params(state0)
elbo = NVIL_ELBO()
lossf = lambda p, x: elbo.loss(jax.random.PRNGKey(3), p, na.model, na.guide, x, config=cfg)  # noqa: E731
vg = jax.jit(jax.value_and_grad(lossf))
l1, g1 = vg(params, imgs[0])
x_sh = jax.device_put(imgs[0], parallel.batch_sharding(mesh, seeds_axis=False))
p_rep = jax.device_put(params, parallel.replicated(mesh))
l2, g2 = vg(p_rep, x_sh)
out["loss_single"], out["loss_sharded"] = float(l1), float(l2)
out["grad_maxdiff"], out["grad_maxabs"] = maxdiff(g1, g2), maxabs(g1)
out["x_sharding_devices"] = len(x_sh.sharding.device_set)

# one full SVI step: single seed
step1 = jax.jit(make_update(svi, cfg))
s_a, i_a = step1(state0, imgs[0], jnp.asarray(1))
# the loop's builder: one seed (leading seeds axis of size 1), batch built per device by callback
data = np.asarray(imgs).reshape(2 * B, 20, 20)
idx = np.arange(B)[None]
sh_step = make_step(svi, cfg, 1, mesh)
one = jax.tree.map(lambda a: a[None], state0)
s_b, i_b = sh_step(jax.device_put(one, parallel.replicated(mesh)), sharded_batch(data, idx, mesh), jnp.asarray(1))
out["step_loss_single"], out["step_loss_sharded"] = float(i_a.loss), float(i_b.loss[0])
out["step_param_maxdiff"] = maxdiff(svi.get_params(s_a), jax.tree.map(lambda a: a[0], svi.get_params(s_b)))

# K = 2 seeds x 2 devices vs each seed alone on one device
multi = make_step(svi, cfg, 2, mesh)
idx2 = np.arange(2 * B).reshape(2, B)
# the steps donate their states: each gets its own copy
copy = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731
s_m, i_m = multi(jax.device_put(copy(states), parallel.replicated(mesh)), sharded_batch(data, idx2, mesh), jnp.asarray(1))
diffs, ldiffs = [], []
for k in range(2):
    s_k, i_k = step1(jax.tree.map(lambda a: a[k], states), imgs[k], jnp.asarray(1))
    diffs.append(maxdiff(svi.get_params(s_k), jax.tree.map(lambda a: a[k], svi.get_params(s_m))))
    ldiffs.append(abs(float(i_k.loss) - float(i_m.loss[k])))
out["seeds_devices_param_maxdiff"], out["seeds_devices_loss_diff"] = max(diffs), max(ldiffs)
# vmapped seeds on one device equal the individual steps too
s_v, i_v = make_step(svi, cfg, 2)(copy(states), DeviceRows(jnp.asarray(data), jnp.asarray(idx2)), jnp.asarray(1))
out["seeds_vmap_param_maxdiff"] = max(
    maxdiff(
        svi.get_params(step1(jax.tree.map(lambda a: a[k], states), imgs[k], jnp.asarray(1))[0]),
        jax.tree.map(lambda a: a[k], svi.get_params(s_v)),
    )
    for k in range(2)
)
# bad input: batch not divisible by the device count, before compiling
try:
    parallel.check_batch(7, mesh)
    out["indivisible_error"] = None
except ValueError as e:
    out["indivisible_error"] = str(e)

# the training loop itself: K = 2 seeds x 2 devices equals K = 2 seeds on one device
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from numpyro_air.train.checkpoint import read_checkpoint  # noqa: E402
from numpyro_air.train.loop import TrainConfig, train  # noqa: E402


class _Set:
    def __init__(self, images, counts):
        self.images, self.counts = images, counts


rng = np.random.default_rng(0)
train_set = _Set((rng.uniform(0, 0.5, (32, 20, 20)) * 255).astype(np.uint8), rng.integers(0, 3, 32))
test_set = _Set(train_set.images[:8], train_set.counts[:8])
tc = TrainConfig(
    num_steps=2, batch_size=8, seed=5, num_seeds=2, progress_every=1, eval_batch_size=8, save_every=0, final_figures=False
)
with tempfile.TemporaryDirectory() as tmp:
    kw = dict(progress=False, log=lambda s: None)
    train(cfg, OptimConfig(baseline_learning_rate=0.1), tc, train_set, test_set, Path(tmp) / "one", **kw)
    train(cfg, OptimConfig(baseline_learning_rate=0.1), tc, train_set, test_set, Path(tmp) / "two", devices=devices, **kw)
    # Adam turns float-rounding differences of (near-)zero gradients into +-lr steps, so after
    # two steps compare the logged ELBOs and the share of parameters that agree to 1e-5.
    close = total = 0
    for k in range(2):
        _, a = read_checkpoint(Path(tmp) / "one" / f"checkpoint_seed{tc.seed_of(k)}.npz")
        _, b = read_checkpoint(Path(tmp) / "two" / f"checkpoint_seed{tc.seed_of(k)}.npz")
        assert sorted(a) == sorted(b)
        for x, y in ((a[n], b[n]) for n in a):
            if x.dtype.kind == "f":
                close += int(np.sum(np.abs(x.astype(np.float64) - y) <= 1e-5))
                total += x.size
    out["train_loop_params_close_fraction"] = close / total
    elbos = {}
    for run in ("one", "two"):
        rows = [json.loads(line) for line in (Path(tmp) / run / "metrics.jsonl").read_text().splitlines()]
        elbos[run] = [r["elbo"] for r in rows if r["kind"] == "train"]
    out["train_loop_elbos"] = elbos
json.dump(out, sys.stdout)
