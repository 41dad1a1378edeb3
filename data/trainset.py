"""The paper's training set as in-memory tensors, airbench style.

Each epoch: draw every random choice from one torch.Generator seeded from (seed, epoch), augment all the
epoch's copies in one batched pass, then yield batches as slices of a per-epoch permutation, normalized in
large chunks. The per-batch work is a tensor slice, so a batch-size-4 training step never waits on data.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from .augment import byte_rows, augment, sample_params
from .cifar import CLASSES

MODES = ("focused", "none", "inplace", "all")
DEFAULT_FOCUS = (2, 3, 4, 5)  # bird, cat, deer, dog (the paper's text)
CHUNK_IMAGES = 1024  # images gathered and normalized at once: amortizes op overhead, stays in cache


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [..,3,H,W] -> float32 with mean 0.5 and std 0.5 per channel, i.e. (x/255 - 0.5) / 0.5."""
    return batch.float().div_(127.5).sub_(1.0)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for (seed, epoch); SeedSequence mixes the pair so nearby seeds/epochs are unrelated."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


class TrainSet:
    """CIFAR-10 training images in memory, re-augmented every epoch.

    augment:
      "focused"  (default, the paper) the originals plus one augmented copy of every focus-class image:
                 50,000 + 20,000 = 70,000 samples per epoch for the full set and four focus classes.
      "none"     the originals only.
      "inplace"  the focus-class images are replaced by augmented versions; no extra copies.
                 WARNING: this turns augmentation into a label cue (only focus-class images ever look
                 rotated/jittered, so looking augmented predicts the label); we measured Base ending near
                 61% validation accuracy instead of the low 70s. Use it only to study that effect.
      "all"      every image replaced by an augmented version (standard augmentation).
    focus_classes: label indices (see parse_focus_classes); the paper's text names bird, cat, deer, dog.
    `epoch_labels` holds every epoch's labels in storage order (originals, then the copies); it never changes.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: str = "focused",
                 focus_classes=DEFAULT_FOCUS, batch_size: int = 4, seed: int = 0, device="cpu"):
        if augment not in MODES:
            raise ValueError(f"unknown augment mode {augment!r}; choose one of {', '.join(MODES)}")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must be [N] with N={len(images)}, got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        focus = tuple(int(c) for c in focus_classes)
        if not focus or any(not 0 <= c < len(CLASSES) for c in focus):
            raise ValueError(f"focus_classes must be label indices 0-9, got {focus_classes!r}")
        self.mode, self.focus_classes, self.batch_size, self.seed = augment, focus, batch_size, seed
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()  # the originals; never written to
        self.labels = labels.to(self.device, torch.int64)
        n = len(self.images)
        if augment in ("focused", "inplace"):
            self._augmented = torch.isin(self.labels, torch.tensor(focus, device=self.device)).nonzero().flatten()
        elif augment == "all":
            self._augmented = torch.arange(n, device=self.device)
        else:
            self._augmented = torch.arange(0, device=self.device)
        if augment == "focused":  # originals first, then a slot per copy, rewritten every epoch
            self._epoch_images = torch.cat([self.images, self.images[self._augmented]])
            self.epoch_labels = torch.cat([self.labels, self.labels[self._augmented]])
            self._targets = torch.arange(n, n + len(self._augmented), device=self.device)
        elif augment in ("inplace", "all"):
            self._epoch_images, self.epoch_labels = self.images.clone(), self.labels
            self._targets = self._augmented
        else:
            self._epoch_images, self.epoch_labels = self.images, self.labels
            self._targets = self._augmented

    def num_samples(self, epoch: int = 0) -> int:
        """Samples per epoch (the same every epoch)."""
        return len(self.epoch_labels)

    def num_batches(self) -> int:
        return math.ceil(self.num_samples() / self.batch_size)  # last batch may be short, like a DataLoader

    def _build(self, generator: torch.Generator) -> None:
        if len(self._augmented):
            params = sample_params(len(self._augmented), generator)
            self._epoch_images[self._targets] = augment(self.images[self._augmented], params)

    def epoch_data(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's uint8 images and labels in storage order (originals first); a buffer reused per epoch."""
        self._build(epoch_generator(self.seed, epoch))
        return self._epoch_images, self.epoch_labels

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled (x float32 normalized [B,3,32,32], y int64 [B]) for this epoch; same (seed, epoch) -> same."""
        g = epoch_generator(self.seed, epoch)
        self._build(g)
        perm = torch.randperm(self.num_samples(), generator=g).to(self.device)
        yield from _chunked(self._epoch_images, self.epoch_labels, perm, self.batch_size)


def _chunked(images, labels, order, batch_size):
    chunk = batch_size * max(1, CHUNK_IMAGES // batch_size)
    rows, shape = byte_rows(images), images.shape[1:]
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        xs = normalize(rows.index_select(0, idx).view(torch.uint8).view(-1, *shape))
        ys = labels[idx]
        for b in range(0, len(idx), batch_size):
            yield xs[b:b + batch_size], ys[b:b + batch_size]


def eval_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device="cpu"):
    """Validation batches in order: normalized, never augmented."""
    device = torch.device(device)
    chunk = batch_size * max(1, CHUNK_IMAGES // batch_size)
    for start in range(0, len(images), chunk):
        xs = normalize(images[start:start + chunk].to(device))
        ys = labels[start:start + chunk].to(device, torch.int64)
        for b in range(0, len(xs), batch_size):
            yield xs[b:b + batch_size], ys[b:b + batch_size]
