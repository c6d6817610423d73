#!/usr/bin/env bash
# int8 post-training quantization of the shipped CamVid checkpoints (NNCF + OpenVINO, calibrated on CamVid train
# images at full resolution), each evaluated on the 233 test images through the engine and accepted only where its
# test mIoU is at most 0.5 points below the manifest's fp32 figure; the int8 label agreement with fp32 eager is
# recorded too. Writes checkpoints/<name>.int8.xml/.bin, inference.int8 in each manifest, the int8 results under
# checkpoints/eval/int8/ and the "which precision the app runs" section of checkpoints/eval/leaderboard_test.md.
#
#   scripts/quantize_zoo.sh                      # every CamVid checkpoint, cheapest first
#   scripts/quantize_zoo.sh camvid_unet camvid_tiramisu
#
# Environment: CALIB_IMAGES (default 64), AGREEMENT_EVERY (default 4: eager fp32 on every 4th test image), VARIANT
# (NNCF settings, default: workbench.inference.quantize.DEFAULT_VARIANT). Refused int8 models are deleted, their figures kept.
# OpenVINO aborts under a preloaded tcmalloc: WORKBENCH_ALLOCATOR=system.
set -euo pipefail
cd "$(dirname "$0")/.."
CALIB_IMAGES=${CALIB_IMAGES:-64}
AGREEMENT_EVERY=${AGREEMENT_EVERY:-4}
VARIANT=${VARIANT:-$(python -c 'from workbench.inference.quantize import DEFAULT_VARIANT; print(DEFAULT_VARIANT)')}
export WORKBENCH_ALLOCATOR=${WORKBENCH_ALLOCATOR:-system}
if [ "$#" -gt 0 ]; then
  names=("$@")
else
  # unet and tiramisu first (the issue's targets), then by CPU cost
  names=(camvid_unet camvid_tiramisu camvid_fcn8s camvid_fcn16s camvid_fcn32s camvid_deeplabv3plus camvid_residual_unet camvid_smp_unet camvid_dilated)
fi
status=0
for name in "${names[@]}"; do
  echo "== $name ($(date -u +%H:%M:%S))"
  python -m workbench quantize "checkpoints/$name.json" --calib-images "$CALIB_IMAGES" --variant "$VARIANT" --agreement-every "$AGREEMENT_EVERY" \
    --out checkpoints/eval/int8 --leaderboard checkpoints/eval/leaderboard_test.md --quiet || status=2  # the others still run
done
exit $status
