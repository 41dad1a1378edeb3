"""Fused seeds: the K seeds of one variant trained as ONE stacked network, in one process.

At batch 4 a step of these ~136k-parameter CNNs is mostly per-op overhead; K seeds stacked into one network pay
that overhead once for K models. The protocol (orchestrator.training.protocol) runs the epochs, exactly as for one
seed; this trainer only takes the steps, and each seed keeps everything it has in an unfused trial:

- Its own `Seed` (`protocol.make_seed`): init `seed_everything(k)` then the model, the real Adam/ReduceLROnPlateau
  pair (a "shell" that is never stepped: its scheduler steps on the seed's own val accuracy, and the lr it sets is
  copied into the stacked Adam), its own data order (step i trains every seed on its own batch i), its history.
  It validates, checkpoints and is measured on its own unstacked model, with the stacked weights copied in.
- The stacked network (orchestrator.training.stacked) trains in channels_last (unless cfg.channels_last is off)
  for every variant, V2/Alpha too: their strided 1x1 skip conv from the image, which the unfused trainer keeps out
  of channels_last (a oneDNN heap corruption), runs as a stride-1 conv of the subsampled image (the same maths).
  That makes fused V2/Alpha ~1.4x faster than in the contiguous format. The seeds' own models validate in the
  unfused format.
- BatchNorm running stats live in seed k's rows of the stacked buffers, updated by that seed's batches only.
- Adam (orchestrator.training.adam.StackedAdam): a seed's update is the unfused one's (torch's fused kernel on its
  slices); a CUDA graph steps all seeds with the same maths on tensors.
- Divergence: a seed whose epoch train loss is non-finite stops (the protocol says why); its lr becomes 0 and its
  updates are masked out; the others go on.
- Checkpoints: `make_state` gives exactly a single-seed trial's checkpoint for that seed, and `states` resume from
  either kind. Training draws nothing from the global RNGs, so the RNG state each seed records is the one right
  after its model was built (or the one it resumed with), as in an unfused trial.
- `epoch_seconds` is the wall time of the whole fused epoch (training all K seeds, then validating all K), the same
  for every seed; `train_images_per_second` is that seed's images over the fused training time.
- Not compiled: compiling the stacked step gained 0.91-1.14x over eager (measured), for minutes of compiling.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import stack_module_state

from orchestrator.training import protocol
from orchestrator.training.adam import StackedAdam
from orchestrator.training.config import TrainConfig
from orchestrator.training.protocol import EpochStats, TrialData, make_seed, snapshot
from orchestrator.training.stacked import arrange, stacked_loss, stacked_template


def check_states(seeds: list[int], states: dict | None) -> dict:
    if not states:
        return {}
    if set(states) != set(seeds):
        raise ValueError(f"states must hold one checkpoint per seed {seeds}, got seeds {sorted(states)}")
    epochs = sorted({int(states[s]["epoch"]) for s in seeds})
    if len(epochs) > 1:
        raise ValueError(f"fused seeds train in lockstep: every state must be after the same epoch, got {epochs}")
    return states


class FusedSeeds:
    """K seeds of one variant as one stacked network (see the module docstring).

    Live state, all [K, ...]: params and buffers (dicts by parameter name), the StackedAdam's moments and steps,
    `active`. `seeds[i]` is seed i's own `protocol.Seed`.
    """

    def __init__(self, cfg: TrainConfig, variant: str, seeds, d: TrialData, device: torch.device, *,
                 states: dict | None = None):
        seed_list = [int(s) for s in seeds]
        if not seed_list or len(set(seed_list)) != len(seed_list):
            raise ValueError(f"fused seeds need distinct seeds, got {list(seeds)}")
        states = check_states(seed_list, states)
        self.cfg, self.device, self.k = cfg, device, len(seed_list)
        self.seeds = [make_seed(cfg, variant, s, d, device, states.get(s), live_rng=False) for s in seed_list]
        self.eval_format = self.seeds[0].memory_format
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.start_epoch = self.seeds[0].start_epoch
        self.template = stacked_template(self.seeds[0].model, self.k)
        params, buffers = stack_module_state([s.model for s in self.seeds])
        self.params = {n: arrange(self.template, n, p.detach(), self.memory_format) for n, p in params.items()}
        self.buffers = {n: b.contiguous() for n, b in buffers.items()}
        self.adam = StackedAdam(self.params, [s.optimizer for s in self.seeds], cfg, device)
        self.active = torch.ones(self.k, dtype=torch.bool, device=device)
        self.after_schedulers()
        self.graphed = device.type == "cuda" and cfg.cuda_graph
        self.step = self.graphed_step(cfg.batch_size) if self.graphed else self.train_step
        self.setup_seconds = 0.0

    # --- a step -----------------------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor):
        """One step of every seed: x [B, K*3, H, W] (seed k's images in channels 3k..3k+2), y [B, K]; returns the
        per-seed losses [K] and correct counts [K]."""
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        losses, out = stacked_loss(self.template, leaves, self.buffers, x, y)
        grads = dict(zip(leaves, torch.autograd.grad(losses.sum(), list(leaves.values()))))
        with torch.no_grad():
            self.adam.step(grads, self.active)
        return losses.detach(), (out.detach().argmax(-1) == y).sum(0)

    def graphed_step(self, batch_size: int):
        """`train_step` as one CUDA graph (orchestrator.training.cuda_graph): the stacked network of K seeds at
        batch 4 is the launch-bound case graphs exist for. StackedAdam steps with tensor lrs from now on."""
        from orchestrator.training.cuda_graph import CapturedStep, check_device  # CUDA only
        check_device(self.device)
        self.adam.make_capturable()

        def state() -> dict:
            return {**{f"param.{n}": p for n, p in self.params.items()},
                    **{f"buffer.{n}": b for n, b in self.buffers.items()},
                    **{f"adam.{n}": t for n, t in self.adam.tensors().items()}}
        return CapturedStep(self.train_step, state, batch_size=batch_size, memory_format=self.memory_format)

    def to(self, dtype: torch.dtype) -> "FusedSeeds":
        """The stacked tensors in another floating dtype (float64 for exactness tests; the seeds' own models are
        the caller's to convert)."""
        for group in (self.params, self.buffers, self.adam.exp_avgs, self.adam.exp_avg_sqs):
            for name, t in group.items():
                if t.is_floating_point():
                    group[name] = t.to(dtype)
        self.adam.params = self.params
        self.adam.make_slices()
        return self

    # --- what the protocol asks of a trainer -----------------------------------------------------------------------
    def train_epoch(self, epoch: int, on_progress=None) -> EpochStats:
        """Every seed's epoch, step i on batch i of each seed's own TrainSet."""
        def stacked(batch):
            y = torch.stack([yb for _, yb in batch], dim=1)
            return torch.cat([xb for xb, _ in batch], dim=1).contiguous(memory_format=self.memory_format), y
        batches = (stacked(b) for b in zip(*(s.train_set.batches(epoch) for s in self.seeds), strict=True))
        stats, first_step_seconds = protocol.step_through(self.step, batches, self.k, self.device, on_progress)
        if self.graphed and epoch == self.start_epoch:
            self.setup_seconds = first_step_seconds  # the capture
        return stats

    @torch.no_grad()
    def sync_model(self, i: int) -> nn.Module:
        """Copy seed i's stacked weights and BatchNorm buffers into its own unstacked model; return the model."""
        model = self.seeds[i].model
        for name, p in model.named_parameters():
            p.copy_(self.params[name][i])
        for name, b in model.named_buffers():
            b.copy_(self.buffers[name][i])
        return model

    def freeze(self, i: int) -> None:
        self.sync_model(i)  # the weights it diverged with; from now on its updates are masked out
        self.active[i] = False

    def after_schedulers(self) -> None:
        self.adam.refresh([s.reason is None for s in self.seeds])

    def make_state(self, i: int, epoch: int) -> dict:
        """Seed i's checkpoint after `epoch`, exactly a single-seed trial's; call it at that epoch's end."""
        self.sync_model(i)
        return snapshot(epoch, self.seeds[i], self.adam.seed_state(i))
