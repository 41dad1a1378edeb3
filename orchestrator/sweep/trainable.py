"""The Ray Tune trainable: wraps the plain `train` function with Ray checkpoints and MLflow logging.

Order per epoch: checkpoint persisted through `tune.report` first, then the epoch is logged to MLflow. After a
crash Ray restarts the trial from that checkpoint, and the run back-fills any checkpointed epoch it lacks.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import socket
import tempfile
import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import ray
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.models import ModelSignature
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.types import Schema, TensorSpec
from ray import tune

from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import flush_denormal, latency_context
from orchestrator.names import trial_name
from orchestrator.sweep.tracking import TrialRun
from orchestrator.training.train import DivergedError, resolve_device, speed_in_effect, train

STATE_FILE = "state.pt"
# Test hook: "<variant>-seed<k>:<epoch>" makes that trial SIGKILL itself once, right after the checkpoint of
# <epoch> is persisted and before the epoch is logged: the worst moment for exactly-once logging. The driver
# reads it and passes it in the trial config (a running Ray's workers don't see the driver's later env).
FAULT_ENV = "RESNET_REVISITED_KILL_AFTER_EPOCH"
# The logged MLflow model takes float32 CIFAR images [batch, 3, 32, 32] and returns logits [batch, 10].
MODEL_SIGNATURE = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, 32, 32))]),
                                 outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]))
# MLflow (3.17, outside Databricks) saves the model as "pt2": torch.export traces it on the input example and
# fixes every size-1 dimension to a constant, so the example has a batch of 2: the batch dimension stays symbolic
# and the model serves any batch size, 1 included (tests/test_logged_model.py).
EXAMPLE_BATCH = 2


def _load_state(checkpoint) -> dict | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        # weights_only: a checkpoint is data, never code.
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)


def _maybe_kill(target: str, name: str, epoch: int, restored: bool) -> None:
    if not restored and target == f"{name}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


class SignOfLife:
    """At most once a minute inside a long epoch: a line on the driver's console (Ray forwards the trial's stdout)
    and the run's `progress` tag. Neither Tune's iterations nor MLflow's metric steps change."""
    EVERY_SECONDS = 60.0

    def __init__(self, run: TrialRun, name: str, epochs: int):
        self.run, self.name, self.epochs, self.last = run, name, epochs, time.monotonic()

    def __call__(self, epoch: int, steps: int, steps_in_epoch: int) -> None:
        if time.monotonic() - self.last < self.EVERY_SECONDS:
            return
        self.last = time.monotonic()
        where = f"epoch {epoch}/{self.epochs}, step {steps:,}/{steps_in_epoch:,} ({steps / steps_in_epoch:.0%})"
        print(f"{self.name}: {where}", flush=True)
        self.run.set_tags({"progress": where})


def _start_run(cfg: TrainConfig, sweep: dict, variant: str, seed: int, device, flushing: bool,
               fused_seeds: list[int] | None = None) -> TrialRun:
    """The trial's MLflow child run (found again after a restart), with its tags and exactly its params:
    variant, seed and the TrainConfig it trains with. The tags say what really ran: fused or not (and with which
    seeds), and the speed options in effect (`speed_json`), which the params (what was asked for) may not."""
    run = TrialRun(sweep["tracking_uri"], sweep["experiment_id"], sweep["parent_run_id"], sweep["sweep_id"],
                   variant, seed, tags=sweep.get("source_tags"))
    if run.previous is not None and run.previous.info.status == "FINISHED":
        return run  # logged whole by an earlier attempt: leave it as it is
    speed = speed_in_effect(cfg, variant, device, flushing, fused_seeds)
    run.set_tags({"node": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                  "ray_node_id": ray.get_runtime_context().get_node_id(),  # tells apart nodes sharing a host
                  "device": str(device), "flush_denormal": str(flushing).lower(),
                  "python_version": platform.python_version(), **latency_context(device),
                  "fused": str(speed["fused"]).lower(), "fused_seeds": ",".join(map(str, speed["fused_seeds"])),
                  "speed_json": json.dumps(speed, sort_keys=True)})
    run.log_params({"variant": variant, "seed": seed, **cfg.to_dict()})
    return run


