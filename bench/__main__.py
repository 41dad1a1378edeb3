"""`python -m bench`: run the benchmark (see the package docstring)."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
