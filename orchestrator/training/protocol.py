"""The paper's training protocol, written once: what a seed is built from, and what every epoch does.

A trainer (orchestrator.training.single: one seed; orchestrator.training.fused: K seeds as one stacked network)
only knows how to take training steps. Everything else is here, for both: the seed's model, Adam and
ReduceLROnPlateau (`make_seed`), the epoch's bookkeeping (`run_epochs`: divergence check, validation, scheduler
step on validation accuracy, the metrics and history entry, the checkpoint hook) and the end (`finish`: size,
cost, latency and the deployment view). No Ray, no MLflow.

A trainer has: `seeds` (list of `Seed`), `eval_format`, `setup_seconds` (the one-time cost of its first step:
compiling or capturing), `train_epoch(epoch, on_progress) -> EpochStats`, `sync_model(i)` (seed i's model with
its current weights), `freeze(i)` (stop training seed i), `after_schedulers()` and `make_state(i, epoch)`.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import data
import models
from orchestrator.training.adam import TorchAdam
from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import measure_latency
from orchestrator.training.loss import cross_entropy
from orchestrator.names import trial_name


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


# --- seeds and their RNG ----------------------------------------------------------------------------------------
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


def contiguous_only(model: torch.nn.Module, device: torch.device) -> bool:
    """oneDNN's CPU backward of a strided 1x1 conv with 2-7 input channels in channels_last corrupts the heap
    (torch 2.14: double free / SIGSEGV at the first backward). V2 and Alpha have one: the dense skip from the
    image. Such models train in the contiguous format on CPU: the same maths, a little slower."""
    return device.type == "cpu" and any(
        isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
        for m in model.modules())


@dataclass
class Seed:
    """One seed's own things: its model (validation, checkpoints, the result), the paper's Adam and
    ReduceLROnPlateau, the memory format it trains and validates in, its data order and history."""
    seed: int
    model: torch.nn.Module
    optimizer: TorchAdam
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    memory_format: torch.memory_format
    train_set: data.TrainSet | None = None
    history: list = field(default_factory=list)
    start_epoch: int = 1
    rng: dict | None = None  # the RNG state its checkpoints record; None: the process's live state
    reason: str | None = None  # why it diverged; None while it trains

    def lr(self) -> float:
        return self.optimizer.lr()


def build(cfg: TrainConfig, variant: str, device: torch.device, seed: int = 0, *, tensor_lr: bool = False) -> Seed:
    """A fresh model of `variant` on `device` (from the global RNG), with the paper's Adam and ReduceLROnPlateau."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = models.create_model(variant)
    if contiguous_only(model, device):
        memory_format = torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    optimizer = TorchAdam.build(model.parameters(), cfg, device, tensor_lr=tensor_lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.lr_factor,
                                                           patience=cfg.lr_patience, threshold=cfg.lr_threshold)
    return Seed(seed, model, optimizer, scheduler, memory_format)


def make_seed(cfg: TrainConfig, variant: str, seed: int, d: TrialData, device: torch.device,
              state: dict | None = None, *, tensor_lr: bool = False, live_rng: bool = True) -> Seed:
    """Seed `seed` as a trial builds it: its init, its data order, and its checkpoint `state` if resuming.
    `live_rng`: the process's RNG is this seed's (one seed per process), so a resumed seed sets it; otherwise the
    seed records it. Training draws nothing from the global RNGs (the data's come from (seed, epoch)), so either
    way a checkpoint holds the RNG state right after the model was built (or the one it resumed with)."""
    seed_everything(seed)
    s = build(cfg, variant, device, seed, tensor_lr=tensor_lr)
    s.train_set = data.TrainSet(d.train_images, d.train_labels, augment=cfg.augment,
                                focus_classes=data.parse_focus_classes(cfg.focus_classes),
                                batch_size=cfg.batch_size, seed=seed, device=device)
    s.rng = None if live_rng else rng_state()
    if state is not None:
        load_state(s, state)
        if live_rng:
            set_rng_state(state["rng"])
        else:
            s.rng = state["rng"]
    return s


