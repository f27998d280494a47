#!/usr/bin/env bash
# Speed and memory of every preset on one CUDA card: `bench --random-weights` for full, balanced, low and minimal,
# plus "as released" (projector every step, no caching, bf16, no offload), each run in its own process with a
# timeout so that one crash or hang loses only its own row.
#
# Usage, from anywhere:  OUT=/path/to/results bash benchmarks/gpu_bench.sh
# Writes $OUT/bench.jsonl (one JSON line per run, errors included), $OUT/bench.md (the markdown table) and
# $OUT/bench.log (everything printed).
#
# Packages: a machine without diffusers / optimum-quanto / bitsandbytes installs the wheels carried in .whl/ (the
# device machine has no package index); a machine with an index and no .whl/ runs `pip install -e .`.
#
# Settings (environment):
#   STEPS        timed denoising steps per run (default 12; s/image at 28 steps is extrapolated from s/step
#                and the table says so; STEPS=28 measures 28 directly)
#   WIDTH HEIGHT image size (default 1024 x 1024)
#   RUNS         runs in order (default "as-released full low minimal balanced")
#   BUDGET       seconds for the whole script (default 540); a run is skipped when too little is left
#   RUN_TIMEOUT  seconds per run at most (default 150); PREPARE_TIMEOUT for writing the random models (300)
#   MODELS       "random" (default: full-size random weights, about 42 GB written once) or e.g. "tiny" (CPU check)
#   RANDOM_DIR   where the random models go (default: the first of ~/.instantcharacter-bench, /dev/shm, /tmp
#                with 42 GiB free, or one that already holds them)
#   PYTHON       interpreter (default python3)
set -u
cd "$(dirname "$0")/.."
START=$SECONDS
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
JSONL="$OUT/bench.jsonl"
LOG="$OUT/bench.log"
: > "$JSONL"
: > "$LOG"
STEPS="${STEPS:-12}"
WIDTH="${WIDTH:-1024}"
HEIGHT="${HEIGHT:-1024}"
RUNS="${RUNS:-as-released full low minimal balanced}"
BUDGET="${BUDGET:-540}"
RUN_TIMEOUT="${RUN_TIMEOUT:-150}"
PREPARE_TIMEOUT="${PREPARE_TIMEOUT:-300}"
MODELS="${MODELS:-random}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export INSTANTCHARACTER_HOME="${INSTANTCHARACTER_HOME:-$HOME/.instantcharacter-bench}"

say() { echo "[gpu_bench $((SECONDS - START))s] $*" | tee -a "$LOG"; }

# --- packages -------------------------------------------------------------------------------------------------
if ! "$PY" -c "import diffusers, optimum.quanto, bitsandbytes, platformdirs" >/dev/null 2>&1; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    say "installing the carried wheels: $(ls .whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      >>"$LOG" 2>&1 || { say "wheel install failed"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    say "pip install -e ."
    "$PY" -m pip install -q -e . >>"$LOG" 2>&1 || { say "pip install failed"; exit 1; }
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import torch, diffusers, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "| diffusers", diffusers.__version__,
      "| transformers", transformers.__version__)
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1 || true
df -h "$HOME" >>"$LOG" 2>&1 || true

# --- models ---------------------------------------------------------------------------------------------------
pick_random_dir() {
  local base free
  for base in "$HOME/.instantcharacter-bench" /dev/shm/instantcharacter-bench /tmp/instantcharacter-bench; do
    [ -f "$base/full/random-models.json" ] && { echo "$base/full"; return; }
  done
  for base in "$HOME/.instantcharacter-bench" /dev/shm/instantcharacter-bench /tmp/instantcharacter-bench; do
    mkdir -p "$base" 2>/dev/null || continue
    free=$(df -P -BG "$base" | awk 'NR==2 {print $4 + 0}')
    [ "${free:-0}" -ge 42 ] && { echo "$base/full"; return; }
  done
}
if [ "$MODELS" = "random" ]; then
  RANDOM_DIR="${RANDOM_DIR:-$(pick_random_dir)}"
  if [ -z "$RANDOM_DIR" ]; then
    say "no folder with 42 GiB free for the random models (set RANDOM_DIR)"
    echo '{"run": "prepare", "error": "no folder with 42 GiB free for the random models"}' >>"$JSONL"
    "$PY" -m app.bench_commands table "$JSONL" >"$OUT/bench.md"
    exit 1
  fi
  MODEL_ARGS=(--random-weights --random-dir "$RANDOM_DIR")
  say "full-size random models in $RANDOM_DIR (written once, about 42 GB)"
  timeout -k 10 "$PREPARE_TIMEOUT" "$PY" -c \
    "import sys; from benchmarks.bench import ensure_random_models; print(ensure_random_models(sys.argv[1]))" \
    "$RANDOM_DIR" >>"$LOG" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    say "writing the random models failed (exit $rc); see bench.log"
    echo "{\"run\": \"prepare\", \"error\": \"writing the random models failed (exit $rc)\"}" >>"$JSONL"
    "$PY" -m app.bench_commands table "$JSONL" >"$OUT/bench.md"
    exit 1
  fi
  say "random models ready"
else
  MODEL_ARGS=(--models "$MODELS")
fi

# --- runs -----------------------------------------------------------------------------------------------------
for run in $RUNS; do
  left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 45 ]; then
    say "$run skipped: ${left}s of the budget left"
    echo "{\"run\": \"$run\", \"error\": \"skipped: time budget spent\"}" >>"$JSONL"
    continue
  fi
  limit=$((left - 15 < RUN_TIMEOUT ? left - 15 : RUN_TIMEOUT))
  if [ "$run" = "as-released" ]; then RUN_ARGS=(--as-released); else RUN_ARGS=(--preset "$run"); fi
  before=$(wc -l <"$JSONL")
  say "$run: starting (limit ${limit}s)"
  timeout -k 10 "$limit" "$PY" -m app.bench_commands bench "${MODEL_ARGS[@]}" "${RUN_ARGS[@]}" \
    --steps "$STEPS" --width "$WIDTH" --height "$HEIGHT" --json "$JSONL" >>"$LOG" 2>&1
  rc=$?
  if [ "$(wc -l <"$JSONL")" -eq "$before" ]; then  # killed before it could write its own record
    why="exit $rc"; [ $rc -eq 124 ] || [ $rc -eq 137 ] && why="timed out after ${limit}s"
    echo "{\"run\": \"$run\", \"error\": \"$why\"}" >>"$JSONL"
  fi
  say "$run: done (exit $rc)"
done

"$PY" -m app.bench_commands table "$JSONL" >"$OUT/bench.md" 2>>"$LOG"
say "finished"
cat "$OUT/bench.md"
