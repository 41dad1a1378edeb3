"""`python -m orchestrator.report`: tables and figures of a sweep or of a folder of trial records
(orchestrator.analysis.report)."""
import sys

from orchestrator.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())
