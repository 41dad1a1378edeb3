"""`python -m bench.pipeline`: how fast `data.TrainSet` builds the paper's training batches, against
the plain route.

Both routes build the same thing: the `focused` epoch (all originals plus one augmented copy of every
bird/cat/deer/dog image), shuffled, normalized, in batches of 4. Measurements are interleaved (ours, plain,
Base step, repeated) so load changes on the machine hit all of them alike; medians are reported.
Our route is timed over whole epochs, so its per-epoch augmentation pass is included in the rate.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader

import models
from data import DataError, TrainSet, load_cifar10, resolve_data_dir
from data.trainset import DEFAULT_FOCUS
from bench.plain import paper_adam, plain_loader
from bench.sizes import BATCH
from orchestrator.cli import ArgumentParser


def time_ours(train: TrainSet, seconds: float, epoch: int) -> tuple[float, int]:
    """Whole epochs (at least one): images/s including each epoch's augmentation pass."""
    images, start = 0, time.perf_counter()
    while True:
        for x, y in train.batches(epoch):
            images += len(y)
        epoch += 1
        if time.perf_counter() - start >= seconds:
            return images / (time.perf_counter() - start), epoch


def time_plain(loader: DataLoader, seconds: float) -> float:
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x, y in loader:
            images += len(y)
            if time.perf_counter() - start >= seconds:
                break
    return images / (time.perf_counter() - start)


def base_step_ms(seconds: float) -> float:
    """A Base training step at batch 4 (Adam as in the paper), ms."""
    net = models.create_model("base")
    opt = paper_adam(net.parameters())
    x, y = torch.randn(BATCH, 3, 32, 32), torch.randint(0, 10, (BATCH,))

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for _ in range(10):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return (time.perf_counter() - start) / steps * 1e3


def main(argv=None) -> int:
    ap = ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", help="CIFAR-10 directory (default: $CIFAR10_DIR, else ~/.cache/resnet-revisited/cifar10)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = resolve_data_dir(args.data_dir)
    try:
        images, labels = load_cifar10(root, "train")
    except DataError as e:
        print(f"bench.pipeline: {e}", file=sys.stderr)
        return 2

    train = TrainSet(images, labels, augment="focused", focus_classes=DEFAULT_FOCUS, batch_size=BATCH, seed=0)
    loader = plain_loader(images, labels, DEFAULT_FOCUS)
    print(f"bench.pipeline: {len(labels):,} training images from {root}; focused epoch of {train.num_samples():,} "
          f"samples in batches of {BATCH}; {args.threads} thread(s); {args.rounds} interleaved rounds of "
          f"~{args.seconds:g} s each")
    ours, plain, steps, epoch = [], [], [], 0
    for _ in range(args.rounds):
        rate, epoch = time_ours(train, args.seconds, epoch)
        ours.append(rate)
        plain.append(time_plain(loader, args.seconds))
        steps.append(base_step_ms(args.seconds))
    ours_rate, plain_rate = statistics.median(ours), statistics.median(plain)
    us_per_batch = BATCH / ours_rate * 1e6
    speedup = ours_rate / plain_rate
    fmt = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)  # noqa: E731
    print(f"this pipeline (TrainSet, whole epochs incl. augmentation): {ours_rate:>9,.0f} images/s "
          f"({us_per_batch:.0f} us per batch)   rounds: {fmt(ours)}")
    print(f"plain route (PIL transforms, DataLoader, 0 workers):       {plain_rate:>9,.0f} images/s "
          f"({BATCH / plain_rate * 1e6:.0f} us per batch)   rounds: {fmt(plain)}")
    print(f"speed-up: {speedup:.1f}x (target >= 5x: {'met' if speedup >= 5 else 'NOT met'})")
    step_ms = statistics.median(steps)
    share = us_per_batch / 1e3 / step_ms
    print(f"Base training step, batch {BATCH} (forward, backward, Adam): {step_ms:.2f} ms; data per batch is "
          f"{share:.1%} of it (target < 10%: {'met' if share < 0.10 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
