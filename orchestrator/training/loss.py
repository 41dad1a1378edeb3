"""The paper's loss, written once: every trainer, the stacked network and validation call it."""
import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits [N, classes] against integer labels [N]."""
    return F.cross_entropy(logits, labels, reduction=reduction)
