"""The network every variant is (BlockNet), build(spec) to make one from a spec, and the paper's eight variants
(Tables 1-4) declared as specs, each registered once.

All of them are one network shape: blocks in sequence, each followed by ReLU and (for some) a 2x2 max
pool, then a head. V2 and Alpha add dense skips: SkipConn2d projections from what an earlier stage passed
on, added to a block's output before its ReLU, with stride 1, 2 or 4 to match the receiving resolution.
"""
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BottleneckResBlock, DepthwiseResBlock, FireResBlock, ResBlock, SkipConn2d
from .registry import add_model, registered_spec
from .spec import IMAGE_CHANNELS, NUM_CLASSES, BlockSpec, HeadSpec, NetSpec, load_spec


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


# --- from spec to network -----------------------------------------------------------------------------------------
_BLOCK_MODULES = {
    "res": lambda c_in, b: ResBlock(c_in, b.out),
    "fire": lambda c_in, b: FireResBlock(c_in, b.squeeze, b.expand1x1, b.expand3x3),
    "bottleneck": lambda c_in, b: BottleneckResBlock(c_in, b.mid, b.out),
    "depthwise": lambda c_in, b: DepthwiseResBlock(c_in, b.out),
}


def build(spec: NetSpec) -> BlockNet:
    """A freshly initialised BlockNet for `spec` (already checked: a NetSpec can't exist invalid). Modules are
    made in the order the hand-written builders made them, blocks, then the head, then BlockNet's skip
    projections, so one seed gives the same initial weights as before."""
    if not isinstance(spec, NetSpec):
        raise TypeError(f"build takes a NetSpec, got {type(spec).__name__}; load one with models.load_spec")
    blocks = [_BLOCK_MODULES[b.kind](c_in, b) for c_in, b in zip(spec.stage_channels, spec.blocks)]
    c_last, side_px = spec.stage_channels[-1], spec.final_side_px
    head = FCHead(c_last * side_px * side_px, spec.head.hidden) if spec.head.kind == "fc" else GAPHead(c_last)
    return BlockNet(blocks, spec.pool_after, head, dict(spec.dense_from))


def register_spec(name: str, spec: NetSpec) -> NetSpec:
    """Register `spec` as model `name`: create_model(name) builds it, get_spec(name) returns it (so a search's
    winner can become a named variant). Registering the same spec under the same name again is a no-op: every
    process that trains it (a Ray worker) registers it; another spec under a taken name is refused."""
    if not isinstance(spec, NetSpec):
        raise TypeError(f"register_spec takes a NetSpec, got {type(spec).__name__}")
    if registered_spec(name) == spec:
        return spec
    add_model(name, partial(build, spec), spec)
    return spec


# --- the paper's eight variants ------------------------------------------------------------------------------------
FC_HEAD = HeadSpec("fc", hidden=100)  # Table 1: Linear(in, 100) -> BN -> ReLU -> Linear(100, 10)
GAP_HEAD = HeadSpec("gap")  # Table 3


def res(*outs: int) -> list[BlockSpec]:
    return [BlockSpec("res", out) for out in outs]


def fire(squeeze: int, expand1x1: int, expand3x3: int) -> BlockSpec:
    return BlockSpec("fire", expand1x1 + expand3x3, squeeze=squeeze, expand1x1=expand1x1, expand3x3=expand3x3)


PAPER_SPECS = {
    # Table 1: ResBlock(3,10) pool, ResBlock(10,20) pool, FC head. 136,380 params.
    "base": NetSpec(res(10, 20), pool_after=(1, 2), head=FC_HEAD),
    # Delayed pooling: five thin ResBlocks at 32x32 before the first pool. 136,430 params.
    "v1": NetSpec(res(5, 5, 5, 5, 5, 20), pool_after=(5, 6), head=FC_HEAD),
    # Base plus one dense skip: the image, projected with stride 2, added to ResBlock 2. 136,500 params.
    "v2": NetSpec(res(10, 20), pool_after=(1, 2), head=FC_HEAD, dense_from={2: (0,)}),
    # Fire blocks (SqueezeNet): two pooled, then three more at 8x8. 136,354 params.
    "v3": NetSpec([fire(8, 10, 10)] * 5, pool_after=(1, 2), head=FC_HEAD),
    # Bottleneck blocks (ResNet-50 style): two pooled, then three more at 8x8. 136,536 params.
    "v4": NetSpec([BlockSpec("bottleneck", 20, mid=10), *[BlockSpec("bottleneck", 20, mid=8)] * 4],
                  pool_after=(1, 2), head=FC_HEAD),
    # Depthwise-separable blocks (MobileNet): eight blocks, at most 20 channels. 137,066 params.
    "v5": NetSpec([BlockSpec("depthwise", out) for out in (10, 20, 20, 20, 20, 20, 20, 20)],
                  pool_after=(1, 2), head=FC_HEAD),
    # Table 3: global average pooling frees the FC budget for six wider ResBlocks. 136,960 params.
    "v6": NetSpec(res(10, 20, 30, 40, 50, 50), pool_after=(1, 2), head=GAP_HEAD),
    # Table 4: V6's GAP head with dense skips. Block k (k >= 2) receives a projection from the image and from
    # every earlier block except its direct input. 131,970 params.
    "alpha": NetSpec(res(10, 20, 30, 40, 40, 50), pool_after=(1, 2), head=GAP_HEAD,
                     dense_from={k: tuple(range(k - 1)) for k in range(2, 7)}),
}
PAPER_VARIANTS = tuple(PAPER_SPECS)  # the eight, in the paper's order: list_models() gives them first
for _name, _spec in PAPER_SPECS.items():
    register_spec(_name, _spec)


def register_spec_files(folder: Path) -> list[str]:
    """Register every spec file in `folder` under its file's stem, in name order; the names registered. A search's
    winner becomes a named variant this way: its spec saved as models/specs/<name>.toml."""
    names = []
    for path in sorted(folder.glob("*.toml")):
        register_spec(path.stem, load_spec(path))
        names.append(path.stem)
    return names


SPEC_FILES = Path(__file__).with_name("specs")  # alpha.toml (the paper's Alpha, as an example) and discoveries
register_spec_files(SPEC_FILES)
