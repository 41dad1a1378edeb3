"""The paper's augmentation as batched tensor ops with per-sample random parameters.

Per image, in torchvision's order: RandomHorizontalFlip(p=0.5), RandomRotation(10) (angle uniform in
[-10, 10] degrees, zero fill), ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2) (factors uniform in
[0.8, 1.2], the three ops in a random order per image, as torchvision draws one permutation per call).

The per-op math is torchvision.transforms.v2.functional's float path (rotate plus the fill mask that
RandomRotation's fill=0 adds; adjust_brightness/contrast/saturation with their clamps), vectorised over the
batch. One deliberate difference: rotation samples bilinearly, RandomRotation's default is nearest (the plain
route in bench.plain keeps that default). Work is in float32 in [0, 1]; the result is rounded to uint8 once.

Speed on CPU: the flip is folded into the rotation's sampling grid (one grid_sample does both), the fill mask is
computed from the grid instead of sampling a ones channel, and samples are grouped by jitter order so every op
runs in place on contiguous slices.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

MAX_DEGREES = 10.0
JITTER = 0.2  # brightness, contrast and saturation factors in [1 - 0.2, 1 + 0.2]
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
CHUNK_IMAGES = 512  # small enough for float intermediates to stay in cache


@dataclass
class AugmentParams:
    """Per-sample random choices, tensors of length N; `order` [N, 3] is a permutation of (0, 1, 2) per row
    giving the jitter ops' order (0 brightness, 1 contrast, 2 saturation)."""
    flip: torch.Tensor
    angle_deg: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    order: torch.Tensor

    def map(self, fn) -> "AugmentParams":
        return AugmentParams(*(fn(getattr(self, f.name)) for f in fields(self)))


def sample_params(n: int, generator: torch.Generator) -> AugmentParams:
    """Draw on the CPU generator, so the same (seed, epoch) gives the same choices on any device."""
    def uniform(lo, hi):
        return torch.rand(n, generator=generator, dtype=torch.float64).mul_(hi - lo).add_(lo).float()
    flip = torch.rand(n, generator=generator) < 0.5
    angle = uniform(-MAX_DEGREES, MAX_DEGREES)
    b, c, s = (uniform(1 - JITTER, 1 + JITTER) for _ in range(3))
    order = torch.rand(n, 3, generator=generator).argsort(dim=1)  # a uniform random permutation per sample
    return AugmentParams(flip, angle, b, c, s, order)


# ------------------------------------------------------------------------------------------- geometry
def flip_rotate(x: torch.Tensor, flip: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Horizontal flip where `flip`, then rotate counter-clockwise by angle_deg about the centre (float images).

    Same sampling as torchvision's rotate (pixel centres, align_corners=False; for square images its rescaled
    inverse matrix is the plain rotation) and the same zero fill: torchvision samples an extra ones channel
    and multiplies by it; that channel's value is the in-bounds share of the bilinear weights, computed here
    directly from the grid. The flip is exact in the grid: flipping the input negates its x coordinate.
    """
    n, c, h, w = x.shape
    if h != w:
        raise ValueError(f"rotation expects square images, got {h}x{w}")
    a = angle_deg.to(x.device, torch.float64) * (math.pi / 180)
    cos, sin = torch.cos(a).to(x.dtype).view(-1, 1, 1), torch.sin(a).to(x.dtype).view(-1, 1, 1)
    coords = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1  # pixel centres in [-1, 1]
    gx, gy = coords.view(1, 1, w), coords.view(1, h, 1)
    sign = 1 - 2 * flip.to(x.device, x.dtype).view(-1, 1, 1)
    grid = torch.stack([sign * (cos * gx - sin * gy), sin * gx + cos * gy], dim=-1)  # [N, H, W, 2]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    px = (grid + 1) * (w / 2) - 0.5  # source positions in pixels
    inside = torch.minimum(px + 1, w - px).clamp_(0, 1)  # in-bounds weight per axis
    return out.mul_((inside[..., 0] * inside[..., 1]).unsqueeze(1))


def rotate(x: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    return flip_rotate(x, torch.zeros(len(x), dtype=torch.bool), angle_deg)


def hflip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


# ------------------------------------------------------------------------------------------- colour
def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend_(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return x.mul_(f).add_(other * (1 - f)).clamp_(0, 1)  # torchvision's _blend, in place


def _brightness_(x, f):
    return x.mul_(f.view(-1, 1, 1, 1)).clamp_(0, 1)


def _contrast_(x, f):
    return _blend_(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation_(x, f):
    return _blend_(x, _gray(x), f)


def adjust_brightness(x, factor):
    return _brightness_(x.clone(), factor)


def adjust_contrast(x, factor):
    return _contrast_(x.clone(), factor)


def adjust_saturation(x, factor):
    return _saturation_(x.clone(), factor)


_OPS = (_brightness_, _contrast_, _saturation_)
_ORDERS = list(itertools.permutations(range(3)))  # the 6 possible orders


def _order_id(order: torch.Tensor) -> torch.Tensor:
    return order[:, 0] * 3 + order[:, 1]  # the first two ops identify the permutation


def _jitter_runs_(x: torch.Tensor, p: AugmentParams, order_ids: torch.Tensor) -> torch.Tensor:
    """Colour jitter in place on x whose samples are sorted by order id (contiguous runs, no scatter)."""
    factors = (p.brightness, p.contrast, p.saturation)
    ids, counts = torch.unique_consecutive(order_ids, return_counts=True)
    start = 0
    for oid, count in zip(ids.tolist(), counts.tolist()):
        sl = slice(start, start + count)
        for op in next(o for o in _ORDERS if o[0] * 3 + o[1] == oid):
            _OPS[op](x[sl], factors[op][sl].to(x.device))
        start += count
    return x


def color_jitter(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """ColorJitter(0.2, 0.2, 0.2) with per-sample factors and order, on float images in [0, 1]."""
    ids = _order_id(p.order)
    sort = torch.argsort(ids, stable=True)
    y = _jitter_runs_(x[sort.to(x.device)].clone(), p.map(lambda t: t[sort]), ids[sort])
    return torch.empty_like(y).index_copy_(0, sort.to(x.device), y)


# ------------------------------------------------------------------------------------------- pipeline
def byte_rows(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] viewed as int64 rows: index_select moves 8 bytes per element instead of 1."""
    flat = images.reshape(len(images), -1)
    return flat.view(torch.int64) if flat.shape[1] % 8 == 0 and flat.is_contiguous() else flat


def augment(images: torch.Tensor, params: AugmentParams, chunk_size: int = CHUNK_IMAGES) -> torch.Tensor:
    """uint8 [N,3,H,W] -> augmented uint8 [N,3,H,W] on the same device, in chunks to bound memory.

    Each sample's result depends only on its own parameters, so chunking and grouping don't change it.
    """
    device, shape = images.device, images.shape[1:]
    params = params.map(lambda t: t.cpu())
    ids = _order_id(params.order)
    sort = torch.argsort(ids, stable=True)
    src = byte_rows(images.contiguous())
    out = torch.empty(images.shape, dtype=images.dtype, device=device)
    dst = byte_rows(out)
    for start in range(0, len(images), chunk_size):
        idx = sort[start:start + chunk_size]
        p = params.map(lambda t: t[idx].to(device))
        idx = idx.to(device)
        x = src.index_select(0, idx).view(torch.uint8).view(-1, *shape).float().div_(255)
        x = _jitter_runs_(flip_rotate(x, p.flip, p.angle_deg), p, ids[idx.cpu()])
        y = x.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        dst.index_copy_(0, idx, byte_rows(y))
    return out
