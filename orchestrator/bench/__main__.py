"""`python -m orchestrator.bench`: run the benchmark (see the package docstring)."""
import sys

from orchestrator.bench import main

if __name__ == "__main__":
    sys.exit(main())
