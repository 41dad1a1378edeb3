"""The stacked network of fused seeds: K models of one variant as ONE module tree, run with
`torch.func.functional_call` on the K models' parameters and buffers stacked into [K, ...] tensors
(`torch.func.stack_module_state`).

Every Conv2d becomes a grouped conv over seed-major channels ([B, K*C, H, W]: seed k owns channels k*C..k*C+C-1),
every BatchNorm a BatchNorm over K*C channels (per-channel batch statistics are per-seed statistics), every Linear
a batched matmul ([B, K, F]), and the Fire block's concat is kept per seed. This is what `torch.func.vmap`'s conv
rule produces too (the tests compare against vmap), but vmap's batch-norm rule applies the affine weights as extra
ops on permuted [K, C, B, H, W] views: measured (CPU time of forward+backward, one thread, K=5, base/v3/v5/v6),
eager vmap ran at 0.8-1.05x the speed of K unfused steps, this explicit template at 1.2-1.8x.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from models.blocks import BottleneckResBlock, DepthwiseResBlock, FireResBlock, ResBlock, SkipConn2d
from models.variants import BlockNet, FCHead, GAPHead
from orchestrator.training.loss import cross_entropy


def _placeholders(stacked: nn.Module, module: nn.Module, k: int) -> None:
    """Give `stacked` the parameters and buffers of `module`, same names, [k, ...] shapes, on the meta device:
    functional_call swaps the real stacked tensors in by name."""
    for name, p in module._parameters.items():
        stacked.register_parameter(name, None if p is None else
                                   nn.Parameter(torch.empty((k, *p.shape), device="meta")))
    for name, b in module._buffers.items():
        stacked.register_buffer(name, None if b is None else torch.empty((k, *b.shape), dtype=b.dtype, device="meta"))


class StackedConv2d(nn.Module):
    """K Conv2d of one shape as one grouped conv on seed-major channels."""

    def __init__(self, conv: nn.Conv2d, k: int):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("fused seeds stack only zero-padded convs with numeric padding")
        self.k, self.out_channels, self.groups = k, conv.out_channels, conv.groups
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        # oneDNN's channels_last backward of a strided 1x1 conv with few input channels corrupts the heap (see
        # single.contiguous_only): V2/Alpha's skip from the image. Subsampled first, the conv has
        # stride 1, so the stacked network of every variant trains in channels_last.
        self.subsample = conv.kernel_size == (1, 1) and conv.stride != (1, 1) and tuple(conv.padding) == (0, 0)
        _placeholders(self, conv, k)

    @staticmethod
    def arrange(name: str, t: torch.Tensor, memory_format) -> torch.Tensor:
        """The stacked weight's memory layout: each seed's weight channels_last when training in channels_last,
        so the grouped weight is a channels_last view (no copy) and its gradient comes back in that layout."""
        if name == "weight" and memory_format == torch.channels_last:
            return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return t.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.reshape(self.k * self.out_channels, *self.weight.shape[2:])
        bias = None if self.bias is None else self.bias.reshape(-1)
        stride = self.stride
        if self.subsample:  # a strided 1x1 conv is a 1x1 conv of the subsampled input
            x, stride = x[:, :, ::stride[0], ::stride[1]], (1, 1)
        return F.conv2d(x, weight, bias, stride, self.padding, self.dilation, self.groups * self.k)


class StackedBatchNorm(nn.Module):
    """K BatchNorm1d/2d as one over K*C channels: per-channel batch statistics are per-seed statistics, and the
    running stats update in place through views of the [K, C] buffers."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, k: int):
        super().__init__()
        if bn.momentum is None or not bn.track_running_stats or not bn.affine:
            raise ValueError("fused seeds stack only affine BatchNorm with running stats and a momentum")
        self.k, self.momentum, self.eps, self.features_last = k, bn.momentum, bn.eps, isinstance(bn, nn.BatchNorm1d)
        _placeholders(self, bn, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        flat = x.flatten(1, 2) if self.features_last else x  # BatchNorm1d sees [B, K, F] from StackedLinear
        y = F.batch_norm(flat, self.running_mean.view(-1), self.running_var.view(-1), self.weight.reshape(-1),
                         self.bias.reshape(-1), self.training, self.momentum, self.eps)
        return y.view(x.shape)


class StackedLinear(nn.Module):
    """K Linear as one batched matmul: [B, K, F] -> [B, K, O], as x @ W^T with W stored transposed (`arrange`):
    W^T is then a contiguous [K, F, O] and the weight gradient comes back in W's layout."""

    def __init__(self, linear: nn.Linear, k: int):
        super().__init__()
        _placeholders(self, linear, k)

    @staticmethod
    def arrange(name: str, t: torch.Tensor, memory_format) -> torch.Tensor:
        return t.transpose(1, 2).contiguous().transpose(1, 2) if name == "weight" else t.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt, wt = x.transpose(0, 1), self.weight.transpose(1, 2)  # [K, B, F], [K, F, O]
        out = torch.bmm(xt, wt) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xt, wt)
        return out.transpose(0, 1)


