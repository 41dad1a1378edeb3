"""One seed's MLflow child run inside a trial: found again after a restart (never duplicated), its tags and params,
its system-metrics monitor, the back-fill of epochs a crashed attempt checkpointed but did not log, and its end:
final metrics, the ONNX files, the model, the status."""
from __future__ import annotations

import json
import platform
import socket
import tempfile
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

import data
import models
from orchestrator.sweep.tracking import TrialRun
from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import latency_context

# The logged MLflow model takes images as people have them, uint8 RGB [batch, 3, 32, 32] (the training
# normalisation is inside it: models.ImageClassifier), and returns logits [batch, 10] of data.CLASSES, which its
# metadata names. MLflow's schema check refuses float input instead of silently returning wrong logits.
MODEL_SIGNATURE = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 3, 32, 32))]),
                                 outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]))
# MLflow (3.17, outside Databricks) saves the model as "pt2": torch.export traces it on the input example and
# fixes every size-1 dimension to a constant, so the example has a batch of 2: the batch dimension stays symbolic
# and the model serves any batch size, 1 included (tests/test_logged_model.py).
EXAMPLE_BATCH = 2


class SeedRun:
    """The MLflow child run of one (variant, seed), with exactly its params (variant, seed and the TrainConfig it
    trains with) and tags that say where and how it ran: node, device, and what really ran (`fused`,
    `fused_seeds`, and the speed options in effect as `speed_json`; the params are what was asked for)."""

    def __init__(self, cfg: TrainConfig, sweep: dict, variant: str, seed: int, device, speed: dict):
        self.sweep, self.monitor = sweep, None
        self.run = TrialRun(sweep["tracking_uri"], sweep["experiment_id"], sweep["parent_run_id"], sweep["sweep_id"],
                            variant, seed, tags=sweep.get("source_tags"))
        self.finished_before = self.run.previous is not None and self.run.previous.info.status == "FINISHED"
        if self.finished_before:
            return  # logged whole by an earlier attempt: leave it as it is
        self.run.set_tags({"node": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                           "ray_node_id": ray.get_runtime_context().get_node_id(),  # tells nodes sharing a host apart
                           "device": str(device), "flush_denormal": str(speed["flush_denormal"]).lower(),
                           "python_version": platform.python_version(), **latency_context(device),
                           "fused": str(speed["fused"]).lower(), "fused_seeds": ",".join(map(str, speed["fused_seeds"])),
                           "speed_json": json.dumps(speed, sort_keys=True)})
        spec = models.registered_spec(variant)  # every variant is one, paper's or a spec file's
        spec_params = models.spec_params(spec) if spec is not None else {}
        self.run.log_params({"variant": variant, "seed": seed, **cfg.to_dict(), **spec_params})
        if spec is not None:
            self.run.set_tags({"spec_hash": spec_params["spec_hash"], "spec_json": json.dumps(models.to_dict(spec))})
            self.run.client.log_text(self.run.run_id, models.dump_toml(spec), "spec.toml")

    def previous_metrics(self) -> dict:
        return dict(self.run.previous.data.metrics) if self.run.previous is not None else {}

    def start(self, history: list[dict] | None) -> None:
        """Back-fill the epochs a checkpoint holds, then monitor the system (resuming its steps on a restart)."""
        if history:
            self.run.log_history(history)
        self.monitor = SystemMetricsMonitor(self.run.run_id, resume_logging=history is not None,
                                            tracking_uri=self.sweep["tracking_uri"])
        self.monitor.start()

    def end(self, status: str, reason: str | None = None) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
        self.run.finish(status, reason=reason)

    def finish(self, result: dict) -> None:
        """Final metrics, both ONNX files, the model; then FINISHED, once, after everything is logged."""
        self.run.log_metrics(result["final"], step=0)
        for path in result["exported"].values():  # model.onnx and model.int8.onnx
            self.run.client.log_artifact(self.run.run_id, str(path), artifact_path="onnx")
        log_model(self.run.run_id, self.sweep["experiment_id"], result["model"])
        self.end("FINISHED")


def log_model(run_id: str, experiment_id: str, model: torch.nn.Module) -> None:
    """The final weights as a plain state dict of the network (loads with weights_only=True, as a published
    record's weights do) and as a deployable MLflow model (a LoggedModel linked to the run, `mlflow_model`): uint8
    images in, the normalisation inside, the class names in its metadata."""
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    deployed = models.ImageClassifier(model, data.CLASSES).eval()
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
        mlflow.pytorch.log_model(deployed, name="mlflow_model", signature=MODEL_SIGNATURE,
                                 input_example=np.zeros((EXAMPLE_BATCH, 3, 32, 32), dtype=np.uint8),
                                 metadata={"classes": list(deployed.classes), **models.PREPROCESSING},
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    finally:
        # Leave the run RUNNING: the trial marks it FINISHED once, after everything is logged, so a resumed
        # sweep never sees a run change after it looked finished.
        mlflow.end_run(status="RUNNING")
