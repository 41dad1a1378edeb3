"""Tune callbacks that run on the driver while a sweep runs. Plain data only, so a restored Tuner (--resume)
brings them back."""
from __future__ import annotations

import sys

from ray import tune

from orchestrator import records, tracking


class RecordWriter(tune.Callback):
    """When a trial finishes, its MLflow run becomes a record in --results-dir (orchestrator.records)."""

    def __init__(self, results_dir: str, cfg, sweep: dict, protocol: dict):
        self.results_dir, self.cfg, self.sweep, self.protocol = results_dir, cfg, sweep, protocol
        self.git = records.git_state()

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get("done"):  # diverged: no record; the summary and the report say so
            self.write(trial.config["trial"]["variant"], trial.config["trial"]["seed"])

    def write(self, variant: str, seed: int) -> None:
        try:
            uri = self.sweep["tracking_uri"]
            run = tracking.find_runs(uri, self.sweep["experiment_id"], kind="trial", sweep_id=self.sweep["sweep_id"],
                                     variant=variant, seed=str(seed))[0]
            record = records.record_from_run(tracking.MlflowClient(uri), run.info.run_id, self.cfg, self.protocol,
                                             self.git)
            print(f"record {records.write_record(self.results_dir, record)}", flush=True)
        except Exception as e:  # the MLflow run keeps every number: say so instead of ending the sweep
            print(f"error: no record of {variant}-seed{seed} in {self.results_dir} ({type(e).__name__}: {e}); "
                  f"its MLflow run has every number", file=sys.stderr, flush=True)
