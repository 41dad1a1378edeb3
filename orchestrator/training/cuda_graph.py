"""The whole training step as one CUDA graph: captured once, replayed every step.

At batch 4 a step of these ~136k-parameter CNNs is a few hundred tiny kernels (forward, backward, Adam); on a GPU
its time goes to launching them from Python, not to running them. A CUDA graph records the step's kernels once
and replays them all with one launch. `CapturedStep` captures any training step that keeps its state in tensors;
`single.graphed_step` captures one seed's step, `FusedSeeds.graphed_step` the K fused seeds' one: step(x, y) -> (losses, hits), tensors on the device, no host sync.

What PyTorch's CUDA-graph docs ("Whole-network capture", CUDA semantics notes) require, and how it is met here:

- Static inputs. A graph reads fixed addresses: each step copies its batch into static x [B, C, H, W] (in the
  trainer's memory format) and y [B], then replays.
- Static outputs. The loss and the number of correct predictions are tensors the graph rewrites at every replay.
  The caller accumulates them on the device before its next step overwrites them (train_epoch does), so there is
  no host sync per step.
- Warm-up on a side stream before capture (cuDNN/cuBLAS handles and workspaces, Adam's lazily created state),
  and the capture on that same stream. The warm-up steps really train, so the model's and Adam's state is copied
  before them and restored after: the graphed run makes exactly the eager run's updates from the same start.
- Grads (one seed). Set to None right before capture, so the captured backward allocates every .grad from the
  graph's private pool; replays rewrite those tensors in place (no zero_grad between replays). The eager fallback
  zeroes them in place (set_to_none=False) and accumulates into them, so they stay the graph's tensors. Fused
  seeds take their grads from torch.autograd.grad, allocated inside the graph too.
- Adam (orchestrator.training.adam). One seed: torch's Adam, capturable=True (its step counts live on the device:
  no host sync inside step()), fused when the trainer asked for it (--fused-adam, the default), and the learning
  rate a CUDA tensor. ReduceLROnPlateau changes a tensor lr in place (fill_), so the replayed graph reads the new
  value. The group's lr is a float64 tensor that holds exactly the configured rate (what the trainer reports,
  checkpoints and the scheduler changes); the fused kernel reads a float32 one, so each step first copies it into a
  float32 twin, inside the graph, and Adam steps with the twin. Fused seeds: StackedAdam's tensor maths, with a
  per-seed lr tensor and step counts, so there is no Python float to go stale in the graph.
- A batch of another size (a short last batch) runs an eager step on the same model, optimizer and grads. That
  is rare: the paper's 70,000 samples per epoch at batch 4 leave no remainder.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch


WARMUP_STEPS = 3  # the docs' example; the lazy initialisations (Adam's state, cuDNN/cuBLAS handles) happen in the first


def snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of everything a step changes (parameters, buffers, optimizer state), by name."""
    return {name: t.detach().clone() for name, t in tensors.items()}


@torch.no_grad()
def restore(tensors: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    """Put `snapshot`'s values back IN PLACE (a captured graph keeps the addresses). State created since the
    snapshot (a fresh Adam's, made by the first step) is zeroed: zero step counts and moments are how Adam starts."""
    for name, t in tensors.items():
        if name in saved:
            t.copy_(saved[name])
        else:
            t.zero_()


class CapturedStep:
    """`eager(x, y) -> outputs` captured as one CUDA graph on the first batch of `batch_size`, replayed after.
    `state()` names every tensor a step changes (so the warm-up can be undone), `prepare()` runs before the warm-up
    steps and the capture, `before_eager()` before a step of another batch size, which runs eagerly, and every
    step runs inside `context()`."""

    def __init__(self, eager: Callable, state: Callable[[], dict], *, batch_size: int, memory_format,
                 prepare: Callable[[], None] = lambda: None, before_eager: Callable[[], None] = lambda: None,
                 context: Callable = contextlib.nullcontext):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.eager_step, self.state, self.batch_size, self.memory_format = eager, state, batch_size, memory_format
        self.prepare, self.before_eager, self.context = prepare, before_eager, context
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x = self.static_y = self.static_out = None
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
        return self.static_out

    def eager(self, x: torch.Tensor, y: torch.Tensor):
        self.eager_steps += 1
        self.before_eager()
        with warnings.catch_warnings(), self.context():
            warnings.filterwarnings("ignore", message=".*capturable=True.*")  # a rare uncaptured step is intended
            return self.eager_step(x.contiguous(memory_format=self.memory_format), y)

    def capture(self) -> None:
        """Warm up on a side stream, restore the state the warm-up changed, capture one step on that stream."""
        with torch.cuda.device(self.static_x.device):
            saved = snapshot(self.state())
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())  # the static inputs were filled on the current stream
            with torch.cuda.stream(side), warnings.catch_warnings(), self.context():
                # Adam warns once when a capturable instance steps uncaptured: here that is the point.
                warnings.filterwarnings("ignore", message=".*capturable=True.*")
                for _ in range(WARMUP_STEPS):
                    self.prepare()
                    self.eager_step(self.static_x, self.static_y)
            torch.cuda.current_stream().wait_stream(side)
            restore(self.state(), saved)
            side.wait_stream(torch.cuda.current_stream())
            self.prepare()
            graph = torch.cuda.CUDAGraph()
            # The default capture mode ("global", the docs'): the backward runs on autograd's CUDA worker thread,
            # and a trial's other threads (Ray's, MLflow's system-metrics monitor: NVML, not the CUDA runtime)
            # make no capture-unsafe CUDA calls.
            with torch.cuda.graph(graph, stream=side), self.context():
                self.static_out = self.eager_step(self.static_x, self.static_y)
            self.graph = graph


def check_device(device: torch.device) -> None:
    """Refuse what cannot be graphed, before anything is changed."""
    if device.type != "cuda":
        raise ValueError(f"a CUDA graph needs a trainer on a CUDA device, got one on {device}: on CPU the trainers "
                         f"step eagerly or compiled, whatever --cuda-graph says")
