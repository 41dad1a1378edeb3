"""The Ray Tune trainable of a fused trial (`--fuse-seeds`): the seeds of one variant train as one stacked network
(orchestrator.training.fused) in one process, and every seed keeps its own MLflow child run, as in an unfused trial.

One Tune iteration per epoch: once every seed has finished epoch e, one checkpoint holding every seed's state
(each exactly an unfused trial's checkpoint) is persisted through `tune.report`, then each seed's epoch is logged
to its run. A restarted trial resumes every seed still training from that checkpoint, and each run back-fills the
epochs it lacks, so each epoch is logged once per seed. A seed that diverges is recorded in its run (FAILED, with
the reason) and in the checkpoint, and stays out; the others go on.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import ray
import torch
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from ray import tune

from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import flush_denormal
from orchestrator.names import trial_name
from orchestrator.training.train import load_trial_data, resolve_device
from orchestrator.sweep.trainable import STATE_FILE, _load_state, _log_model, _maybe_kill, _start_run

REPORTED = ("val_accuracy", "best_val_accuracy", "latency_ms_per_image", "latency_ms_batch1")  # the summary's


class FusedRuns:
    """The seeds' MLflow runs and what the trial knows of them: who diverged, and each one's system metrics."""

    def __init__(self, cfg: TrainConfig, sweep: dict, variant: str, seeds: list[int], device, checkpoint):
        flushing = flush_denormal(cfg.flush_denormal)
        self.cfg, self.sweep, self.variant = cfg, sweep, variant
        self.runs = {seed: _start_run(cfg, sweep, variant, seed, device, flushing, fused_seeds=seeds) for seed in seeds}
        self.diverged: dict[int, str] = {int(k): v for k, v in (checkpoint or {}).get("diverged", {}).items()}
        self.states = {int(k): v for k, v in checkpoint["states"].items()} if checkpoint else None
        for seed, state in (self.states or {}).items():
            self.runs[seed].log_history(state["history"])
        self.finished: dict[int, tuple] = {}  # this epoch's (metrics, make_state) per seed, until after_epoch
        self.monitors = [SystemMetricsMonitor(run.run_id, resume_logging=checkpoint is not None,
                                              tracking_uri=sweep["tracking_uri"]) for run in self.runs.values()]
        for monitor in self.monitors:
            monitor.start()

    def active(self) -> list[int]:
        return [seed for seed in self.runs if seed not in self.diverged]

    def on_epoch_end(self, seed: int, epoch: int, metrics: dict, make_state) -> None:
        self.finished[seed] = (metrics, make_state)

    def after_epoch(self, epoch: int, diverged: dict) -> None:
        """Checkpoint every seed's state, report the epoch to Tune once, then log it to each seed's run."""
        finished, self.finished = self.finished, {}
        for seed, reason in diverged.items():  # deterministic: a retry would diverge again
            if seed not in self.diverged:
                self.diverged[seed] = reason
                self.runs[seed].finish("FAILED", reason=reason)
        if not finished:
            return  # every seed diverged this epoch: nothing left to checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"states": {seed: make_state() for seed, (_, make_state) in finished.items()},
                        "diverged": self.diverged}, Path(tmp) / STATE_FILE)
            # epoch_seconds is the fused epoch's wall time, the same for every seed: the sweep's ETA reads it
            mean = {k: sum(m[k] for m, _ in finished.values()) / len(finished)
                    for k in ("train_loss", "val_accuracy", "epoch_seconds")}
            tune.report({"epoch": epoch, "progress": f"{epoch}/{self.cfg.epochs}", **mean},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        for seed in finished:
            _maybe_kill(self.sweep.get("fault", ""), trial_name(self.variant, seed), epoch,
                        restored=self.states is not None)
        for seed, (metrics, _) in finished.items():
            self.runs[seed].log_metrics(metrics, step=epoch)

    def finish(self, results: dict[int, dict], d) -> None:
        """Each finished seed's final metrics, deployment view and model, then its run FINISHED."""
        for seed, result in results.items():
            if result["diverged"] or seed in self.diverged:
                continue
            run = self.runs[seed]
            final = dict(result["final"])
            if self.cfg.export == "onnx":
                final.update(export_to_run(run, self.cfg, result["model"], d, seed))
            run.log_metrics(final, step=0)
            _log_model(run.run_id, self.sweep["experiment_id"], result["model"])
            run.finish("FINISHED")
        self.stop_monitors()

    def stop_monitors(self) -> None:
        for monitor in self.monitors:
            monitor.finish()


