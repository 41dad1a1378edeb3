"""Training one variant under the paper's protocol: `train_seeds` trains K seeds, fused into one stacked network
(orchestrator.training.fused) or, one seed per process, on its own (orchestrator.training.single); `train` is the
K = 1 case. The protocol itself (epochs, validation, scheduler, metrics, divergence, the end) is written once, in
orchestrator.training.protocol. No Ray, no MLflow: orchestrator.sweep.trainable wraps this in a Ray trial.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

import models
from orchestrator.training.adam import uses_fused_kernel
from orchestrator.training.config import TrainConfig
from orchestrator.training.device import flush_denormal, resolve_device
from orchestrator.training.fused import FusedSeeds
from orchestrator.training.protocol import (DivergedError, OnEpochEnd, TrialData, contiguous_only, finish,
                                            load_trial_data, run_epochs)
from orchestrator.training.single import SingleSeed


def make_trainer(cfg: TrainConfig, variant: str, seeds: list[int], d: TrialData, device: torch.device,
                 states: dict[int, dict] | None, fused: bool):
    if fused:
        return FusedSeeds(cfg, variant, seeds, d, device, states=states)
    if len(seeds) != 1:
        raise ValueError(f"unfused training takes one seed per process, got {seeds}: pass fused=True")
    return SingleSeed(cfg, variant, seeds[0], d, device, (states or {}).get(seeds[0]))


def train_seeds(cfg: TrainConfig, variant: str, seeds, *, fused: bool = False, trial_data: TrialData | None = None,
                device: torch.device | None = None, states: dict[int, dict] | None = None,
                on_epoch_end: OnEpochEnd | None = None,
                after_epoch: Callable[[int, dict[int, str]], None] | None = None,
                on_progress: Callable[[int, int, int], None] | None = None, measure: bool = True,
                export_dir: str | Path | None = None) -> dict[int, dict]:
    """Train `variant` with every seed of `seeds` under the paper's protocol; see protocol.run_epochs for the hooks
    and protocol.finish for what each seed's result holds. `states[seed]` is a checkpoint (of either trainer) to
    resume from, all after the same epoch."""
    device = device or resolve_device(cfg.device)
    flush_denormal(cfg.flush_denormal)
    d = trial_data or load_trial_data(cfg)
    trainer = make_trainer(cfg, variant, [int(s) for s in seeds], d, device, states, fused)
    run_epochs(cfg, variant, trainer, d, on_epoch_end=on_epoch_end, after_epoch=after_epoch, on_progress=on_progress)
    return finish(cfg, variant, trainer, d, measure=measure, export_dir=export_dir)


def train(cfg: TrainConfig, variant: str, seed: int, *, state: dict | None = None, **kwargs) -> dict:
    """One seed on its own: train_seeds' K = 1 case (`state`: its checkpoint); raises DivergedError when the
    seed's training loss becomes non-finite."""
    result = train_seeds(cfg, variant, [seed], states={seed: state} if state is not None else None, **kwargs)[seed]
    if result["diverged"]:
        raise DivergedError(result["reason"])
    return result


def speed_in_effect(cfg: TrainConfig, variant: str, device: torch.device, flushing: bool,
                    fused_seeds: list[int] | None = None) -> dict:
    """The speed options a trial really runs with, which may differ from those asked for: fused trials never
    compile, a CUDA graph replaces compiling, CUDA graphs and fused Adam need a device that has them, and V2/Alpha
    train contiguous on CPU unless fused (protocol.contiguous_only)."""
    fused = fused_seeds is not None
    graph = device.type == "cuda" and cfg.cuda_graph
    channels_last = cfg.channels_last and (fused or not contiguous_only(models.create_model(variant), device))
    return {"fused": fused, "fused_seeds": list(fused_seeds or []), "compile": cfg.compile and not fused and not graph,
            "cuda_graph": graph, "channels_last": channels_last, "fused_adam": uses_fused_kernel(cfg, device),
            "flush_denormal": flushing, "device": str(device)}
