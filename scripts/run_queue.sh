# Sourced by train_zoo.sh and train_upsampling.sh: one resumable training run of a queue.
#   run NAME ARGS...   trains into $RUNS/NAME (log $RUNS/NAME.log); skips a finished run, resumes an unfinished one
run() {
  local name="$1"; shift
  local out="$RUNS/$name"
  if [ -f "$out/summary.json" ]; then echo "== $name: done"; return 0; fi
  local resume=(); [ -f "$out/resume.safetensors" ] && resume=(--resume)
  echo "== $name: $(date -u +%FT%TZ) start ${resume[*]}"
  python -m workbench train "$@" --out "$out" "${resume[@]}" > "$RUNS/$name.log" 2>&1
  echo "== $name: $(date -u +%FT%TZ) exit $?"
}
