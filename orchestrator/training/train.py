"""The paper's training protocol for one (variant, seed), as a plain function: no Ray, no MLflow.

The Ray trainable (orchestrator.sweep.trainable) wraps it: it passes a checkpoint `state` to resume from and an
`on_epoch_end` callback that persists the checkpoint and logs the epoch.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

import data
import models
from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import flush_denormal, measure_latency
from orchestrator.names import trial_name

# What `train` reports, hence what every trial logs to MLflow: per epoch (step = epoch), and once at the end
# (step 0; the latencies only when measured). Tests and scripts/load_check.py check runs against these names.
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds",
                 "train_images_per_second")
FINAL_METRICS = ("param_count", "size_mb", "state_dict_bytes", "macs_per_image", "final_val_accuracy",
                 "best_val_accuracy", "compile_seconds", "latency_ms_per_image", "latency_ms_batch1")


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; retrying the same seed would diverge again."""


@dataclass
class TrialData:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor


def load_trial_data(cfg: TrainConfig) -> TrialData:
    root = data.resolve_data_dir(cfg.data_dir or None)
    train_x, train_y = data.load_cifar10(root, "train")
    val_x, val_y = data.load_cifar10(root, "test")
    if cfg.subset_per_class:
        # Same subset for every seed: the subset is part of the experiment, not of the noise.
        train_x, train_y = data.stratified_subset(train_x, train_y, cfg.subset_per_class, seed=0)
    return TrialData(train_x, train_y, val_x, val_y)


def pick_device(want_gpu: bool = True) -> torch.device:
    return torch.device("cuda") if want_gpu and torch.cuda.is_available() else torch.device("cpu")


def resolve_device(choice: str = "auto", gpu_assigned: bool = True) -> torch.device:
    """The device of --device `choice`: auto = CUDA when the trial was given a GPU (`gpu_assigned`: by Ray in a
    trial; outside Ray, assumed) and torch sees one, else CPU. cuda where torch sees none is an error, never a
    silent CPU run (the driver refuses it before a local sweep starts; a remote node can still lack one)."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device cuda but torch {torch.__version__} sees no CUDA device in this process: "
                               f"give the trial a GPU node (--gpus-per-trial) or pass --device auto")
        return torch.device("cuda")
    return pick_device(gpu_assigned)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2])}


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"]))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def eval_batch_size(device: torch.device) -> int:
    """Validation batch size: 500 keeps a CPU's working set in cache; a GPU wants few, large launches (2,000 images
    of these nets need well under 1 GB). Evaluation is in eval mode, so the batch size changes no result beyond
    the order of float sums."""
    return 2000 if torch.device(device).type == "cuda" else 500


@torch.no_grad()
def evaluate(model, images, labels, device, memory_format, batch_size: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole (never augmented) validation set; batches of
    `batch_size`, by default `eval_batch_size(device)`."""
    batch_size = batch_size or eval_batch_size(device)
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in data.eval_batches(images, labels, batch_size, device):
        out = model(x.contiguous(memory_format=memory_format))
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    n = len(labels)
    return loss_sum / n, correct / n


def _hits_onednn_strided_1x1_bug(model: torch.nn.Module, device: torch.device) -> bool:
    """oneDNN's CPU backward of a strided 1x1 conv with 2-7 input channels in channels_last corrupts the heap
    (torch 2.14: double free / SIGSEGV at the first backward). V2 and Alpha have one: the dense skip from the
    image. Such models train in the contiguous format on CPU: the same maths, a little slower."""
    return device.type == "cpu" and any(
        isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
        for m in model.modules())


def snapshot(epoch: int, model, optimizer, scheduler, rng: dict, history: list) -> dict:
    """The checkpoint of one trial after `epoch`: a deep copy, not live references (training goes on mutating the
    tensors in place). A fused-seeds run (orchestrator.training.fused) makes the same per seed."""
    return copy.deepcopy({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "rng": rng, "history": history})


