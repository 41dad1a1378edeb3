"""Trials sharing the machine: CPU-load accounting (`Load`), the one pool of spawned worker processes, and the parts
that use them: parallel (3), orchestration (4) and concurrency."""
import contextlib
import dataclasses
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

import data
from bench.inputs import even_per_class, load
from bench.measure import interleaved
from bench.routes import SweepConfig, TrainConfig, run_sweep, sync, train, trainer_step

CONCURRENCY_PER_CLASS = 100  # each concurrency worker's synthetic training set: 1,400 samples an epoch
RAY_WORKER = "Ray workers (trials)"


def machine_busy_seconds() -> float:
    """Busy CPU-seconds of the whole machine since boot: every state but idle and iowait (psutil.cpu_times)."""
    times = psutil.cpu_times()
    return sum(getattr(times, state, 0.0) for state in ("user", "nice", "system", "irq", "softirq", "steal"))


class Load:
    """CPU use during a phase, in cores: the machine, ours (this process and all it started, sampled every 0.5 s: a
    child that lives less is missed), and the rest: other people's processes, which the benchmark cannot control."""

    def __init__(self):
        self._cpu, self._labels, self._base, self.samples = {}, {}, {}, []
        self._sample()
        self._base, self.samples = dict(self._cpu), []  # CPU already spent before the phase
        self._t0, self._busy0, self._stop = time.time(), machine_busy_seconds(), threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        """Each process's CPU-seconds so far (a process that ended keeps its last), and by label since the start."""
        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                with p.oneshot():
                    key, t = (p.pid, p.create_time()), p.cpu_times()
                if key not in self._labels:  # first the label: a process without one is not counted
                    self._labels[key] = process_label(p)
                self._cpu[key] = t.user + t.system
        by_label = {}
        for key, cpu in self._cpu.items():
            by_label[self._labels[key]] = by_label.get(self._labels[key], 0.0) + cpu - self._base.get(key, 0.0)
        self.samples.append((time.time(), by_label))

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def cores_between(self, t0: float, t1: float) -> dict | None:
        """Our CPU by process label between two times (nearest samples), in cores; None if too short."""
        inside = [(t, c) for t, c in self.samples if t0 <= t <= t1]
        if len(inside) < 4:
            return None
        (ta, a), (tb, b) = inside[0], inside[-1]
        return {k: (b.get(k, 0.0) - a.get(k, 0.0)) / (tb - ta) for k in b}

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall, by_label = time.time() - self._t0, self.samples[-1][1]
        ours, machine = sum(by_label.values()), machine_busy_seconds() - self._busy0
        return {"wall_seconds": wall, "machine_cores": machine / wall, "ours_cores": ours / wall,
                "other_cores": max(0.0, machine - ours) / wall,
                "ours_by_process_cores": {k: v / wall for k, v in sorted(by_label.items(), key=lambda kv: -kv[1])}}


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
    return next((os.path.basename(a) for a in cmd[1:] if a.endswith(".py")), os.path.basename(cmd[0]))


# --- the worker pool -------------------------------------------------------------------------------------------------
def serve(conn, threads: int, device: str) -> None:
    """A worker's life: requests from the pipe until None, each answered ('ok', result) or ('error', message)."""
    torch.set_num_threads(threads)
    cache = {}
    while (msg := conn.recv()) is not None:
        try:
            conn.send(("ok", WORK[msg["kind"]](msg, cache, torch.device(device))))
        except Exception as e:  # report, keep serving: the driver decides
            conn.send(("error", f"{type(e).__name__}: {e}"))


def work_epoch(msg, cache, device) -> dict:
    """One training epoch of `train()` on a subset, started at msg['start_at'] so K processes overlap."""
    key = (msg["data_dir"], msg["per_class"], msg["val_images"])
    if key not in cache:
        cache[key] = load(*key)
    d, cfg, ends = cache[key], TrainConfig(**msg["cfg"]), []
    samples = data.TrainSet(d.train_images, d.train_labels, augment=cfg.augment,
                            focus_classes=data.parse_focus_classes(cfg.focus_classes)).num_samples()
    time.sleep(max(0.0, msg["start_at"] - time.time()))
    h = train(cfg, msg["variant"], msg["seed"], trial_data=d, device=device, measure=False,
              on_epoch_end=lambda seed, epoch, metrics, make_state: ends.append(time.time()))["history"][0]
    train_s = samples / h["train_images_per_second"]
    t_end = ends[0] - (h["epoch_seconds"] - train_s)  # the callback comes after the (tiny) validation pass
    return {"images_per_second": h["train_images_per_second"], "start": t_end - train_s, "end": t_end}


