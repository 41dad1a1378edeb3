#!/usr/bin/env bash
# The prepared check for a GPU machine: sized for about 6 minutes on one H100/H200 (not yet timed on one), never
# more than CHECK_SECONDS (470).
#
#   scripts/device_check.sh          # from anywhere; PYTHON=... picks the interpreter (default .venv/bin/python,
#                                    # else python3); CIFAR10_DIR=... trains on real CIFAR-10 (else synthetic
#                                    # images of its size: a step's time does not depend on what they show)
#
# Figures go to $OUT when it is set (a device machine's output folder), else to ./device-check/:
#   device-check.log (everything printed), summary.txt (each step: ok / FAILED / TIMED OUT, seconds),
#   bench-parts.md and bench-parts.json (python -m bench --parts ...), pytest-cuda.xml.
#
# Steps, each under its own timeout; a step that fails or times out is noted and the next one runs:
#   1. nvidia-smi; torch, CUDA and cuDNN versions and the device torch sees
#   2. pytest -m cuda: the CUDA tests (tests/test_cuda.py: graphed vs eager training, lr changes, short batches)
#   3. bench steps: ms per model-step for every variant, plain route vs eager trainer vs CUDA graph vs K=5 fused
#      seeds, interleaved on the same GPU in the same run
#   4. bench epoch: one real full-protocol epoch of base (70,000 images) through orchestrator.training.train.train
#   5. bench concurrency: K = 1, 4, 8 processes training base on the GPU at once (MPS is used when its daemon
#      runs; this script does not start it: see README, GPU)
#   6. bench projection: the paper's grid (8 variants x 5 seeds x 10 epochs) from 3-5, assumptions stated
# Exit status: 0 when every step passed, 1 otherwise (summary.txt says which).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${OUT:-$PWD/device-check}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/device-check.log"
SUMMARY="$OUT_DIR/summary.txt"
: > "$LOG"
: > "$SUMMARY"
rm -f "$OUT_DIR/bench-parts.json" "$OUT_DIR/bench-parts.md"  # the parts below merge into these: start afresh
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$SECONDS
DEADLINE=$((START + ${CHECK_SECONDS:-470}))
FAILED=0

# step NAME SECONDS COMMAND...: COMMAND under a timeout (cut to what is left of CHECK_SECONDS), its output to the
# terminal and the log; its outcome to the summary. A failure is counted, never fatal.
step() {
  local name=$1 limit=$2 rc=0 began=$SECONDS status
  shift 2
  local left=$((DEADLINE - SECONDS))
  if ((left < limit)); then limit=$left; fi
  if ((limit < 5)); then
    echo "=== $name: SKIPPED (the check's ${CHECK_SECONDS:-470} s are spent)" | tee -a "$LOG"
    printf '%-22s SKIPPED (no time left)\n' "$name" >> "$SUMMARY"
    FAILED=$((FAILED + 1))
    return 0
  fi
  echo "=== [$((SECONDS - START)) s] $name (timeout ${limit} s): $*" | tee -a "$LOG"
  # bash -c: COMMAND may be one of this script's functions (exported below); timeout runs only programs.
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 | tee -a "$LOG" || rc=$?
  if ((rc == 0)); then
    status="ok"
  elif ((rc == 124 || rc == 137)); then
    status="TIMED OUT after ${limit} s"
  else
    status="FAILED (exit $rc)"
  fi
  if ((rc != 0)); then FAILED=$((FAILED + 1)); fi
  echo "=== $name: $status ($((SECONDS - began)) s)" | tee -a "$LOG"
  printf '%-22s %s (%d s)\n' "$name" "$status" "$((SECONDS - began))" >> "$SUMMARY"
}

versions() {
  nvidia-smi || echo "nvidia-smi failed or is missing"
  "$PYTHON" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"compute capability {p.major}.{p.minor}; devices visible: {torch.cuda.device_count()}")
EOF
}

bench() {  # bench PART [FLAGS...]: one part of the benchmark on the GPU; each merges into $OUT_DIR/bench-parts.json
  local part=$1
  shift
  "$PYTHON" -m bench --device cuda --parts "$part" --out-dir "$OUT_DIR" "$@"
}

export -f versions bench
export PYTHON OUT_DIR
echo "device check: output in $OUT_DIR, python $PYTHON, data ${CIFAR10_DIR:-synthetic}" | tee -a "$LOG"
step "versions" 20 versions
# --continue-on-collection-errors: a test module whose imports this machine lacks (Ray, MLflow) must not keep
# the CUDA tests from running; it is still reported, and makes the step not ok.
step "pytest -m cuda" 120 "$PYTHON" -m pytest -m cuda tests -q -p no:cacheprovider --continue-on-collection-errors \
  --junitxml "$OUT_DIR/pytest-cuda.xml"
step "bench steps" 130 bench steps --steps 200 --rounds 3
step "bench epoch" 90 bench epoch
step "bench concurrency" 90 bench concurrency --k-list 1,4,8 --concurrency-seconds 8
step "bench projection" 20 bench projection

echo | tee -a "$LOG"
echo "device check finished in $((SECONDS - START)) s; $FAILED step(s) not ok" | tee -a "$LOG"
cat "$SUMMARY" | tee -a "$LOG"
if [[ -f "$OUT_DIR/bench-parts.md" ]]; then
  echo "figures: $OUT_DIR/bench-parts.md" | tee -a "$LOG"
fi
if ((FAILED > 0)); then exit 1; fi
