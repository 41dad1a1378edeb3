"""The Ray Tune trainable: one trial trains one variant's seeds, one on its own or K fused into one network
(orchestrator.training.train.train_seeds), and every seed keeps its own MLflow child run (orchestrator.sweep.seed_run).

One Tune iteration per epoch: once every seed has finished epoch e, one checkpoint holding every seed's state is
persisted through `tune.report` first, then each seed's epoch is logged to its run. After a crash Ray restarts the
trial from that checkpoint; every seed still training resumes from it, and each run back-fills the epochs it lacks,
so each epoch is logged once per seed. A seed that diverges is recorded in its run (FAILED, with the reason) and in
the checkpoint, and stays out; the others go on. (Deterministic: a retry would diverge again.)
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import ray
import torch
from ray import tune

import models
from orchestrator.names import trial_name
from orchestrator.sweep.seed_run import SeedRun
from orchestrator.sweep.tracking import INTERRUPTED_REASON, INTERRUPTIONS
from orchestrator.training.config import TrainConfig
from orchestrator.training.device import flush_denormal, resolve_device
from orchestrator.training.metrics import EPOCH_METRICS
from orchestrator.training.protocol import load_trial_data
from orchestrator.training.train import speed_in_effect, train_seeds

STATE_FILE = "state.pt"
# Test hook: "<variant>-seed<k>:<epoch>" makes that trial SIGKILL itself once, right after the checkpoint of
# <epoch> is persisted and before the epoch is logged: the worst moment for exactly-once logging. The driver
# reads it and passes it in the trial config (a running Ray's workers don't see the driver's later env).
FAULT_ENV = "RESNET_REVISITED_KILL_AFTER_EPOCH"
REPORTED = ("val_accuracy", "best_val_accuracy", "latency_ms_per_image", "latency_ms_batch1")  # the summary's


def load_checkpoint(checkpoint) -> dict | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)  # data, never code


class SignOfLife:
    """At most once a minute inside a long epoch: a line on the driver's console (Ray forwards the trial's stdout)
    and the runs' `progress` tag. Neither Tune's iterations nor MLflow's metric steps change."""
    EVERY_SECONDS = 60.0

    def __init__(self, runs: list, name: str, epochs: int):  # the seeds' TrialRuns
        self.runs, self.name, self.epochs, self.last = runs, name, epochs, time.monotonic()
        self.tagging: threading.Thread | None = None

    def __call__(self, epoch: int, steps: int, steps_in_epoch: int) -> None:
        if time.monotonic() - self.last < self.EVERY_SECONDS:
            return
        self.last = time.monotonic()
        where = f"epoch {epoch}/{self.epochs}, step {steps:,}/{steps_in_epoch:,} ({steps / steps_in_epoch:.0%})"
        print(f"{self.name}: {where}", flush=True)
        # Off the training thread: with the tracking server down, MLflow's client retries a call for minutes, and a
        # progress tag is not worth stalling (or failing) the epoch. While one is in flight, later ones are skipped.
        if self.tagging is None or not self.tagging.is_alive():
            self.tagging = threading.Thread(target=self.tag, args=(where,), daemon=True)
            self.tagging.start()

    def tag(self, where: str) -> None:
        with contextlib.suppress(Exception):  # only a progress tag: the epoch's own logging reports a lost server
            for run in self.runs:
                run.set_tags({"progress": where})


