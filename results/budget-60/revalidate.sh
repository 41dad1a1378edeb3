#!/bin/sh
# Re-validate the search's top specs under the full protocol (run from the repository root).
set -e
python -m orchestrator.run --spec results/budget-60/specs/rank3-3e4b2262311aa93d.toml,results/budget-60/specs/rank2-c28aab2fb0c18750.toml,results/budget-60/specs/rank1-9ec04fb037011d9f.toml --seeds 3 --results-dir results/budget-60 --skip-existing
