"""`python -m bench`: the command line, the environment block and the result writer of every part, CPU and GPU."""
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import psutil
import torch

import data
import models
from bench.epochs import bench_epoch, bench_latency, bench_pipeline, bench_throughput
from bench.inputs import resolve_data
from bench.project import bench_projection
from bench.routes import TrainConfig, cpu_model
from bench.sharing import bench_concurrency, bench_orchestration, bench_parallel
from bench.sizes import FULL, GPU, QUICK, Sizes
from bench.steps import bench_late, bench_steps, default_route
from bench.table import render
from orchestrator.cli import ArgumentParser


# Every part is part(args, sizes, cfg, log, earlier) -> its figures; `earlier` holds the figures of the parts before
# it. In the order they run: part 4 sizes its trials from part 1's rate, the projection uses every figure before it.
PARTS = {"throughput": bench_throughput, "parallel": bench_parallel, "orchestration": bench_orchestration,
         "latency": bench_latency, "steps": bench_steps, "late": bench_late, "epoch": bench_epoch,
         "concurrency": bench_concurrency, "pipeline": bench_pipeline, "projection": bench_projection}
NEED_NO_DATA = {"concurrency", "projection"}  # concurrency makes its own synthetic images
DEFAULT_PARTS = {"cpu": ("throughput", "parallel", "orchestration", "latency", "steps", "late", "projection"),
                 "cuda": ("throughput", "orchestration", "latency", "steps", "epoch", "concurrency", "projection")}


def parse_args(argv):
    ap = ArgumentParser(prog="python -m bench", description="How fast a trial trains, how well trials share the "
                        "machine, what orchestration costs, against the plain PyTorch route and the hardware limit.")
    ap.add_argument("--quick", action="store_true", help="a few minutes: tiny epochs, short trials, fewer repeats")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when present")
    ap.add_argument("--parts", default="", help=f"comma-separated parts of {','.join(PARTS)} (default on CPU: "
                    f"{','.join(DEFAULT_PARTS['cpu'])}; on CUDA: {','.join(DEFAULT_PARTS['cuda'])}); the figures "
                    "of --parts runs on one device merge into OUT-DIR/bench-parts.{json,md}")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out")
    ap.add_argument("--data-dir", help="CIFAR-10 directory (default: $CIFAR10_DIR, else "
                    "~/.cache/resnet-revisited/cifar10, else synthetic images of its size)")
    ap.add_argument("--variants", default=",".join(models.PAPER_VARIANTS),
                    help="comma-separated variants (default: the paper's eight)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1, like a trial)")
    ap.add_argument("--parallel-k", type=int, default=0, help="trials at once for 3, 4 and the projection "
                    "(default: CPU cores; 2 on CUDA)")
    ap.add_argument("--out-dir", default="bench/results", help="where the .md and .json go")
    ap.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    sized = ap.add_argument_group("sizes (default: the full, GPU or --quick run's: bench/sizes.py)")
    for f in FLAGGED:
        sized.add_argument(f.metadata["flag"], dest=f.name, type=FLAG_TYPES[f.type], help=f.metadata["help"])
    args = ap.parse_args(argv)
    check_args(args)
    return args


def names(csv: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in csv.split(",") if x.strip())


FLAGGED = [f for f in dataclasses.fields(Sizes) if "flag" in f.metadata]  # the sizes the command line sets
# a Sizes field's annotation -> its flag's parser
FLAG_TYPES = {int: int, float: float, tuple: lambda csv: tuple(int(k) for k in names(csv))}