def load_state(s: Seed, state: dict) -> None:
    """Resume seed `s` from a `snapshot` of either trainer: weights, Adam, scheduler, history (the RNG is the
    caller's: `make_seed` sets or records it)."""
    s.model.load_state_dict(state["model"])
    s.optimizer.load_seed_state(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    s.history, s.start_epoch = list(state["history"]), state["epoch"] + 1


def snapshot(epoch: int, s: Seed, optimizer_state: dict) -> dict:
    """The checkpoint of seed `s` after `epoch`: a deep copy, not live references (training goes on mutating the
    tensors in place). Fused or not, a checkpoint holds a normal model's state dict and a normal Adam's."""
    return copy.deepcopy({"epoch": epoch, "model": s.model.state_dict(), "optimizer": optimizer_state,
                          "scheduler": s.scheduler.state_dict(), "rng": s.rng if s.rng is not None else rng_state(),
                          "history": s.history})


# --- an epoch -----------------------------------------------------------------------------------------------------
@dataclass
class EpochStats:
    """What a trainer's epoch measured: per seed the summed train loss and correct predictions, the images each
    seed saw, and the seconds the training steps took."""
    loss_sums: list[float]
    corrects: list[int]
    seen: int
    seconds: float


def eval_batch_size(device: torch.device) -> int:
    """Validation batch size: 500 keeps a CPU's working set in cache; a GPU wants few, large launches (2,000 images
    of these nets need well under 1 GB). Evaluation is in eval mode, so the batch size changes no result beyond
    the order of float sums."""
    return 2000 if torch.device(device).type == "cuda" else 500


@torch.no_grad()
def evaluate(model, images, labels, device, memory_format, batch_size: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole (never augmented) validation set."""
    batch_size = batch_size or eval_batch_size(device)
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in data.eval_batches(images, labels, batch_size, device):
        out = model(x.contiguous(memory_format=memory_format))
        loss_sum += cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    n = len(labels)
    return loss_sum / n, correct / n


PROGRESS_EVERY_STEPS = 500  # how often a long epoch tells `on_progress` where it is (a few seconds apart)


def step_through(step, batches, k: int, device: torch.device,
                 on_progress: Callable[[int], None] | None = None) -> tuple[EpochStats, float]:
    """One pass of a trainer's `step(x, y) -> (losses [K], hits [K])` over an epoch's batches, accumulated on the
    device (a .item() per step would force a sync on GPUs) and read once at the end; also the seconds of the first
    step (which includes compiling or capturing it). `on_progress(steps)` every PROGRESS_EVERY_STEPS steps."""
    loss_sum = torch.zeros(k, device=device)
    correct = torch.zeros(k, dtype=torch.long, device=device)
    seen, first_step_seconds, t0 = 0, 0.0, time.perf_counter()
    for steps, (x, y) in enumerate(batches, start=1):
        if len(y) < 2:  # a 1-image remainder batch: the FC head's BatchNorm1d cannot train on it
            continue
        losses, hits = step(x, y)
        if not seen:
            first_step_seconds = time.perf_counter() - t0
        if on_progress is not None and steps % PROGRESS_EVERY_STEPS == 0:
            on_progress(steps)
        loss_sum += losses * len(y)
        correct += hits
        seen += len(y)
    return EpochStats(loss_sum.tolist(), correct.tolist(), seen, time.perf_counter() - t0), first_step_seconds


OnEpochEnd = Callable[[int, int, dict, Callable[[], dict]], None]  # (seed, epoch, metrics, make_state)


def run_epochs(cfg: TrainConfig, variant: str, trainer, d: TrialData, *, on_epoch_end: OnEpochEnd | None = None,
               after_epoch: Callable[[int, dict[int, str]], None] | None = None,
               on_progress: Callable[[int, int, int], None] | None = None) -> None:
    """Every epoch of the protocol for every seed still training: train, then per seed the divergence check,
    validation on its own model and its scheduler's step on validation accuracy; then per seed that finished
    the epoch its metrics, history entry and `on_epoch_end(seed, epoch, metrics, make_state)`, and once
    `after_epoch(epoch, {seed: reason} of every seed diverged so far)`. `on_progress(epoch, steps, steps_in_epoch)`
    hears from inside long epochs."""
    for epoch in range(trainer.start_epoch, cfg.epochs + 1):
        if all(s.reason is not None for s in trainer.seeds):
            break
        t0 = time.perf_counter()
        progress = None if on_progress is None else (
            lambda steps, epoch=epoch: on_progress(epoch, steps, trainer.seeds[0].train_set.num_batches()))
        stats = trainer.train_epoch(epoch, progress)
        done = []
        for i, s in enumerate(trainer.seeds):
            if s.reason is not None:
                continue
            train_loss = stats.loss_sums[i] / stats.seen
            if not math.isfinite(train_loss):  # deterministic: this seed stops, with the reason; the others go on
                s.reason = f"{trial_name(variant, s.seed)}: train_loss became {train_loss} in epoch {epoch}"
                trainer.freeze(i)
                continue
            val_loss, val_accuracy = evaluate(trainer.sync_model(i), d.val_images, d.val_labels, trainer.device,
                                              trainer.eval_format)
            lr = s.lr()  # the rate this epoch trained with
            s.scheduler.step(val_accuracy)
            done.append((i, {"train_loss": train_loss, "train_accuracy": stats.corrects[i] / stats.seen,
                             "val_loss": val_loss, "val_accuracy": val_accuracy, "lr": lr}))
        trainer.after_schedulers()
        epoch_seconds = time.perf_counter() - t0
        for i, metrics in done:
            s = trainer.seeds[i]
            metrics.update(epoch_seconds=epoch_seconds, train_images_per_second=stats.seen / stats.seconds)
            s.history.append({"epoch": epoch, **metrics})
            if on_epoch_end is not None:
                on_epoch_end(s.seed, epoch, metrics, lambda i=i, epoch=epoch: trainer.make_state(i, epoch))
        if after_epoch is not None:
            after_epoch(epoch, {s.seed: s.reason for s in trainer.seeds if s.reason is not None})


# --- the end ------------------------------------------------------------------------------------------------------
def final_metrics(model: torch.nn.Module, variant: str, history: list[dict]) -> dict:
    """Size and cost of the trained model (the paper's Table 2 columns) and its accuracies."""
    return {"param_count": models.count_parameters(model), "size_mb": models.size_mb(model),
            "state_dict_bytes": models.state_dict_bytes(model),
            "macs_per_image": models.macs_per_image(models.create_model(variant)),
            "final_val_accuracy": history[-1]["val_accuracy"],
            "best_val_accuracy": max(h["val_accuracy"] for h in history)}


def finish(cfg: TrainConfig, variant: str, trainer, d: TrialData, *, measure: bool = True,
           export_dir: str | Path | None = None) -> dict[int, dict]:
    """{seed: {"history", "final", "model", "diverged", "reason", "exported"}} for every seed of `trainer`.
    "final" (None for a diverged seed) has the latencies only when `measure`, and the deployment view only when
    also `export_dir` is given and cfg.export is onnx: its files then are export_dir/seed<k>/model{,.int8}.onnx,
    listed in "exported"."""
    results = {}
    for i, s in enumerate(trainer.seeds):
        final, exported = None, {}
        if s.reason is None and s.history:
            model = trainer.sync_model(i)
            final = {**final_metrics(model, variant, s.history), "compile_seconds": trainer.setup_seconds}
            if measure:
                final.update(measure_latency(model, d.val_images, d.val_labels, trainer.device,
                                             batch1_calls=cfg.latency_batch1_calls, memory_format=trainer.eval_format,
                                             flush_denormals=cfg.flush_denormal))
            if measure and export_dir is not None and cfg.export == "onnx":
                from orchestrator.training.export import export_model  # onnx and onnxruntime load only here
                metrics, exported = export_model(model, train_images=d.train_images, val_images=d.val_images,
                                                 val_labels=d.val_labels, seed=s.seed,
                                                 out_dir=Path(export_dir) / f"seed{s.seed}",
                                                 calibration_images=cfg.export_calibration_images,
                                                 batch1_calls=cfg.latency_batch1_calls)
                final.update(metrics)
        results[s.seed] = {"history": s.history, "final": final, "model": s.model, "diverged": s.reason is not None,
                           "reason": s.reason, "exported": exported}
    return results
