"""`python -m bench`: how fast a trial trains, how well trials share the machine, what orchestration
costs, against the plain PyTorch route and against the hardware limit. Every figure is a ratio taken in one run.

1. throughput   the project's trainer (`orchestrator.training.train.train`) vs the plain route (PIL transforms, DataLoader,
                the tutorial loop, default Adam) on the same focused-augmentation epoch, interleaved per variant
2. FLOP rate    6 x MACs/image x images/s against a large fp32 matmul on the same thread count
3. parallel     K one-thread trials at once (separate processes) against one alone
4. orchestration the same small grid through `orchestrator.run.run_sweep` (Ray Tune + MLflow) and through plain
                `train()` in K processes; wall-time ratio
5. projection   the paper's grid (8 variants x 5 seeds x 10 epochs) from the measured rates; compute floor
6. latency      `orchestrator.training.latency.measure_latency` per variant, both definitions, spread over repeats
7. steps        ms per model-step, routes interleaved: plain, the trainer eager and compiled (the default), K fused
                seeds; the compile seconds (bench/steps.py)
8. late state   V6 from a real late-epoch checkpoint holding subnormals: training steps and inference with
                denormals flushed and not (bench/steps.py, bench/late_state.py)
Writes bench/results/bench-<quick|full>-<time>.{md,json} and prints the Markdown.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import data
import models
from bench.sizes import FULL, QUICK, Sizes
from bench.steps import bench_late, bench_steps
from bench.suite import bench_latency, bench_orchestration, bench_parallel, bench_throughput, project
from bench.table import render
from orchestrator.cli import ArgumentParser
from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import cpu_model

# This file is the driver (parse_args, main); the pieces: sizes, plain (the reference route), measure (timings),
# workers (load accounting, worker processes), suite (the measurements), table (the Markdown report).


SKIPPABLE = ("parallel", "orchestration", "latency", "steps", "late")


def parse_args(argv):
    ap = ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: tiny epochs, short trials, fewer repeats")
    ap.add_argument("--data-dir", help="CIFAR-10 directory (default: $CIFAR10_DIR, else ~/.cache/resnet-revisited/cifar10)")
    ap.add_argument("--variants", default=",".join(models.list_models()), help="comma-separated variants")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1, like a trial)")
    ap.add_argument("--parallel-k", type=int, default=0, help="trials at once for 3 and 4 (default: CPU cores; 2 on CUDA)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when present")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 3, quick 2)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: " + ",".join(SKIPPABLE))
    ap.add_argument("--out-dir", default="bench/results", help="where the .md and .json go")
    args = ap.parse_args(argv)
    args.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in args.variants if v not in models.list_models()] or ([] if args.variants else ["(none)"])
    if bad:
        raise ValueError(f"unknown variant {','.join(bad)}: choose from {','.join(models.list_models())}")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.skip - set(SKIPPABLE):
        raise ValueError(f"--skip takes {', '.join(SKIPPABLE)} (got {','.join(sorted(args.skip))})")
    if args.threads < 1 or args.parallel_k < 0 or args.rounds < 0:
        raise ValueError("--threads must be >= 1, --parallel-k and --rounds >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device: drop --device or use --device cpu")
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        device, sizes = resolve(args)
    except (ValueError, data.DataError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)
    res = {"environment": environment(args, device, sizes, argv)}
    res.update(measure_all(args, sizes, TrainConfig(data_dir=args.data_dir), device, log))
    res["environment"]["bench_seconds"] = time.perf_counter() - t_start
    table = render(res)
    stem = write_results(res, table, Path(args.out_dir), args.quick)
    print("\n" + table + f"\nwrote {stem}.md and {stem}.json ({res['environment']['bench_seconds']:.0f} s)")
    return 0


def resolve(args) -> tuple[torch.device, Sizes]:
    """Fill in the defaults that depend on the machine (device, cores, K, sizes) and check the data loads."""
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    args.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    args.parallel_k = args.parallel_k or (2 if device.type == "cuda" else args.cores)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    root = data.resolve_data_dir(args.data_dir)
    data.load_cifar10(root, "train"), data.load_cifar10(root, "test")  # fail here, in one line
    args.data_dir = str(root)
    return device, sizes


def environment(args, device, sizes: Sizes, argv) -> dict:
    """What produced the figures: time, device, library versions, cores, threads, data, sizes, command line."""
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    _, train_y = data.load_cifar10(args.data_dir, "train")
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "device": device.type,
            "device_label": f"{device.type} ({hardware})", "latency_device": f"{device.type} ({hardware})",
            "torch": torch.__version__, "python": platform.python_version(), "cores": args.cores,
            "threads": args.threads, "k": args.parallel_k,
            "data": f"{args.data_dir} ({len(train_y):,} training images)", "peak_n": sizes.peak_n,
            "sizes": dataclasses.asdict(sizes), "argv": sys.argv[1:] if argv is None else list(argv)}


def measure_all(args, sizes: Sizes, base_cfg: TrainConfig, device, log) -> dict:
    """The measurements not skipped, in order, then the projection of the paper's grid from them."""
    res = {"throughput": bench_throughput(args, sizes, base_cfg, device, log)}
    if "parallel" not in args.skip:
        res["parallel"] = bench_parallel(args, sizes, base_cfg, device, log)
    if "orchestration" not in args.skip:
        rate = res["throughput"]["variants"].get("base", {}).get("trainer_median_images_per_second", 0)
        res["orchestration"] = bench_orchestration(args, sizes, base_cfg, device, log, rate)
    if "latency" not in args.skip:
        res["latency"] = bench_latency(args, sizes, base_cfg, device, log)
    if device.type == "cpu":  # on CUDA, bench.gpu times the steps (with the CUDA-graph route)
        if "steps" not in args.skip:
            res["steps"] = bench_steps(args, sizes, base_cfg, device, log)
        if "late" not in args.skip:
            res["late"] = bench_late(args, sizes, base_cfg, device, log)
    res["projection"] = project(res["throughput"], res.get("parallel"), res.get("orchestration"), res.get("latency"),
                                args.parallel_k, res.get("steps"))
    return res


def write_results(res: dict, table: str, out: Path, quick: bool) -> Path:
    """bench-<quick|full>-<time>.md and .json under `out`; returns their common stem."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench-{'quick' if quick else 'full'}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    return stem
