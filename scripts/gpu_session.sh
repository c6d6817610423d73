#!/usr/bin/env bash
# One GPU session (a lent H200, ~10 minutes a call), as run for the committed results:
# the CUDA tests, zoo training within a budget (scripts/train_zoo_gpu.py), then the GPU benchmark.
# Expects CamVid train/val packed by scripts/pack_camvid.py in .gpudata/ and $OUT for the results.
#   OUT=/tmp/out BUDGET=360 JOBS="residual_unet smp_unet" bash scripts/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export WORKBENCH_DATA_ROOT=$PWD/.gpudata PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/logs/gpu.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_checkpoint_predictor.py tests/test_device_data.py \
  -k "${TESTS:-gpu or cuda or device}" 2>&1 | tail -40 | tee "$OUT/logs/pytest_gpu.txt"
python3 scripts/train_zoo_gpu.py --budget "${BUDGET:-360}" --jobs ${JOBS} --runs runs/gpu --export ckpt 2>&1 | tee "$OUT/logs/driver.txt"
timeout 120 python3 -m workbench bench --device cuda --repeats 20 --out "$OUT/logs/bench_gpu" 2>&1 | tail -30 | tee "$OUT/logs/bench.txt"
timeout 60 python3 -m workbench bench --train --device cuda --out "$OUT/logs/bench_train_gpu" 2>&1 | tail -20 | tee -a "$OUT/logs/bench.txt"
timeout 60 python3 -m workbench bench-data --dataset camvid --crop 352 480 --workers 4 --device cuda --out "$OUT/logs/bench_data_gpu.json" 2>&1 | tail -10 | tee -a "$OUT/logs/bench.txt"
cp runs/gpu/*.log "$OUT/logs/" 2>/dev/null; for r in runs/gpu/camvid_*/; do n=$(basename "$r"); cp "$r/metrics.jsonl" "$OUT/logs/$n.metrics.jsonl" 2>/dev/null; done
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
tar cf - ckpt | split -b 15M - "$OUT/ckpt.tar."
ls -la "$OUT"
