"""`python -m bench`: how fast a trial trains, how well trials share the machine, what orchestration costs, against
the plain PyTorch route and against the hardware limit, on a CPU or a GPU. Every figure is a ratio taken in one run.
Parts (`--parts`, `--skip`; the defaults depend on the device):

1. throughput   the trainer vs the plain route (plain.py) on one focused-augmentation epoch, per variant (epochs.py)
2. FLOP rate    6 x MACs/image x images/s against a large fp32 matmul on the same thread count (with 1)
3. parallel     K one-thread trials at once (separate processes) against one alone (sharing.py)
4. orchestration one small grid through the sweep (Ray Tune + MLflow) and plain `train()` in K processes (sharing.py)
5. projection   the paper's grid under the sweep's old default and `--fuse-seeds auto`; compute floor (project.py)
6. latency      `measure_latency` per variant, both definitions, spread over repeats (epochs.py)
7. steps        ms per model-step, routes interleaved: plain, eager, the default, K fused seeds (steps.py)
8. late         V6 from a real late-epoch checkpoint holding subnormals, denormals flushed and not (steps.py)
   epoch        one real full-protocol epoch of base through `train()` (epochs.py)
   concurrency  K processes training base on the device at once (sharing.py)
   pipeline     data.TrainSet building the paper's batches against the plain route (epochs.py; not run by default)

The rest: cli (command line, result writer), routes (the one door to the trainer), plain (the yardstick route),
measure (timers), sharing (also load accounting, worker pool), inputs, late_state, sizes, table (the Markdown).
Writes OUT-DIR/bench-<quick|full>-<time>.{md,json} (a --parts run: bench-parts, merged) and prints the Markdown.
"""
from bench.cli import main, parse_args

__all__ = ["main", "parse_args"]
