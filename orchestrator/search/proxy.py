"""The proxy protocol a search ranks candidates with: the paper's optimizer and augmentation (TrainConfig's
defaults) on a stratified subset of the training set for a few epochs, evaluated on a fixed, stratified held-out
slice of the training set. The test set is never read: it re-validates the winners. The one module of the search
that imports the trainer."""
from __future__ import annotations

import functools

import torch

import data
import models
from models.spec import NetSpec
from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import measure_latency
from orchestrator.training.protocol import DivergedError, TrialData  # DivergedError: the trainable's, through here
from orchestrator.training.train import train

SPLIT_SEED = 0  # the held-out slice and the training subset are part of the search's definition, not its noise
LATENCY_IMAGES = 256  # held-out images timed for latency_ms_per_image: enough for a stable mean, in well under 1 s


@functools.lru_cache(maxsize=2)  # a Ray worker trains many candidates on the same data (reuse_actors)
def proxy_data(data_dir: str, holdout_per_class: int, proxy_per_class: int) -> TrialData:
    """The proxy's data: the training split only, less a fixed stratified held-out slice (the validation set
    every candidate is ranked on), then `proxy_per_class` images per class of the rest (0: all of it)."""
    images, labels = data.load_cifar10(data.resolve_data_dir(data_dir or None), "train")
    train_x, train_y, held_x, held_y = data.stratified_split(images, labels, holdout_per_class, seed=SPLIT_SEED)
    if proxy_per_class:
        train_x, train_y = data.stratified_subset(train_x, train_y, proxy_per_class, seed=SPLIT_SEED)
    return TrialData(train_x, train_y, held_x, held_y)


def heldout_metrics(metrics: dict) -> dict:
    """A proxy epoch's metrics with val_* renamed heldout_*: the search's validation set is the held-out slice of
    the training set, and its logs say so."""
    return {k.replace("val_", "heldout_", 1) if k.startswith("val_") else k: v for k, v in metrics.items()}


def train_proxy(spec: NetSpec, settings: dict, data_dir: str, seed: int, trial_data: TrialData, on_epoch_end,
                device: torch.device) -> dict:
    """Train `spec` under the proxy (`settings`: Search.proxy()), `on_epoch_end(seed, epoch, metrics, make_state)`
    after each epoch: the paper's protocol (optimizer, schedule, focused augmentation) but for the proxy's epochs,
    uncompiled (a compile costs 10-60 s per architecture, more than a short proxy saves) and without export. It
    trains as model `cand-<spec hash>`, registered in this process (a Ray worker) once: a reused worker or a second
    candidate of the same shape finds it registered."""
    cfg = TrainConfig(epochs=settings["epochs"], batch_size=settings["batch_size"], data_dir=data_dir, compile=False,
                      export="none", latency_batch1_calls=settings["latency_calls"])
    name = f"cand-{models.spec_hash(spec)}"
    models.register_spec(name, spec)  # a no-op for the same spec; another one (a 64-bit collision) is refused
    return train(cfg, name, seed, trial_data=trial_data, device=device, on_epoch_end=on_epoch_end, measure=False)


def candidate_latency(spec: NetSpec, trial_data: TrialData, device: torch.device, calls: int) -> dict:
    """latency_ms_per_image and latency_ms_batch1 of a freshly built candidate (latency depends on the shape, not
    the weights; measured before training, so a candidate ASHA stops early has one too)."""
    model = models.build(spec).to(device)
    images, labels = trial_data.val_images[:LATENCY_IMAGES], trial_data.val_labels[:LATENCY_IMAGES]
    return measure_latency(model, images, labels, device, batch1_calls=calls, warmup_calls=min(20, calls))
