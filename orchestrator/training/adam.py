"""The paper's optimizer, Adam with L2 weight decay, behind one small seam with two implementations:

- `TorchAdam`: torch.optim.Adam itself (fused kernel where the device has one), over one model's parameters.
  The single-seed trainer steps it; it is also the checkpoint format of every seed, fused or not.
- `StackedAdam`: K seeds' Adam on stacked [K, ...] tensors (orchestrator.training.fused). Eager steps run torch's
  own fused Adam kernel on each seed's slices with that seed's lr, so a seed's update is the unfused one's.
  Captured steps (a CUDA graph) and `fused_adam=False` run `stacked_adam_`: the same maths with a per-seed lr
  TENSOR, which a graph can replay after the scheduler changed it.

Both answer the same questions: `step`, `lr(i)`, `make_capturable()`, `seed_state(i)` (torch's state_dict layout
for seed i) and `tensors()` (everything a step changes, for a capture's warm-up to undo).
"""
from __future__ import annotations

import contextlib

import torch

from orchestrator.training.config import TrainConfig


def uses_fused_kernel(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.fused_adam and device.type in ("cpu", "cuda")


class TorchAdam(torch.optim.Adam):
    """torch.optim.Adam over one model, built from the config. `tensor_lr`: the lr is a tensor, which
    ReduceLROnPlateau changes in place, so a compiled step or a CUDA graph reads the new rate with no recompile."""

    @classmethod
    def build(cls, params, cfg: TrainConfig, device: torch.device, *, tensor_lr: bool = False) -> "TorchAdam":
        fused = uses_fused_kernel(cfg, device)
        # float64 holds cfg.lr exactly on CPU; CUDA's fused Adam reads a float32 lr (a graph keeps its own twin).
        lr_dtype = torch.float32 if device.type == "cuda" and fused else torch.float64
        lr = torch.tensor(cfg.lr, dtype=lr_dtype, device=device) if tensor_lr else cfg.lr
        return cls(params, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
                   fused=fused or None)

    def lr(self, i: int = 0) -> float:
        return float(self.param_groups[0]["lr"])

    def seed_state(self, i: int = 0) -> dict:
        return self.state_dict()

    def load_seed_state(self, state: dict) -> None:
        """Load a checkpoint of either kind, keeping this optimizer's own kind of lr (a float, or the tensor a
        compiled step or graph reads, refilled in place) and its own `capturable` flag (load_state_dict would take
        the checkpoint's: a CUDA-graph checkpoint resumed on CPU would then fail)."""
        own = [(group["lr"], group.get("capturable", False)) for group in self.param_groups]
        self.load_state_dict(state)
        for group, (own_lr, capturable) in zip(self.param_groups, own):
            lr = float(group["lr"])
            group["lr"] = own_lr.fill_(lr) if isinstance(own_lr, torch.Tensor) else lr
            group["capturable"] = capturable

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state tensors by a stable name (absent before the first step, which creates them)."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        return {f"{index[id(p)]}.{key}": value for p, state in self.state.items()
                for key, value in state.items() if torch.is_tensor(value)}

    def make_capturable(self) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
        """Adam as a graph can replay it: capturable, every existing step count on the parameters' device (after a
        resume), and per group its lr as a float64 device tensor (same value) with a float32 twin. Returns the
        (group, lr, twin) triples `float32_lr` swaps."""
        lrs = []
        for group in self.param_groups:
            device = group["params"][0].device
            group["capturable"] = True
            lr = group["lr"]
            if not (isinstance(lr, torch.Tensor) and lr.device == device and lr.dtype == torch.float64):
                lr = group["lr"] = torch.tensor(float(lr), dtype=torch.float64, device=device)
            lrs.append((group, lr, torch.empty((), dtype=torch.float32, device=device)))
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
        return lrs


@contextlib.contextmanager
def float32_lr(lrs: list[tuple[dict, torch.Tensor, torch.Tensor]]):
    """Adam steps with the float32 twins, refreshed from the exact rates first (a kernel: captured, it runs at
    every replay); afterwards the groups hold the exact rates again, for the scheduler and checkpoints."""
    for group, lr, twin in lrs:
        twin.copy_(lr)
        group["lr"] = twin
    try:
        yield
    finally:
        for group, lr, _ in lrs:
            group["lr"] = lr


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