def restore(state: dict, model, optimizer, scheduler) -> tuple[list, int]:
    """Load a `snapshot` into model, optimizer and scheduler; return (history so far, the epoch to start at).
    The RNG state is the caller's: `train` sets it, fused seeds keep one per seed."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return list(state["history"]), state["epoch"] + 1


@dataclass
class Trainer:
    """What one trial trains with: the model, its optimizer and scheduler, and the memory format of its inputs."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    memory_format: torch.memory_format

    def state(self, epoch: int, history: list[dict]) -> dict:
        """The checkpoint after `epoch` (see `snapshot`)."""
        return snapshot(epoch, self.model, self.optimizer, self.scheduler, rng_state(), history)

    def load(self, state: dict) -> None:
        # A checkpoint of either kind resumes either kind of trainer: the trainer keeps its own kind of lr (a float,
        # or the tensor a compiled step or CUDA graph reads, refilled in place) and its own `capturable` flag
        # (load_state_dict would take the checkpoint's: a CUDA-graph checkpoint resumed on CPU would then fail).
        own = [(group["lr"], group.get("capturable", False)) for group in self.optimizer.param_groups]
        restore(state, self.model, self.optimizer, self.scheduler)
        set_rng_state(state["rng"])
        for group, (own_lr, capturable) in zip(self.optimizer.param_groups, own):
            lr = float(group["lr"])
            group["lr"] = own_lr.fill_(lr) if isinstance(own_lr, torch.Tensor) else lr
            group["capturable"] = capturable

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def make_step(self, compiled: bool):
        """One training step on a batch: forward, loss, backward and the optimizer update; returns the loss and
        the number of correct predictions as tensors (no host sync). With `compiled`, the whole step is one
        torch.compile function: the forward is compiled with its backward (AOTAutograd), and Adam's update into
        fused kernels of its own (Dynamo breaks the graph at `backward()` and around `optimizer.step`)."""
        model, optimizer = self.model, self.optimizer

        def step(x: torch.Tensor, y: torch.Tensor):
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach(), (out.argmax(1) == y).sum()
        return torch.compile(step) if compiled else step


def build(cfg: TrainConfig, variant: str, device: torch.device) -> Trainer:
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = models.create_model(variant)
    if _hits_onednn_strided_1x1_bug(model, device):
        memory_format = torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    fused = cfg.fused_adam and (device.type in ("cpu", "cuda"))
    # A tensor learning rate under compile: ReduceLROnPlateau then changes it in place, with no recompile.
    # float64 holds cfg.lr exactly on CPU; CUDA's fused Adam reads a float32 lr (the CUDA graph keeps its own twin).
    lr_dtype = torch.float32 if device.type == "cuda" and fused else torch.float64
    lr = torch.tensor(cfg.lr, dtype=lr_dtype, device=device) if cfg.compile else cfg.lr
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                           weight_decay=cfg.weight_decay, fused=fused or None)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.lr_factor,
                                                       patience=cfg.lr_patience, threshold=cfg.lr_threshold)
    return Trainer(model, opt, sched, memory_format)


def speed_in_effect(cfg: TrainConfig, variant: str, device: torch.device, flushing: bool,
                    fused_seeds: list[int] | None = None) -> dict:
    """The speed options a trial really runs with, which may differ from those asked for: fused trials never
    compile and (for now) never graph, CUDA graphs and fused Adam need a device that has them, and V2/Alpha train
    contiguous on CPU unless fused (see `_hits_onednn_strided_1x1_bug`)."""
    fused = fused_seeds is not None
    graph = device.type == "cuda" and cfg.cuda_graph and not fused
    channels_last = cfg.channels_last and (
        fused or not _hits_onednn_strided_1x1_bug(models.create_model(variant), device))
    return {"fused": fused, "fused_seeds": list(fused_seeds or []), "compile": cfg.compile and not fused and not graph,
            "cuda_graph": graph, "channels_last": channels_last,
            "fused_adam": cfg.fused_adam and device.type in ("cpu", "cuda"), "flush_denormal": flushing,
            "device": str(device)}


def training_step(cfg: TrainConfig, trainer: Trainer):
    """The step `train` uses, and whether its first call pays a one-time cost (compiling, or capturing): on CUDA
    with --cuda-graph the whole step as one CUDA graph (orchestrator.training.cuda_graph), else `make_step` (compiled with
    --compile). On a GPU the graph does what compiling does for a batch-4 step (it removes the per-kernel launch
    cost), without a minute of compiling per variant."""
    if trainer.device.type == "cuda" and cfg.cuda_graph:
        from orchestrator.training.cuda_graph import graphed_step  # CUDA only: CPU runs never import it
        return graphed_step(trainer, cfg.batch_size), True
    return trainer.make_step(cfg.compile), cfg.compile


PROGRESS_EVERY_STEPS = 500  # how often a long epoch tells `on_progress` where it is (a few seconds apart)


def train_epoch(trainer: Trainer, step, batches, device, on_progress: Callable[[int], None] | None = None) -> dict:
    """One pass over the epoch's batches; train loss, accuracy and images/s, read once at the end, and the
    seconds of the epoch's first step (which includes compiling it, when compiled). `on_progress(steps)` is
    called every PROGRESS_EVERY_STEPS steps."""
    trainer.model.train()
    t0 = time.perf_counter()
    # Accumulated on the device: a .item() per step would force a sync on GPUs.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen, first_step_seconds = 0, 0.0
    for steps, (x, y) in enumerate(batches, start=1):
        if len(y) < 2:  # a 1-image remainder batch: the FC head's BatchNorm1d cannot train on it
            continue
        loss, hits = step(x.contiguous(memory_format=trainer.memory_format), y)
        if not seen:
            first_step_seconds = time.perf_counter() - t0
        if on_progress is not None and steps % PROGRESS_EVERY_STEPS == 0:
            on_progress(steps)
        loss_sum += loss * len(y)
        correct += hits
        seen += len(y)
    seconds = time.perf_counter() - t0
    return {"train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen,
            "train_images_per_second": seen / seconds, "first_step_seconds": first_step_seconds}


