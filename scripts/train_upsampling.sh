#!/usr/bin/env bash
# The upsampling lab's trained comparison: eight U-Nets identical except for the upsampling method,
# trained with one recipe on CamVid with `workbench train`, one after another, resumably.
# Re-running continues unfinished runs (--resume) and skips finished ones.
#   bash scripts/train_upsampling.sh [RUNS_DIR]           train          (default runs/upsampling)
#   bash scripts/train_upsampling.sh publish [RUNS_DIR]   export the finished runs to checkpoints/upsampling_unet_<method>
#                                                         ("upsampling_lab": true), evaluate them on the test split
#                                                         (metrics and cost into their manifests, leaderboard in
#                                                         checkpoints/eval/upsampling/) and write the lab's table
# Pause other CPU work before `publish`: the CPU latency in the table is measured there.
#
# Encoder: the comparison is relative, and the eight checkpoints must fit the checkpoint size rules
# (20 MB per file, 200 MB for checkpoints/ together with the zoo's ~135 MB), so the variants share a
# smaller encoder and narrower decoder than the zoo's U-Net: mobilenetv2_100 (1.8 M parameters, inverted
# residuals, trains from scratch) with decoder widths 128/64/32/16/16. That is 2.4 M (nearest) to 4.2 M
# (pixel shuffle) parameters per variant, about 43 MB for all eight in fp16. resnet10t with the same
# decoder would be 5.8-8.5 M parameters per variant, about 98 MB: over the folder budget.
# Schedule: 24 epochs (about 12 s each here with bf16, 5-6 min per variant, about 45 minutes for all eight on
# the 2-core CPU): short, so absolute mIoU is well below the zoo's; the variants differ only in upsampling.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=train
if [ "${1:-}" = "publish" ]; then MODE=publish; shift; fi
RUNS="${1:-runs/upsampling}"
ENCODER="${ENCODER:-mobilenetv2_100}"
METHODS=(nearest bilinear transposed_k3 transposed_k4 resize_conv pixel_shuffle bed_of_nails max_unpool)

RECIPE=(--arch unet --encoder "$ENCODER" --model-kwargs '{"decoder_channels": [128, 64, 32, 16, 16]}'
        --dataset camvid --crop 224 224 --epochs 24 --batch-size 8 --lr 1e-3 --class-weights median
        --val-every 4 --workers 1 --save-every-steps 200 --seed 0)

source scripts/run_queue.sh  # run NAME ARGS...

if [ "$MODE" = train ]; then
  mkdir -p "$RUNS"
  for m in "${METHODS[@]}"; do
    run "unet_$m" "${RECIPE[@]}" --upsample "$m"
  done
  exit 0
fi

set -e
published=()
for m in "${METHODS[@]}"; do
  run_dir="$RUNS/unet_$m"
  [ -f "$run_dir/summary.json" ] || { echo "== unet_$m: not finished, skipped"; continue; }
  python -m workbench export "$run_dir/best.json" "checkpoints/upsampling_unet_$m" --set upsampling_lab=true
  published+=("checkpoints/upsampling_unet_$m.json")
done
[ ${#published[@]} -gt 0 ] || { echo "nothing to publish"; exit 0; }
python -m workbench eval "${published[@]}" --split test --cost --update-manifests --out checkpoints/eval/upsampling --quiet
python -m workbench.lab table "${published[@]}" --images 20 --out checkpoints/eval/upsampling/lab_table.md
du -sh checkpoints
