"""Trials sharing the machine: K one-thread trials at once (3), the same grid through Ray Tune + MLflow and through
plain processes (4), and K processes training on one device at once (concurrency)."""
from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.inputs import even_per_class
from bench.measure import rotated
from bench.routes import SweepConfig, TrainConfig, run_sweep
from bench.workers import RAY_WORKER, Load, Workers, ray_trial_stats

CONCURRENCY_PER_CLASS = 100  # each concurrency worker's synthetic training set: 1,400 samples an epoch


def bench_parallel(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """K one-thread processes each training an epoch at once, against one of them alone, interleaved."""
    k, variant = args.parallel_k, "base"
    per_class = even_per_class(sizes.parallel_per_class, args.data_dir)
    cfg = dataclasses.replace(cfg, epochs=1)
    workers = Workers(k, 1, args.device)
    log(f"parallel: K={k} processes x 1 thread, {variant}, {14 * per_class} samples per epoch, {sizes.rounds} rounds")

    def request(seed):
        return {"kind": "epoch", "cfg": cfg.to_dict(), "variant": variant, "seed": seed, "data_dir": args.data_dir,
                "per_class": per_class, "val_images": 50, "start_at": time.time() + 0.5}
    try:
        workers.run([[request(0)] for _ in range(k)])  # warm-up: imports, data load, first-epoch allocations
        singles, aggregates, overlaps, other_cores = [], [], [], []
        for r in range(sizes.rounds):
            for mode in rotated(["single", "all"], r):
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
    return {"k": k, "variant": variant, "samples_per_epoch": 14 * per_class, "single_images_per_second": singles,
            "aggregate_images_per_second": aggregates, "overlap_fraction": overlaps,
            "other_processes_cores": other_cores, "single_median": single, "aggregate_median": aggregate,
            # each round's pair ran back to back: paired per round, then the median
            "efficiency": statistics.median(a / (k * b) for a, b in zip(aggregates, singles))}


@dataclasses.dataclass
class GridPhase:
    """One route through the orchestration grid: its wall time, CPU load, per-trial stats, and when it began
    (time.time(), the clock the trials' start/end use); the Ray route also splits out ray.init and tuner.fit."""
    wall_seconds: float
    load: dict
    trials: list[dict]
    began: float
    init_seconds: float = 0.0
    fit_seconds: float = 0.0


def bench_orchestration(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """The same K-trial grid: plain `train()` looped in K spawned processes vs `run_sweep` (Ray Tune + MLflow),
    same concurrency (K trials at once, 1 thread each), so the difference is what orchestration costs.
    With part 1's rate of base, trials are sized to train for sizes.grid_train_seconds each."""
    k, variant = args.parallel_k, "base"
    rate = earlier.get("throughput", {}).get("variants", {}).get(variant, {}).get("trainer_median_images_per_second", 0)
    sweep = orchestration_grid(args, sizes, cfg, variant, rate)
    per_class = sweep.train.subset_per_class
    log(f"orchestration: grid {variant} x seeds 0..{k - 1}, {sizes.grid_epochs} epoch(s) on {per_class}/class, "
        f"{k} at once")
    plain = plain_grid(sweep.train, variant, k, args.device)
    trial_seconds = [x["seconds"] for x in plain.trials]
    log(f"  plain train() in {k} processes: {plain.wall_seconds:.1f} s (trials "
        f"{', '.join(f'{seconds:.0f}' for seconds in trial_seconds)} s)")
    ray = ray_grid(sweep, k, args.device)
    log(f"  run_sweep (Ray Tune + MLflow): {ray.wall_seconds:.1f} s (ray.init {ray.init_seconds:.1f} s, tuner.fit "
        f"{ray.fit_seconds:.1f} s)")
    fixed = ray.wall_seconds - ray.fit_seconds  # ray.init, driver checks, MLflow parent run, summary: once per sweep
    fit_start = ray.began + fixed  # near enough: what follows tuner.fit (summary, finishing the parent) is quick
    return {"k": k, "variant": variant, "epochs": sizes.grid_epochs, "per_class": per_class,
            "plain_wall_seconds": plain.wall_seconds, "plain_trial_seconds": trial_seconds,
            "plain_trials": plain.trials, "ray_trials": ray.trials, "plain_load": plain.load, "ray_load": ray.load,
            "ray_first_trial_start_seconds": min(t["start"] for t in ray.trials) - fit_start,
            "plain_first_trial_start_seconds": min(t["start"] for t in plain.trials) - plain.began,
            "ray_wall_seconds": ray.wall_seconds, "ray_init_seconds": ray.init_seconds,
            "ray_fit_seconds": ray.fit_seconds, "fixed_seconds": fixed,
            "extra_seconds_per_wave": ray.fit_seconds - plain.wall_seconds,
            **structural_overhead(fixed, plain.wall_seconds, plain.trials, ray.trials, plain.began, fit_start,
                                  ray.load, k),
            "overhead": ray.wall_seconds / plain.wall_seconds - 1, "min_trial_seconds": min(trial_seconds)}


def orchestration_grid(args, sizes, cfg: TrainConfig, variant: str, images_per_second: float) -> SweepConfig:
    """The grid both routes run: `variant` x K seeds, K trials at once on one thread (a 1/K GPU share on CUDA)."""
    want = sizes.grid_per_class
    if sizes.grid_train_seconds and images_per_second:
        want = round(images_per_second * sizes.grid_train_seconds / (14 * sizes.grid_epochs))  # 14 samples/class
    per_class = even_per_class(max(want, 2), args.data_dir)
    train_cfg = dataclasses.replace(cfg, epochs=sizes.grid_epochs, subset_per_class=per_class,
                                    latency_batch1_calls=sizes.batch1_calls)
    return SweepConfig(train=train_cfg, variants=(variant,), seeds=args.parallel_k, cpus_per_trial=1, report=False,
                       max_failures=0, gpus_per_trial=(1 / args.parallel_k if args.device.type == "cuda" else 0.0))


def plain_grid(train_cfg: TrainConfig, variant: str, k: int, device) -> GridPhase:
    """The grid as plain `train()` calls, one trial in each of K spawned processes (process start included)."""
    load = Load()
    t0, began = time.perf_counter(), time.time()
    workers = Workers(k, 1, device)
    try:
        trials = workers.run([[{"kind": "trial", "cfg": train_cfg.to_dict(), "variant": variant, "seed": seed}]
                              for seed in range(k)])
    finally:
        workers.close()
    wall = time.perf_counter() - t0
    return GridPhase(wall_seconds=wall, load=load.stop(), trials=[x for w in trials for x in w], began=began)


def ray_grid(cfg: SweepConfig, k: int, device) -> GridPhase:
    """The grid through `ray.init` + `run_sweep` (Tune, MLflow SQLite in a temp dir); Ray's trial stats from MLflow."""
    import ray
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    cfg = dataclasses.replace(cfg, tracking_uri=f"sqlite:///{tmp}/mlflow.db", storage_path=str(tmp / "ray_results"),
                              experiment_name="bench")
    started_here = not ray.is_initialized()
    load = Load()
    t0, began = time.perf_counter(), time.time()
    try:
        if started_here:
            ray.init(num_cpus=k, num_gpus=1 if device.type == "cuda" else 0, include_dashboard=False,
                     log_to_driver=False)
        init_seconds = time.perf_counter() - t0
        out = run_sweep(cfg)
        wall = time.perf_counter() - t0
        ray_load = load.stop()
        trials = ray_trial_stats(cfg.tracking_uri, out)
        # Ray's own CPU while all K trials train: its steady cost over a long sweep (start-up is counted apart)
        steady = load.cores_between(max(t["start"] for t in trials) + 2, min(t["end"] for t in trials) - 2)
        ray_load["steady_by_process_cores"] = steady or ray_load["ours_by_process_cores"]
    finally:
        if started_here:
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    statuses = list(out["summary"]["status"])
    if statuses != ["done"] * k:
        raise RuntimeError(f"orchestration grid did not finish cleanly: {statuses}")
    return GridPhase(wall_seconds=wall, load=ray_load, trials=trials, began=began, init_seconds=init_seconds,
                     fit_seconds=out["wall_seconds"])


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


def bench_concurrency(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """Aggregate model-steps/s of K processes training base at once on the device with train()'s step, and the
    speed-up over one process. A K that fails (out of memory, say) is reported, and the next K runs."""
    out = {"variant": "base", "mps": args.mps, "k": {}}
    for k in sorted(set(sizes.k_list) | {1}):
        workers = Workers(k, 1, args.device)
        request = {"kind": "steps", "variant": "base", "per_class": CONCURRENCY_PER_CLASS, "seconds": 0.0,
                   "start_at": 0.0}
        try:
            workers.run([[request]] * k)  # set up and warm up: build, capture, first allocations
            timed = dict(request, seconds=sizes.concurrency_seconds, start_at=time.time() + 0.5)
            got = [w[0] for w in workers.run([[timed]] * k)]
            window = max(m["seconds"] for m in got)
            row = {"processes": k, "steps": [m["steps"] for m in got], "window_seconds": window,
                   "model_steps_per_second": sum(m["steps"] for m in got) / window}
        except (RuntimeError, EOFError, OSError) as e:  # a failed request, or a worker that died
            row = {"error": f"{type(e).__name__}: {e}"}
        finally:
            workers.close()
        out["k"][str(k)] = row
        log(f"  K={k}: " + (row.get("error") or f"{row['model_steps_per_second']:.0f} model-steps/s"))
    one = out["k"]["1"].get("model_steps_per_second")
    for row in out["k"].values():
        if one and "model_steps_per_second" in row:
            row["speedup"] = row["model_steps_per_second"] / one
    return out
