"""The trainer of one seed: the protocol's K = 1 case (orchestrator.training.protocol runs its epochs).

Its step is forward, loss, backward and Adam on the seed's own model. With --compile the whole step is one
torch.compile function (the forward compiled with its backward by AOTAutograd, Adam's update into fused kernels of
its own); on CUDA with --cuda-graph it is captured once as a CUDA graph (orchestrator.training.cuda_graph), which
does for a batch-4 step on a GPU what compiling does (it removes the per-kernel launch cost) without a minute of
compiling per variant.
"""
from __future__ import annotations

import torch

from orchestrator.training import protocol
from orchestrator.training.adam import float32_lr
from orchestrator.training.config import TrainConfig
from orchestrator.training.loss import cross_entropy
from orchestrator.training.protocol import EpochStats, Seed, TrialData, make_seed, snapshot


def forward_backward_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                          y: torch.Tensor):
    """Forward, loss, backward, Adam; (loss, correct count) as device tensors, no host sync. Grads must be None
    or zero."""
    out = model(x)
    loss = cross_entropy(out, y)
    loss.backward()
    optimizer.step()
    return loss.detach(), (out.argmax(1) == y).sum()


def make_step(s: Seed, compiled: bool):
    """The eager (or, with `compiled`, torch.compile'd) step of seed `s`; grads are set to None after each."""
    model, optimizer = s.model, s.optimizer

    def step(x: torch.Tensor, y: torch.Tensor):
        result = forward_backward_step(model, optimizer, x, y)
        optimizer.zero_grad(set_to_none=True)
        return result
    return torch.compile(step) if compiled else step


def seed_tensors(s: Seed) -> dict[str, torch.Tensor]:
    """Everything a step of seed `s` changes: its parameters, buffers and Adam state, by name."""
    return {**{f"param.{n}": p for n, p in s.model.named_parameters()},
            **{f"buffer.{n}": b for n, b in s.model.named_buffers()},
            **{f"adam.{n}": t for n, t in s.optimizer.tensors().items()}}


def graphed_step(s: Seed, batch_size: int):
    """One seed's training step (single.forward_backward_step) as a CUDA graph: torch's Adam made capturable, grads
    set to None before the capture (the graph allocates them), zeroed in place before an eager step."""
    from orchestrator.training.cuda_graph import CapturedStep, check_device  # CUDA only: CPU runs never import it
    check_device(next(s.model.parameters()).device)
    model, optimizer = s.model, s.optimizer
    lrs = optimizer.make_capturable()
    return CapturedStep(lambda x, y: forward_backward_step(model, optimizer, x, y), lambda: seed_tensors(s),
                        batch_size=batch_size,
                        memory_format=s.memory_format, prepare=lambda: optimizer.zero_grad(set_to_none=True),
                        before_eager=lambda: optimizer.zero_grad(set_to_none=False),
                        context=lambda: float32_lr(lrs))


class SingleSeed:
    """One seed of `variant`, built as a trial builds it (resumed from `state`, a checkpoint of either trainer)."""

    def __init__(self, cfg: TrainConfig, variant: str, seed: int, d: TrialData, device: torch.device,
                 state: dict | None = None):
        # A tensor learning rate under compile: ReduceLROnPlateau changes it in place, with no recompile.
        s = make_seed(cfg, variant, seed, d, device, state, tensor_lr=cfg.compile, live_rng=True)
        self.seeds, self.device, self.start_epoch = [s], device, s.start_epoch
        self.memory_format = self.eval_format = s.memory_format
        self.graphed = device.type == "cuda" and cfg.cuda_graph
        if self.graphed:
            self.step = graphed_step(s, cfg.batch_size)
        else:
            self.step = make_step(s, cfg.compile)
        self.step_is_setup = self.graphed or cfg.compile  # its first call compiles or captures
        self.setup_seconds = 0.0

    def train_epoch(self, epoch: int, on_progress=None) -> EpochStats:
        s = self.seeds[0]
        s.model.train()
        batches = ((x.contiguous(memory_format=self.memory_format), y) for x, y in s.train_set.batches(epoch))
        stats, first_step_seconds = protocol.step_through(self.step, batches, 1, self.device, on_progress)
        if self.step_is_setup and epoch == self.start_epoch:  # a step takes ms: the first one's time is the setup
            self.setup_seconds = first_step_seconds
        return stats

    def sync_model(self, i: int) -> torch.nn.Module:
        return self.seeds[i].model  # it trains in place

    def freeze(self, i: int) -> None:
        pass  # its only seed stopped: run_epochs trains no further epoch

    def after_schedulers(self) -> None:
        pass  # the scheduler set the optimizer's own lr (a tensor under compile or a graph: in place)

    def make_state(self, i: int, epoch: int) -> dict:
        s = self.seeds[i]
        return snapshot(epoch, s, s.optimizer.state_dict())