def final_metrics(model: torch.nn.Module, variant: str, history: list[dict]) -> dict:
    """Size and cost of the trained model (the paper's Table 2 columns) and its accuracies."""
    return {"param_count": models.count_parameters(model), "size_mb": models.size_mb(model),
            "state_dict_bytes": models.state_dict_bytes(model),
            "macs_per_image": models.macs_per_image(models.create_model(variant)),
            "final_val_accuracy": history[-1]["val_accuracy"],
            "best_val_accuracy": max(h["val_accuracy"] for h in history)}


def train(cfg: TrainConfig, variant: str, seed: int, *, trial_data: TrialData | None = None,
          device: torch.device | None = None, state: dict | None = None,
          on_epoch_end: Callable[[int, dict, Callable[[], dict]], None] | None = None,
          measure: bool = True, export_dir: str | Path | None = None,
          on_progress: Callable[[int, int, int], None] | None = None) -> dict:
    """Train `variant` with `seed` under the paper's protocol.

    `state` is a checkpoint made by a previous call's `on_epoch_end(epoch, metrics, make_state)`; training
    resumes after its epoch. `on_progress(epoch, steps_done, steps_in_epoch)` hears from inside long epochs.
    Returns {"history": [per-epoch metrics], "final": {...}, "model": the trained model, "exported": {"onnx": path, "int8": path} or {}}. "final" has the latencies only when `measure`, and
    the deployment figures (orchestrator.training.export) only when also `export_dir` is given and cfg.export is onnx.
    """
    device = device or resolve_device(cfg.device)
    flush_denormal(cfg.flush_denormal)
    seed_everything(seed)
    d = trial_data or load_trial_data(cfg)
    trainer = build(cfg, variant, device)
    train_set = data.TrainSet(d.train_images, d.train_labels, augment=cfg.augment,
                              focus_classes=data.parse_focus_classes(cfg.focus_classes),
                              batch_size=cfg.batch_size, seed=seed, device=device)
    history, start_epoch = [], 1
    if state is not None:
        trainer.load(state)
        history, start_epoch = list(state["history"]), state["epoch"] + 1
    (step, first_step_is_setup), compile_seconds = training_step(cfg, trainer), 0.0

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        progress = None if on_progress is None else \
            (lambda steps, epoch=epoch: on_progress(epoch, steps, train_set.num_batches()))
        metrics = train_epoch(trainer, step, train_set.batches(epoch), device, progress)
        if first_step_is_setup and epoch == start_epoch:  # the first step compiled or captured; a step takes ms
            compile_seconds = metrics["first_step_seconds"]
        if not math.isfinite(metrics["train_loss"]):
            raise DivergedError(f"{trial_name(variant, seed)}: train_loss became {metrics['train_loss']} in "
                                f"epoch {epoch}")
        val_loss, val_accuracy = evaluate(trainer.model, d.val_images, d.val_labels, device, trainer.memory_format)
        lr = trainer.lr()  # the rate this epoch trained with
        trainer.scheduler.step(val_accuracy)
        metrics = {"train_loss": metrics["train_loss"], "train_accuracy": metrics["train_accuracy"],
                   "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": lr,
                   "epoch_seconds": time.perf_counter() - t0,
                   "train_images_per_second": metrics["train_images_per_second"]}
        history.append({"epoch": epoch, **metrics})
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics, lambda epoch=epoch: trainer.state(epoch, history))

    final = {**final_metrics(trainer.model, variant, history), "compile_seconds": compile_seconds}
    exported = {}
    if measure:
        measured, exported = measure_trained(cfg, trainer, d, device, seed, export_dir)
        final.update(measured)
    return {"history": history, "final": final, "model": trainer.model, "exported": exported}


def measure_trained(cfg: TrainConfig, trainer: Trainer, d: TrialData, device, seed: int,
                    export_dir: str | Path | None) -> tuple[dict, dict]:
    """The trained model's inference latency, and its deployment view (ONNX fp32 and int8 files, accuracy and
    latency) when an `export_dir` is given and cfg.export is onnx; returns (metrics, exported file paths)."""
    metrics = measure_latency(trainer.model, d.val_images, d.val_labels, device, batch1_calls=cfg.latency_batch1_calls,
                              memory_format=trainer.memory_format, flush_denormals=cfg.flush_denormal)
    if export_dir is None or cfg.export != "onnx":
        return metrics, {}
    from orchestrator.training.export import export_model  # onnx and onnxruntime load only when exporting
    exported_metrics, exported = export_model(trainer.model, train_images=d.train_images, val_images=d.val_images,
                                              val_labels=d.val_labels, seed=seed, out_dir=export_dir,
                                              calibration_images=cfg.export_calibration_images,
                                              batch1_calls=cfg.latency_batch1_calls)
    return {**metrics, **exported_metrics}, exported
