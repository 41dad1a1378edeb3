"""Tune callbacks that run on the driver while a sweep runs. Plain data only, so a restored Tuner (--resume)
brings them back."""
from __future__ import annotations

import sys
import tempfile

from ray import tune

from orchestrator.sweep import records, tracking


class RecordWriter(tune.Callback):
    """Keeps --results-dir current (orchestrator.sweep.records): after each epoch every seed's checkpoint, and
    when a trial finishes, each seed's record (its MLflow run's numbers) and weights in place of the checkpoint."""

    def __init__(self, results_dir: str, cfg, sweep: dict, protocol: dict):
        self.results_dir, self.cfg, self.sweep, self.protocol = results_dir, cfg, sweep, protocol
        self.git = records.git_state()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        from orchestrator.sweep.trainable import load_checkpoint
        variant, protocol = trial.config["trial"]["variant"], records.protocol_hash(self.protocol)
        try:
            for seed, state in load_checkpoint(checkpoint)["states"].items():
                records.write_seed_checkpoint(self.results_dir, variant, int(seed), state, protocol,
                                               records.architecture_hash(variant))
        except Exception as e:  # Ray's own checkpoint still resumes the sweep: say so instead of ending it
            print(f"warning: no checkpoint of {variant} in {self.results_dir} ({type(e).__name__}: {e}); "
                  f"--resume still continues it here", file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if not result.get("done"):
            return  # diverged: no record; the summary and the report say so
        spec, per_seed = trial.config["trial"], result.get("per_seed") or {}
        for seed in spec.get("seeds", [spec.get("seed")]):  # every seed of a fused trial, but the diverged
            if per_seed.get(str(seed), {}).get("status", "done") == "done":
                self.write(spec["variant"], int(seed))

    def write(self, variant: str, seed: int) -> None:
        try:
            uri = self.sweep["tracking_uri"]
            run = tracking.find_runs(uri, self.sweep["experiment_id"], kind="trial", sweep_id=self.sweep["sweep_id"],
                                     variant=variant, seed=str(seed))[0]
            client = tracking.MlflowClient(uri)
            record = records.record_from_run(client, run.info.run_id, self.cfg, self.protocol, self.git)
            with tempfile.TemporaryDirectory() as tmp:
                weights = client.download_artifacts(run.info.run_id, "model/state_dict.pt", tmp)
                record["weights"] = records.write_weights(self.results_dir, variant, seed, weights)
            print(f"record {records.write_record(self.results_dir, record)}", flush=True)
            records.remove_seed_checkpoint(self.results_dir, variant, seed)
        except Exception as e:  # the MLflow run keeps every number: say so instead of ending the sweep
            print(f"error: no record of {variant}-seed{seed} in {self.results_dir} ({type(e).__name__}: {e}); "
                  f"its MLflow run has every number", file=sys.stderr, flush=True)


def eta_line(trials) -> str:
    """`sweep: 3/16 trials finished, 2 running; 41 of 160 epochs done; ETA 2.3 h`, from the epoch seconds the
    trials measured: remaining epochs x their mean epoch time / the trials running at once."""
    epochs_total = epochs_done = 0
    for trial in trials:
        epochs = int(trial.config["train"]["epochs"])
        # A search's candidates (search_line) have no trial spec: they never resume from a results folder.
        resumed = trial.config.get("trial", {}).get("resumes_after_epoch", 0)
        done = epochs if trial.status == "TERMINATED" else max(int((trial.last_result or {}).get("epoch", 0) or 0),
                                                               resumed)
        epochs_total, epochs_done = epochs_total + epochs, epochs_done + min(done, epochs)
    epoch_seconds = [float(r["epoch_seconds"]) for r in (t.last_result or {} for t in trials) if r.get("epoch_seconds")]
    finished, running = (sum(t.status == status for t in trials) for status in ("TERMINATED", "RUNNING"))
    line = (f"sweep: {finished}/{len(trials)} trials finished, {running} running; {epochs_done} of {epochs_total} "
            f"epochs done; ")
    if epochs_done >= epochs_total:
        # Every epoch trained, but trials still measure latency, export and log their models: not done yet.
        return line + ("finishing (measuring, exporting)" if running else "ETA 0 min")
    if not epoch_seconds:
        return line + "ETA after the first epoch"
    eta_s = (epochs_total - epochs_done) * sum(epoch_seconds) / len(epoch_seconds) / max(running, 1)
    if eta_s < 60:  # never "ETA 0 min" while an epoch is left
        return line + "ETA < 1 min"
    return line + f"ETA {eta_s / 3600:.1f} h" if eta_s >= 3600 else line + f"ETA {eta_s / 60:.0f} min"


class SweepReporter(tune.CLIReporter):
    """Tune's live table (variant, seed, epoch k/N, elapsed time, accuracy, loss) with the sweep's ETA below."""

    def __init__(self):
        super().__init__(parameter_columns={"trial/variant": "variant", "trial/seed": "seed"},
                         metric_columns={"progress": "epoch", "time_total_s": "elapsed s", "val_accuracy": "val_acc",
                                         "train_loss": "train_loss"},
                         max_report_frequency=30, sort_by_metric=False,
                         # Explicit: Tune's default reads the global verbosity at construction, which an earlier
                         # sweep in the same process has lowered, and then prints no table at all.
                         print_intermediate_tables=True)

    def report(self, trials, done: bool, *sys_info: str):
        self._print(self._progress_str(trials, done, *sys_info) + "\n" + eta_line(trials))
