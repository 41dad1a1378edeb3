"""`python -m orchestrator.run`: the paper's variants x seeds as Ray Tune trials, tracked in MLflow
(orchestrator.sweep.driver)."""
import sys

from orchestrator.sweep.driver import main

if __name__ == "__main__":
    sys.exit(main())