def run_trial(config: dict) -> None:
    cfg, sweep = TrainConfig(**config["train"]), config["sweep"]
    variant, seed = config["trial"]["variant"], int(config["trial"]["seed"])
    torch.set_num_threads(sweep["cpus_per_trial"])
    flushing = flush_denormal(cfg.flush_denormal)  # before any torch work: threads started later inherit it
    device = resolve_device(cfg.device, gpu_assigned=bool(ray.get_gpu_ids()))  # auto: CUDA iff Ray gave a GPU
    state = _load_state(tune.get_checkpoint())
    mlflow.set_tracking_uri(sweep["tracking_uri"])
    run = _start_run(cfg, sweep, variant, seed, device, flushing)
    if run.previous is not None and run.previous.info.status == "FINISHED":
        # Finished and fully logged before the driver died, but Ray had not recorded it: don't train it again.
        tune.report({**run.previous.data.metrics, "epoch": cfg.epochs, "progress": f"{cfg.epochs}/{cfg.epochs}",
                     "done": 1})
        return
    if state is not None:
        run.log_history(state["history"])
    monitor = SystemMetricsMonitor(run.run_id, resume_logging=state is not None, tracking_uri=sweep["tracking_uri"])
    monitor.start()

    def on_epoch_end(epoch: int, metrics: dict, make_state) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({**make_state(), "mlflow_run_id": run.run_id}, Path(tmp) / STATE_FILE)
            tune.report({"epoch": epoch, "progress": f"{epoch}/{cfg.epochs}", **metrics},
                        checkpoint=tune.Checkpoint.from_directory(tmp))
        _maybe_kill(sweep.get("fault", ""), trial_name(variant, seed), epoch, restored=state is not None)
        run.log_metrics(metrics, step=epoch)

    export_dir = tempfile.TemporaryDirectory(prefix="export-")
    try:
        result = train(cfg, variant, seed, device=device, state=state, on_epoch_end=on_epoch_end,
                       export_dir=export_dir.name, on_progress=SignOfLife(run, trial_name(variant, seed), cfg.epochs))
    except DivergedError as e:
        # Deterministic: a retry would diverge again, so record it and end the trial without an error.
        monitor.finish()
        run.finish("FAILED", reason=str(e))
        tune.report({"diverged": 1})
        return
    except BaseException as e:
        monitor.finish()
        run.finish("FAILED", reason=f"{type(e).__name__}: {e}")
        raise
    run.log_metrics(result["final"], step=0)
    for path in result["exported"].values():  # model.onnx and model.int8.onnx
        run.client.log_artifact(run.run_id, str(path), artifact_path="onnx")
    export_dir.cleanup()
    _log_model(run.run_id, sweep["experiment_id"], result["model"])
    monitor.finish()
    run.finish("FINISHED")
    last = result["history"][-1]
    tune.report({"epoch": last["epoch"], "progress": f"{last['epoch']}/{cfg.epochs}", **last, **result["final"],
                 "done": 1})


def _log_model(run_id: str, experiment_id: str, model: torch.nn.Module) -> None:
    """The final weights as a plain state dict (loads with weights_only=True) and as an MLflow model (a
    LoggedModel linked to the run, `mlflow_model`)."""
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "state_dict.pt")
        client.log_artifact(run_id, str(Path(tmp) / "state_dict.pt"), artifact_path="model")
    # A retried trial may find the model of an earlier attempt: READY means it is already logged; PENDING (or
    # FAILED) means that attempt died mid-upload, and the half-logged model must not linger beside the new one.
    earlier = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    if any(m.status == LoggedModelStatus.READY for m in earlier):
        return
    for m in earlier:
        client.delete_logged_model(m.model_id)
    mlflow.start_run(run_id=run_id)  # log_model links the model to the active run
    try:
        mlflow.pytorch.log_model(model, name="mlflow_model", signature=MODEL_SIGNATURE,
                                 input_example=np.zeros((EXAMPLE_BATCH, 3, 32, 32), dtype=np.float32),
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    finally:
        # Leave the run RUNNING: the trial marks it FINISHED once, after everything is logged, so a resumed
        # sweep never sees a run change after it looked finished.
        mlflow.end_run(status="RUNNING")