def memory_order(t: torch.Tensor) -> tuple[int, ...]:
    """The permutation of t's dims that lists them in memory order: t.permute(it) is contiguous if t is dense."""
    order = tuple(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    assert t.permute(order).is_contiguous(), (t.shape, t.stride())
    return order


class StackedAdam:
    """The Adam state of K seeds as [K, ...] tensors beside the stacked parameters `params` (by name), started from
    each seed's `shells[k]` (a TorchAdam over that seed's own model, fresh or restored from a checkpoint). The
    shells keep each seed's lr (their schedulers set it) and receive the state back for checkpoints."""

    def __init__(self, params: dict[str, torch.Tensor], shells: list[TorchAdam], cfg: TrainConfig,
                 device: torch.device):
        self.params, self.shells, self.k, self.device = params, shells, len(shells), device
        self.hyper = dict(beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay)
        self.fused_kernel, self.captured = uses_fused_kernel(cfg, device), False
        states = [[shell.state.get(p, {}) for p in shell.param_groups[0]["params"]] for shell in shells]
        self.exp_avgs, self.exp_avg_sqs = {}, {}
        for j, name in enumerate(params):
            zero = torch.zeros_like(params[name][0])
            for key, into in (("exp_avg", self.exp_avgs), ("exp_avg_sq", self.exp_avg_sqs)):  # in the param's layout
                stacked = torch.stack([st[j][key].to(zero) if st[j] else zero for st in states])
                into[name] = torch.empty_like(params[name]).copy_(stacked)
        self.steps = torch.tensor([self._step_of(i, st) for i, st in enumerate(states)], dtype=torch.float32,
                                  device=device)
        self.lr_tensor = torch.zeros(self.k, dtype=torch.float64, device=device)
        self.make_slices()

    @staticmethod
    def _step_of(i: int, states: list[dict]) -> float:
        values = {float(x["step"]) if x else 0.0 for x in states}
        if len(values) != 1:
            raise ValueError(f"seed index {i}: its Adam state has parameters at different steps {sorted(values)}")
        return values.pop()

    def lr(self, i: int) -> float:
        return self.shells[i].lr()

    def refresh(self, active: list[bool]) -> None:
        """After a scheduler or a divergence changed a rate: the lr tensor and the Python rates (0 when frozen)."""
        self.training = list(active)
        self.lrs = [self.lr(i) if on else 0.0 for i, on in enumerate(active)]
        self.lr_tensor.copy_(torch.tensor(self.lrs, dtype=torch.float64))

    def make_capturable(self) -> None:
        """Step with `stacked_adam_` from now on: tensor lrs and step counts, no Python floats, so a CUDA graph can
        replay the step after the scheduler changed a rate."""
        self.captured = True

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"steps": self.steps, **{f"exp_avg.{n}": t for n, t in self.exp_avgs.items()},
                **{f"exp_avg_sq.{n}": t for n, t in self.exp_avg_sqs.items()}}

    def step(self, grads: dict[str, torch.Tensor], active: torch.Tensor) -> None:
        if self.captured or not self.fused_kernel:
            stacked_adam_(self.params, grads, self.exp_avgs, self.exp_avg_sqs, self.steps, self.lr_tensor, active,
                          **self.hyper)
        else:
            self._fused_kernel_step(grads, active)

    def _fused_kernel_step(self, grads: dict, active: torch.Tensor) -> None:
        """torch's fused Adam kernel (Adam(fused=True)'s), one call per training seed on its slices with its lr.
        Per seed, not once on the stacked tensors: the kernel's vector/scalar split depends on where a tensor
        starts and ends, so a seed's rounding would depend on which seeds train beside it."""
        self.steps.add_(active.to(self.steps.dtype))
        slices = []
        for name, g in grads.items():
            p = self.params[name]
            if g.stride() != p.stride():  # the kernel walks memory in order: all four tensors in one layout
                g = torch.empty_like(p).copy_(g)
            slices.append(g.permute(0, *(d + 1 for d in self._memory_order[name])).unbind(0))
        for i, (training, lr) in enumerate(zip(self.training, self.lrs)):
            if training:
                ps, ms, vs = self._slices[i]
                torch._fused_adam_(ps, [g[i] for g in slices], ms, vs, [], [self.steps[i]] * len(ps), lr=lr,
                                   beta1=self.hyper["beta1"], beta2=self.hyper["beta2"],
                                   weight_decay=self.hyper["weight_decay"], eps=self.hyper["eps"], amsgrad=False,
                                   maximize=False)

    def make_slices(self) -> None:
        """Each seed's slices of params, exp_avgs, exp_avg_sqs for the eager kernel, made once: in memory order, so
        contiguous (the kernel's fast path: 2.4x faster than on a transposed slice)."""
        self._memory_order = {n: memory_order(p[0]) for n, p in self.params.items()}
        self._slices = [tuple([t[i].permute(self._memory_order[n]) for n, t in d.items()]
                              for d in (self.params, self.exp_avgs, self.exp_avg_sqs)) for i in range(self.k)]

    @torch.no_grad()
    def seed_state(self, i: int) -> dict:
        """Seed i's Adam state in its shell, laid out as torch.optim.Adam keeps it; returns the shell's state_dict."""
        shell = self.shells[i]
        group = shell.param_groups[0]
        for name, p in zip(self.params, group["params"]):
            step_device = p.device if group["fused"] or group["capturable"] else "cpu"
            shell.state[p] = {"step": self.steps[i].clone().to(step_device),
                              "exp_avg": torch.empty_like(p).copy_(self.exp_avgs[name][i]),
                              "exp_avg_sq": torch.empty_like(p).copy_(self.exp_avg_sqs[name][i])}
        return shell.state_dict()
