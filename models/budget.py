"""The paper's parameter budget, priced from a spec alone, and the repair that makes a candidate fill it.

The counts are arithmetic on the widths (no network is built, no tensor made), written to equal what
models.count_parameters / size_mb / macs_per_image measure on build(spec): the tests hold them to that on the
eight variants and hundreds of random specs. That makes pricing fast enough to screen thousands of candidates
a second.
"""
from __future__ import annotations

import dataclasses
import math

from .spec import IMAGE_SIDE_PX, NUM_CLASSES, BlockSpec, NetSpec, SpecError

# "These models aim to remain within a 2% margin of the base model's size" (Section 2).
MARGIN_PCT = 2
BASE_PARAMS = 136_380  # Table 1
MAX_PARAMS = BASE_PARAMS * (100 + MARGIN_PCT) // 100  # 139_107: Base + 2%, rounded down
# The same rule on Table 2's size in MB, which also counts BatchNorm's running statistics: a net rich in BN channels
# can be within MAX_PARAMS yet over this. Base's state dict is 547,096 bytes (0.5218 MB, Table 2).
BASE_SIZE_BYTES = 547_096
MAX_SIZE_MB = BASE_SIZE_BYTES * (100 + MARGIN_PCT) / 100 / 2**20  # 0.532186...

FLOAT32_BYTES, INT64_BYTES = 4, 8


