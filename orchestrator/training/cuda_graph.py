"""The whole training step as one CUDA graph: captured once, replayed every step.

At batch 4 a step of these ~136k-parameter CNNs is a few hundred tiny kernels (forward, backward, Adam); on a GPU
its time goes to launching them from Python, not to running them. A CUDA graph records the step's kernels once
and replays them all with one launch. `graphed_step(trainer, batch_size)` returns a step with the contract of
`Trainer.make_step` (orchestrator.training.train): step(x, y) -> (loss, hits), tensors on the device, no host sync.

What PyTorch's CUDA-graph docs ("Whole-network capture", CUDA semantics notes) require, and how it is met here:

- Static inputs. A graph reads fixed addresses: each step copies its batch into static x [B, C, H, W] (in the
  trainer's memory format) and y [B], then replays.
- Static outputs. The loss and the number of correct predictions are tensors the graph rewrites at every replay.
  The caller accumulates them on the device before its next step overwrites them (train_epoch does), so there is
  no host sync per step.
- Warm-up on a side stream before capture (cuDNN/cuBLAS handles and workspaces, Adam's lazily created state),
  and the capture on that same stream. The warm-up steps really train, so the model's and Adam's state is copied
  before them and restored after: the graphed run makes exactly the eager run's updates from the same start.
- Grads. Set to None right before capture, so the captured backward allocates every .grad from the graph's
  private pool; replays rewrite those tensors in place (no zero_grad between replays). The eager fallback zeroes
  them in place (set_to_none=False) and accumulates into them, so they stay the graph's tensors.
- Adam. capturable=True (its step counts live on the device: no host sync inside step()), fused when the trainer
  asked for it (--fused-adam, the default), and the learning rate a CUDA tensor. ReduceLROnPlateau changes a
  tensor lr in place (fill_), so the replayed graph reads the new value. The group's lr is a float64 tensor that
  holds exactly the configured rate (what the trainer reports, checkpoints and the scheduler changes); the fused
  kernel reads a float32 one, so each step first copies it into a float32 twin, inside the graph, and Adam steps
  with the twin.
- A batch of another size (a short last batch) runs an eager step on the same model, optimizer and grads. That
  is rare: the paper's 70,000 samples per epoch at batch 4 leave no remainder.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

WARMUP_STEPS = 3  # the docs' example; the lazy initialisations (Adam's state, cuDNN/cuBLAS handles) happen in the first


def graphed_step(trainer, batch_size: int):
    """A CUDA-graph training step for `trainer` (an orchestrator.training.train.Trainer on a CUDA device), for batches of
    `batch_size`: step(x, y) -> (loss, hits), like Trainer.make_step. The first full batch captures the graph
    (a second or so); the returned tensors are the graph's static outputs, valid until the next call."""
    return GraphedStep(trainer, batch_size)