def check_args(args) -> None:
    """Values argparse cannot check, and the device; ValueError with one line."""
    args.variants = names(args.variants)
    bad = [v for v in args.variants if v not in models.list_models()] or ([] if args.variants else ["(none)"])
    if bad:
        raise ValueError(f"unknown variant {','.join(bad)}: choose from {','.join(models.list_models())}")
    if (set(names(args.parts)) | set(names(args.skip))) - set(PARTS):
        raise ValueError(f"--parts and --skip take {','.join(PARTS)} (got {args.parts} / {args.skip})")
    given = [args.rounds, args.step_calls, args.fused_k, args.epoch_val_images, *(args.k_list or ())]
    if min([args.threads, *(x for x in given if x is not None)]) < 1 or args.parallel_k < 0:
        raise ValueError("--threads, --rounds, --steps, --fused-k, --val-images and --k-list values must be >= 1, "
                         "--parallel-k >= 0")
    if any((n or 0) < 0 or (n or 0) % 2 for n in (args.step_per_class, args.epoch_per_class)):
        raise ValueError("--per-class and --epoch-per-class must be even and >= 0 (an odd one leaves 1-image batches)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device: drop --device or use --device cpu")
    args.device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    chosen = names(args.parts) or DEFAULT_PARTS[args.device.type]
    args.merge = bool(args.parts)
    args.parts = tuple(p for p in PARTS if p in chosen and p not in names(args.skip))  # in the order they run


def resolve(args) -> Sizes:
    """The defaults that depend on the machine (cores, K, sizes, an MPS daemon), and the data every part reads."""
    args.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    args.parallel_k = args.parallel_k or (2 if args.device.type == "cuda" else args.cores)
    # an NVIDIA MPS control daemon: processes then share the GPU through it
    args.mps = args.device.type == "cuda" and any((p.info.get("name") or "").startswith("nvidia-cuda-mps")
                                                  for p in psutil.process_iter(["name"]))
    args.data_dir, args.data_label = (resolve_data(args.data_dir) if set(args.parts) - NEED_NO_DATA
                                      else (args.data_dir, "none read"))
    return sizes_of(args)


def sizes_of(args) -> Sizes:
    return dataclasses.replace(QUICK if args.quick else GPU if args.device.type == "cuda" else FULL,
                               **{f.name: getattr(args, f.name) for f in FLAGGED if getattr(args, f.name) is not None})


def plan(args) -> str:
    sizes = sizes_of(args)
    return "\n".join([f"python -m bench on {args.device}, variants {','.join(args.variants)}, data "
                      f"{args.data_dir or '$CIFAR10_DIR, else the default cache, else synthetic'}, out {args.out_dir}",
                      f"  parts: {','.join(args.parts)} (what each measures: bench/__init__.py)",
                      f"  steps routes: plain, eager, {default_route(args.device, sizes)}, fused (K={sizes.fused_k})",
                      f"  sizes: {sizes}"])


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        if args.dry_run:
            print(plan(args))
            return 0
        sizes = resolve(args)
    except (ValueError, data.DataError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)
    cuda = args.device.type == "cuda"
    hardware = torch.cuda.get_device_name(args.device) if cuda else cpu_model()
    env = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "device": args.device.type,
           "device_label": f"{args.device.type} ({hardware})", "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None, "mps": args.mps,
           "python": platform.python_version(), "cores": args.cores, "threads": args.threads, "k": args.parallel_k,
           "data": args.data_label, "peak_n": sizes.peak_n, "sizes": dataclasses.asdict(sizes),
           "parts": list(args.parts), "argv": sys.argv[1:] if argv is None else list(argv), "bench_seconds": 0.0}
    stem = Path(args.out_dir) / ("bench-parts" if args.merge else
                                 f"bench-{'quick' if args.quick else 'full'}-{time.strftime('%Y%m%d-%H%M%S')}")
    res = {**(earlier_parts(stem, env) if args.merge else {}), "environment": env}
    for part in args.parts:  # written after each part: a part that fails or is cut off keeps the ones before
        res[part] = PARTS[part](args, sizes, TrainConfig(data_dir=args.data_dir), log, res)
        env["bench_seconds"] = time.perf_counter() - t_start
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(render(res))
        stem.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    print("\n" + render(res) + f"\nwrote {stem}.md and {stem}.json ({env['bench_seconds']:.0f} s)")
    return 0


def earlier_parts(stem: Path, env: dict) -> dict:
    """An earlier --parts run's figures at `stem` if of this device (device_check.sh runs each part under a timeout)."""
    try:
        earlier = json.loads(stem.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return earlier if earlier.get("environment", {}).get("device_label") == env["device_label"] else {}


def main_with_parts(parts: str):
    """A main() that runs `parts` unless its command line names --parts: the entry point of an older command."""
    def run(argv=None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        return main(argv if any(a.startswith("--parts") for a in argv) else ["--parts", parts, *argv])
    return run
