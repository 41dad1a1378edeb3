"""Size and cost of a model, by the paper's definitions where it gives one."""
import io

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (all are learnable in this zoo)."""
    return sum(p.numel() for p in model.parameters())


def size_mb(model: nn.Module) -> float:
    """The paper's size: bytes of all parameters and buffers (BN running stats and counters too) / 2**20."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the state dict as torch.save writes it (what a checkpoint costs on disk)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def macs_per_image(model: nn.Module, image_size: int = 32) -> int:
    """Multiply-accumulates for one 3 x image_size x image_size image in eval mode, counted by PyTorch's
    FLOP counter (convs and linears; 1 MAC = 2 FLOPs). The model's train/eval mode is restored."""
    param = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
