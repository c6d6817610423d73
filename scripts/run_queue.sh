# Sourced by train_zoo.sh, train_upsampling.sh and finetune_lovasz.sh: one resumable training run of a queue.
#   run NAME ARGS...   trains into $RUNS/NAME (log $RUNS/NAME.log); skips a finished run, resumes an unfinished one
# DRY_RUN=1 prints each run's `workbench train` arguments (one per line, shell-quoted) instead of training:
#   DRY_RUN=1 bash scripts/finetune_lovasz.sh      (tests/test_scripts.py checks every queue this way)
run() {
  local name="$1"; shift
  local out="$RUNS/$name"
  if [ -n "${DRY_RUN:-}" ]; then printf 'train'; printf ' %q' "$@" --out "$out"; printf '\n'; return 0; fi
  if [ -f "$out/summary.json" ]; then echo "== $name: done"; return 0; fi
  local resume=(); [ -f "$out/resume.safetensors" ] && resume=(--resume)
  echo "== $name: $(date -u +%FT%TZ) start ${resume[*]}"
  python -m workbench train "$@" --out "$out" "${resume[@]}" > "$RUNS/$name.log" 2>&1
  echo "== $name: $(date -u +%FT%TZ) exit $?"
}
