"""The paper's training protocol for one (variant, seed), as a plain function: no Ray, no MLflow.

The Ray trainable (orchestrator.trainable) wraps it: it passes a checkpoint `state` to resume from and an
`on_epoch_end` callback that persists the checkpoint and logs the epoch.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

import data
import models
from orchestrator.config import Config
from orchestrator.latency import flush_denormal, measure_latency

# What `train` reports, hence what every trial logs to MLflow: per epoch (step = epoch), and once at the end
# (step 0; the latencies only when measured). Tests and scripts/load_check.py check runs against these names.
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds",
                 "train_images_per_second")
FINAL_METRICS = ("param_count", "size_mb", "state_dict_bytes", "macs_per_image", "final_val_accuracy",
                 "best_val_accuracy", "latency_ms_per_image", "latency_ms_batch1")


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; retrying the same seed would diverge again."""


@dataclass
class TrialData:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor


def load_trial_data(cfg: Config) -> TrialData:
    root = data.resolve_data_dir(cfg.data_dir or None)
    train_x, train_y = data.load_cifar10(root, "train")
    val_x, val_y = data.load_cifar10(root, "test")
    if cfg.subset_per_class:
        # Same subset for every seed: the subset is part of the experiment, not of the noise.
        train_x, train_y = data.stratified_subset(train_x, train_y, cfg.subset_per_class, seed=0)
    return TrialData(train_x, train_y, val_x, val_y)


def pick_device(want_gpu: bool = True) -> torch.device:
    return torch.device("cuda") if want_gpu and torch.cuda.is_available() else torch.device("cpu")


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


@torch.no_grad()
def evaluate(model, images, labels, device, memory_format, batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the whole (never augmented) validation set."""
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


def build(cfg: Config, variant: str, device: torch.device):
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = models.create_model(variant)
    if _hits_onednn_strided_1x1_bug(model, device):
        memory_format = torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    fused = cfg.fused_adam and (device.type in ("cpu", "cuda"))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                           weight_decay=cfg.weight_decay, fused=fused or None)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.lr_factor,
                                                       patience=cfg.lr_patience, threshold=cfg.lr_threshold)
    return model, opt, sched, memory_format


def train(cfg: Config, variant: str, seed: int, *, trial_data: TrialData | None = None,
          device: torch.device | None = None, state: dict | None = None,
          on_epoch_end: Callable[[int, dict, Callable[[], dict]], None] | None = None,
          measure: bool = True) -> dict:
    """Train `variant` with `seed` under the paper's protocol; return per-epoch history and final metrics.

    `state` is a checkpoint made by a previous call's `on_epoch_end(epoch, metrics, make_state)`;
    training resumes after its epoch. Returns {"history": [per-epoch metrics], "final": {...}}.
    """
    cfg = cfg.effective()
    device = device or pick_device()
    flush_denormal(cfg.flush_denormal)
    seed_everything(seed)
    d = trial_data or load_trial_data(cfg)
    model, opt, sched, memory_format = build(cfg, variant, device)
    train_set = data.TrainSet(d.train_images, d.train_labels, augment=cfg.augment,
                              focus_classes=data.parse_focus_classes(cfg.focus_classes),
                              batch_size=cfg.batch_size, seed=seed, device=device)
    history, start_epoch = [], 1
    if state is not None:
        history, start_epoch = restore(state, model, opt, sched)
        set_rng_state(state["rng"])
    step = torch.compile(model) if cfg.compile else model

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        for x, y in train_set.batches(epoch):
            if len(y) < 2:  # a 1-image remainder batch: the FC head's BatchNorm1d cannot train on it
                continue
            out = step(x.contiguous(memory_format=memory_format))
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Accumulate on-device: a .item() per step would force a sync on GPUs.
            loss_sum += loss.detach() * len(y)
            correct += (out.argmax(1) == y).sum()
            seen += len(y)
        train_seconds = time.perf_counter() - t0
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise DivergedError(f"{variant}-seed{seed}: train_loss became {train_loss} in epoch {epoch}")
        val_loss, val_accuracy = evaluate(model, d.val_images, d.val_labels, device, memory_format)
        lr = opt.param_groups[0]["lr"]  # the rate this epoch trained with
        sched.step(val_accuracy)
        metrics = {"train_loss": train_loss, "train_accuracy": correct.item() / seen, "val_loss": val_loss,
                   "val_accuracy": val_accuracy, "lr": lr, "epoch_seconds": time.perf_counter() - t0,
                   "train_images_per_second": seen / train_seconds}
        history.append({"epoch": epoch, **metrics})
        if on_epoch_end is not None:
            def make_state(epoch=epoch):
                return snapshot(epoch, model, opt, sched, rng_state(), history)
            on_epoch_end(epoch, metrics, make_state)

    final = final_metrics(cfg, variant, model, history, d, device, memory_format, measure)
    return {"history": history, "final": final, "model": model}


def snapshot(epoch: int, model, opt, sched, rng: dict, history: list) -> dict:
    """The checkpoint of one trial after `epoch`: a deep copy, not live references (training goes on mutating
    the tensors in place). `restore` reads it back; a fused-seeds run (orchestrator.fused) makes the same."""
    return copy.deepcopy({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": sched.state_dict(), "rng": rng, "history": history})


def restore(state: dict, model, opt, sched) -> tuple[list, int]:
    """Load a `snapshot` into model, optimizer and scheduler; return (history so far, the epoch to start at).
    The RNG state is the caller's: `train` sets it, fused seeds keep one per seed."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return list(state["history"]), state["epoch"] + 1


def final_metrics(cfg: Config, variant: str, model, history: list, d: TrialData, device, memory_format,
                  measure: bool) -> dict:
    """What a finished trial reports once (FINAL_METRICS; the latencies only when `measure`)."""
    final = {"param_count": models.count_parameters(model), "size_mb": models.size_mb(model),
             "state_dict_bytes": models.state_dict_bytes(model),
             "macs_per_image": models.macs_per_image(models.create_model(variant)),
             "final_val_accuracy": history[-1]["val_accuracy"],
             "best_val_accuracy": max(h["val_accuracy"] for h in history)}
    if measure:
        final.update(measure_latency(model, d.val_images, d.val_labels, device, batch1_calls=cfg.latency_batch1_calls,
                                     memory_format=memory_format, flush_denormals=cfg.flush_denormal))
    return final
