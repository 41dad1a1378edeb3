"""Fused seeds: the K seeds of one variant trained as ONE stacked network, in one process.

At batch 4 a step of these ~136k-parameter CNNs is mostly per-op overhead; K seeds stacked into one network pay
that overhead once for K models. Each seed keeps everything it has in an unfused trial (`orchestrator.training.train`):

- Stacking. `torch.func.stack_module_state` stacks the K models' parameters and buffers into [K, ...] tensors, and
  `torch.func.functional_call` runs them through a *stacked template* of the model: the same module tree on the
  meta device with every Conv2d a grouped conv over seed-major channels ([B, K*C, H, W]: seed k owns channels
  k*C..k*C+C-1), every BatchNorm a BatchNorm over K*C channels, every Linear a batched matmul ([B, K, F]), and the
  Fire block's concat kept per seed. This is what `torch.func.vmap`'s conv rule produces too (`vmap_forward` is
  the vmap version, kept as the reference the tests compare against), but vmap's batch-norm rule applies the
  affine weights as extra ops on permuted [K, C, B, H, W] views: measured (CPU time of forward+backward, one
  thread, K=5, base/v3/v5/v6), eager vmap ran at 0.8-1.05x the speed of K unfused steps, the explicit template
  at 1.2-1.8x.
- Memory format: the stacked network trains in channels_last (unless cfg.channels_last is off) for every variant,
  V2/Alpha too: their strided 1x1 skip conv from the image, which the unfused trainer keeps out of channels_last
  (a oneDNN heap corruption), runs as a stride-1 conv of the subsampled image (the same maths). That makes fused
  V2/Alpha ~1.4x faster than in the contiguous format. The seeds' own models validate in the unfused format.
- Initialisation: seed k's model is `seed_everything(k); build(...)`, exactly an unfused trial's.
- Data: seed k has its own `data.TrainSet(seed=k)`; step i trains every seed on its own batch i of the epoch.
- BatchNorm: batch statistics are per channel, so per seed; running stats live in seed k's rows of the stacked
  buffers and are updated by that seed's batches only.
- Adam: exp_avg, exp_avg_sq and step are [K, ...] / [K] tensors. Eager steps run torch's own fused Adam kernel
  (`torch._fused_adam_`, what `build`'s Adam(fused=True) runs) on each seed's slices with that seed's lr, so a
  seed's update is the unfused one's. Compiled steps (and eager ones with fused_adam off) run `stacked_adam_`:
  the same maths on the stacked tensors with a per-seed lr TENSOR [K], so a changed lr needs no recompile.
- ReduceLROnPlateau: each seed has the real torch optimizer/scheduler pair of an unfused trial (`build`), a
  "shell" that is never stepped: its scheduler steps on the seed's own val accuracy and the lr it sets is copied
  into the lr tensor.
- Divergence: a seed whose epoch train loss is non-finite is marked diverged (with the DivergedError message an
  unfused trial raises), its lr is set to 0 and its updates are masked out; the others go on. Like the unfused
  trial it gets no on_epoch_end for that epoch and no final metrics.
- Checkpoints: `make_state` gives exactly train.py's checkpoint for that seed (`train.snapshot`: a state_dict of
  a normal model, a normal Adam state_dict, the scheduler's state_dict, rng, history), and `states` resume from
  either kind. "rng": training draws nothing from the global RNGs (the data RNG comes from (seed, epoch)), so an
  unfused trial's checkpoint holds, at every epoch, the RNG state right after its model was built (or the one it
  resumed with); fused seeds record exactly that per seed, so the field is equal, and resuming needs no RNG.
- Validation and final metrics: on each seed's own unstacked model (the shell's, with the stacked weights copied
  in), with train.py's `evaluate` and `final_metrics`.
- Metrics per seed: `epoch_seconds` is the wall time of the whole fused epoch (training all K seeds, then
  validating all K), the same for every seed; `train_images_per_second` is that seed's images over the fused
  training time (the process trains K times as many).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

import data
from models.blocks import BottleneckResBlock, DepthwiseResBlock, FireResBlock, ResBlock, SkipConn2d
from models.variants import BlockNet, FCHead, GAPHead
from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import flush_denormal, measure_latency
from orchestrator.training.train import (TrialData, build, evaluate, final_metrics, load_trial_data, resolve_device, restore,
                                rng_state, seed_everything, snapshot)


# --- the stacked network ----------------------------------------------------------------------------------------
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
        # train._hits_onednn_strided_1x1_bug): V2/Alpha's skip from the image. Subsampled first, the conv has
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
                             f"orchestrator/fused.py, or train this variant unfused")


def _arrange(template: nn.Module, name: str, t: torch.Tensor, memory_format) -> torch.Tensor:
    """A stacked tensor in the memory layout its stacked module wants (contiguous unless it says otherwise)."""
    owner, _, leaf = name.rpartition(".")
    arrange = getattr(template.get_submodule(owner), "arrange", None)
    return arrange(leaf, t, memory_format) if arrange else t.contiguous()


def stacked_loss(template: nn.Module, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor):
    """Each seed's mean cross-entropy [K] and the logits [B, K, classes]; x [B, K*3, H, W], y [B, K]."""
    out = functional_call(template, (params, buffers), (x,))
    b, k, c = out.shape
    losses = F.cross_entropy(out.reshape(b * k, c), y.reshape(b * k), reduction="none").view(b, k).mean(0)
    return losses, out


