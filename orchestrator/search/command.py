"""`python -m orchestrator.search`: the command line of the search (orchestrator.search.driver) and of its proxy
check (orchestrator.search.check): parse, dispatch, and one line per error."""
from __future__ import annotations

import sys

import data
from orchestrator.search import results as tables
from orchestrator.search.check import run_proxy_check
from orchestrator.search.config import ConfigError, parse_config
from orchestrator.search.driver import SearchError, run_search
from orchestrator.sweep import records, tracking
from orchestrator.sweep.preflight import SweepError


def main(argv=None) -> int:
    try:
        cfg = parse_config(argv)
        if cfg.proxy_check:
            return run_proxy_check(cfg)
        out = run_search(cfg)
    except (ConfigError, data.DataError, tracking.TrackingError, SweepError, SearchError, records.RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Tune saved the search: --resume continues it
        print(f"interrupted: {e or 'continue with `python -m orchestrator.search --resume`'}", file=sys.stderr)
        return 130
    return tables.revalidate(out["commands"]) if out["search"].cfg.revalidate else 0
