"""`python -m orchestrator.tracking serve`: an MLflow tracking server over this project's store
(orchestrator.sweep.server)."""
import sys

from orchestrator.sweep.server import main

if __name__ == "__main__":
    sys.exit(main())