def export_to_run(run, cfg: TrainConfig, model, d, seed: int) -> dict:
    """The deployment view of one seed's model (orchestrator.training.export); both ONNX files as the run's artifacts."""
    from orchestrator.training.export import export_model
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        metrics, paths = export_model(model, train_images=d.train_images, val_images=d.val_images,
                                      val_labels=d.val_labels, seed=seed, out_dir=tmp,
                                      calibration_images=cfg.export_calibration_images,
                                      batch1_calls=cfg.latency_batch1_calls)
        for path in paths.values():
            run.client.log_artifact(run.run_id, str(path), artifact_path="onnx")
    return metrics


def per_seed_summary(results: dict[int, dict], fused: FusedRuns) -> dict:
    """What the driver's summary table shows of each seed (Tune keeps one result per trial)."""
    summary = {}
    for seed in fused.runs:
        result = results.get(seed)
        if seed in fused.diverged or result is None or result["diverged"]:
            summary[str(seed)] = {"status": "diverged"}
            continue
        last = result["history"][-1]
        summary[str(seed)] = {"status": "done", "epoch": last["epoch"],
                              **{k: {**last, **result["final"]}.get(k) for k in REPORTED}}
    return summary


def run_fused_trial(config: dict) -> None:
    from orchestrator.training.fused import train_fused
    cfg, sweep = TrainConfig(**config["train"]), config["sweep"]
    variant, seeds = config["trial"]["variant"], [int(s) for s in config["trial"]["seeds"]]
    torch.set_num_threads(sweep["cpus_per_trial"])
    flush_denormal(cfg.flush_denormal)  # before any torch work: threads started later inherit it
    device = resolve_device(cfg.device, gpu_assigned=bool(ray.get_gpu_ids()))
    mlflow.set_tracking_uri(sweep["tracking_uri"])
    fused = FusedRuns(cfg, sweep, variant, seeds, device, _load_state(tune.get_checkpoint()))
    untrained = [s for s in fused.active() if fused.runs[s].previous is None
                 or fused.runs[s].previous.info.status != "FINISHED"]
    if not untrained:  # every seed diverged, or finished and was logged whole before the driver died
        fused.stop_monitors()
        tune.report({"epoch": cfg.epochs, "progress": f"{cfg.epochs}/{cfg.epochs}", "done": 1,
                     "per_seed": {str(s): {"status": "diverged" if s in fused.diverged else "done"} for s in seeds}})
        return
    d = load_trial_data(cfg)
    try:
        # Not compiled: compiling the stacked step gained 0.91-1.14x over eager (measured), for minutes of compiling.
        results = train_fused(cfg, variant, fused.active(), trial_data=d, device=device, states=fused.states,
                              on_epoch_end=fused.on_epoch_end, after_epoch=fused.after_epoch)
    except BaseException as e:
        for seed in fused.active():
            fused.runs[seed].finish("FAILED", reason=f"{type(e).__name__}: {e}")
        fused.stop_monitors()
        raise
    fused.finish(results, d)
    epochs = max((r["history"][-1]["epoch"] for r in results.values() if r["history"]), default=0)
    tune.report({"epoch": epochs, "progress": f"{epochs}/{cfg.epochs}", "done": 1,
                 "per_seed": per_seed_summary(results, fused)})
