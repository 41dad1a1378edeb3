"""`python -m orchestrator.search`: architecture search under the paper's storage budget (its command module)."""
import sys

from orchestrator.search.command import main

if __name__ == "__main__":
    sys.exit(main())
