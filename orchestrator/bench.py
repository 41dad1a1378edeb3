"""`python -m orchestrator.bench`: how fast a trial trains, how well trials share the machine, what orchestration
costs, against the plain PyTorch route and against the hardware limit. Every figure is a ratio taken in one run.

1. throughput   the project's trainer (`orchestrator.train.train`) vs the plain route (PIL transforms, DataLoader,
                the tutorial loop, default Adam) on the same focused-augmentation epoch, interleaved per variant
2. FLOP rate    6 x MACs/image x images/s against a large fp32 matmul on the same thread count
3. parallel     K one-thread trials at once (separate processes) against one alone
4. orchestration the same small grid through `orchestrator.run.run_sweep` (Ray Tune + MLflow) and through plain
                `train()` in K processes; wall-time ratio
5. projection   the paper's grid (8 variants x 5 seeds x 10 epochs) from the measured rates; compute floor
6. latency      `orchestrator.latency.measure_latency` per variant, both definitions, spread over repeats
Writes bench/results/bench-<quick|full>-<time>.{md,json} and prints the Markdown.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import models
from data.bench import plain_loader
from orchestrator.config import ArgumentParser, Config
from orchestrator.latency import cpu_model, measure_latency, torch_threads
from orchestrator.train import TrialData, build, train

BATCH = 4
TARGET_SPEEDUP, TARGET_EFFICIENCY, TARGET_OVERHEAD = 1.5, 0.85, 0.05
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


FULL = Sizes(rounds=5, train_per_class=24, val_images=500, component_seconds=0.5, peak_n=2048, peak_seconds=1.5,
             parallel_per_class=100, grid_per_class=0, grid_train_seconds=50, grid_epochs=2, latency_images=2000,
             latency_repeats=3, batch1_calls=100)
QUICK = Sizes(rounds=2, train_per_class=10, val_images=100, component_seconds=0.15, peak_n=1024, peak_seconds=0.3,
              parallel_per_class=10, grid_per_class=10, grid_train_seconds=0, grid_epochs=1, latency_images=200,
              latency_repeats=2, batch1_calls=20)


# --- the plain route ---------------------------------------------------------------------------------------
def plain_epoch(model, images, labels, focus_classes, device, seed: int) -> float:
    """One epoch the way PyTorch's "Training a Classifier" tutorial writes it, with the paper's optimizer:
    a torchvision-CIFAR10-style dataset (PIL image per item, torchvision transforms; `data.bench.plain_loader`),
    DataLoader(batch_size=4, shuffle=True, num_workers=0: the trial has one core), contiguous tensors,
    torch.optim.Adam with its default implementation (for-loop on CPU, foreach on CUDA), the loss read with
    .item() each step. Nothing is slowed on purpose. Returns images/s."""
    torch.manual_seed(seed)
    loader = plain_loader(images, labels, focus_classes)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4)
    model.train()
    running_loss, seen = 0.0, 0
    t0 = time.perf_counter()
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad()
        loss = criterion(model(inputs), targets)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        seen += len(targets)
    return seen / (time.perf_counter() - t0)


# --- small measurements -------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, seconds: float, device, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n * 1e3


def matmul_peak_gflops(device, threads: int, n: int, seconds: float) -> float:
    """Best single large fp32 matmul (TF32 off), GFLOP/s: the practical limit of this device and thread count."""
    with torch_threads(threads):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            a @ b
            sync(device)
            best, t_end = float("inf"), time.perf_counter() + seconds
            while best == float("inf") or time.perf_counter() < t_end:
                t = time.perf_counter()
                a @ b
                sync(device)
                best = min(best, time.perf_counter() - t)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * n**3 / best / 1e9


def step_components(cfg: Config, variant: str, device, seconds: float, images, labels, focus) -> dict:
    """Where a step's time goes, ms per step: batch fetch, zero_grad+forward+loss+backward, optimizer step, for a
    plain step and a trainer-style step run alternately with a timer per part, so machine load hits all six
    parts alike. Mean over the window. (The headline rates come from whole epochs of the real trainer.)"""
    fmt = trainer_format(cfg, variant, device)
    plain_loader_it = _cycle(lambda epoch: plain_loader(images, labels, focus))
    train_set = data.TrainSet(images, labels, augment=cfg.augment, focus_classes=focus, device=device)
    ours_it = _cycle(train_set.batches)
    routes = {}
    for name, route_fmt, fused in (("plain", torch.contiguous_format, None), ("trainer", fmt, cfg.fused_adam)):
        torch.manual_seed(0)
        model = models.create_model(variant).to(device=device, memory_format=route_fmt).train()
        opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-4, fused=fused)
        routes[name] = (model, opt, route_fmt)
    totals = {f"{r}_{part}_ms": 0.0 for r in routes for part in ("data", "fwd_bwd", "adam")}

    def step(name, it, n_steps):
        model, opt, route_fmt = routes[name]
        t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device).contiguous(memory_format=route_fmt), y.to(device)
        sync(device)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        opt.step()
        sync(device)
        t3 = time.perf_counter()
        if n_steps is not None:
            totals[f"{name}_data_ms"] += t1 - t0
            totals[f"{name}_fwd_bwd_ms"] += t2 - t1
            totals[f"{name}_adam_ms"] += t3 - t2
    for _ in range(3):  # warm-up
        step("plain", plain_loader_it, None), step("trainer", ours_it, None)
    n, t_end = 0, time.perf_counter() + seconds
    while n < 5 or time.perf_counter() < t_end:
        step("plain", plain_loader_it, n)
        step("trainer", ours_it, n)
        n += 1
    return {k: v / n * 1e3 for k, v in totals.items()}


def _cycle(make_epoch):
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def trainer_format(cfg: Config, variant: str, device) -> torch.memory_format:
    """The memory format the trainer really uses (train.build keeps V2/Alpha contiguous on CPU: a oneDNN bug)."""
    return build(cfg, variant, device)[3]


def machine_busy_seconds() -> float:
    """Busy CPU-seconds of the whole machine since boot, from /proc/stat (all but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Load:
    """CPU use during a phase, in cores: the whole machine, this process and everything it started (workers, Ray's
    daemons and trial processes; sampled every 0.5 s, so a child that lives < 0.5 s is missed), and the rest:
    other people's processes, which this benchmark cannot control."""

    def __init__(self):
        import psutil
        import threading
        self._psutil, self._seen, self._labels, self._stop = psutil, {}, {}, threading.Event()
        self.samples = []  # (time, {label: CPU-seconds since the start}) every 0.5 s
        self._sample()
        self._base = dict(self._seen)  # CPU already spent before the phase
        self._t0, self._busy0 = time.time(), machine_busy_seconds()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = self._psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    key = (p.pid, p.create_time())
                    self._seen[key] = t.user + t.system
                if key not in self._labels:
                    self._labels[key] = process_label(p)
            except self._psutil.Error:
                pass
        if hasattr(self, "_base"):
            self.samples.append((time.time(), self._by_label()))

    def _by_label(self) -> dict:
        out = {}
        for k, v in self._seen.items():
            out[self._labels.get(k, "?")] = out.get(self._labels.get(k, "?"), 0.0) + v - self._base.get(k, 0.0)
        return out

    def cores_between(self, t0: float, t1: float) -> dict | None:
        """Our CPU by process label between two times (nearest samples), in cores; None if too short."""
        inside = [(t, c) for t, c in self.samples if t0 <= t <= t1]
        if len(inside) < 4:
            return None
        (ta, a), (tb, b) = inside[0], inside[-1]
        return {k: (b.get(k, 0.0) - a.get(k, 0.0)) / (tb - ta) for k in b}

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.time() - self._t0
        by_label = {k: v / wall for k, v in self._by_label().items()}
        ours = sum(by_label.values()) * wall
        machine = machine_busy_seconds() - self._busy0
        return {"wall_seconds": wall, "machine_cores": machine / wall, "ours_cores": ours / wall,
                "other_cores": max(0.0, machine - ours) / wall,
                "ours_by_process_cores": dict(sorted(by_label.items(), key=lambda kv: -kv[1]))}


RAY_WORKER = "Ray workers (trials)"


def process_label(p) -> str:
    """A short name for one of our processes: Ray's titles ('ray::ImplicitFunc'), daemons, scripts, workers."""
    try:
        cmd = p.cmdline()
    except Exception:
        return "?"
    if not cmd:
        return p.name()
    if cmd[0].startswith("ray::") or any(a.endswith(("default_worker.py", "setup_worker.py")) for a in cmd):
        return RAY_WORKER
    if any("multiprocessing" in a for a in cmd):
        return "spawned worker"
    if "-m" in cmd[:-1]:
        return "python -m " + cmd[cmd.index("-m") + 1]
    scripts = [os.path.basename(a) for a in cmd[1:] if a.endswith(".py")]
    return scripts[0] if scripts else os.path.basename(cmd[0])


# --- worker processes (3 and the plain side of 4) ------------------------------------------------------------
def _worker(conn, threads: int, device: str) -> None:
    torch.set_num_threads(threads)
    cache = {}
    while (msg := conn.recv()) is not None:
        try:
            conn.send(("ok", _WORK[msg["kind"]](msg, cache, torch.device(device))))
        except Exception as e:  # report, keep serving: the driver decides
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _work_epoch(msg, cache, device) -> dict:
    """One training epoch of `train()` on a subset, started at msg['start_at'] so K processes overlap."""
    key = (msg["data_dir"], msg["per_class"], msg["val_images"])
    if key not in cache:
        root = data.resolve_data_dir(msg["data_dir"])
        x, y = data.stratified_subset(*data.load_cifar10(root, "train"), msg["per_class"], seed=0)
        vx, vy = data.load_cifar10(root, "test")
        cache[key] = TrialData(x, y, vx[:msg["val_images"]], vy[:msg["val_images"]])
    cfg = Config.from_dict(msg["cfg"])
    d = cache[key]
    samples = data.TrainSet(d.train_images, d.train_labels, augment=cfg.augment,
                            focus_classes=data.parse_focus_classes(cfg.focus_classes)).num_samples()
    ends = []
    time.sleep(max(0.0, msg["start_at"] - time.time()))
    h = train(cfg, msg["variant"], msg["seed"], trial_data=d, device=device, measure=False,
              on_epoch_end=lambda epoch, metrics, make_state: ends.append(time.time()))["history"][0]
    train_s = samples / h["train_images_per_second"]
    t_end = ends[0] - (h["epoch_seconds"] - train_s)  # the callback comes after the (tiny) validation pass
    return {"images_per_second": h["train_images_per_second"], "start": t_end - train_s, "end": t_end}


def _work_trial(msg, cache, device) -> dict:
    """One whole trial exactly as the Ray trainable runs it (it loads its own data and measures latency)."""
    t0 = time.time()
    history = train(Config.from_dict(msg["cfg"]), msg["variant"], msg["seed"], device=device)["history"]
    return trial_stats(t0, time.time(), [h["epoch_seconds"] for h in history],
                       [h["train_images_per_second"] for h in history])


def trial_stats(start: float, end: float, epoch_seconds: list, rates: list) -> dict:
    return {"start": start, "end": end, "seconds": end - start, "epoch_seconds": sum(epoch_seconds),
            "train_images_per_second": statistics.mean(rates) if rates else float("nan")}


def ray_trial_stats(uri: str, out: dict) -> list[dict]:
    """Each Ray trial's MLflow child run: its life (run start to end) and its logged epoch times and rates."""
    from mlflow import MlflowClient
    client = MlflowClient(uri)
    runs = client.search_runs([out["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    return [trial_stats(r.info.start_time / 1e3, r.info.end_time / 1e3,
                        [m.value for m in client.get_metric_history(r.info.run_id, "epoch_seconds")],
                        [m.value for m in client.get_metric_history(r.info.run_id, "train_images_per_second")])
            for r in runs]


_WORK = {"epoch": _work_epoch, "trial": _work_trial}


class Workers:
    """K spawned processes, each with `threads` torch threads, serving _WORK requests over pipes."""

    def __init__(self, k: int, threads: int, device):
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(k):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, threads, str(device)), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def run(self, requests: list[list[dict]]) -> list[list[dict]]:
        """requests[i] goes to worker i, in order; returns each worker's results."""
        results = [[] for _ in requests]
        pending = [list(r) for r in requests]
        for i, r in enumerate(pending):
            if r:
                self.conns[i].send(r.pop(0))
        busy = {i for i, r in enumerate(requests) if r}
        while busy:
            for conn in multiprocessing.connection.wait([self.conns[i] for i in busy]):
                i = self.conns.index(conn)
                status, value = conn.recv()
                if status != "ok":
                    raise RuntimeError(f"worker {i}: {value}")
                results[i].append(value)
                if pending[i]:
                    conn.send(pending[i].pop(0))
                else:
                    busy.discard(i)
        return results

    def close(self) -> None:
        for conn, p in zip(self.conns, self.procs):
            try:
                conn.send(None)
            except OSError:
                pass
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


# --- the six measurements ------------------------------------------------------------------------------------
def bench_throughput(args, sizes: Sizes, base_cfg: Config, device, log) -> dict:
    root = data.resolve_data_dir(args.data_dir)
    per_class = even_per_class(sizes.train_per_class, root)
    train_x, train_y = data.stratified_subset(*data.load_cifar10(root, "train"), per_class, seed=0)
    val_x, val_y = data.load_cifar10(root, "test")
    d = TrialData(train_x, train_y, val_x[:sizes.val_images], val_y[:sizes.val_images])
    focus = data.parse_focus_classes(base_cfg.focus_classes)
    rows = {v: {"trainer_images_per_second": [], "plain_images_per_second": [], "eval_images_per_second": [],
                "components": []} for v in args.variants}
    peaks, peaks_all = [], []
    samples = data.TrainSet(train_x, train_y, focus_classes=focus).num_samples()
    load = Load()
    log(f"throughput: {samples} samples per epoch ({per_class}/class + focus copies), {sizes.rounds} rounds, "
        f"{args.threads} thread(s), device {device}")
    for r in range(sizes.rounds):
        for v in args.variants:
            cfg = dataclasses.replace(base_cfg, epochs=1)
            order = ("trainer", "plain") if r % 2 == 0 else ("plain", "trainer")  # ABBA: drift hits both alike
            for route in order:
                if route == "trainer":
                    h = train(cfg, v, r, trial_data=d, device=device, measure=False)["history"][0]
                    rows[v]["trainer_images_per_second"].append(h["train_images_per_second"])
                    eval_s = h["epoch_seconds"] - samples / h["train_images_per_second"]
                    rows[v]["eval_images_per_second"].append(len(d.val_labels) / max(eval_s, 1e-9))
                else:
                    torch.manual_seed(r)
                    model = models.create_model(v).to(device)
                    rows[v]["plain_images_per_second"].append(plain_epoch(model, train_x, train_y, focus, device, r))
            rows[v]["components"].append(step_components(cfg, v, device, sizes.component_seconds, train_x, train_y,
                                                         focus))
            log(f"  round {r + 1} {v}: trainer {rows[v]['trainer_images_per_second'][-1]:.0f} img/s, "
                f"plain {rows[v]['plain_images_per_second'][-1]:.0f} img/s")
        peaks.append(matmul_peak_gflops(device, args.threads, sizes.peak_n, sizes.peak_seconds))
        peaks_all.append(matmul_peak_gflops(device, args.cores, sizes.peak_n, sizes.peak_seconds))
    out = {"samples_per_epoch": samples, "per_class": per_class, "val_images": len(d.val_labels), "load": load.stop(),
           "peak_gflops_per_round": peaks, "peak_gflops": statistics.median(peaks),
           "peak_all_cores_gflops_per_round": peaks_all, "peak_all_cores_gflops": statistics.median(peaks_all),
           "variants": {}}
    for v, row in rows.items():
        macs = models.macs_per_image(models.create_model(v))
        t, p = statistics.median(row["trainer_images_per_second"]), statistics.median(row["plain_images_per_second"])
        comp = {k: statistics.median(c[k] for c in row["components"]) for k in row["components"][0]}
        out["variants"][v] = {
            **row, "components": comp, "macs_per_image": macs,
            "channels_last": trainer_format(base_cfg, v, device) == torch.channels_last,
            "trainer_median_images_per_second": t, "plain_median_images_per_second": p,
            # paired per round (the two epochs ran back to back), then the median: robust to load drifting
            "speedup": statistics.median(a / b for a, b in zip(row["trainer_images_per_second"],
                                                               row["plain_images_per_second"])),
            "eval_median_images_per_second": statistics.median(row["eval_images_per_second"]),
            "trainer_ms_per_step": BATCH / t * 1e3, "plain_ms_per_step": BATCH / p * 1e3,
            "trainer_gflops": 6 * macs * t / 1e9, "plain_gflops": 6 * macs * p / 1e9,
            "trainer_peak_fraction": 6 * macs * t / 1e9 / out["peak_gflops"],
            "plain_peak_fraction": 6 * macs * p / 1e9 / out["peak_gflops"]}
    return out


def bench_parallel(args, sizes: Sizes, base_cfg: Config, device, log) -> dict:
    """K one-thread processes each training an epoch at once, against one of them alone, interleaved."""
    k, variant = args.parallel_k, "base"
    root = data.resolve_data_dir(args.data_dir)
    per_class = even_per_class(sizes.parallel_per_class, root)
    cfg = dataclasses.replace(base_cfg, epochs=1)
    workers = Workers(k, 1, device)
    log(f"parallel: K={k} processes x 1 thread, {variant}, {14 * per_class} samples per epoch, {sizes.rounds} rounds")

    def request(seed):
        return {"kind": "epoch", "cfg": cfg.to_dict(), "variant": variant, "seed": seed, "data_dir": str(root),
                "per_class": per_class, "val_images": 50, "start_at": time.time() + 0.5}
    try:
        workers.run([[request(0)] for _ in range(k)])  # warm-up: imports, data load, first-epoch allocations
        singles, aggregates, overlaps, other_cores = [], [], [], []
        for r in range(sizes.rounds):
            for mode in (("single", "all") if r % 2 == 0 else ("all", "single")):
                n = 1 if mode == "single" else k
                load = Load()
                res = [x[0] for x in workers.run([[request(r + 1)] for _ in range(n)] + [[]] * (k - n))[:n]]
                other_cores.append(load.stop()["other_cores"])
                if mode == "single":
                    singles.append(res[0]["images_per_second"])
                else:
                    aggregates.append(sum(x["images_per_second"] for x in res))
                    start, end = max(x["start"] for x in res), min(x["end"] for x in res)
                    union = max(x["end"] for x in res) - min(x["start"] for x in res)
                    overlaps.append(max(0.0, end - start) / union)
            log(f"  round {r + 1}: single {singles[-1]:.0f} img/s, {k} at once {aggregates[-1]:.0f} img/s")
    finally:
        workers.close()
    single, aggregate = statistics.median(singles), statistics.median(aggregates)
    paired = statistics.median(a / (k * b) for a, b in zip(aggregates, singles))  # each round's pair ran back to back
    return {"k": k, "variant": variant, "samples_per_epoch": 14 * per_class, "single_images_per_second": singles,
            "aggregate_images_per_second": aggregates, "overlap_fraction": overlaps,
            "other_processes_cores": other_cores, "single_median": single, "aggregate_median": aggregate,
            "efficiency": paired}


def bench_orchestration(args, sizes: Sizes, base_cfg: Config, device, log, images_per_second: float = 0) -> dict:
    """The same K-trial grid: plain `train()` looped in K spawned processes vs `run_sweep` (Ray Tune + MLflow),
    same concurrency (K trials at once, 1 thread each), so the difference is what orchestration costs.
    With a measured single-process rate, trials are sized to train for sizes.grid_train_seconds each."""
    k, variant = args.parallel_k, "base"
    root = data.resolve_data_dir(args.data_dir)
    want = sizes.grid_per_class
    if sizes.grid_train_seconds and images_per_second:
        want = round(images_per_second * sizes.grid_train_seconds / (14 * sizes.grid_epochs))  # 14 samples/class
    per_class = even_per_class(max(want, 2), root)
    cfg = dataclasses.replace(base_cfg, variants=(variant,), seeds=k,
                              epochs=sizes.grid_epochs, subset_per_class=per_class, cpus_per_trial=1,
                              gpus_per_trial=(1 / k if device.type == "cuda" else 0.0),
                              latency_batch1_calls=sizes.batch1_calls, report=False, max_failures=0)
    log(f"orchestration: grid {variant} x seeds 0..{k - 1}, {sizes.grid_epochs} epoch(s) on {per_class}/class, "
        f"{k} at once")
    load = Load()
    t0, plain_t0_epoch = time.perf_counter(), time.time()
    workers = Workers(k, 1, device)
    try:
        trials = workers.run([[{"kind": "trial", "cfg": cfg.to_dict(), "variant": variant, "seed": s}]
                              for s in range(k)])
    finally:
        workers.close()
    plain_wall = time.perf_counter() - t0
    plain_load = load.stop()
    plain_trials = [x for w in trials for x in w]
    trial_seconds = [x["seconds"] for x in plain_trials]
    log(f"  plain train() in {k} processes: {plain_wall:.1f} s (trials {', '.join(f'{s:.0f}' for s in trial_seconds)} s)")

    import ray
    from orchestrator.run import run_sweep
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    cfg = dataclasses.replace(cfg, tracking_uri=f"sqlite:///{tmp}/mlflow.db", storage_path=str(tmp / "ray_results"),
                              experiment_name="bench")
    started_here = not ray.is_initialized()
    load = Load()
    t0, t0_epoch = time.perf_counter(), time.time()
    try:
        if started_here:
            ray.init(num_cpus=k, num_gpus=1 if device.type == "cuda" else 0, include_dashboard=False,
                     log_to_driver=False)
        ray_init_s = time.perf_counter() - t0
        out = run_sweep(cfg)
        ray_wall = time.perf_counter() - t0
        ray_load = load.stop()
        ray_trials = ray_trial_stats(cfg.tracking_uri, out)
        # Ray's own CPU while all K trials train: its steady cost over a long sweep (start-up is counted apart)
        steady = load.cores_between(max(t["start"] for t in ray_trials) + 2, min(t["end"] for t in ray_trials) - 2)
        ray_load["steady_by_process_cores"] = steady or ray_load["ours_by_process_cores"]
    finally:
        if started_here:
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    statuses = list(out["summary"]["status"])
    if statuses != ["done"] * k:
        raise RuntimeError(f"orchestration grid did not finish cleanly: {statuses}")
    log(f"  run_sweep (Ray Tune + MLflow): {ray_wall:.1f} s (ray.init {ray_init_s:.1f} s, tuner.fit "
        f"{out['wall_seconds']:.1f} s)")
    fixed = ray_wall - out["wall_seconds"]  # ray.init, driver checks, MLflow parent run, summary: once per sweep
    fit_start = t0_epoch + fixed  # near enough: what follows tuner.fit (summary, finishing the parent) is quick
    return {"k": k, "variant": variant, "epochs": sizes.grid_epochs, "per_class": per_class,
            "plain_wall_seconds": plain_wall, "plain_trial_seconds": trial_seconds,
            "plain_trials": plain_trials, "ray_trials": ray_trials, "plain_load": plain_load, "ray_load": ray_load,
            "ray_first_trial_start_seconds": min(t["start"] for t in ray_trials) - fit_start,
            "plain_first_trial_start_seconds": min(t["start"] for t in plain_trials) - plain_t0_epoch,
            "ray_wall_seconds": ray_wall, "ray_init_seconds": ray_init_s, "ray_fit_seconds": out["wall_seconds"],
            "fixed_seconds": fixed, "extra_seconds_per_wave": out["wall_seconds"] - plain_wall,
            **structural_overhead(fixed, plain_wall, plain_trials, ray_trials, plain_t0_epoch, t0_epoch + fixed,
                                  ray_load, k),
            "overhead": ray_wall / plain_wall - 1, "min_trial_seconds": min(trial_seconds)}


def structural_overhead(fixed, plain_wall, plain_trials, ray_trials, plain_start, fit_start, ray_load, k) -> dict:
    """What Ray + MLflow add, from parts that hardly depend on outside load: start-up once, how much later the
    trials begin, trial time outside the epochs (checkpoints, logging, model upload), and the CPU share of Ray's
    daemons and driver (everything of ours in the Ray phase that is not a trial worker), against K trial cores."""
    med = lambda ts, f: statistics.median(f(t) for t in ts)  # noqa: E731
    late = max(0.0, min(t["start"] for t in ray_trials) - fit_start - (min(t["start"] for t in plain_trials) - plain_start))
    outside = max(0.0, med(ray_trials, lambda t: t["seconds"] - t["epoch_seconds"])
                  - med(plain_trials, lambda t: t["seconds"] - t["epoch_seconds"]))
    steady = ray_load["steady_by_process_cores"]
    daemons = max(0.0, sum(steady.values()) - steady.get(RAY_WORKER, 0.0))
    return {"late_start_seconds": late, "outside_epochs_extra_seconds": outside, "daemon_cores": daemons,
            "structural_overhead": (fixed + late + outside) / plain_wall + daemons / k}


def bench_latency(args, sizes: Sizes, base_cfg: Config, device, log) -> dict:
    root = data.resolve_data_dir(args.data_dir)
    vx, vy = data.load_cifar10(root, "test")
    vx, vy = vx[:sizes.latency_images], vy[:sizes.latency_images]
    log(f"latency: {len(vy)} validation images, {sizes.batch1_calls} batch-1 calls, {sizes.latency_repeats} repeats")
    rows = {v: {"latency_ms_per_image": [], "latency_ms_batch1": []} for v in args.variants}
    load = Load()
    for _ in range(sizes.latency_repeats):
        for v in args.variants:  # variants interleaved within each repeat
            model, _, _, fmt = build(base_cfg, v, device)
            m = measure_latency(model, vx, vy, device, batch1_calls=sizes.batch1_calls, memory_format=fmt)
            for key in rows[v]:
                rows[v][key].append(m[key])
    return {"images": len(vy), "batch1_calls": sizes.batch1_calls, "variants": rows, "load": load.stop()}


def project(tp: dict, par: dict | None, orch: dict | None, lat: dict | None, k: int) -> dict:
    """The paper's grid on this machine: per trial, 10 epochs of 70,000 training images and 10 validation passes
    over 10,000 images, then the latency measurement; K trials at once at the measured efficiency. Ray/MLflow
    adds its measured start-up once and its measured extra time per wave of K trials."""
    g = PAPER_GRID
    eff = par["efficiency"] if par else 1.0
    serial = {"trainer": 0.0, "plain": 0.0}
    flops = 0.0
    for v, row in tp["variants"].items():
        eval_s = g["epochs"] * g["val_images"] / row["eval_median_images_per_second"]
        lat_s = 0.0
        if lat:
            lv = lat["variants"][v]
            lat_s = (g["val_images"] * statistics.median(lv["latency_ms_per_image"])
                     + 220 * statistics.median(lv["latency_ms_batch1"])) / 1e3
        for route in serial:
            train_s = g["epochs"] * g["train_images_per_epoch"] / row[f"{route}_median_images_per_second"]
            serial[route] += g["seeds"] * (train_s + eval_s + lat_s)
        images = g["epochs"] * (3 * g["train_images_per_epoch"] + g["val_images"]) + g["val_images"] + 220
        flops += g["seeds"] * 2 * row["macs_per_image"] * images  # training counts 3x (forward + 2x backward)
    trials = g["seeds"] * len(tp["variants"])
    trainer_s, plain_s = serial["trainer"] / (k * eff), serial["plain"] / (k * eff)
    orchestration_s = 0.0
    if orch:
        # once per sweep, then per wave of K trials, plus the daemons' share of the cores all along
        orchestration_s = (max(0.0, orch["fixed_seconds"])
                           + (orch["late_start_seconds"] + orch["outside_epochs_extra_seconds"]) * trials / k
                           + orch["daemon_cores"] / k * trainer_s)
    peak = max(tp["peak_all_cores_gflops"], tp["peak_gflops"])  # under outside load all cores can measure lower
    return {"k": k, "efficiency": eff, "variants_measured": len(tp["variants"]), "trials": trials,
            "trainer_wall_seconds": trainer_s + orchestration_s, "orchestration_seconds": orchestration_s,
            "orchestration_fraction": orchestration_s / (trainer_s + orchestration_s),
            "plain_wall_seconds": plain_s, "serial_trainer_seconds": serial["trainer"],
            "total_flops": flops, "floor_seconds": flops / (peak * 1e9),
            "partial_grid": len(tp["variants"]) < g["variants"]}


# --- report --------------------------------------------------------------------------------------------------
def verdict(ok: bool, shortfall: str, cause: str) -> str:
    return "met" if ok else f"**missed** by {shortfall}: {cause}"


def step_sum_ms(c: dict, route: str) -> float:
    return c[f"{route}_data_ms"] + c[f"{route}_fwd_bwd_ms"] + c[f"{route}_adam_ms"]


def throughput_cause(row: dict) -> str:
    c = row["components"]
    plain, trainer = step_sum_ms(c, "plain"), step_sum_ms(c, "trainer")
    fb = min(c["trainer_fwd_bwd_ms"], c["plain_fwd_bwd_ms"])
    cap = plain / fb  # the speed-up if data and optimizer cost nothing and fwd+bwd took the faster format
    fmt = " (contiguous, see *)" if not row["channels_last"] else (
        f" (channels_last {c['trainer_fwd_bwd_ms'] / c['plain_fwd_bwd_ms'] - 1:+.0%} vs contiguous)"
        if abs(c["trainer_fwd_bwd_ms"] / c["plain_fwd_bwd_ms"] - 1) > 0.05 else "")
    return (f"forward+backward, the same convolutions in both routes, is {c['trainer_fwd_bwd_ms']:.1f} of the "
            f"trainer's {trainer:.1f} ms step{fmt}; the trainer cut data+Adam from "
            f"{plain - c['plain_fwd_bwd_ms']:.1f} to {trainer - c['trainer_fwd_bwd_ms']:.1f} ms; even at zero "
            f"data+Adam the cap is {cap:.2f}x")


def spread(xs) -> str:
    return f"{statistics.median(xs):.3f} [{min(xs):.3f}-{max(xs):.3f}]"


def hours(s: float) -> str:
    return f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"


def render(res: dict) -> str:
    env, tp, par, orch, proj, lat = (res.get(k) for k in ("environment", "throughput", "parallel",
                                                            "orchestration", "projection", "latency"))
    dev = env["device_label"]
    lines = [f"# Benchmark ({'quick' if env['quick'] else 'full'}) - {env['time']}", "",
             f"Device: {dev}. torch {env['torch']}, {env['cores']} CPU cores, {env['threads']} thread(s) per "
             f"trial. Data: {env['data']}. Every ratio is taken within this run, measurements interleaved; "
             f"other processes on the machine are not controlled (their load is reported where it matters).", ""]
    if env["quick"]:
        lines += ["**Quick run**: tiny epochs and short trials; figures are indicative only (the orchestration "
                  "trials last well under the one minute the target is defined on).", ""]
    lines += ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    if tp:
        worst = min(tp["variants"].items(), key=lambda kv: kv[1]["speedup"])
        missed = [v for v, r in tp["variants"].items() if r["speedup"] < TARGET_SPEEDUP]
        said = "met" if not missed else f"**missed** for {', '.join(missed)}: shortfall and cause in table 1"
        lines.append(f"| trainer >= {TARGET_SPEEDUP}x plain route, every variant | min {worst[1]['speedup']:.2f}x "
                     f"({worst[0]}) | {said} |")
    if par:
        e = par["efficiency"]
        lines.append(f"| parallel efficiency >= {TARGET_EFFICIENCY} at K={par['k']} | {e:.3f} | "
                     f"{verdict(e >= TARGET_EFFICIENCY, f'{TARGET_EFFICIENCY - e:.3f}', parallel_cause(par))} |")
    if orch:
        o, judged, how = orchestration_judged(orch)
        projected = f"; projected for the paper's grid: {proj['orchestration_fraction']:.1%}" if proj else ""
        lines.append(f"| orchestration overhead <= {TARGET_OVERHEAD:.0%} | wall {o:+.1%} on this grid, structural "
                     f"{orch['structural_overhead']:.1%}{projected} | {how}"
                     f"{verdict(judged <= TARGET_OVERHEAD, f'{judged - TARGET_OVERHEAD:.1%}', orchestration_cause(orch))} |")
    if tp:
        lines += ["", f"## 1. Training throughput, batch {BATCH}, train mode, focused augmentation ({dev})", "",
                  f"One epoch of {tp['samples_per_epoch']} samples ({tp['per_class']}/class + focus-class copies) per "
                  f"measurement, {len(next(iter(tp['variants'].values()))['trainer_images_per_second'])} rounds "
                  "interleaved trainer/plain (ABBA); img/s are medians, the speed-up is the median of the per-round ratios. Trainer: `orchestrator.train.train` with the default Config "
                  "(channels_last, fused Adam, in-memory batched augmentation). Plain: torchvision-style PIL "
                  "dataset + DataLoader + tutorial loop + default (for-loop) Adam, contiguous. Other processes kept "
                  f"{tp['load']['other_cores']:.2f} of {env['cores']} cores busy on average meanwhile.", "",
                  "| variant | trainer img/s | trainer ms/step | plain img/s | plain ms/step | speed-up | "
                  f"target >= {TARGET_SPEEDUP}x |", "|---|---|---|---|---|---|---|"]
        for v, r in tp["variants"].items():
            ok = r["speedup"] >= TARGET_SPEEDUP
            lines.append(f"| {v}{'' if r['channels_last'] else ' *'} | {r['trainer_median_images_per_second']:.0f} | "
                         f"{r['trainer_ms_per_step']:.2f} | {r['plain_median_images_per_second']:.0f} | "
                         f"{r['plain_ms_per_step']:.2f} | {r['speedup']:.2f}x | "
                         f"{verdict(ok, '%.2fx' % (TARGET_SPEEDUP - r['speedup']), throughput_cause(r))} |")
        lines += ["", "Where the step time goes (ms per step; a plain and a trainer-style step run alternately on the "
                  "same data with a timer per part, so load hits all parts alike; cap = plain step / the faster "
                  "fwd+bwd, the speed-up if data and optimizer cost nothing):", "",
                  "| variant | plain data | plain fwd+bwd | plain Adam (for-loop) | trainer data | trainer fwd+bwd | "
                  "trainer Adam (fused) | speed-up of these steps | cap |", "|---|---|---|---|---|---|---|---|---|"]
        for v, r in tp["variants"].items():
            c = r["components"]
            plain, trainer = step_sum_ms(c, "plain"), step_sum_ms(c, "trainer")
            lines.append(f"| {v} | {c['plain_data_ms']:.2f} | {c['plain_fwd_bwd_ms']:.2f} | {c['plain_adam_ms']:.2f} | "
                         f"{c['trainer_data_ms']:.2f} | {c['trainer_fwd_bwd_ms']:.2f} | {c['trainer_adam_ms']:.2f} | "
                         f"{plain / trainer:.2f}x | "
                         f"{plain / min(c['trainer_fwd_bwd_ms'], c['plain_fwd_bwd_ms']):.2f}x |")
        if any(not r["channels_last"] for r in tp["variants"].values()):
            lines += ["", "\\* the trainer keeps this variant contiguous on CPU (`train.build`): torch's oneDNN "
                      "backward of a strided 1x1 conv with 2-7 input channels in channels_last corrupts the heap "
                      "(the dense skip from the image in v2/alpha)."]
        lines += ["", f"## 2. Achieved FLOP rate vs measured peak ({dev})", "",
                  f"Peak: best fp32 {env['peak_n']}x{env['peak_n']} matmul, {env['threads']} thread(s): "
                  f"{tp['peak_gflops']:.1f} GFLOP/s (rounds: {', '.join(f'{x:.1f}' for x in tp['peak_gflops_per_round'])}); "
                  f"all {env['cores']} cores: {tp['peak_all_cores_gflops']:.1f} GFLOP/s. Achieved = 6 x MACs/image "
                  "(convs + linears, FlopCounterMode) x images/s.", "",
                  "| variant | MACs/image | trainer GFLOP/s | fraction of peak | plain GFLOP/s | fraction of peak |",
                  "|---|---|---|---|---|---|"]
        for v, r in tp["variants"].items():
            lines.append(f"| {v} | {r['macs_per_image']:,} | {r['trainer_gflops']:.2f} | {r['trainer_peak_fraction']:.1%} | "
                         f"{r['plain_gflops']:.2f} | {r['plain_peak_fraction']:.1%} |")
    if par:
        lines += ["", f"## 3. Parallel efficiency ({dev})", "",
                  f"{par['variant']}, trainer epochs of {par['samples_per_epoch']} samples, {par['k']} spawned "
                  "processes x 1 thread started together vs one alone, interleaved; efficiency = median over rounds of aggregate / "
                  "(K x single).", "",
                  "| K | single img/s | aggregate img/s | efficiency | overlap of the K epochs | other processes' "
                  f"load (cores) | target >= {TARGET_EFFICIENCY} |", "|---|---|---|---|---|---|---|",
                  f"| {par['k']} | {par['single_median']:.0f} | {par['aggregate_median']:.0f} | {par['efficiency']:.3f} | "
                  f"{min(par['overlap_fraction']):.0%} | {statistics.median(par['other_processes_cores']):.2f} | "
                  f"{verdict(par['efficiency'] >= TARGET_EFFICIENCY, '%.3f' % (TARGET_EFFICIENCY - par['efficiency']), parallel_cause(par))} |"]
    if orch:
        lines += ["", f"## 4. Orchestration overhead ({dev})", "",
                  f"Grid: {orch['variant']} x {orch['k']} seeds, {orch['epochs']} epoch(s) on {orch['per_class']}/class, "
                  f"{orch['k']} trials at once, 1 thread each, full trial (validation, latency) both ways. Plain: "
                  f"`train()` looped in {orch['k']} spawned processes (process start included). Ray: `ray.init` + "
                  "`orchestrator.run.run_sweep` (Tune, per-epoch checkpoints, MLflow SQLite in a temp dir, model "
                  "logging, system metrics; report off). One run each.", "",
                  "| plain wall s | Ray+MLflow wall s | of which ray.init s | tuner.fit s | wall overhead | structural "
                  "overhead | shortest trial s |", "|---|---|---|---|---|---|---|",
                  f"| {orch['plain_wall_seconds']:.1f} | {orch['ray_wall_seconds']:.1f} | {orch['ray_init_seconds']:.1f} | "
                  f"{orch['ray_fit_seconds']:.1f} | {orch['overhead']:+.1%} | {orch['structural_overhead']:.1%} | "
                  f"{orch['min_trial_seconds']:.0f} |", "",
                  "Structural = (start-up once + later trial start + extra trial time outside the epochs) / plain wall "
                  "+ the CPU of Ray's daemons and driver / K: the parts that outside load hardly moves. The wall ratio "
                  "is judged when both phases saw about the same outside load, the structural one otherwise.",
                  "", "Where it goes (medians over the trials; Ray's from each trial's MLflow run, start to end):", "",
                  "| route | first trial began after s | trial s | of which epochs (train + validation) s | "
                  "train img/s per trial | machine busy (cores) | ours (cores) | other processes (cores) |",
                  "|---|---|---|---|---|---|---|---|"]
        for route, label in (("plain", "plain processes"), ("ray", "Ray + MLflow")):
            ts, ld = orch[f"{route}_trials"], orch[f"{route}_load"]
            lines.append(f"| {label} | {orch[f'{route}_first_trial_start_seconds']:.1f} | "
                         f"{statistics.median(t['seconds'] for t in ts):.1f} | "
                         f"{statistics.median(t['epoch_seconds'] for t in ts):.1f} | "
                         f"{statistics.median(t['train_images_per_second'] for t in ts):.0f} | "
                         f"{ld['machine_cores']:.2f} | {ld['ours_cores']:.2f} | {ld['other_cores']:.2f} |")
        for label, by in (("Plain phase", orch["plain_load"]["ours_by_process_cores"]),
                          ("Ray phase", orch["ray_load"]["ours_by_process_cores"]),
                          ("Ray phase while all trials trained", orch["ray_load"]["steady_by_process_cores"])):
            top = sorted(by.items(), key=lambda kv: -kv[1])[:8]
            lines.append(f"\n{label}, our processes by CPU (cores): " + ", ".join(f"{n} {c:.2f}" for n, c in top))
    if proj:
        lines += ["", f"## 5. Projected wall time of the paper's grid ({dev})", "",
                  f"{proj['trials']} trials (5 seeds per variant) x 10 epochs x 70,000 images + 10 validation passes "
                  f"of 10,000 + the latency measurement, from the rates above; {proj['k']} trials at once at "
                  f"efficiency {proj['efficiency']:.2f}. Ray/MLflow: the measured start-up once, the later start and "
                  f"extra time outside the epochs per wave of {proj['k']} trials, and its daemons' CPU share ({hours(proj['orchestration_seconds'])}, "
                  f"{proj['orchestration_fraction']:.1%} of the wall time). Floor = total FLOPs / the best measured "
                  "matmul rate of the machine."
                  + (f" Only {proj['variants_measured']} variant(s) measured: the figures cover those only."
                     if proj["partial_grid"] else ""), "",
                  "| route | projected wall | compute floor | projected / floor |", "|---|---|---|---|",
                  f"| trainer + Ray/MLflow | {hours(proj['trainer_wall_seconds'])} | {hours(proj['floor_seconds'])} | "
                  f"{proj['trainer_wall_seconds'] / proj['floor_seconds']:.1f}x |",
                  f"| plain route, same parallelism, no orchestration | {hours(proj['plain_wall_seconds'])} | "
                  f"{hours(proj['floor_seconds'])} | {proj['plain_wall_seconds'] / proj['floor_seconds']:.1f}x |",
                  "", f"Total {proj['total_flops'] / 1e15:.3f} PFLOP (training 6 x MACs per image, evaluation 2 x)."]
    if lat:
        ref = reference_latency()
        lines += ["", f"## 6. Inference latency ({env['latency_device']}, 1 thread, memory format as the trainer)", "",
                  f"`measure_latency`: per image = forward + argmax on batches of 4 over {lat['images']} validation "
                  f"images (paper's definition); batch-1 = median of {lat['batch1_calls']} single-image calls. "
                  f"median [min-max] over {len(next(iter(lat['variants'].values()))['latency_ms_per_image'])} repeats, "
                  f"variants interleaved. Other processes kept {lat['load']['other_cores']:.2f} of {env['cores']} cores "
                  "busy on average meanwhile.", "",
                  "| variant | ms/image (batches of 4) | ms batch 1 | paper ms/image (their hardware) |", "|---|---|---|---|"]
        for v, r in lat["variants"].items():
            lines.append(f"| {v} | {spread(r['latency_ms_per_image'])} | {spread(r['latency_ms_batch1'])} | "
                         f"{ref.get(v, float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def parallel_cause(par: dict) -> str:
    other = statistics.median(par["other_processes_cores"])
    if other > 0.2:
        return (f"other processes kept {other:.2f} cores busy during the runs, so the {par['k']} trials did not "
                f"have {par['k']} free cores")
    return (f"other load was low ({other:.2f} cores), so the K trials slow each other: they share the L3 cache and "
            "memory bandwidth (and, on a VM, possibly one physical core)")


def orchestration_judged(orch: dict) -> tuple[float, float, str]:
    """(wall overhead, the figure judged against the target, a note saying which one and why)."""
    o = orch["overhead"]
    gap = orch["ray_load"]["other_cores"] - orch["plain_load"]["other_cores"]
    if abs(gap) > 0.25:
        return o, orch["structural_overhead"], (
            f"judged on the structural figure: outside load differed by {gap:+.2f} cores between the phases, "
            "which the wall ratio cannot separate from Ray's cost; ")
    return o, o, ""


def orchestration_cause(orch: dict) -> str:
    parts = [f"Ray start-up and driver checks {orch['fixed_seconds']:.1f} s (once per sweep)",
             f"trials began {orch['late_start_seconds']:.1f} s later (actor start, imports)",
             f"{orch['outside_epochs_extra_seconds']:.1f} s more per trial outside the epochs (checkpoints, MLflow "
             "logging, model upload)",
             f"Ray's daemons and driver used {orch['daemon_cores']:.2f} cores while the trials trained"]
    other = max(orch["plain_load"]["other_cores"], orch["ray_load"]["other_cores"])
    if other > 0.2:
        parts.append(f"other processes kept {orch['plain_load']['other_cores']:.2f} / {orch['ray_load']['other_cores']:.2f} "
                     f"cores busy (plain / Ray phase)")
    if orch["min_trial_seconds"] < 60:
        parts.append(f"the trials lasted {orch['min_trial_seconds']:.0f} s, under the 1 minute the target assumes, so "
                     "start-up weighs more than it would")
    return "; ".join(parts)


def reference_latency() -> dict:
    try:
        from models import reference
        return reference.load()["latency_ms_per_image"].to_dict()
    except Exception:  # the paper's column is context, never a reason to fail
        return {}


# --- driver --------------------------------------------------------------------------------------------------
def even_per_class(want: int, root) -> int:
    """`want` per class, at most what the smallest class holds, rounded down to even (no 1-image batch)."""
    _, labels = data.load_cifar10(root, "train")
    have = int(torch.bincount(labels, minlength=10).min())
    n = min(want, have) // 2 * 2
    if n < 2:
        raise ValueError(f"the training set has {have} images in its smallest class; the benchmark needs >= 2")
    return n


def parse_args(argv):
    ap = ArgumentParser(prog="python -m orchestrator.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: tiny epochs, short trials, fewer repeats")
    ap.add_argument("--data-dir", help="CIFAR-10 directory (default: $CIFAR10_DIR, else ~/.cache/resnet-revisited/cifar10)")
    ap.add_argument("--variants", default=",".join(models.list_models()), help="comma-separated variants")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per trial (default 1, like a trial)")
    ap.add_argument("--parallel-k", type=int, default=0, help="trials at once for 3 and 4 (default: CPU cores; 2 on CUDA)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when present")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 3, quick 2)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: parallel,orchestration,latency")
    ap.add_argument("--out-dir", default="bench/results", help="where the .md and .json go")
    args = ap.parse_args(argv)
    args.variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    bad = [v for v in args.variants if v not in models.list_models()] or ([] if args.variants else ["(none)"])
    if bad:
        raise ValueError(f"unknown variant {','.join(bad)}: choose from {','.join(models.list_models())}")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.skip - {"parallel", "orchestration", "latency"}:
        raise ValueError(f"--skip takes parallel, orchestration, latency (got {','.join(sorted(args.skip))})")
    if args.threads < 1 or args.parallel_k < 0 or args.rounds < 0:
        raise ValueError("--threads must be >= 1, --parallel-k and --rounds >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device: drop --device or use --device cpu")
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
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
    except (ValueError, data.DataError) as e:
        print(f"orchestrator.bench: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    base_cfg = Config(data_dir=str(root))
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    label = f"{device.type} ({hardware})"
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)
    _, train_y = data.load_cifar10(root, "train")
    res = {"environment": {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick, "device": device.type,
        "device_label": label, "latency_device": f"{device.type} ({hardware})", "torch": torch.__version__,
        "python": platform.python_version(), "cores": args.cores, "threads": args.threads, "k": args.parallel_k,
        "data": f"{root} ({len(train_y):,} training images)", "peak_n": sizes.peak_n,
        "sizes": dataclasses.asdict(sizes), "argv": sys.argv[1:] if argv is None else list(argv)}}
    res["throughput"] = bench_throughput(args, sizes, base_cfg, device, log)
    if "parallel" not in args.skip:
        res["parallel"] = bench_parallel(args, sizes, base_cfg, device, log)
    if "orchestration" not in args.skip:
        rate = res["throughput"]["variants"].get("base", {}).get("trainer_median_images_per_second", 0)
        res["orchestration"] = bench_orchestration(args, sizes, base_cfg, device, log, rate)
    if "latency" not in args.skip:
        res["latency"] = bench_latency(args, sizes, base_cfg, device, log)
    res["projection"] = project(res["throughput"], res.get("parallel"), res.get("orchestration"), res.get("latency"),
                                args.parallel_k)
    res["environment"]["bench_seconds"] = time.perf_counter() - t_start
    table = render(res)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench-{'quick' if args.quick else 'full'}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    print("\n" + table + f"\nwrote {stem}.md and {stem}.json ({res['environment']['bench_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
