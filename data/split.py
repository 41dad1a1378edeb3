"""A fixed, stratified held-out slice of the training set: what an architecture search ranks candidates on, so
that the CIFAR-10 test set stays unseen until the winners are re-validated."""
from __future__ import annotations

import torch

from .cifar import CLASSES


def stratified_split(images: torch.Tensor, labels: torch.Tensor, holdout_per_class: int, seed: int = 0):
    """(train_x, train_y, holdout_x, holdout_y): `holdout_per_class` images of every class (chosen by `seed`) held
    out, every other image kept for training. The two parts are disjoint, both keep the original order, and the
    same (data, holdout_per_class, seed) always gives the same split. A pure function: nothing is read or cached."""
    if holdout_per_class < 1:
        raise ValueError(f"holdout_per_class must be >= 1, got {holdout_per_class}")
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in range(len(CLASSES)):
        idx = (labels == c).nonzero().flatten()
        if len(idx) <= holdout_per_class:  # at least one image of the class must be left to train on
            raise ValueError(f"holding out {holdout_per_class} per class: class {c} ({CLASSES[c]}) has only "
                             f"{len(idx)} images; hold out fewer")
        held.append(idx[torch.randperm(len(idx), generator=g)[:holdout_per_class].to(idx.device)])
    is_held = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    is_held[torch.cat(held)] = True
    return images[~is_held], labels[~is_held], images[is_held], labels[is_held]