def check_trainer(trainer, batch_size: int) -> None:
    """Refuse what cannot be graphed, before anything about the trainer is changed."""
    device = trainer.device
    if device.type != "cuda":
        raise ValueError(f"graphed_step needs a trainer on a CUDA device, got one on {device}: on CPU use "
                         f"Trainer.make_step (orchestrator.training.train.train does, whatever --cuda-graph says)")
    if not isinstance(trainer.optimizer, torch.optim.Adam):
        raise ValueError(f"graphed_step makes torch.optim.Adam capturable; got {type(trainer.optimizer).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def make_capturable(optimizer: torch.optim.Adam) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    """Adam as a graph can replay it: capturable, every existing step count on the parameters' device (after a
    resume), and per group its lr as a float64 device tensor (same value) with a float32 twin. Returns the
    (group, lr, twin) triples `float32_lr` swaps."""
    lrs = []
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group["capturable"] = True
        lr = group["lr"]
        if not (isinstance(lr, torch.Tensor) and lr.device == device and lr.dtype == torch.float64):
            lr = group["lr"] = torch.tensor(float(lr), dtype=torch.float64, device=device)
        lrs.append((group, lr, torch.empty((), dtype=torch.float32, device=device)))
        for p in group["params"]:
            state = optimizer.state.get(p)
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


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor):
    """Forward, loss, backward, Adam; (loss, correct count) as device tensors. Grads must be None or zero."""
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    optimizer.step()
    return loss.detach(), (out.argmax(1) == y).sum()


def snapshot(model, optimizer) -> tuple[list[torch.Tensor], dict]:
    """Copies of all a step changes: parameters, buffers (BatchNorm's running stats and batch counters), Adam's
    state (absent for a fresh optimizer, whose state the first step creates)."""
    tensors = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
    state = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in optimizer.state.items()}
    return tensors, state


@torch.no_grad()
def restore(model, optimizer, saved: tuple[list[torch.Tensor], dict]) -> None:
    """Put `snapshot`'s values back IN PLACE (a captured graph keeps the addresses). Adam state created since the
    snapshot is zeroed: zero step count and zero moments are exactly how Adam creates it."""
    tensors, state = saved
    for live, old in zip((*model.parameters(), *model.buffers()), tensors, strict=True):
        live.copy_(old)
    for p, s in optimizer.state.items():
        for key, value in s.items():
            if not torch.is_tensor(value):
                continue
            if p in state:
                value.copy_(state[p][key])
            else:
                value.zero_()


class GraphedStep:
    """The callable `graphed_step` returns; captures on the first full batch (see the module docstring)."""

    def __init__(self, trainer, batch_size: int):
        check_trainer(trainer, batch_size)
        self.model, self.optimizer, self.batch_size = trainer.model, trainer.optimizer, batch_size
        self.memory_format = trainer.memory_format
        self.lrs = make_capturable(self.optimizer)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x = self.static_y = self.static_loss = self.static_hits = None
        self.eager_steps = 0  # batches of another size, run eagerly

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if len(y) != self.batch_size:
            return self.eager(x, y)
        if self.graph is None:
            self.static_x = torch.empty_like(x, memory_format=self.memory_format)
            self.static_y = torch.empty_like(y)
        elif x.shape != self.static_x.shape or x.dtype != self.static_x.dtype or y.dtype != self.static_y.dtype:
            raise ValueError(f"graphed step captured for x {tuple(self.static_x.shape)} {self.static_x.dtype}, "
                             f"y {self.static_y.dtype}; got x {tuple(x.shape)} {x.dtype}, y {y.dtype}")
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if self.graph is None:
            self.capture()
        self.graph.replay()
        return self.static_loss, self.static_hits

    def eager(self, x: torch.Tensor, y: torch.Tensor):
        """One eager step on the same model and optimizer; grads zeroed in place, so they stay the graph's."""
        self.eager_steps += 1
        self.optimizer.zero_grad(set_to_none=False)
        with warnings.catch_warnings(), float32_lr(self.lrs):
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # a rare uncaptured step is intended
            return train_step(self.model, self.optimizer, x.contiguous(memory_format=self.memory_format), y)

    def capture(self) -> None:
        """Warm up on a side stream, restore the state the warm-up changed, capture one step on that stream."""
        with torch.cuda.device(self.static_x.device):
            saved = snapshot(self.model, self.optimizer)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())  # the static inputs were filled on the current stream
            with torch.cuda.stream(side), warnings.catch_warnings(), float32_lr(self.lrs):
                # Adam warns once when a capturable instance steps uncaptured: here that is the point.
                warnings.filterwarnings("ignore", message=".*capturable=True.*")
                for _ in range(WARMUP_STEPS):
                    self.optimizer.zero_grad(set_to_none=True)
                    train_step(self.model, self.optimizer, self.static_x, self.static_y)
            torch.cuda.current_stream().wait_stream(side)
            restore(self.model, self.optimizer, saved)
            side.wait_stream(torch.cuda.current_stream())
            self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates .grad in the graph's pool
            graph = torch.cuda.CUDAGraph()
            # The default capture mode ("global", the docs'): the backward runs on autograd's CUDA worker thread,
            # and a trial's other threads (Ray's, MLflow's system-metrics monitor: NVML, not the CUDA runtime)
            # make no capture-unsafe CUDA calls.
            with torch.cuda.graph(graph, stream=side), float32_lr(self.lrs):
                self.static_loss, self.static_hits = train_step(self.model, self.optimizer, self.static_x,
                                                                self.static_y)
            self.graph = graph
