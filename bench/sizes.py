"""How much `python -m bench` runs (quick or full) and the targets its table judges against."""
from __future__ import annotations

import dataclasses

BATCH = 4
TARGET_SPEEDUP, TARGET_EFFICIENCY, TARGET_OVERHEAD = 1.5, 0.85, 0.05
# part 7/8: the default (compiled) trainer step vs the plain route, fresh and late; K=5 fused seeds vs the trainer
TARGET_STEP_SPEEDUP, TARGET_FUSED_SPEEDUP = 1.6, 1.1
PAPER_GRID = {"variants": 8, "seeds": 5, "epochs": 10, "train_images_per_epoch": 70_000, "val_images": 10_000}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much to run. Throughput epochs are stratified subsets (14 x per_class samples with focused
    augmentation: originals + a copy of the four focus classes); per_class is even, so no 1-image batch."""
    rounds: int                 # interleaved rounds for 1-3; medians reported
    train_per_class: int        # throughput epoch (1, 2)
    val_images: int             # validation pass after each throughput epoch (gives the eval rate for 5)
    component_seconds: float    # each step-component micro-timing (cause of a missed target)
    peak_n: int                 # matmul size for the peak
    peak_seconds: float
    parallel_per_class: int     # epoch per process in 3
    grid_per_class: int         # orchestration trials (4), unless sized from the measured rate:
    grid_train_seconds: float   # training seconds per trial at the single-process rate (then validation and
    grid_epochs: int            # latency on the 10,000 test images follow), 0 = use grid_per_class
    latency_images: int         # validation images for the paper's latency definition (6)
    latency_repeats: int
    batch1_calls: int
    step_rounds: int            # parts 7 and 8: interleaved rounds, and calls per route per round
    step_calls: int
    fused_k: int                # seeds fused into one network in part 7
    step_compile: bool          # time the compiled routes (a minute or so of compiling each)


FULL = Sizes(rounds=5, train_per_class=24, val_images=500, component_seconds=0.5, peak_n=2048, peak_seconds=1.5,
             parallel_per_class=100, grid_per_class=0, grid_train_seconds=50, grid_epochs=2, latency_images=2000,
             latency_repeats=3, batch1_calls=100, step_rounds=5, step_calls=40, fused_k=5,
             step_compile=True)
QUICK = Sizes(rounds=2, train_per_class=10, val_images=100, component_seconds=0.15, peak_n=1024, peak_seconds=0.3,
              parallel_per_class=10, grid_per_class=10, grid_train_seconds=0, grid_epochs=1, latency_images=200,
              latency_repeats=2, batch1_calls=20, step_rounds=2, step_calls=5, fused_k=2,
              step_compile=False)
