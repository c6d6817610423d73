#!/usr/bin/env bash
# The Lovasz round: fine-tune each shipped CamVid checkpoint with cross-entropy plus smp's Lovasz-softmax
# loss (no class weights, a weight average), one after another, resumably (docs/training-log.md "The Lovasz round").
#   bash scripts/finetune_lovasz.sh [RUNS_DIR] [ARCH ...]     (default runs/lovasz, every arch below)
# A run replaces its start checkpoint only when its val mIoU rises by at least 1.0 (set before the round);
# export with `workbench export RUNS_DIR/camvid_ARCH/best.json checkpoints/camvid_ARCH`.
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-runs/lovasz}"; shift || true
ARCHS=("$@")
[ ${#ARCHS[@]} -gt 0 ] || ARCHS=(residual_unet dilated fcn16s unet fcn8s smp_unet fcn32s)
mkdir -p "$RUNS"

LOVASZ=(--dataset camvid --crop 352 480 --scale 0.5 2.0 --batch-size 8 --lr 2e-4 --warmup-steps 50
        --class-weights none --loss ce+lovasz --ema-decay 0.99 --epochs 8 --val-every 4 --workers 1
        --save-every-steps 45)

source scripts/run_queue.sh  # run NAME ARGS...

for arch in "${ARCHS[@]}"; do
  run "camvid_$arch" --arch "$arch" --init-from "checkpoints/camvid_$arch.json" "${LOVASZ[@]}"
done
