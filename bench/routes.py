"""The routes the benchmark times, and its one door to the project's trainer: every name the benchmark takes from
`orchestrator.training` (and from the sweep, for part 4) is imported here, so a change of the trainer's API is
adapted in this file alone. The plain route (bench/plain.py) is the yardstick and runs none of it."""
import dataclasses
import itertools
from typing import Callable

import torch

import data
from orchestrator.sweep import records
from orchestrator.sweep.config import SweepConfig
from orchestrator.training import export, latency
from orchestrator.training.config import TrainConfig
from orchestrator.training.fused import FusedSeeds
from orchestrator.training.device import cpu_model, sync, torch_threads
from orchestrator.training.protocol import TrialData, build, evaluate, load_state, seed_everything
from orchestrator.training.single import graphed_step, make_step
from orchestrator.training.train import speed_in_effect, train

__all__ = ["SweepConfig", "TrainConfig", "TrialData", "cpu_model", "evaluate", "export", "latency", "records",
           "speed_in_effect", "sync", "torch_threads", "train"]  # taken from the trainer for the rest


@dataclasses.dataclass
class Route:
    """One timed route: `step()` makes `per_call` model-steps, with denormals flushed or not while it runs."""
    step: Callable
    per_call: int = 1
    flush: bool = True


def cycle(make_epoch):
    """Batches of epoch 1, 2, ... forever, without 1-image batches (the trainer skips them: BatchNorm1d)."""
    return ((x, y) for x, y in itertools.chain.from_iterable(map(make_epoch, itertools.count(1))) if len(y) >= 2)


def fresh_model(cfg: TrainConfig, variant: str, device) -> tuple[torch.nn.Module, torch.memory_format]:
    """A fresh model as the trainer builds it, and the memory format its inputs take (protocol.build keeps V2/Alpha
    contiguous on CPU: a oneDNN bug)."""
    s = build(cfg, variant, device)
    return s.model, s.memory_format


def trainer_step(cfg: TrainConfig, variant: str, train_set: data.TrainSet, device, graphed: bool = False,
                 state: dict | None = None) -> Callable:
    """A step of the trainer as its epoch loop runs it (loss and hits summed on the device, no host sync); compiled
    when cfg.compile, one CUDA graph when `graphed`, from the checkpoint `state` if given; `.model`, `.optimizer`."""
    seed_everything(0)
    trainer = build(cfg, variant, device, tensor_lr=cfg.compile)  # as a trial: a tensor lr under compile
    if state is not None:
        load_state(trainer, state)
    trainer.model.train()
    step = graphed_step(trainer, cfg.batch_size) if graphed else make_step(trainer, compiled=cfg.compile)
    batches = cycle(train_set.batches)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)

    def one() -> None:
        x, y = next(batches)
        loss, hits = step(x.contiguous(memory_format=trainer.memory_format), y)
        loss_sum.add_(loss * len(y))
        correct.add_(hits)
    one.model, one.optimizer = trainer.model, trainer.optimizer
    return one


def fused_step(cfg: TrainConfig, variant: str, k: int, d: TrialData, device) -> Callable:
    """One call = K model-steps of `--fuse-seeds`: K seeds of `variant` as one stacked network, `FusedSeeds.step`
    as a fused trial runs it (eager on CPU, one CUDA graph on CUDA with cfg.cuda_graph), each on its own batch."""
    seeds = FusedSeeds(cfg, variant, range(k), d, device)

    def stacked(epoch):  # seed i's images in channels 3i..3i+2, its labels in column i
        for batch in zip(*(s.train_set.batches(epoch) for s in seeds.seeds)):
            yield torch.cat([x for x, _ in batch], dim=1), torch.stack([y for _, y in batch], dim=1)
    batches = cycle(stacked)

    def one() -> None:
        x, y = next(batches)
        seeds.step(x.contiguous(memory_format=seeds.memory_format), y)
    return one


def run_sweep(cfg: SweepConfig) -> dict:
    """The sweep driver, imported only when part 4 runs (it brings in Ray and MLflow)."""
    from orchestrator.sweep.driver import run_sweep as run
    return run(cfg)
