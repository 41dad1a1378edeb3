"""`python -m bench.gpu`: what one GPU does with the paper's batch-4 steps, and the grid's wall time.

Parts (`--parts`, default all; each merges its figures into OUT/gpu-bench.json and rewrites OUT/gpu-bench.md, so
scripts/device_check.sh runs them one by one, each under its own timeout):

  steps        ms per model-step, per variant, routes interleaved round by round in one process on one device:
               eager    the project's trainer step (train.build + Trainer.make_step, fused Adam, channels_last,
                        batches from data.TrainSet on the device), what train() runs with --no-cuda-graph
               graph    the same trainer with the whole step as one CUDA graph (orchestrator.training.cuda_graph), what
                        train() runs on CUDA by default; n/a on CPU
               plain    the plain PyTorch route (bench/plain.py: PIL + DataLoader batches, default Adam, loss.item()
                        every step)
               fused    HOOK for "fused seeds + graph" (orchestrator.training.fused, another change): time per model-step of
                        K seeds trained as one network; n/a while that module is not importable
  epoch        one real full-protocol epoch of base through orchestrator.training.train.train (70,000 images, then the
               validation pass), its wall time
  concurrency  K processes on the device at once, each training base with train()'s step, aggregate model-steps/s
  project      the paper's grid (8 variants x 5 seeds x 10 epochs) from the figures above, for each K measured

Data: --data-dir, else $CIFAR10_DIR, else synthetic images of CIFAR-10's size (data.synthetic_cifar10): a step's
time does not depend on what the images show.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import data
import models
from bench.plain import paper_adam, plain_loader
from bench.sizes import BATCH, PAPER_GRID
from orchestrator.cli import ArgumentParser
from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import cpu_model, sync
from orchestrator.training.train import TrialData, build, seed_everything, train

PARTS = ("steps", "epoch", "concurrency", "project")
ROUTES = ("eager", "graph", "plain", "fused")
WARMUP_STEPS = 10  # per route before timing: the graph is captured in the first, allocations settle
STEPS_PER_EPOCH = PAPER_GRID["train_images_per_epoch"] // BATCH  # 17,500: no short last batch
PROG = "bench.gpu"
CONCURRENCY_PER_CLASS = 100  # each worker's (synthetic) training set: 1,400 samples an epoch, re-augmented per epoch


# --- command line ---------------------------------------------------------------------------------------------
def parse_args(argv) -> argparse.Namespace:
    ap = ArgumentParser(prog=f"python -m {PROG}", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu", help="where gpu-bench.json and gpu-bench.md go")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts: {','.join(PARTS)}")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when present")
    ap.add_argument("--variants", default=",".join(models.list_models()), help="comma-separated variants (steps)")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per route per round (default 200)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    ap.add_argument("--per-class", type=int, default=0, help="training images per class for steps (0 = all)")
    ap.add_argument("--epoch-per-class", type=int, default=0,
                    help="training images per class for the epoch (0 = all 5,000: the full protocol)")
    ap.add_argument("--val-images", type=int, default=10_000,
                    help="validation images in the epoch part (default all 10,000: the full protocol)")
    ap.add_argument("--k-list", default="1,4,8", help="processes at once for concurrency (default 1,4,8)")
    ap.add_argument("--concurrency-seconds", type=float, default=10.0, help="timed seconds per K (default 10)")
    ap.add_argument("--fused-k", type=int, default=5, help="seeds per fused network for the fused hook (default 5)")
    ap.add_argument("--data-dir", default="", help="CIFAR-10 directory (default $CIFAR10_DIR, else synthetic)")
    ap.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    args = ap.parse_args(argv)
    check_args(args)
    return args


def check_args(args) -> None:
    """Values argparse cannot check; ValueError with one line."""
    args.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in args.variants if v not in models.list_models()] or ([] if args.variants else ["(none)"])
    if bad:
        raise ValueError(f"unknown variant {','.join(bad)}: choose from {','.join(models.list_models())}")
    args.parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if not args.parts or set(args.parts) - set(PARTS):
        raise ValueError(f"--parts takes {','.join(PARTS)} (got {','.join(args.parts) or 'nothing'})")
    try:
        args.k_list = tuple(int(k) for k in args.k_list.split(",") if k.strip())
    except ValueError:
        raise ValueError(f"--k-list takes comma-separated integers (got {args.k_list!r})") from None
    if min(args.steps, args.rounds, args.fused_k, args.val_images, *args.k_list, 1 if args.k_list else 0) < 1:
        raise ValueError("--steps, --rounds, --fused-k, --val-images and every --k-list value must be >= 1")
    if args.per_class < 0 or args.epoch_per_class < 0 or args.per_class % 2 or args.epoch_per_class % 2:
        raise ValueError("--per-class and --epoch-per-class must be even and >= 0 (an odd one leaves 1-image batches)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device: drop --device or use --device cpu")
    args.device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                               else "cpu")
    args.data_dir = args.data_dir or os.environ.get("CIFAR10_DIR", "")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(plan(args))
        return 0
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)
    out, env = Path(args.out), environment(args.device)
    results = load_results(out)
    if results.get("environment", {}).get("device_label") != env["device_label"]:
        results = {}  # figures of another device: never mixed into these
    results["environment"] = env
    for part in args.parts:
        log(f"{part} ...")
        results[part] = PART_FUNCTIONS[part](args, results, log)
        write_results(out, results)
    print("\n" + render(results) + f"\nwrote {out / 'gpu-bench.md'} and {out / 'gpu-bench.json'}")
    return 0


def plan(args) -> str:
    data_label = args.data_dir or "synthetic CIFAR-10-sized images"
    return "\n".join([
        f"{PROG} on {args.device} ({data_label}), parts: {','.join(args.parts)}",
        f"  steps: variants {','.join(args.variants)}; routes {', '.join(ROUTES)} (graph on CUDA only, fused when "
        f"orchestrator.training.fused is importable); {args.rounds} rounds x {args.steps} steps per route",
        f"  epoch: base, {args.epoch_per_class or 5000} images per class and {args.val_images:,} validation images, "
        f"one epoch through train()",
        f"  concurrency: K in {','.join(map(str, args.k_list))} processes, {args.concurrency_seconds:g} s each",
        f"  project: {PAPER_GRID['variants']} variants x {PAPER_GRID['seeds']} seeds x {PAPER_GRID['epochs']} epochs",
        f"  out: {args.out}/gpu-bench.{{json,md}}"])


def environment(device: torch.device) -> dict:
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device.type,
            "device_label": f"{device.type} ({hardware})", "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "python": platform.python_version(), "mps": mps_running()}


def mps_running() -> bool:
    """Whether an NVIDIA MPS control daemon is up (then the K processes share the GPU through it)."""
    import psutil
    for p in psutil.process_iter(["name"]):
        if (p.info.get("name") or "").startswith("nvidia-cuda-mps"):
            return True
    return False


# --- data -----------------------------------------------------------------------------------------------------
def load_data(data_dir: str, per_class: int) -> TrialData:
    """Training images (per_class of each class, 0 = all) and the validation set: CIFAR-10 from `data_dir`, else
    synthetic images of the same size and count, made at the size asked for (50,000 made at once need 2 GB)."""
    if data_dir:
        root = data.resolve_data_dir(data_dir)
        x, y = data.load_cifar10(root, "train")
        vx, vy = data.load_cifar10(root, "test")
        if per_class:
            x, y = data.stratified_subset(x, y, per_class, seed=0)
        return TrialData(x, y, vx, vy)
    x, y = data.synthetic_cifar10(per_class or 5000, seed=0)
    vx, vy = data.synthetic_cifar10(1000, seed=1)
    return TrialData(x, y, vx, vy)


def cycle(make_epoch):
    """Batches of epoch 1, 2, ... forever, without 1-image batches (train_epoch skips them too)."""
    epoch = 1
    while True:
        for x, y in make_epoch(epoch):
            if len(y) >= 2:
                yield x, y
        epoch += 1


# --- part 1: ms per model-step, route by route --------------------------------------------------------------------
def trainer_route(cfg: TrainConfig, variant: str, train_set: data.TrainSet, device, graphed: bool,
                  state: dict | None = None) -> Callable:
    """One step of the project's trainer as train_epoch runs it (the loss and hits accumulated on the device),
    compiled when cfg.compile, from the checkpoint `state` when given; `.model` and `.optimizer` are its own."""
    seed_everything(0)
    trainer = build(cfg, variant, device)
    if state is not None:
        trainer.load(state)
    trainer.model.train()
    if graphed:
        from orchestrator.training.cuda_graph import graphed_step
        step = graphed_step(trainer, cfg.batch_size)
    else:
        step = trainer.make_step(compiled=cfg.compile)
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


def plain_route(variant: str, d: TrialData, focus, device, state: dict | None = None) -> Callable:
    """One step of the plain route: a PIL/DataLoader batch moved to the device, the tutorial loop, loss.item();
    from the checkpoint `state` when given (its weights, Adam moments and lr; torch's default Adam kept)."""
    torch.manual_seed(0)
    model = models.create_model(variant).to(device).train()
    optimizer = paper_adam(model.parameters())
    if state is not None:
        model.load_state_dict(state["model"])
        saved = state["optimizer"]
        for p, i in zip(model.parameters(), saved["param_groups"][0]["params"]):
            optimizer.state[p] = {key: value.to(device).clone() for key, value in saved["state"][i].items()}
        optimizer.param_groups[0]["lr"] = float(saved["param_groups"][0]["lr"])
    criterion = torch.nn.CrossEntropyLoss()
    batches = cycle(lambda epoch: plain_loader(d.train_images, d.train_labels, focus))

    def one() -> None:
        inputs, targets = next(batches)
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad()
        loss = criterion(model(inputs), targets)
        loss.backward()
        optimizer.step()
        loss.item()
    one.model, one.optimizer = model, optimizer
    return one


def fused_route(cfg: TrainConfig, variant: str, k: int, d: TrialData, device) -> tuple[Callable, int, str] | None:
    """HOOK for the "fused seeds + graph" column, filled in by the fused-seeds change (orchestrator/fused.py, K
    seeds of one variant trained as one stacked network). Returns (one fused step, the K model-steps it makes,
    what it is), or None while orchestrator.training.fused is not importable. Preferred: the module's own
    `gpu_bench_step(cfg, variant, k, trial_data, device) -> callable` (its graphed step); else its
    `FusedSeeds.train_step` is timed as it is (ungraphed)."""
    try:
        fused = importlib.import_module("orchestrator.training.fused")
    except ImportError:
        return None
    if hasattr(fused, "gpu_bench_step"):
        return fused.gpu_bench_step(cfg, variant, k, d, device), k, "orchestrator.training.fused.gpu_bench_step"
    seeds = fused.FusedSeeds(cfg, variant, range(k), d, device)

    def fused_batches():  # step i trains every seed on its own batch i; no 1-image batches, like train_epoch
        epoch = 1
        while True:
            yield from (b for b in zip(*(s.train_set.batches(epoch) for s in seeds.seeds)) if len(b[0][1]) >= 2)
            epoch += 1
    batches = fused_batches()

    def one() -> None:
        batch = next(batches)
        x = torch.cat([xb for xb, _ in batch], dim=1).contiguous(memory_format=seeds.memory_format)
        seeds.train_step(x, torch.stack([yb for _, yb in batch], dim=1))
    return one, k, "orchestrator.training.fused.FusedSeeds.train_step (ungraphed)"


def time_ms_per_call(fn: Callable, n: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n * 1e3


def variant_routes(args, variant: str, d: TrialData, train_set, focus) -> tuple[dict, dict]:
    """{route: (step, model-steps per call)} for the routes this device runs, and notes: why a route is not timed,
    and what the fused hook timed."""
    cfg, device = TrainConfig(compile=False), args.device
    routes, notes = {"eager": (trainer_route(cfg, variant, train_set, device, graphed=False), 1)}, {}
    if device.type == "cuda":
        routes["graph"] = (trainer_route(cfg, variant, train_set, device, graphed=True), 1)
    else:
        notes["graph"] = "n/a (CPU: no CUDA graphs)"
    routes["plain"] = (plain_route(variant, d, focus, device), 1)
    try:
        fused = fused_route(cfg, variant, args.fused_k, d, device)
    except Exception as e:  # the hook's module is another change's, still moving: never fail the bench on it
        fused = None
        notes["fused"] = f"n/a ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]})"
    if fused is None:
        notes.setdefault("fused", "n/a (orchestrator.training.fused not importable)")
    else:
        routes["fused"] = fused[:2]
        notes["fused_how"] = fused[2]
    return routes, notes


def bench_variant(args, variant: str, d: TrialData, train_set, focus) -> dict:
    """Median ms per model-step of each route over interleaved rounds (the order rotates: drift hits all alike)."""
    routes, missing = variant_routes(args, variant, d, train_set, focus)
    for step, _ in routes.values():
        for _ in range(min(WARMUP_STEPS, args.steps)):
            step()
    times = {name: [] for name in routes}
    names = list(routes)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step, per_call = routes[name]
            times[name].append(time_ms_per_call(step, args.steps, args.device) / per_call)
    row = {f"{name}_ms_per_step": (statistics.median(times[name]) if name in times else None) for name in ROUTES}
    row.update({f"{name}_ms_per_round": times[name] for name in times})
    row["not_timed"] = {k: v for k, v in missing.items() if k in ROUTES}
    row["fused_how"] = missing.get("fused_how")
    return row


def bench_steps(args, results: dict, log) -> dict:
    d = load_data(args.data_dir, args.per_class)
    focus = data.parse_focus_classes(TrainConfig().focus_classes)
    train_set = data.TrainSet(d.train_images, d.train_labels, focus_classes=focus, device=args.device)
    out = {"steps": args.steps, "rounds": args.rounds, "samples_per_epoch": train_set.num_samples(), "variants": {}}
    for v in args.variants:
        row = bench_variant(args, v, d, train_set, focus)
        out["variants"][v] = row
        log("  " + v + ": " + ", ".join(f"{r} {row[f'{r}_ms_per_step']:.3f} ms" for r in ROUTES
                                        if row[f"{r}_ms_per_step"] is not None))
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# --- part 2: one real epoch -----------------------------------------------------------------------------------------
def bench_epoch(args, results: dict, log) -> dict:
    """One epoch of base exactly as a trial trains it (train(): its default step on this device, its validation
    pass), no latency or export; wall time of the whole call and what train() reports."""
    d = load_data(args.data_dir, args.epoch_per_class)
    d = TrialData(d.train_images, d.train_labels, d.val_images[:args.val_images], d.val_labels[:args.val_images])
    cfg = TrainConfig(epochs=1, compile=False, export="none")
    t0 = time.perf_counter()
    result = train(cfg, "base", 0, trial_data=d, device=args.device, measure=False)
    wall = time.perf_counter() - t0
    h = result["history"][0]
    focus = torch.tensor(data.parse_focus_classes(cfg.focus_classes))
    images = len(d.train_labels) + int(torch.isin(d.train_labels, focus).sum())  # originals + focused copies
    train_seconds = images / h["train_images_per_second"]
    log(f"  base, {images:,} images: epoch {h['epoch_seconds']:.1f} s (train {train_seconds:.1f} s), "
        f"train() call {wall:.1f} s, val accuracy {h['val_accuracy']:.3f}")
    return {"variant": "base", "train_images": images, "val_images": len(d.val_labels),
            "cuda_graph": cfg.cuda_graph and args.device.type == "cuda", "wall_seconds": wall,
            "epoch_seconds": h["epoch_seconds"], "train_seconds": train_seconds,
            "outside_training_seconds": h["epoch_seconds"] - train_seconds,
            "train_images_per_second": h["train_images_per_second"],
            "ms_per_step": BATCH / h["train_images_per_second"] * 1e3,
            "setup_seconds": result["final"]["compile_seconds"], "train_loss": h["train_loss"],
            "val_accuracy": h["val_accuracy"], "data": args.data_dir or "synthetic"}


# --- part 3: K processes on one device ------------------------------------------------------------------------------
def concurrency_worker(device_name: str, per_class: int, seconds: float, ready, go, results) -> None:
    """A spawned process: set up base with train()'s step on the device, say ready, wait for go, step for
    `seconds`, report how many steps it made."""
    try:
        torch.set_num_threads(1)  # like a trial with --cpus-per-trial 1
        device = torch.device(device_name)
        x, y = data.synthetic_cifar10(per_class, seed=0)
        train_set = data.TrainSet(x, y, device=device)
        one = trainer_route(TrainConfig(compile=False), "base", train_set, device, graphed=device.type == "cuda")
        for _ in range(WARMUP_STEPS):
            one()
        sync(device)
        ready.put(("ready", os.getpid()))
        go.wait()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            one()
            n += 1
        sync(device)
        results.put(("ok", {"steps": n, "seconds": time.perf_counter() - t0}))
    except Exception as e:  # reported, not raised: the parent is waiting on the queues
        ready.put(("error", f"{type(e).__name__}: {e}"))
        results.put(("error", f"{type(e).__name__}: {e}"))


def run_k(args, k: int, setup_timeout: float = 120.0) -> dict:
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    # By its module's real name: under `python -m` this module is __main__, which a spawned child cannot import.
    worker = importlib.import_module("bench.gpu").concurrency_worker
    procs = [ctx.Process(target=worker, daemon=True,
                         args=(str(args.device), CONCURRENCY_PER_CLASS, args.concurrency_seconds, ready, go, results))
             for _ in range(k)]
    for p in procs:
        p.start()
    try:
        said = [ready.get(timeout=setup_timeout) for _ in range(k)]
        errors = [m for kind, m in said if kind == "error"]
        if errors:
            return {"error": errors[0]}
        go.set()
        got = [results.get(timeout=args.concurrency_seconds + setup_timeout) for _ in range(k)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    if any(kind == "error" for kind, _ in got):
        return {"error": next(m for kind, m in got if kind == "error")}
    window = max(m["seconds"] for _, m in got)
    return {"processes": k, "steps": [m["steps"] for _, m in got], "window_seconds": window,
            "model_steps_per_second": sum(m["steps"] for _, m in got) / window}


def bench_concurrency(args, results: dict, log) -> dict:
    """Aggregate model-steps/s of K processes training base at once, and the speed-up over one process."""
    out = {"variant": "base", "mps": mps_running(), "k": {}}
    for k in sorted(set(args.k_list) | {1}):
        out["k"][str(k)] = run_k(args, k)
        log(f"  K={k}: " + (out["k"][str(k)].get("error") or f"{out['k'][str(k)]['model_steps_per_second']:.0f} "
                                                               f"model-steps/s"))
    one = out["k"]["1"].get("model_steps_per_second")
    for row in out["k"].values():
        if one and "model_steps_per_second" in row:
            row["speedup"] = row["model_steps_per_second"] / one
    return out


# --- part 4: the paper's grid -----------------------------------------------------------------------------------------
ASSUMPTIONS = (
    "every trial trains with train()'s step on this device ({route}), at the ms per model-step measured for its "
    "variant (variants not measured: the mean of those measured)",
    "outside the training steps, an epoch costs what it cost base in the epoch part (validation, scheduler); "
    "without that part, nothing",
    "K trials share the device at the speed-up measured for K processes training base (concurrency part), for "
    "every variant, and pack perfectly: the last wave's imbalance is ignored",
    "not included: Ray Tune and MLflow (start-up, checkpoints, logging), the final latency measurement and ONNX "
    "export of each trial, data loading at trial start")


def project(args, results: dict, log) -> dict:
    """Wall time of 8 variants x 5 seeds x 10 epochs of 17,500 steps from the measured figures; see ASSUMPTIONS."""
    g, steps = PAPER_GRID, results.get("steps", {}).get("variants", {})
    route = "graph" if any(r.get("graph_ms_per_step") for r in steps.values()) else "eager"
    ms = {v: r[f"{route}_ms_per_step"] for v, r in steps.items() if r.get(f"{route}_ms_per_step")}
    if not ms:
        return {"error": "no step timings to project from: run --parts steps first"}
    ms_all = {v: ms.get(v, statistics.mean(ms.values())) for v in models.list_models()}
    outside = max(0.0, results.get("epoch", {}).get("outside_training_seconds", 0.0))
    trial_seconds = {v: g["epochs"] * (STEPS_PER_EPOCH * t / 1e3 + outside) for v, t in ms_all.items()}
    serial = g["seeds"] * sum(trial_seconds.values())
    speedups = {1: 1.0}
    for k, row in results.get("concurrency", {}).get("k", {}).items():
        if row.get("speedup"):
            speedups[int(k)] = row["speedup"]
    rows = [{"k": k, "speedup": s, "wall_seconds": serial / s} for k, s in sorted(speedups.items())]
    out = {"route": route, "grid_trials": g["variants"] * g["seeds"], "steps_per_epoch": STEPS_PER_EPOCH,
           "ms_per_step": ms_all, "outside_training_seconds_per_epoch": outside, "trial_seconds": trial_seconds,
           "serial_seconds": serial, "rows": rows, "assumptions": [a.format(route=route) for a in ASSUMPTIONS]}
    best = min(rows, key=lambda r: r["wall_seconds"])
    log(f"  grid ({route}): {serial / 3600:.2f} h one trial at a time; {best['wall_seconds'] / 3600:.2f} h with "
        f"K={best['k']} sharing the device")
    return out


PART_FUNCTIONS = {"steps": bench_steps, "epoch": bench_epoch, "concurrency": bench_concurrency, "project": project}


# --- output -----------------------------------------------------------------------------------------------------------
def load_results(out: Path) -> dict:
    """Figures of earlier parts in the same folder (the device check runs the parts one by one)."""
    try:
        return json.loads((out / "gpu-bench.json").read_text())
    except (OSError, ValueError):
        return {}


def write_results(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-bench.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "gpu-bench.md").write_text(render(results))


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ratio(a, b) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def render(results: dict) -> str:
    env = results.get("environment", {})
    lines = [f"# GPU benchmark: {env.get('device_label', '?')}", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, Python {env.get('python')}, "
             f"MPS daemon {'running' if env.get('mps') else 'not running'}; {env.get('time')}", ""]
    for part, section in (("steps", steps_section), ("epoch", epoch_section),
                          ("concurrency", concurrency_section), ("project", projection_section)):
        if part in results:
            lines += section(results[part]) + [""]
    return "\n".join(lines)


def steps_section(r: dict) -> list[str]:
    lines = [f"## ms per model-step (batch {BATCH}; median of {r['rounds']} interleaved rounds x {r['steps']} steps)",
             "", "| variant | eager | CUDA graph | plain | fused seeds + graph | graph vs eager | graph vs plain |",
             "|---|---|---|---|---|---|---|"]
    notes = set()
    for v, row in r["variants"].items():
        e, g, p, f = (row.get(f"{name}_ms_per_step") for name in ROUTES)
        notes.update(f"{name}: {why}" for name, why in row.get("not_timed", {}).items())
        if row.get("fused_how"):
            notes.add(f"fused: {row['fused_how']}")
        lines.append(f"| {v} | {_ms(e)} | {_ms(g)} | {_ms(p)} | {_ms(f)} | {_ratio(e, g)} | {_ratio(p, g)} |")
    lines += ["", "eager: train.build + Trainer.make_step (what --no-cuda-graph runs); CUDA graph: orchestrator."
              "cuda_graph (train()'s default on CUDA); plain: bench/plain.py's PIL + DataLoader route with default "
              "Adam and loss.item() per step; fused: per model-step of K seeds as one network."]
    return lines + [f"- {n}" for n in sorted(notes)]


def epoch_section(r: dict) -> list[str]:
    return [f"## One full-protocol epoch of {r['variant']} through train()", "",
            f"{r['train_images']:,} training images ({r['data']}), then {r['val_images']:,} validation images; "
            f"CUDA graph: {r['cuda_graph']}.", "",
            "| train() call | epoch | training | outside training | ms per step | first step (capture/compile) | val acc |",
            "|---|---|---|---|---|---|---|",
            f"| {r['wall_seconds']:.1f} s | {r['epoch_seconds']:.1f} s | {r['train_seconds']:.1f} s | "
            f"{r['outside_training_seconds']:.2f} s | {r['ms_per_step']:.3f} | {r['setup_seconds']:.2f} s | "
            f"{r['val_accuracy']:.3f} |"]


def concurrency_section(r: dict) -> list[str]:
    lines = [f"## K processes training {r['variant']} at once on the device (MPS {'on' if r['mps'] else 'off'})", "",
             "| K | aggregate model-steps/s | speed-up vs K=1 | steps per process |", "|---|---|---|---|"]
    for k, row in r["k"].items():
        if "error" in row:
            lines.append(f"| {k} | failed: {row['error'][:100]} | | |")
        else:
            lines.append(f"| {k} | {row['model_steps_per_second']:.0f} | {row.get('speedup', float('nan')):.2f} | "
                         f"{', '.join(map(str, row['steps']))} |")
    return lines


def projection_section(r: dict) -> list[str]:
    if "error" in r:
        return ["## Projected wall time of the paper's grid", "", r["error"]]
    lines = [f"## Projected wall time of the paper's grid ({r['grid_trials']} trials x {PAPER_GRID['epochs']} epochs "
             f"x {r['steps_per_epoch']:,} steps, route: {r['route']})", "",
             "| K trials sharing the device | speed-up (measured) | grid wall time |", "|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['k']} | {row['speedup']:.2f} | {row['wall_seconds'] / 3600:.2f} h |")
    return lines + ["", "Assumptions:"] + [f"- {a}" for a in r["assumptions"]]


if __name__ == "__main__":
    sys.exit(main())
