"""`python -m orchestrator.run`: the paper's variants × seeds as parallel Ray Tune trials, tracked in MLflow.

The sweep (orchestrator.sweep) trains; then this command adds its analysis (orchestrator.analysis): per-variant
summary metrics on the parent run, and the report. The command joins the two, so the sweep knows nothing of what
reads it."""
from __future__ import annotations

import math
import signal
import sys
import time

import data
from orchestrator.sweep import records, tracking
from orchestrator.sweep.config import ConfigError, SweepConfig, parse_config
from orchestrator.sweep.driver import run_sweep
from orchestrator.sweep.preflight import SweepError

# The report's per-variant statistics (orchestrator.analysis.study.summarize) that the parent run carries.
SUMMARY_METRICS = ("n", "val_accuracy_pct_mean", "val_accuracy_pct_std", "latency_ms_per_image_mean",
                   "latency_ms_per_image_std", "latency_ms_batch1_mean", "latency_ms_batch1_std")


def log_summary_metrics(cfg: SweepConfig, study, parent_run_id: str) -> None:
    """Per-variant mean, std and n on the parent run (`base_val_accuracy_pct_mean`, ...), so the runs table
    compares whole sweeps side by side. A std needs two finished seeds: none is logged before; latencies
    measured on several machine models are not averaged (as in the report)."""
    metrics = {f"{variant}_{name}": row[name] for variant, row in study.summary.iterrows() if row["n"]
               for name in SUMMARY_METRICS}
    metrics = [tracking.Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items() if not math.isnan(v)]
    tracking.MlflowClient(cfg.tracking_uri).log_batch(parent_run_id, metrics=metrics)


def analyse(cfg: SweepConfig, sweep_id: str, parent_run_id: str) -> None:
    """The finished sweep, read back from MLflow once: its summary metrics on the parent run, then the report."""
    from orchestrator.analysis.report import publish_report  # pandas and matplotlib: only at the end
    from orchestrator.analysis.study import ReportError, load_sweep
    try:
        study, parent = load_sweep(cfg.tracking_uri, cfg.experiment_name, sweep_id)
    except ReportError as e:  # e.g. every trial failed before it logged anything: the sweep's summary says so
        if cfg.report:
            print(f"no report: {e}", file=sys.stderr)
        return
    log_summary_metrics(cfg, study, parent_run_id)
    if not cfg.report:
        print(f"no report (--no-report): `python -m orchestrator.report --sweep {sweep_id}` builds it", flush=True)
        return
    out = publish_report(cfg.tracking_uri, study, parent)
    print(f"\nreport written to {out}/report.md (also logged to the sweep's parent run under report/)", flush=True)


def sweep_and_report(cfg: SweepConfig) -> dict | None:
    """Run one sweep, then its analysis; None when --skip-existing left nothing to train. The analysis reads the
    sweep's own config (a resumed sweep's is the stored one)."""
    out = run_sweep(cfg)
    if out is not None:
        analyse(out["cfg"], out["sweep_id"], out["parent_run_id"])
    return out


def main(argv=None) -> int:
    try:
        cfg = parse_config(argv, description=__doc__.splitlines()[0])
        out = sweep_and_report(cfg)
    except (ConfigError, data.DataError, tracking.TrackingError, SweepError, records.RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if argv is None:  # the command itself, which is exiting (not a caller's process, e.g. a notebook's)
            # A further Ctrl-C or SIGTERM would only cut Ray's shutdown at exit short, with a traceback.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
        print("interrupted: continue with `python -m orchestrator.run --resume`", file=sys.stderr)
        return 130
    if out is not None and out["failed_trials"]:
        n, total = len(out["failed_trials"]), len(out["summary"])
        resume = f"python -m orchestrator.run --resume --sweep-id {out['sweep_id']}"
        print(f"error: {n} of {total} trials failed after --max-failures {out['cfg'].max_failures} restarts "
              f"({', '.join(out['failed_trials'])}): each run's failure_reason in MLflow and error.txt "
              f"under {out['storage_path']} say why; `{resume}` retries them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
