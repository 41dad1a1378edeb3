"""`python -m orchestrator.search`: architecture search under the paper's storage budget
(orchestrator.search.driver)."""
import sys

from orchestrator.search.driver import main

if __name__ == "__main__":
    sys.exit(main())