def vmap_forward(model: nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    """The K forwards through torch.func.vmap over functional_call (x [B, K, 3, H, W] -> [B, K, classes]): the
    reference `stacked_template` is tested against. Train mode updates `buffers` like the stacked network."""
    base = copy.deepcopy(model).to("meta").train(model.training)

    def one(p, b, xi):
        return functional_call(base, (p, b), (xi,))
    return torch.func.vmap(one, in_dims=(0, 0, 1), out_dims=1)(params, buffers, x)


# --- Adam on stacked tensors ------------------------------------------------------------------------------------
def stacked_adam_(params: dict, grads: dict, exp_avgs: dict, exp_avg_sqs: dict, step: torch.Tensor,
                  lr: torch.Tensor, active: torch.Tensor, *, beta1: float, beta2: float, eps: float,
                  weight_decay: float) -> None:
    """torch.optim.Adam's update (L2 weight decay added to the gradient, bias correction) of [K, ...] tensors in
    place, seed k with lr[k] and step[k]; seeds whose `active` is False keep their values and step."""
    step.add_(active.to(step.dtype))
    s = step.double()  # bias corrections in double, like torch's Adam (Python floats)
    step_size, bc2_sqrt = lr.double() / (1 - beta1 ** s), (1 - beta2 ** s).sqrt()
    for name, p in params.items():
        shape = (-1,) + (1,) * (p.dim() - 1)
        keep = active.view(shape)
        g = grads[name] + weight_decay * p
        m = exp_avgs[name].lerp(g, 1 - beta1)
        v = exp_avg_sqs[name] * beta2 + (1 - beta2) * g * g
        denom = v.sqrt() / bc2_sqrt.to(p.dtype).view(shape) + eps
        new_p = p - step_size.to(p.dtype).view(shape) * (m / denom)
        exp_avgs[name].copy_(torch.where(keep, m, exp_avgs[name]))
        exp_avg_sqs[name].copy_(torch.where(keep, v, exp_avg_sqs[name]))
        p.copy_(torch.where(keep, new_p, p))


def _compiled_step(template: nn.Module, hyper: dict) -> Callable:
    """Forward, loss, gradient (torch.func.grad) and Adam update of all K seeds as one torch.compile'd function.
    lr, step and active are tensor arguments: changing them needs no recompile."""
    def loss_fn(params, buffers, x, y):
        losses, out = stacked_loss(template, params, buffers, x, y)
        return losses.sum(), (losses.detach(), out.detach())

    def step(params, buffers, exp_avgs, exp_avg_sqs, step_t, lr, active, x, y):
        grads, (losses, out) = torch.func.grad(loss_fn, has_aux=True)(params, buffers, x, y)
        stacked_adam_(params, grads, exp_avgs, exp_avg_sqs, step_t, lr, active, **hyper)
        return losses, out
    return torch.compile(step, fullgraph=True, dynamic=False)


# --- one seed's own things ----------------------------------------------------------------------------------------
@dataclass
class _Seed:
    seed: int
    model: nn.Module  # an unstacked model of the variant: validation, checkpoints, the result
    opt: torch.optim.Adam  # never stepped: holds lr and (at checkpoint time) the Adam state, in torch's format
    sched: torch.optim.lr_scheduler.ReduceLROnPlateau
    rng: dict
    train_set: data.TrainSet
    history: list
    start_epoch: int
    reason: str | None = None  # why it diverged; None while it trains


def _make_seed(cfg: TrainConfig, variant: str, seed: int, d: TrialData, device, state: dict | None):
    """Seed `seed`'s model, optimizer and scheduler exactly as an unfused trial builds them, and its memory format.
    (Built as for an uncompiled trial, so the never-stepped shell optimizer keeps a float learning rate.)"""
    seed_everything(seed)
    shell = build(dataclasses.replace(cfg, compile=False), variant, device)
    model, opt, sched, memory_format = shell.model, shell.optimizer, shell.scheduler, shell.memory_format
    rng = rng_state()  # an unfused trial's RNG state at every epoch end: training draws nothing from it
    history, start_epoch = [], 1
    if state is not None:
        history, start_epoch = restore(state, model, opt, sched)
        rng = state["rng"]
    train_set = data.TrainSet(d.train_images, d.train_labels, augment=cfg.augment,
                              focus_classes=data.parse_focus_classes(cfg.focus_classes),
                              batch_size=cfg.batch_size, seed=seed, device=device)
    return _Seed(seed, model, opt, sched, rng, train_set, history, start_epoch), memory_format


def _memory_order(t: torch.Tensor) -> tuple[int, ...]:
    """The permutation of t's dims that lists them in memory order: t.permute(it) is contiguous if t is dense."""
    order = tuple(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    assert t.permute(order).is_contiguous(), (t.shape, t.stride())
    return order


def _check_states(seeds: list[int], states: dict | None) -> dict:
    if not states:
        return {}
    if set(states) != set(seeds):
        raise ValueError(f"states must hold one checkpoint per seed {seeds}, got seeds {sorted(states)}")
    epochs = sorted({int(states[s]["epoch"]) for s in seeds})
    if len(epochs) > 1:
        raise ValueError(f"fused seeds train in lockstep: every state must be after the same epoch, got {epochs}")
    return states


# --- K seeds, one network -----------------------------------------------------------------------------------------
class FusedSeeds:
    """K seeds of one variant as one stacked network (see the module docstring); `train_fused` drives it.

    Live state, all [K, ...]: params, buffers, exp_avgs, exp_avg_sqs (dicts by parameter name), steps, lr, active.
    `seeds[i]` holds seed i's own unstacked model, optimizer, scheduler, RNG record, data and history.
    """

    def __init__(self, cfg: TrainConfig, variant: str, seeds, d: TrialData, device: torch.device, *,
                 states: dict | None = None, compile: bool = False):
        seed_list = [int(s) for s in seeds]
        if not seed_list or len(set(seed_list)) != len(seed_list):
            raise ValueError(f"fused seeds need distinct seeds, got {list(seeds)}")
        states = _check_states(seed_list, states)
        self.cfg, self.variant, self.d, self.device, self.k = cfg, variant, d, device, len(seed_list)
        made = [_make_seed(cfg, variant, s, d, device, states.get(s)) for s in seed_list]
        # The seeds' own models validate in the unfused trainer's format (contiguous for V2/Alpha on CPU); the
        # stacked network trains in channels_last for every variant (StackedConv2d avoids the oneDNN bug).
        self.seeds, self.eval_format = [m for m, _ in made], made[0][1]
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.start_epoch = self.seeds[0].start_epoch
        self.template = stacked_template(self.seeds[0].model, self.k)
        params, buffers = stack_module_state([s.model for s in self.seeds])
        self.params = {n: _arrange(self.template, n, p.detach(), self.memory_format) for n, p in params.items()}
        self.buffers = {n: b.contiguous() for n, b in buffers.items()}
        self._stack_adam()
        self._make_slices()
        self.active = torch.ones(self.k, dtype=torch.bool, device=device)
        self.hyper = dict(beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay)
        self._fused_adam = cfg.fused_adam and device.type in ("cpu", "cuda")
        self._compiled = _compiled_step(self.template, self.hyper) if compile else None
        self._refresh()

    def _stack_adam(self) -> None:
        """exp_avgs, exp_avg_sqs [K, ...] and steps [K] from the shells' optimizers (zeros for fresh ones), lr [K]."""
        states = [[s.opt.state.get(p, {}) for p in s.model.parameters()] for s in self.seeds]
        self.exp_avgs, self.exp_avg_sqs = {}, {}
        for j, name in enumerate(self.params):
            zero = torch.zeros_like(self.params[name][0])
            for key, into in (("exp_avg", self.exp_avgs), ("exp_avg_sq", self.exp_avg_sqs)):  # in the param's layout
                stacked = torch.stack([st[j][key].to(zero) if st[j] else zero for st in states])
                into[name] = torch.empty_like(self.params[name]).copy_(stacked)
        steps = []
        for s, st in zip(self.seeds, states):
            values = {float(x["step"]) if x else 0.0 for x in st}
            if len(values) != 1:
                raise ValueError(f"seed {s.seed}: its Adam state has parameters at different steps {sorted(values)}")
            steps.append(values.pop())
        self.steps = torch.tensor(steps, dtype=torch.float32, device=self.device)
        self.lr = torch.zeros(self.k, dtype=torch.float64, device=self.device)  # _refresh fills it

    def _refresh(self) -> None:
        """After lr or divergence changed: the lr tensor (0 for a diverged seed) and the Python lrs of the eager
        fused-Adam calls."""
        self._lrs = [s.opt.param_groups[0]["lr"] if s.reason is None else 0.0 for s in self.seeds]
        self.lr.copy_(torch.tensor(self._lrs, dtype=torch.float64))

    def training(self) -> bool:
        return any(s.reason is None for s in self.seeds)

    # --- a step -----------------------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor):
        """One step of every seed: x [B, K*3, H, W] (seed k's images in channels 3k..3k+2), y [B, K]; returns the
        per-seed losses [K] and logits [B, K, classes]. A short remainder batch runs eager (no recompile)."""
        if self._compiled is not None and len(y) == self.cfg.batch_size:
            return self._compiled(self.params, self.buffers, self.exp_avgs, self.exp_avg_sqs, self.steps, self.lr,
                                  self.active, x, y)
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        losses, out = stacked_loss(self.template, leaves, self.buffers, x, y)
        grads = dict(zip(leaves, torch.autograd.grad(losses.sum(), list(leaves.values()))))
        with torch.no_grad():
            if self._fused_adam:
                self._fused_adam_step(grads)
            else:
                stacked_adam_(self.params, grads, self.exp_avgs, self.exp_avg_sqs, self.steps, self.lr, self.active,
                              **self.hyper)
        return losses.detach(), out.detach()

    def _fused_adam_step(self, grads: dict) -> None:
        """torch's fused Adam kernel (Adam(fused=True)'s), one call per training seed on its slices with its lr.
        Per seed, not once on the stacked tensors: the kernel's vector/scalar split depends on where a tensor
        starts and ends, so a seed's rounding would depend on which seeds train beside it."""
        self.steps.add_(self.active.to(self.steps.dtype))
        slices = []
        for name, g in grads.items():
            p = self.params[name]
            if g.stride() != p.stride():  # the kernel walks memory in order: all four tensors in one layout
                g = torch.empty_like(p).copy_(g)
            slices.append(g.permute(0, *(d + 1 for d in self._memory_order[name])).unbind(0))
        for i, s in enumerate(self.seeds):
            if s.reason is None:
                ps, ms, vs = self._slices[i]
                torch._fused_adam_(ps, [g[i] for g in slices], ms, vs, [], [self.steps[i]] * len(ps),
                                   lr=self._lrs[i], beta1=self.cfg.beta1, beta2=self.cfg.beta2,
                                   weight_decay=self.cfg.weight_decay, eps=self.cfg.eps, amsgrad=False,
                                   maximize=False)

    def _make_slices(self) -> None:
        """Each seed's slices of params, exp_avgs, exp_avg_sqs for the eager Adam, made once: in memory order, so
        contiguous (the kernel's fast path: 2.4x faster than on a transposed slice)."""
        self._memory_order = {n: _memory_order(p[0]) for n, p in self.params.items()}
        self._slices = [tuple([t[i].permute(self._memory_order[n]) for n, t in d.items()]
                              for d in (self.params, self.exp_avgs, self.exp_avg_sqs)) for i in range(self.k)]

    def to(self, dtype: torch.dtype) -> "FusedSeeds":
        """The stacked tensors in another floating dtype (float64 for exactness tests; the shells' models are
        the caller's to convert)."""
        for group in (self.params, self.buffers, self.exp_avgs, self.exp_avg_sqs):
            for name, t in group.items():
                if t.is_floating_point():
                    group[name] = t.to(dtype)
        self._make_slices()
        return self

    # --- an epoch ---------------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int):
        """Every seed's epoch, step i on batch i of each seed's own TrainSet; returns per-seed loss sums [K] and
        correct counts [K], the images each seed saw and the seconds it took."""
        loss_sum = torch.zeros(self.k, device=self.device)
        correct = torch.zeros(self.k, dtype=torch.long, device=self.device)
        seen, t0 = 0, time.perf_counter()
        for batch in zip(*(s.train_set.batches(epoch) for s in self.seeds), strict=True):
            y = torch.stack([yb for _, yb in batch], dim=1)
            if len(y) < 2:  # a 1-image remainder batch: the FC head's BatchNorm1d cannot train on it
                continue
            x = torch.cat([xb for xb, _ in batch], dim=1).contiguous(memory_format=self.memory_format)
            losses, out = self.train_step(x, y)
            loss_sum += losses * len(y)
            correct += (out.argmax(-1) == y).sum(0)
            seen += len(y)
        return loss_sum, correct, seen, time.perf_counter() - t0

    def finish_epoch(self, epoch: int, loss_sum, correct, seen: int, train_seconds: float,
                     t0: float) -> list[tuple[int, dict]]:
        """Each training seed: divergence check, validation on its own model, its scheduler's step. Returns
        (index, metrics) of the seeds that finished the epoch; their histories get the epoch."""
        losses, corrects, done = loss_sum.tolist(), correct.tolist(), []
        for i, s in enumerate(self.seeds):
            if s.reason is not None:
                continue
            train_loss = losses[i] / seen
            if not math.isfinite(train_loss):
                s.reason = f"{self.variant}-seed{s.seed}: train_loss became {train_loss} in epoch {epoch}"
                self.sync_model(i)  # the weights it diverged with; from now on its updates are masked out
                self.active[i] = False
                continue
            self.sync_model(i)
            val_loss, val_accuracy = evaluate(s.model, self.d.val_images, self.d.val_labels, self.device,
                                              self.eval_format)
            lr = s.opt.param_groups[0]["lr"]  # the rate this epoch trained with
            s.sched.step(val_accuracy)
            done.append((i, {"train_loss": train_loss, "train_accuracy": corrects[i] / seen, "val_loss": val_loss,
                             "val_accuracy": val_accuracy, "lr": lr}))
        self._refresh()
        epoch_seconds = time.perf_counter() - t0
        for i, metrics in done:
            metrics.update(epoch_seconds=epoch_seconds, train_images_per_second=seen / train_seconds)
            self.seeds[i].history.append({"epoch": epoch, **metrics})
        return done

    # --- per-seed views -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sync_model(self, i: int) -> nn.Module:
        """Copy seed i's stacked weights and BatchNorm buffers into its own unstacked model; return the model."""
        model = self.seeds[i].model
        for name, p in model.named_parameters():
            p.copy_(self.params[name][i])
        for name, b in model.named_buffers():
            b.copy_(self.buffers[name][i])
        return model

    @torch.no_grad()
    def _sync_optimizer(self, i: int) -> None:
        """Seed i's Adam state into its shell optimizer, laid out as torch.optim.Adam keeps it."""
        s = self.seeds[i]
        group = s.opt.param_groups[0]
        for name, p in s.model.named_parameters():
            step_device = p.device if group["fused"] or group["capturable"] else "cpu"
            s.opt.state[p] = {"step": self.steps[i].clone().to(step_device),
                              "exp_avg": torch.empty_like(p).copy_(self.exp_avgs[name][i]),
                              "exp_avg_sq": torch.empty_like(p).copy_(self.exp_avg_sqs[name][i])}

    def make_state(self, i: int, epoch: int) -> dict:
        """Seed i's checkpoint after `epoch`, exactly as train.py's (`train.snapshot`); call it at that epoch's end."""
        s = self.seeds[i]
        self.sync_model(i)
        self._sync_optimizer(i)
        return snapshot(epoch, s.model, s.opt, s.sched, s.rng, s.history)

    def results(self, measure: bool) -> dict[int, dict]:
        out = {}
        for i, s in enumerate(self.seeds):
            final = None
            if s.reason is None and s.history:
                model = self.sync_model(i)
                final = {**final_metrics(model, self.variant, s.history), "compile_seconds": 0.0}
                if measure:
                    final.update(measure_latency(model, self.d.val_images, self.d.val_labels, self.device,
                                                 batch1_calls=self.cfg.latency_batch1_calls,
                                                 memory_format=self.eval_format,
                                                 flush_denormals=self.cfg.flush_denormal))
            out[s.seed] = {"history": s.history, "final": final, "model": s.model, "diverged": s.reason is not None,
                           "reason": s.reason}
        return out


def train_fused(cfg: TrainConfig, variant: str, seeds, *, trial_data: TrialData | None = None,
                device: torch.device | None = None, states: dict[int, dict] | None = None,
                on_epoch_end: Callable[[int, int, dict, Callable[[], dict]], None] | None = None,
                after_epoch: Callable[[int, dict[int, str]], None] | None = None,
                measure: bool = True, compile: bool = False) -> dict[int, dict]:
    """Train `variant` with every seed of `seeds` under the paper's protocol, fused into one network.

    Per seed, like `train.train`: `states[seed]` is a checkpoint (of a fused or an unfused run) to resume from, all
    after the same epoch; `on_epoch_end(seed, epoch, metrics, make_state)` after each epoch the seed finished, then
    `after_epoch(epoch, {seed: reason} of every seed diverged so far)` once the epoch is over for all of them.
    `compile`: torch.compile the whole step. Returns {seed: {"history", "final", "model", "diverged", "reason"}}:
    a diverged seed has the history before its divergence, final None and the DivergedError message as reason.
    """
    device = device or resolve_device(cfg.device)
    flush_denormal(cfg.flush_denormal)
    d = trial_data or load_trial_data(cfg)
    fused = FusedSeeds(cfg, variant, seeds, d, device, states=states, compile=compile)
    for epoch in range(fused.start_epoch, cfg.epochs + 1):
        if not fused.training():
            break
        t0 = time.perf_counter()
        for i, metrics in fused.finish_epoch(epoch, *fused.train_epoch(epoch), t0):
            if on_epoch_end is not None:
                on_epoch_end(fused.seeds[i].seed, epoch, metrics, lambda i=i, epoch=epoch: fused.make_state(i, epoch))
        if after_epoch is not None:
            after_epoch(epoch, {s.seed: s.reason for s in fused.seeds if s.reason is not None})
    return fused.results(measure)
