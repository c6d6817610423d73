#!/usr/bin/env bash
# Train every shipped checkpoint with `workbench train`, one after another, resumably.
# Re-running the script continues unfinished runs (--resume) and skips finished ones.
#   bash scripts/train_zoo.sh [RUNS_DIR]        (default runs/zoo)
# The recipe is the one the README's leaderboard reports; see docs/training-log.md "Reproducing the zoo".
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-runs/zoo}"
mkdir -p "$RUNS"

CAMVID=(--dataset camvid --crop 256 320 --epochs 120 --batch-size 8 --lr 1e-3 --class-weights median
        --val-every 5 --workers 1 --save-every-steps 200)
# ISBI: a small U-Net (MobileNetV3-small encoder, narrow decoder: 1.7 M parameters, 3.3 MB) so both fit the
# per-submission checkpoint budget next to the CamVid zoo; membranes are a local, simple-texture task.
ISBI=(--arch unet --encoder mobilenetv3_small_100 --model-kwargs '{"decoder_channels": [128, 64, 32, 16, 16]}'
      --dataset isbi --crop 256 256 --scale 0.8 1.25 --vflip --epochs 300 --batch-size 4 --lr 1e-3
      --val-every 10 --workers 1 --save-every-steps 200)

source scripts/run_queue.sh  # run NAME ARGS...

run camvid_unet            --arch unet "${CAMVID[@]}"
run isbi_unet_plain        "${ISBI[@]}" --class-weights median
run isbi_unet_border       "${ISBI[@]}" --border-weights
run camvid_fcn8s           --arch fcn8s "${CAMVID[@]}"
run camvid_fcn16s          --arch fcn16s "${CAMVID[@]}"
run camvid_fcn32s          --arch fcn32s "${CAMVID[@]}"
run camvid_dilated         --arch dilated "${CAMVID[@]}"
run camvid_residual_unet   --arch residual_unet "${CAMVID[@]}"
run camvid_deeplabv3plus   --arch deeplabv3plus "${CAMVID[@]}"
run camvid_smp_unet        --arch smp_unet "${CAMVID[@]}"
run camvid_tiramisu        --arch tiramisu --model-kwargs '{"variant": "fc_densenet56"}' "${CAMVID[@]}" --crop 224 224 --epochs 60
