#!/usr/bin/env bash
# Copy the finished runs of scripts/train_zoo.sh into checkpoints/ (fp16, verified), evaluate them on the
# test splits at full resolution, write the metrics and cost into their manifests and the leaderboards
# into checkpoints/eval/.
#   bash scripts/publish_zoo.sh [RUNS_DIR]     (default runs/zoo)
# Pause other CPU work first: the CPU latency in the leaderboard is measured here.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-runs/zoo}"
shopt -s nullglob
for run in "$RUNS"/camvid_* "$RUNS"/isbi_*; do
  [ -d "$run" ] && [ -f "$run/summary.json" ] || continue
  name=$(basename "$run")
  # an export newer than its run is kept: re-exporting would change the file's bytes (safetensors orders its
  # metadata arbitrarily) and put another copy of the same weights into git history
  if [ -f "checkpoints/$name.json" ] && [ "checkpoints/$name.json" -nt "$run/best.json" ]; then continue; fi
  python -m workbench export "$run/best.json" "checkpoints/$name"
done
camvid=(checkpoints/camvid_*.json)
isbi=(checkpoints/isbi_*.json)
[ ${#camvid[@]} -gt 0 ] && python -m workbench eval "${camvid[@]}" --split test --cost --update-manifests --out checkpoints/eval --quiet
[ ${#isbi[@]} -gt 0 ] && python -m workbench eval "${isbi[@]}" --split test --cost --update-manifests --out checkpoints/eval/isbi --quiet
du -sh checkpoints
