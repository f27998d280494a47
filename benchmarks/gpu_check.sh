#!/usr/bin/env bash
# One GPU check that fits one device call (issue 28): installs the carried wheels, then runs benchmarks/gpu_check.py
# (speed modes, consumer presets, GGUF under offload, trainer steps; each run its own process with a time limit;
# one JSON line per run as it finishes; a table at the end). The whole script stays inside BUDGET seconds.
#
#   python -m benchmarks.gpu_wheels fetch          # here, once: the wheels into .whl/ (ignored by git)
#   OUT=/path bash benchmarks/gpu_check.sh          # on the GPU machine (a device call: carry .whl)
#   DRY_RUN=1 OUT=/path bash benchmarks/gpu_check.sh  # the CPU rehearsal: a stand-in wheel, small models
#
# Writes $OUT/gpu-check.jsonl (commit it as benchmarks/results/<card>-<date>.jsonl, then
# `python -m benchmarks.render_results` updates the README), $OUT/gpu-check.md and $OUT/gpu-check.log.
# Settings (environment): OUT, DRY_RUN, BUDGET (default 540 s; dry run 270 s), PYTHON (default python3), WHEELS (default
# .whl), GPU_CHECK_CODE (the commit measured, recorded in each line; default `git rev-parse --short HEAD`, so give it
# where the tree travels without .git: GPU_CHECK_CODE=$(git rev-parse --short HEAD) on the machine that sends it).
set -u
STARTED=$(date +%s.%N)
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
BUDGET="${BUDGET:-}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
: >"$OUT/gpu-check.jsonl"
: >"$OUT/gpu-check.log"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
cleanup() {
  # the random models (about 42 GB, in /dev/shm when it has room: RAM) go with the check
  [ -f "$WORK/random-models.path" ] && rm -rf "$(cat "$WORK/random-models.path")"
  rm -rf "$WORK"
}
trap cleanup EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export INSTANTCHARACTER_HOME="${INSTANTCHARACTER_HOME:-$WORK/home}"
export GPU_CHECK_CODE="${GPU_CHECK_CODE:-$(git rev-parse --short HEAD 2>/dev/null || true)}"
say() { echo "[gpu_check.sh $(( $(date +%s) - ${STARTED%.*} ))s] $*" | tee -a "$OUT/gpu-check.log"; }

# --- the carried wheels, installed into a temporary target ---------------------------------------------------
if [ -n "${DRY_RUN:-}" ]; then
  WHEELS="$WORK/wheels"
  "$PY" -m benchmarks.gpu_wheels stand-in "$WHEELS" >/dev/null || { say "could not write the stand-in wheel"; exit 1; }
  "$PY" -m benchmarks.gpu_wheels check | tee -a "$OUT/gpu-check.log" || { say "the wheel set does not fit"; exit 1; }
else
  WHEELS="${WHEELS:-$PWD/.whl}"
  "$PY" -m benchmarks.gpu_wheels check "$WHEELS" | tee -a "$OUT/gpu-check.log"
fi
SITE="$WORK/site"
say "installing $(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) wheels from $WHEELS into $SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
  >>"$OUT/gpu-check.log" 2>&1 || { say "wheel install failed (see gpu-check.log)"; exit 1; }
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/gpu-check.log"
# versions from the installed metadata (importing them all would cost each run's import time once more)
import os
from importlib.metadata import PackageNotFoundError, version
names = ["torch", "diffusers", "transformers", "accelerate", "peft", "torchao", "optimum-quanto", "bitsandbytes",
         "gguf", "platformdirs"] + (["gpu_check_stand_in"] if os.environ.get("DRY_RUN") else [])
found = []
for name in names:
    try:
        found.append(f"{name} {version(name)}")
    except PackageNotFoundError:  # a missing package: the runs that need it say so in their rows
        found.append(f"{name} MISSING")
print("packages:", "; ".join(found))
EOF
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/gpu-check.log"
else
  echo "GPU: none (no nvidia-smi)" | tee -a "$OUT/gpu-check.log"
fi
df -h /dev/shm "$WORK" >>"$OUT/gpu-check.log" 2>&1 || true

# --- the runs -------------------------------------------------------------------------------------------------
"$PY" -m benchmarks.gpu_check --out "$OUT" --work "$WORK" --started "$STARTED" ${BUDGET:+--budget "$BUDGET"} \
  ${DRY_RUN:+--dry-run}
