"""How much `python -m bench` runs (full, quick, on a GPU) and the targets its tables judge against."""
import dataclasses

BATCH = 4
TARGET_SPEEDUP, TARGET_EFFICIENCY, TARGET_OVERHEAD = 1.5, 0.85, 0.05
# part 7/8: the default trainer step vs the plain route, fresh and late; K=5 fused seeds vs the trainer
TARGET_STEP_SPEEDUP, TARGET_FUSED_SPEEDUP = 1.6, 1.1
# the data pipeline: TrainSet's batches vs the plain route's, and their share of a Base step
TARGET_PIPELINE_SPEEDUP, TARGET_DATA_SHARE = 5.0, 0.10
PAPER_GRID = {"variants": 8, "seeds": 5, "epochs": 10, "train_images_per_epoch": 70_000, "val_images": 10_000}
STEPS_PER_EPOCH = PAPER_GRID["train_images_per_epoch"] // BATCH  # 17,500: no short last batch


def flag(default, name: str, help: str):
    """A size the command line can set, with `name` (python -m bench's sizes flags are these)."""
    return dataclasses.field(default=default, metadata={"flag": name, "help": help})


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much to run; the defaults are the full run on a CPU. Per-class counts are even (no 1-image batch);
    throughput epochs hold 14 x per_class samples (originals + a copy of the four focus classes)."""
    rounds: int = flag(5, "--rounds", "interleaved rounds of every part; medians reported")
    train_per_class: int = 24         # throughput epoch (1, 2)
    val_images: int = 500             # validation pass after each throughput epoch (the eval rate for 5)
    component_seconds: float = 0.5    # each step-component micro-timing (cause of a missed target)
    peak_n: int = 2048                # matmul size for the peak
    peak_seconds: float = 1.5
    parallel_per_class: int = 100     # epoch per process in 3
    grid_per_class: int = 0           # orchestration trials (4), unless sized from the measured rate:
    grid_train_seconds: float = 50    # training seconds per trial at the single-process rate, 0 = grid_per_class
    grid_epochs: int = 2
    latency_images: int = 2000        # validation images for the paper's latency definition (6)
    latency_repeats: int = 3
    batch1_calls: int = 100
    step_calls: int = flag(40, "--steps", "timed calls per route per round (7, 8)")
    step_per_class: int = flag(24, "--per-class", "training images per class for 7 and 8 (0 = all)")
    fused_k: int = flag(5, "--fused-k", "seeds per fused network (7)")
    step_compile: bool = True         # time the compiled route on CPU (a minute or so of compiling each)
    epoch_per_class: int = flag(0, "--epoch-per-class", "training images per class for the epoch part "
                                "(0 = all 5,000: the full protocol)")
    epoch_val_images: int = flag(10_000, "--val-images", "validation images in the epoch part")
    k_list: tuple = flag((1, 4, 8), "--k-list", "processes at once for the concurrency part, comma-separated")
    concurrency_seconds: float = flag(10.0, "--concurrency-seconds", "timed seconds per K (concurrency part)")
    pipeline_seconds: float = flag(5.0, "--seconds", "seconds per measurement of the pipeline part")


FULL = Sizes()
QUICK = dataclasses.replace(
    FULL, rounds=2, train_per_class=10, val_images=100, component_seconds=0.15, peak_n=1024, peak_seconds=0.3,
    parallel_per_class=10, grid_per_class=10, grid_train_seconds=0, grid_epochs=1, latency_images=200,
    latency_repeats=2, batch1_calls=20, step_calls=5, step_per_class=10, fused_k=2, step_compile=False,
    epoch_per_class=10, epoch_val_images=100, k_list=(1, 2), concurrency_seconds=2.0, pipeline_seconds=1.0)
# On a GPU a step is ~1 ms: many more calls, from the whole training set (its augmentation pass is then outside
# the timed steps, as in a real 17,500-step epoch).
GPU = dataclasses.replace(FULL, rounds=3, step_calls=200, step_per_class=0)