def work_trial(msg, cache, device) -> dict:
    """One whole trial exactly as the Ray trainable runs it (it loads its own data and measures latency)."""
    t0 = time.time()
    history = train(TrainConfig(**msg["cfg"]), msg["variant"], msg["seed"], device=device)["history"]
    return trial_stats(t0, time.time(), [h["epoch_seconds"] for h in history],
                       [h["train_images_per_second"] for h in history])


def work_steps(msg, cache, device) -> dict:
    """Model-steps of `variant` with train()'s step (a CUDA graph on CUDA) in msg['seconds'] from msg['start_at'];
    the first request builds and warms the route, so that the K workers' timed requests start together."""
    if "steps" not in cache:
        x, y = data.synthetic_cifar10(msg["per_class"], seed=0)  # a step's time does not depend on the images
        cache["steps"] = trainer_step(TrainConfig(compile=False), msg["variant"], data.TrainSet(x, y, device=device),
                                      device, graphed=device.type == "cuda")
        for _ in range(10):
            cache["steps"]()
        sync(device)
    time.sleep(max(0.0, msg["start_at"] - time.time()))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < msg["seconds"]:
        cache["steps"]()
        n += 1
    sync(device)
    return {"steps": n, "seconds": time.perf_counter() - t0}


WORK = {"epoch": work_epoch, "trial": work_trial, "steps": work_steps}


@contextlib.contextmanager
def workers(k: int, threads: int, device):
    """K spawned processes with `threads` torch threads, serving WORK over pipes until the `with` block ends; yields
    run(requests): request i to worker i, all at once, their results (a failed one: RuntimeError; the worker lives)."""
    ctx = mp.get_context("spawn")
    conns, children = zip(*(ctx.Pipe() for _ in range(k)))
    procs = [ctx.Process(target=serve, args=(child, threads, str(device)), daemon=True) for child in children]
    for p in procs:
        p.start()

    def run(requests: list[dict]) -> list[dict]:
        for conn, request in zip(conns, requests):
            conn.send(request)
        replies = [conn.recv() for conn in conns[:len(requests)]]
        for i, (status, value) in enumerate(replies):
            if status != "ok":
                raise RuntimeError(f"worker {i}: {value}")
        return [value for _, value in replies]
    try:
        yield run
    finally:
        for conn, p in zip(conns, procs):
            with contextlib.suppress(OSError):
                conn.send(None)
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


