"""The eight variants of the paper (Tables 1-4), each declared once in the registry.

All of them are one network shape: blocks in sequence, each followed by ReLU and (for some) a 2x2 max
pool, then a head. V2 and Alpha add dense skips: SkipConn2d projections from what an earlier stage passed
on, added to a block's output before its ReLU, with stride 1, 2 or 4 to match the receiving resolution.
"""
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BottleneckResBlock, DepthwiseResBlock, FireResBlock, ResBlock, SkipConn2d
from .registry import register_model

IMAGE_CHANNELS = 3
NUM_CLASSES = 10


class FCHead(nn.Sequential):
    """Table 1's head: flatten -> Linear(in, 100) -> BatchNorm1d -> ReLU -> Linear(100, 10)."""

    def __init__(self, in_features: int, hidden: int = 100):
        super().__init__(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES),
        )


class GAPHead(nn.Sequential):
    """Table 3's head: global average pool over the feature map -> Linear(channels, 10)."""

    def __init__(self, channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, NUM_CLASSES))


class BlockNet(nn.Module):
    """Blocks 1..n in sequence, each followed by ReLU, then a 2x2 max pool for those in `pool_after`.

    `dense_from[k]` lists the stages whose output is projected into block k (before its ReLU): stage 0 is
    the input image, stage j >= 1 is what block j passed on (after its ReLU and pool). The projection's
    stride is 2 ** (number of pools between that stage and block k's input), fixed at construction, so
    the forward pass has no shape-dependent Python (channels_last and torch.compile friendly).
    """

    def __init__(self, blocks: Sequence[nn.Module], pool_after: Sequence[int], head: nn.Module,
                 dense_from: Mapping[int, Sequence[int]] | None = None):
        super().__init__()
        n = len(blocks)
        dense_from = dict(dense_from or {})
        if not set(pool_after) <= set(range(1, n + 1)) or not set(dense_from) <= set(range(2, n + 1)):
            raise ValueError(f"pool_after and dense_from must name blocks 1..{n}")
        self.blocks = nn.ModuleList(blocks)
        self.pool_after = tuple(k in set(pool_after) for k in range(1, n + 1))
        self.dense_from = tuple(tuple(dense_from.get(k, ())) for k in range(1, n + 1))
        stage_channels = [IMAGE_CHANNELS] + [b.out_channels for b in blocks]
        self.skips = nn.ModuleList()
        for k, sources in enumerate(self.dense_from, start=1):
            if any(not 0 <= j < k - 1 for j in sources):
                raise ValueError(f"block {k} can take dense skips only from stages 0..{k - 2}, got {sources}")
            self.skips.append(nn.ModuleList(
                SkipConn2d(stage_channels[j], stage_channels[k], stride=2 ** sum(self.pool_after[j:k - 1]))
                for j in sources))
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        passed = [x]  # what each stage passed on: the image, then every block's output after ReLU/pool
        for block, skips, sources, pool in zip(self.blocks, self.skips, self.dense_from, self.pool_after):
            y = block(passed[-1])
            for skip, j in zip(skips, sources):
                y = y + skip(passed[j])
            y = torch.relu(y)
            passed.append(F.max_pool2d(y, 2) if pool else y)
        return self.head(passed[-1])


@register_model
def base() -> BlockNet:
    """Table 1: ResBlock(3,10) pool, ResBlock(10,20) pool, FC head. 136,380 params."""
    return BlockNet([ResBlock(3, 10), ResBlock(10, 20)], pool_after=(1, 2), head=FCHead(20 * 8 * 8))


@register_model
def v1() -> BlockNet:
    """Delayed pooling: five thin ResBlocks at 32x32 before the first pool. 136,430 params."""
    blocks = [ResBlock(3, 5), *(ResBlock(5, 5) for _ in range(4)), ResBlock(5, 20)]
    return BlockNet(blocks, pool_after=(5, 6), head=FCHead(20 * 8 * 8))


@register_model
def v2() -> BlockNet:
    """Base plus one dense skip: the image, projected with stride 2, added to ResBlock 2. 136,500 params."""
    return BlockNet([ResBlock(3, 10), ResBlock(10, 20)], pool_after=(1, 2), head=FCHead(20 * 8 * 8),
                    dense_from={2: (0,)})


@register_model
def v3() -> BlockNet:
    """Fire blocks (SqueezeNet): two pooled, then three more at 8x8. 136,354 params."""
    blocks = [FireResBlock(3, 8, 10, 10), *(FireResBlock(20, 8, 10, 10) for _ in range(4))]
    return BlockNet(blocks, pool_after=(1, 2), head=FCHead(20 * 8 * 8))


@register_model
def v4() -> BlockNet:
    """Bottleneck blocks (ResNet-50 style): two pooled, then three more at 8x8. 136,536 params."""
    blocks = [BottleneckResBlock(3, 10, 20), *(BottleneckResBlock(20, 8, 20) for _ in range(4))]
    return BlockNet(blocks, pool_after=(1, 2), head=FCHead(20 * 8 * 8))


@register_model
def v5() -> BlockNet:
    """Depthwise-separable blocks (MobileNet): eight blocks, at most 20 channels. 137,066 params."""
    blocks = [DepthwiseResBlock(3, 10), DepthwiseResBlock(10, 20), *(DepthwiseResBlock(20, 20) for _ in range(6))]
    return BlockNet(blocks, pool_after=(1, 2), head=FCHead(20 * 8 * 8))


@register_model
def v6() -> BlockNet:
    """Table 3: global average pooling frees the FC budget for six wider ResBlocks. 136,960 params."""
    channels = [3, 10, 20, 30, 40, 50, 50]
    blocks = [ResBlock(c_in, c_out) for c_in, c_out in zip(channels, channels[1:])]
    return BlockNet(blocks, pool_after=(1, 2), head=GAPHead(channels[-1]))


@register_model
def alpha() -> BlockNet:
    """Table 4: V6's GAP head with dense skips. Block k (k >= 2) receives a projection from the image and
    from every earlier block except its direct input. 131,970 params."""
    channels = [3, 10, 20, 30, 40, 40, 50]
    blocks = [ResBlock(c_in, c_out) for c_in, c_out in zip(channels, channels[1:])]
    dense_from = {k: tuple(range(k - 1)) for k in range(2, len(blocks) + 1)}
    return BlockNet(blocks, pool_after=(1, 2), head=GAPHead(channels[-1]), dense_from=dense_from)