class StackedFlatten(nn.Module):
    """Flatten each seed's channels: [B, K*C, H, W] -> [B, K, C*H*W] (each seed's features in C, H, W order)."""

    def __init__(self, flatten: nn.Flatten, k: int):
        super().__init__()
        if (flatten.start_dim, flatten.end_dim) != (1, -1):
            raise ValueError("fused seeds stack only Flatten(start_dim=1, end_dim=-1)")
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.k, -1)


def cat_channels(parts: list[torch.Tensor], k: int) -> torch.Tensor:
    """torch.cat(parts, dim=1) of K stacked models: seed k's channels of every part, then seed k+1's."""
    b, _, h, w = parts[0].shape
    if not parts[0].is_contiguous() and parts[0].is_contiguous(memory_format=torch.channels_last):
        nhwc = [p.permute(0, 2, 3, 1).reshape(b, h, w, k, -1) for p in parts]  # stays channels_last
        return torch.cat(nhwc, dim=4).reshape(b, h, w, -1).permute(0, 3, 1, 2)
    return torch.cat([p.reshape(b, k, -1, h, w) for p in parts], dim=2).reshape(b, -1, h, w)


class StackedFireResBlock(FireResBlock):
    """FireResBlock whose expand concat keeps each seed's channels together."""
    k: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        return cat_channels([self.expand1x1(s), self.expand3x3(s)], self.k) + self.shortcut(x)


_STACKED_LEAVES = {nn.Conv2d: StackedConv2d, nn.BatchNorm2d: StackedBatchNorm, nn.BatchNorm1d: StackedBatchNorm,
                   nn.Linear: StackedLinear, nn.Flatten: StackedFlatten}
_STACKED_BLOCKS = {FireResBlock: StackedFireResBlock}
# Modules whose forward only composes their children with per-channel ops (ReLU, +, max/average pooling): right as
# they are on seed-major channels. Exact types: a subclass may add an op that mixes channels.
_PER_CHANNEL = (nn.Sequential, nn.ModuleList, nn.ReLU, nn.Identity, nn.AdaptiveAvgPool2d, nn.MaxPool2d,
                ResBlock, DepthwiseResBlock, BottleneckResBlock, SkipConn2d, BlockNet, FCHead, GAPHead)


def stacked_template(model: nn.Module, k: int) -> nn.Module:
    """A meta-device copy of `model` that runs K stacked copies of it: functional_call it with the tensors of
    stack_module_state; input [B, K*3, H, W] (seed-major channels), output [B, K, classes]. Train mode."""
    template = copy.deepcopy(model).to("meta")
    _stack_children(template, k)
    return template.train()


def _stack_children(module: nn.Module, k: int) -> None:
    for name, child in module.named_children():
        kind = type(child)
        if kind in _STACKED_LEAVES:
            setattr(module, name, _STACKED_LEAVES[kind](child, k))
        elif kind in _STACKED_BLOCKS or kind in _PER_CHANNEL:
            _stack_children(child, k)
            if kind in _STACKED_BLOCKS:
                child.__class__, child.k = _STACKED_BLOCKS[kind], k
        else:
            raise ValueError(f"fused seeds cannot stack a {kind.__name__}: add a stacked version of it to "
                             f"orchestrator/training/stacked.py, or train this variant unfused")


def arrange(template: nn.Module, name: str, t: torch.Tensor, memory_format) -> torch.Tensor:
    """A stacked tensor in the memory layout its stacked module wants (contiguous unless it says otherwise)."""
    owner, _, leaf = name.rpartition(".")
    arrange = getattr(template.get_submodule(owner), "arrange", None)
    return arrange(leaf, t, memory_format) if arrange else t.contiguous()


def stacked_loss(template: nn.Module, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor):
    """Each seed's mean cross-entropy [K] and the logits [B, K, classes]; x [B, K*3, H, W], y [B, K]."""
    out = functional_call(template, (params, buffers), (x,))
    b, k, c = out.shape
    losses = cross_entropy(out.reshape(b * k, c), y.reshape(b * k), reduction="none").view(b, k).mean(0)
    return losses, out
