"""The plain route: the idiomatic PyTorch reference (tutorial loop, DataLoader, default Adam) the trainer is compared against."""
from __future__ import annotations

import time

import torch

from data.bench import plain_loader


def plain_epoch(model, images, labels, focus_classes, device, seed: int) -> float:
    """One epoch the way PyTorch's "Training a Classifier" tutorial writes it, with the paper's optimizer:
    a torchvision-CIFAR10-style dataset (PIL image per item, torchvision transforms; `data.bench.plain_loader`),
    DataLoader(batch_size=4, shuffle=True, num_workers=0: the trial has one core), contiguous tensors,
    torch.optim.Adam with its default implementation (for-loop on CPU, foreach on CUDA), the loss read with
    .item() each step. Nothing is slowed on purpose. Returns images/s."""
    torch.manual_seed(seed)
    loader = plain_loader(images, labels, focus_classes)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    model.train()
    running_loss, seen = 0.0, 0
    t0 = time.perf_counter()
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad()
        loss = criterion(model(inputs), targets)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        seen += len(targets)
    return seen / (time.perf_counter() - t0)