class _Tally:
    """Parameters, BatchNorm channels and layers (for the buffers) and MACs, added up layer by layer."""
    __slots__ = ("params", "bn_channels", "bn_layers", "macs")

    def __init__(self):
        self.params = self.bn_channels = self.bn_layers = self.macs = 0

    def conv_bn(self, c_in: int, c_out: int, kernel: int, side_px: int, groups: int = 1) -> None:
        """blocks.conv_bn / SkipConn2d: conv with bias, then BatchNorm2d; side_px is the conv's output side."""
        weights = c_out * (c_in // groups) * kernel * kernel
        self.params += weights + c_out + 2 * c_out  # weight, bias, BN weight and bias
        self.bn_channels += c_out
        self.bn_layers += 1
        self.macs += weights * side_px * side_px  # PyTorch's FLOP counter: no MACs for bias, BN, ReLU, pools

    def linear(self, f_in: int, f_out: int) -> None:
        self.params += f_in * f_out + f_out
        self.macs += f_in * f_out


def _convs(block: BlockSpec, c_in: int) -> list[tuple[int, int, int, int]]:
    """(in, out, kernel, groups) of each conv-BN pair of the block, shortcut included: blocks.py in numbers."""
    out = block.out
    if block.kind == "res":  # the shortcut is an identity when the channels match
        return [(c_in, out, 3, 1), (out, out, 3, 1), *([(c_in, out, 1, 1)] if c_in != out else [])]
    if block.kind == "fire":
        s = block.squeeze
        return [(c_in, s, 1, 1), (s, block.expand1x1, 1, 1), (s, block.expand3x3, 3, 1), (c_in, out, 1, 1)]
    if block.kind == "depthwise":
        return [(c_in, c_in, 3, c_in), (c_in, out, 1, 1), (c_in, out, 1, 1)]
    mid = block.mid  # bottleneck
    return [(c_in, mid, 1, 1), (mid, mid, 3, 1), (mid, out, 1, 1), (c_in, out, 1, 1)]


def _tally(spec: NetSpec) -> _Tally:
    t = _Tally()
    channels, pooled, sources = spec.stage_channels, set(spec.pool_after), dict(spec.dense_from)
    side_px = IMAGE_SIDE_PX
    for k, block in enumerate(spec.blocks, start=1):
        for c_in, c_out, kernel, groups in _convs(block, channels[k - 1]):
            t.conv_bn(c_in, c_out, kernel, side_px, groups)
        for j in sources.get(k, ()):  # dense skips: 1x1 projections, strided down to block k's resolution
            t.conv_bn(channels[j], block.out, 1, side_px)
        if k in pooled:
            side_px //= 2
    c_last = channels[-1]
    if spec.head.kind == "fc":
        t.linear(c_last * side_px * side_px, spec.head.hidden)
        t.params += 2 * spec.head.hidden  # BatchNorm1d weight and bias
        t.bn_channels += spec.head.hidden
        t.bn_layers += 1
        t.linear(spec.head.hidden, NUM_CLASSES)
    else:
        t.linear(c_last, NUM_CLASSES)  # global average pooling itself has no MACs in the FLOP counter
    return t


def param_count(spec: NetSpec) -> int:
    """== models.count_parameters(build(spec)), without building it."""
    return _tally(spec).params


def size_mb(spec: NetSpec) -> float:
    """== models.size_mb(build(spec)): float32 parameters and BN running mean/var, one int64 counter per BN."""
    t = _tally(spec)
    return (FLOAT32_BYTES * (t.params + 2 * t.bn_channels) + INT64_BYTES * t.bn_layers) / 2**20


def macs_per_image(spec: NetSpec) -> int:
    """== models.macs_per_image(build(spec)) for one 3x32x32 image: conv and linear multiply-accumulates."""
    return _tally(spec).macs


def fits_budget(spec: NetSpec, max_params: int = MAX_PARAMS, max_size_mb: float = 0.0) -> bool:
    """Within max_params and, when max_size_mb is given (0: no cap), within that size."""
    return param_count(spec) <= max_params and (not max_size_mb or size_mb(spec) <= max_size_mb)


# --- the repair ---------------------------------------------------------------------------------------------------
def _scaled(width: int, factor: float) -> int:
    return max(1, math.floor(width * factor + 0.5))  # round half up; never below one channel


def scale_widths(spec: NetSpec, factor: float) -> NetSpec:
    """Every block width times `factor`, rounded, at least 1 (fire's out is the sum of its scaled expands).
    The head's hidden width is kept: it is the head's choice, 100 in every paper variant with an FC head.
    Each width only grows with the factor, so the parameter count does too (what bisection needs)."""
    blocks = []
    for block in spec.blocks:
        widths = {name: _scaled(w, factor) for name, w in block.widths().items()}
        if block.kind == "fire":
            widths["out"] = widths["expand1x1"] + widths["expand3x3"]
        blocks.append(BlockSpec(block.kind, **widths))
    return dataclasses.replace(spec, blocks=tuple(blocks))


def width_factor(spec: NetSpec, max_params: int = MAX_PARAMS, max_size_mb: float = 0.0) -> float:
    """The largest common factor on spec's widths whose scale_widths fits the budget, to float precision
    (bisection). SpecError when even every width at 1 does not fit."""
    def fits(factor: float) -> bool:
        return fits_budget(scale_widths(spec, factor), max_params, max_size_mb)

    if not fits(0.0):
        floor = scale_widths(spec, 0.0)
        over = (f"max_params: {param_count(floor):,} parameters with every width at 1 channel, over the budget of "
                f"{max_params:,}" if param_count(floor) > max_params else
                f"max_size_mb: {size_mb(floor):.5f} MB with every width at 1 channel, over the cap of {max_size_mb}")
        raise SpecError(f"{over}; use fewer blocks or skips, more pools before an FC head, or a smaller hidden "
                        f"width")
    lo, hi = 0.0, 1.0
    while fits(hi):  # the count grows without bound with the factor, so this ends
        lo, hi = hi, 2 * hi
    while True:
        mid = (lo + hi) / 2
        if mid in (lo, hi):  # lo and hi are neighbouring floats
            return lo
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)


def fit_to_budget(spec: NetSpec, max_params: int = MAX_PARAMS, max_size_mb: float = 0.0) -> NetSpec:
    """Repair, not rejection: scale all of spec's widths (read as relative, any scale) by one common factor, the
    largest that keeps the parameter count within max_params (and the size within max_size_mb, when given), so
    every candidate uses the budget as the paper's variants do. SpecError naming the budget when the spec cannot
    fit even at width 1."""
    return scale_widths(spec, width_factor(spec, max_params, max_size_mb))
