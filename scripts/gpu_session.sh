#!/usr/bin/env bash
# One GPU session (a lent H200, ~10 minutes a call), as run for the committed results:
# the CUDA tests, zoo training within a budget (scripts/train_zoo_gpu.py), then the GPU benchmark.
# Expects CamVid train/val packed by scripts/pack_camvid.py in .gpudata/ and $OUT for the results.
#   OUT=/tmp/out BUDGET=360 JOBS="residual_unet smp_unet" bash scripts/gpu_session.sh
# One schedule over several calls (docs/gpu.md, scripts/README.md): PLAN_BUDGET seconds of training in all, the runs in
# RUNS (a folder the next call carries), TESTS=none and BENCH=none to give a call's time to training alone:
#   OUT=/tmp/out BUDGET=540 PLAN_BUDGET=1000 RUNS=.gpurun TESTS=none BENCH=none JOBS=tiramisu_lovasz bash scripts/gpu_session.sh
# Each such call returns the runs' resume state as state.tar.*; here, `cat state.tar.* | tar xf -` in the
# repository root puts it back into RUNS, and the next call (carry .gpudata and RUNS) continues the runs.
set -uo pipefail
cd "$(dirname "$0")/.."
export WORKBENCH_DATA_ROOT=$PWD/.gpudata PYTHONUNBUFFERED=1
RUNS=${RUNS:-runs/gpu}
mkdir -p "$OUT/logs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/logs/gpu.txt"
if [ "${TESTS:-}" != none ]; then  # TESTS: the pytest -k expression
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_checkpoint_predictor.py tests/test_device_data.py \
    -k "${TESTS:-gpu or cuda or device}" 2>&1 | tail -40 | tee "$OUT/logs/pytest_gpu.txt"
fi
python3 scripts/train_zoo_gpu.py --budget "${BUDGET:-360}" ${PLAN_BUDGET:+--plan-budget "$PLAN_BUDGET"} --jobs ${JOBS} \
  --runs "$RUNS" --export ckpt 2>&1 | tee "$OUT/logs/driver.txt"
if [ "${BENCH:-}" != none ]; then
  timeout 120 python3 -m workbench bench --device cuda --repeats 20 --out "$OUT/logs/bench_gpu" 2>&1 | tail -30 | tee "$OUT/logs/bench.txt"
  timeout 60 python3 -m workbench bench --train --device cuda --out "$OUT/logs/bench_train_gpu" 2>&1 | tail -20 | tee -a "$OUT/logs/bench.txt"
  timeout 60 python3 -m workbench bench-data --dataset camvid --crop 352 480 --workers 4 --device cuda --out "$OUT/logs/bench_data_gpu.json" 2>&1 | tail -10 | tee -a "$OUT/logs/bench.txt"
fi
cp "$RUNS"/*.log "$OUT/logs/" 2>/dev/null; for r in "$RUNS"/camvid_*/; do n=$(basename "$r"); cp "$r/metrics.jsonl" "$OUT/logs/$n.metrics.jsonl" 2>/dev/null; done
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
[ -d ckpt ] && tar cf - ckpt | split -b 15M - "$OUT/ckpt.tar."
if [ -n "${PLAN_BUDGET:-}" ]; then
  # what the next call needs to resume (the best checkpoints came back in ckpt.tar.*): the working tree,
  # .gpudata and RUNS must stay under the device tool's 64 MiB, so no best/last weights or plots
  tar cf - --exclude='best.*' --exclude='last.*' --exclude='curves.png' "$RUNS" | split -b 15M - "$OUT/state.tar."
fi
ls -la "$OUT"