# --- the parts -------------------------------------------------------------------------------------------------------
def bench_parallel(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """K one-thread processes each training an epoch at once, against one of them alone, interleaved."""
    k, variant = args.parallel_k, "base"
    per_class = even_per_class(sizes.parallel_per_class, args.data_dir)
    log(f"parallel: K={k} processes x 1 thread, {variant}, {14 * per_class} samples per epoch, {sizes.rounds} rounds")
    request = {"kind": "epoch", "cfg": dataclasses.replace(cfg, epochs=1).to_dict(), "variant": variant,
               "data_dir": args.data_dir, "per_class": per_class, "val_images": 50}
    with workers(k, 1, args.device) as run:
        def at_once(n: int, seed: int) -> dict:
            """n workers' epochs started together: images/s summed, how much the epochs overlapped, others' load."""
            load_ = Load()
            res = run([dict(request, seed=seed, start_at=time.time() + 0.5)] * n)
            start, end = max(x["start"] for x in res), min(x["end"] for x in res)
            union = max(x["end"] for x in res) - min(x["start"] for x in res)
            out = {"images_per_second": sum(x["images_per_second"] for x in res),
                   "overlap": max(0.0, end - start) / union, "other_cores": load_.stop()["other_cores"]}
            if seed:  # seed 0 is the warm-up
                log(f"  round {seed}: {n} at once {out['images_per_second']:.0f} img/s")
            return out
        at_once(k, 0)  # warm-up: imports, data load, first-epoch allocations
        runs = interleaved({"single": lambda r: at_once(1, r + 1), "all": lambda r: at_once(k, r + 1)}, sizes.rounds)
    singles, aggregates = ([x["images_per_second"] for x in runs[mode]] for mode in ("single", "all"))
    return {"k": k, "variant": variant, "samples_per_epoch": 14 * per_class, "single_images_per_second": singles,
            "aggregate_images_per_second": aggregates, "overlap_fraction": [x["overlap"] for x in runs["all"]],
            "other_processes_cores": [x["other_cores"] for mode in runs.values() for x in mode],
            "single_median": statistics.median(singles), "aggregate_median": statistics.median(aggregates),
            # each round's pair ran back to back: paired per round, then the median
            "efficiency": statistics.median(a / (k * b) for a, b in zip(aggregates, singles))}


def bench_orchestration(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """The same K-trial grid (K at once, 1 thread each; sizes.grid_train_seconds each at part 1's rate) through plain
    `train()` in K spawned processes and through `run_sweep` (Ray Tune + MLflow): what orchestration costs."""
    k, variant = args.parallel_k, "base"
    rate = earlier.get("throughput", {}).get("variants", {}).get(variant, {}).get("trainer_median_images_per_second", 0)
    want = (round(rate * sizes.grid_train_seconds / (14 * sizes.grid_epochs))  # 14 samples/class
            if sizes.grid_train_seconds and rate else sizes.grid_per_class)
    train_cfg = dataclasses.replace(cfg, epochs=sizes.grid_epochs, latency_batch1_calls=sizes.batch1_calls,
                                    subset_per_class=even_per_class(max(want, 2), args.data_dir))
    # the grid both routes run: base x K seeds, K trials at once on one thread (a 1/K GPU share on CUDA)
    sweep = SweepConfig(train=train_cfg, variants=(variant,), seeds=k, cpus_per_trial=1, report=False, max_failures=0,
                        gpus_per_trial=(1 / k if args.device.type == "cuda" else 0.0))
    log(f"orchestration: grid {variant} x seeds 0..{k - 1}, {sizes.grid_epochs} epoch(s) on "
        f"{sweep.train.subset_per_class}/class, {k} at once")
    plain = plain_grid(sweep.train, variant, k, args.device)
    trial_seconds = [x["seconds"] for x in plain["trials"]]
    log(f"  plain train() in {k} processes: {plain['wall_seconds']:.1f} s (trials "
        f"{', '.join(f'{seconds:.0f}' for seconds in trial_seconds)} s)")
    ray = ray_grid(sweep, k, args.device)
    log(f"  run_sweep (Ray Tune + MLflow): {ray['wall_seconds']:.1f} s (ray.init {ray['init_seconds']:.1f} s, "
        f"tuner.fit {ray['fit_seconds']:.1f} s)")
    fixed = ray["wall_seconds"] - ray["fit_seconds"]  # ray.init, driver checks, MLflow parent run: once per sweep
    late = max(0.0, ray["first_trial_start_seconds"] - plain["first_trial_start_seconds"])
    plain_outside, ray_outside = (statistics.median(t["seconds"] - t["epoch_seconds"] for t in phase["trials"])
                                  for phase in (plain, ray))
    outside = max(0.0, ray_outside - plain_outside)
    steady = ray["load"]["steady_by_process_cores"]
    daemons = max(0.0, sum(steady.values()) - steady.get(RAY_WORKER, 0.0))
    return {"k": k, "variant": variant, "epochs": sizes.grid_epochs, "per_class": sweep.train.subset_per_class,
            **{f"plain_{key}": value for key, value in plain.items()},
            **{f"ray_{key}": value for key, value in ray.items()}, "plain_trial_seconds": trial_seconds,
            "fixed_seconds": fixed, "extra_seconds_per_wave": ray["fit_seconds"] - plain["wall_seconds"],
            "late_start_seconds": late, "outside_epochs_extra_seconds": outside, "daemon_cores": daemons,
            "structural_overhead": (fixed + late + outside) / plain["wall_seconds"] + daemons / k,
            "overhead": ray["wall_seconds"] / plain["wall_seconds"] - 1, "min_trial_seconds": min(trial_seconds)}


def trial_stats(start: float, end: float, epoch_seconds: list, rates: list) -> dict:
    return {"start": start, "end": end, "seconds": end - start, "epoch_seconds": sum(epoch_seconds),
            "train_images_per_second": statistics.mean(rates) if rates else float("nan")}


def plain_grid(train_cfg: TrainConfig, variant: str, k: int, device) -> dict:
    """The grid as plain `train()` calls, one trial in each of K spawned processes (process start included)."""
    load_ = Load()
    t0, began = time.perf_counter(), time.time()
    with workers(k, 1, device) as run:
        trials = run([{"kind": "trial", "cfg": train_cfg.to_dict(), "variant": variant, "seed": seed}
                      for seed in range(k)])
    return {"wall_seconds": time.perf_counter() - t0, "load": load_.stop(), "trials": trials,
            "first_trial_start_seconds": min(t["start"] for t in trials) - began}


def ray_grid(cfg: SweepConfig, k: int, device) -> dict:
    """The grid through `ray.init` + `run_sweep` (MLflow SQLite in a temp dir), the trials' figures from their runs."""
    import ray
    from mlflow import MlflowClient
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    cfg = dataclasses.replace(cfg, tracking_uri=f"sqlite:///{tmp}/mlflow.db", storage_path=str(tmp / "ray_results"),
                              experiment_name="bench")
    started_here = not ray.is_initialized()
    load_ = Load()
    t0, began = time.perf_counter(), time.time()
    try:
        if started_here:
            ray.init(num_cpus=k, num_gpus=1 if device.type == "cuda" else 0, include_dashboard=False,
                     log_to_driver=False)
        init_seconds = time.perf_counter() - t0
        out = run_sweep(cfg)
        wall = time.perf_counter() - t0
        ray_load = load_.stop()
        client = MlflowClient(cfg.tracking_uri)  # each trial's child run: its life, its logged epoch times and rates
        trials = [trial_stats(r.info.start_time / 1e3, r.info.end_time / 1e3,
                              [m.value for m in client.get_metric_history(r.info.run_id, "epoch_seconds")],
                              [m.value for m in client.get_metric_history(r.info.run_id, "train_images_per_second")])
                  for r in client.search_runs([out["experiment_id"]],
                                              f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")]
        # Ray's own CPU while all K trials train: its steady cost over a long sweep (start-up is counted apart)
        steady = load_.cores_between(max(t["start"] for t in trials) + 2, min(t["end"] for t in trials) - 2)
        ray_load["steady_by_process_cores"] = steady or ray_load["ours_by_process_cores"]
    finally:
        if started_here:
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    statuses = list(out["summary"]["status"])
    if statuses != ["done"] * k:
        raise RuntimeError(f"orchestration grid did not finish cleanly: {statuses}")
    fit_start = began + wall - out["wall_seconds"]  # near enough: what follows tuner.fit (the summary) is quick
    return {"wall_seconds": wall, "load": ray_load, "trials": trials,
            "first_trial_start_seconds": min(t["start"] for t in trials) - fit_start, "init_seconds": init_seconds,
            "fit_seconds": out["wall_seconds"]}


def bench_concurrency(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """K processes training base at once with train()'s step: model-steps/s, speed-up; a K that fails is reported."""
    out = {"variant": "base", "mps": args.mps, "k": {}}
    request = {"kind": "steps", "variant": "base", "per_class": CONCURRENCY_PER_CLASS, "seconds": 0.0, "start_at": 0.0}
    for k in sorted(set(sizes.k_list) | {1}):
        try:
            with workers(k, 1, args.device) as run:
                run([request] * k)  # set up and warm up: build, capture, first allocations
                got = run([dict(request, seconds=sizes.concurrency_seconds, start_at=time.time() + 0.5)] * k)
            window = max(m["seconds"] for m in got)
            row = {"processes": k, "steps": [m["steps"] for m in got], "window_seconds": window,
                   "model_steps_per_second": sum(m["steps"] for m in got) / window}
        except (RuntimeError, EOFError, OSError) as e:  # a failed request, or a worker that died
            row = {"error": f"{type(e).__name__}: {e}"}
        out["k"][str(k)] = row
        log(f"  K={k}: " + (row.get("error") or f"{row['model_steps_per_second']:.0f} model-steps/s"))
    one = out["k"]["1"].get("model_steps_per_second")
    for row in out["k"].values():
        if one and "model_steps_per_second" in row:
            row["speedup"] = row["model_steps_per_second"] / one
    return out