class Trial:
    """A trial's seeds and what it knows of them: each one's run, who diverged, the states it resumes from."""

    def __init__(self, cfg: TrainConfig, sweep: dict, variant: str, seeds: list[int], fused: bool, device,
                 checkpoint: dict | None):
        speed = speed_in_effect(cfg, variant, device, flush_denormal(cfg.flush_denormal), seeds if fused else None)
        self.cfg, self.sweep, self.variant = cfg, sweep, variant
        self.runs = {seed: SeedRun(cfg, sweep, variant, seed, device, speed) for seed in seeds}
        self.diverged: dict[int, str] = {int(k): v for k, v in (checkpoint or {}).get("diverged", {}).items()}
        self.states = {int(k): v for k, v in checkpoint["states"].items()} if checkpoint else None
        self.finished: dict[int, tuple] = {}  # this epoch's (metrics, make_state) per seed, until after_epoch

    def to_train(self) -> list[int]:
        """Seeds neither diverged nor finished and logged whole by an earlier attempt."""
        return [s for s, run in self.runs.items() if s not in self.diverged and not run.finished_before]

    def on_epoch_end(self, seed: int, epoch: int, metrics: dict, make_state) -> None:
        self.finished[seed] = (metrics, make_state)

    def after_epoch(self, epoch: int, diverged: dict) -> None:
        """Checkpoint every seed's state, report the epoch to Tune once, then log it to each seed's run."""
        finished, self.finished = self.finished, {}
        for seed, reason in diverged.items():
            if seed not in self.diverged:
                self.diverged[seed] = reason
                self.runs[seed].end("FAILED", reason)
        if not finished:
            return  # every seed diverged this epoch: nothing left to checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"states": {seed: make_state() for seed, (_, make_state) in finished.items()},
                        "diverged": self.diverged,
                        "mlflow_run_ids": {seed: run.run.run_id for seed, run in self.runs.items()}},
                       Path(tmp) / STATE_FILE)
            # Means over the seeds (the values themselves for one): epoch_seconds, the fused epoch's wall time, is
            # the same for every seed, and the sweep's ETA reads it.
            mean = {k: sum(m[k] for m, _ in finished.values()) / len(finished) for k in EPOCH_METRICS}
            tune.report({"epoch": epoch, "progress": f"{epoch}/{self.cfg.epochs}", **mean},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        for seed in finished:
            if self.states is None and self.sweep.get("fault", "") == f"{trial_name(self.variant, seed)}:{epoch}":
                os.kill(os.getpid(), signal.SIGKILL)
        for seed, (metrics, _) in finished.items():
            self.runs[seed].run.log_metrics(metrics, step=epoch)

    def summary(self, results: dict[int, dict]) -> dict:
        """What the driver's summary table shows of each seed (Tune keeps one result per trial)."""
        out = {}
        for seed, run in self.runs.items():
            result = results.get(seed)
            if seed in self.diverged or (result is not None and result["diverged"]):
                out[str(seed)] = {"status": "diverged"}
            elif result is None:  # logged whole by an earlier attempt
                out[str(seed)] = {"status": "done", **{k: run.previous_metrics().get(k) for k in REPORTED}}
            else:
                last = result["history"][-1]
                out[str(seed)] = {"status": "done", "epoch": last["epoch"],
                                  **{k: {**last, **result["final"]}.get(k) for k in REPORTED}}
        return out


def start_checkpoint(start_states: dict, variant: str, seeds: list[int]) -> dict | None:
    """What the trial's seeds go on from when the sweep found their checkpoints in --results-dir (all of them: the
    driver groups fused seeds by the epoch they resume after)."""
    if seeds and all((variant, s) in start_states for s in seeds):
        return {"states": {s: start_states[(variant, s)] for s in seeds}, "diverged": {}}
    return None


def run_trial(config: dict, start_states: dict | None = None) -> None:
    # MLflow's system-metrics monitor logs a start and a stop per run at INFO, which floods the driver's console
    # (some after the sweep's summary): warnings only. The metrics are logged as before.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    cfg, sweep, spec = TrainConfig(**config["train"]), config["sweep"], config["trial"]
    fused = "seeds" in spec
    variant, seeds = spec["variant"], [int(s) for s in spec.get("seeds", [spec.get("seed")])]
    for name, spec in sweep.get("specs", {}).items():  # architectures from spec files: this worker builds them too
        models.register_spec(name, models.from_dict(spec))
    torch.set_num_threads(sweep["cpus_per_trial"])
    flush_denormal(cfg.flush_denormal)  # before any torch work: threads started later inherit it
    device = resolve_device(cfg.device, gpu_assigned=bool(ray.get_gpu_ids()))  # auto: CUDA iff Ray gave a GPU
    mlflow.set_tracking_uri(sweep["tracking_uri"])
    # Ray's checkpoint first: a restarted trial has gone on past the one it started from.
    checkpoint = load_checkpoint(tune.get_checkpoint()) or start_checkpoint(start_states or {}, variant, seeds)
    trial = Trial(cfg, sweep, variant, seeds, fused, device, checkpoint)
    training = trial.to_train()
    results = {}
    if training:
        for seed in training:
            trial.runs[seed].start(trial.states[seed]["history"] if trial.states else None)
        name = trial_name(variant, seeds[0]) if len(seeds) == 1 else f"{variant} seeds {','.join(map(str, seeds))}"
        with tempfile.TemporaryDirectory(prefix="export-") as export_dir:
            try:
                results = train_seeds(cfg, variant, training, fused=fused, trial_data=load_trial_data(cfg),
                                      device=device, states=trial.states, on_epoch_end=trial.on_epoch_end,
                                      after_epoch=trial.after_epoch, export_dir=export_dir,
                                      on_progress=SignOfLife([trial.runs[s].run for s in training], name, cfg.epochs))
            except BaseException as e:
                # Tune stops the trials of an interrupted sweep with SystemExit (Ctrl-C: KeyboardInterrupt), maybe
                # after the driver has marked their runs KILLED: a FAILED written last would stick.
                for seed in trial.to_train():
                    if isinstance(e, INTERRUPTIONS):  # KILLED and resumable, as the driver marks them too
                        trial.runs[seed].end("KILLED", INTERRUPTED_REASON)
                    else:
                        trial.runs[seed].end("FAILED", f"{type(e).__name__}: {e}")
                raise
            for seed, result in results.items():
                if not result["diverged"] and seed not in trial.diverged:
                    trial.runs[seed].finish(result)
    epochs = max((r["history"][-1]["epoch"] for r in results.values() if r["history"]), default=cfg.epochs)
    tune.report({"epoch": epochs, "progress": f"{epochs}/{cfg.epochs}", "done": 1, "per_seed": trial.summary(results)})
