#!/usr/bin/env bash
# The paper's grid (8 variants x 5 seeds, the default protocol), fused, into results/paper-grid/, in two rounds:
# seeds 0-2 of every variant, then seeds 3-4. Longest variants first, two trials at a time on a 2-core box, so
# each fused group (one Tune trial of a variant's seeds) ends within a few hours. Rerun it to continue:
# --skip-existing trains only the pairs without a record. A group cut short keeps its checkpoints in ray_results/:
# finish it first with `python -m orchestrator.run --resume --sweep-id <id>` (the id: ray_results/sweep-<id>), or
# its epochs are trained again. Extra arguments go to every sweep (e.g. --address auto).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RESULTS=${RESULTS:-results/paper-grid}
VARIANTS=alpha,v6,v1,v4,v3,v5,v2,base  # longest first (ms per fused model-step, bench part 7)
for seeds in 0,1,2 3,4; do
  "$PY" -m orchestrator.run --variants "$VARIANTS" --seed-list "$seeds" --fuse-seeds \
    --results-dir "$RESULTS" --skip-existing --no-report "$@"
done
"$PY" -m orchestrator.report --results "$RESULTS" --out "$RESULTS"
