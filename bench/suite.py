"""The six measurements (throughput, parallel, orchestration, latency) and the projection of the paper's grid."""
from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import data
import models
from bench.measure import matmul_peak_gflops, step_components, trainer_format
from bench.plain import plain_epoch
from bench.sizes import BATCH, PAPER_GRID, Sizes
from bench.workers import RAY_WORKER, Load, Workers, ray_trial_stats
from orchestrator.training.config import TrainConfig
from orchestrator.sweep.config import SweepConfig
from orchestrator.training.latency import measure_latency
from orchestrator.training.train import TrialData, build, train


def bench_throughput(args, sizes: Sizes, base_cfg: TrainConfig, device, log) -> dict:
    """Trainer vs plain route on the same focused-augmentation epoch, per variant, rounds interleaved (ABBA);
    per round also where a step's time goes and the matmul peak on one thread and on all cores."""
    root = data.resolve_data_dir(args.data_dir)
    per_class = even_per_class(sizes.train_per_class, root)
    train_x, train_y = data.stratified_subset(*data.load_cifar10(root, "train"), per_class, seed=0)
    val_x, val_y = data.load_cifar10(root, "test")
    trial_data = TrialData(train_x, train_y, val_x[:sizes.val_images], val_y[:sizes.val_images])
    focus = data.parse_focus_classes(base_cfg.focus_classes)
    # Uncompiled: whole epochs of ~100 steps would be mostly compiling; part 7 times the compiled step.
    cfg = dataclasses.replace(base_cfg, epochs=1, compile=False)
    rows = {v: {"trainer_images_per_second": [], "plain_images_per_second": [], "eval_images_per_second": [],
                "components": []} for v in args.variants}
    peaks, peaks_all = [], []
    samples = data.TrainSet(train_x, train_y, focus_classes=focus).num_samples()
    load = Load()
    log(f"throughput: {samples} samples per epoch ({per_class}/class + focus copies), {sizes.rounds} rounds, "
        f"{args.threads} thread(s), device {device}")
    for r in range(sizes.rounds):
        for v in args.variants:
            throughput_round(rows[v], cfg, v, r, trial_data, focus, samples, device)
            rows[v]["components"].append(step_components(cfg, v, device, sizes.component_seconds, train_x, train_y,
                                                         focus))
            log(f"  round {r + 1} {v}: trainer {rows[v]['trainer_images_per_second'][-1]:.0f} img/s, "
                f"plain {rows[v]['plain_images_per_second'][-1]:.0f} img/s")
        peaks.append(matmul_peak_gflops(device, args.threads, sizes.peak_n, sizes.peak_seconds))
        peaks_all.append(matmul_peak_gflops(device, args.cores, sizes.peak_n, sizes.peak_seconds))
    out = {"samples_per_epoch": samples, "per_class": per_class, "val_images": len(trial_data.val_labels),
           "load": load.stop(), "peak_gflops_per_round": peaks, "peak_gflops": statistics.median(peaks),
           "peak_all_cores_gflops_per_round": peaks_all, "peak_all_cores_gflops": statistics.median(peaks_all)}
    out["variants"] = {v: throughput_summary(row, base_cfg, v, device, out["peak_gflops"]) for v, row in rows.items()}
    return out


def throughput_round(row: dict, cfg: TrainConfig, variant: str, r: int, trial_data: TrialData, focus, samples: int,
                     device) -> None:
    """One trainer epoch and one plain epoch of `variant`, in round r's order; appends their rates to `row`."""
    order = ("trainer", "plain") if r % 2 == 0 else ("plain", "trainer")  # ABBA: drift hits both alike
    for route in order:
        if route == "trainer":
            epoch = train(cfg, variant, r, trial_data=trial_data, device=device, measure=False)["history"][0]
            row["trainer_images_per_second"].append(epoch["train_images_per_second"])
            eval_seconds = epoch["epoch_seconds"] - samples / epoch["train_images_per_second"]
            row["eval_images_per_second"].append(len(trial_data.val_labels) / max(eval_seconds, 1e-9))
        else:
            torch.manual_seed(r)
            model = models.create_model(variant).to(device)
            row["plain_images_per_second"].append(plain_epoch(model, trial_data.train_images,
                                                              trial_data.train_labels, focus, device, r))


def throughput_summary(row: dict, base_cfg: TrainConfig, variant: str, device, peak_gflops: float) -> dict:
    """One variant's rounds reduced to medians, its speed-up, step time, FLOP rate and fraction of the peak."""
    macs = models.macs_per_image(models.create_model(variant))
    trainer = statistics.median(row["trainer_images_per_second"])
    plain = statistics.median(row["plain_images_per_second"])
    components = {k: statistics.median(c[k] for c in row["components"]) for k in row["components"][0]}
    return {
        **row, "components": components, "macs_per_image": macs,
        "channels_last": trainer_format(base_cfg, variant, device) == torch.channels_last,
        "trainer_median_images_per_second": trainer, "plain_median_images_per_second": plain,
        # paired per round (the two epochs ran back to back), then the median: robust to load drifting
        "speedup": statistics.median(a / b for a, b in zip(row["trainer_images_per_second"],
                                                           row["plain_images_per_second"])),
        "eval_median_images_per_second": statistics.median(row["eval_images_per_second"]),
        "trainer_ms_per_step": BATCH / trainer * 1e3, "plain_ms_per_step": BATCH / plain * 1e3,
        "trainer_gflops": 6 * macs * trainer / 1e9, "plain_gflops": 6 * macs * plain / 1e9,
        "trainer_peak_fraction": 6 * macs * trainer / 1e9 / peak_gflops,
        "plain_peak_fraction": 6 * macs * plain / 1e9 / peak_gflops}


def bench_parallel(args, sizes: Sizes, base_cfg: TrainConfig, device, log) -> dict:
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


def bench_orchestration(args, sizes: Sizes, base_cfg: TrainConfig, device, log, images_per_second: float = 0) -> dict:
    """The same K-trial grid: plain `train()` looped in K spawned processes vs `run_sweep` (Ray Tune + MLflow),
    same concurrency (K trials at once, 1 thread each), so the difference is what orchestration costs.
    With a measured single-process rate, trials are sized to train for sizes.grid_train_seconds each."""
    k, variant = args.parallel_k, "base"
    cfg = orchestration_grid(args, sizes, base_cfg, device, variant, images_per_second)
    per_class = cfg.train.subset_per_class
    log(f"orchestration: grid {variant} x seeds 0..{k - 1}, {sizes.grid_epochs} epoch(s) on {per_class}/class, "
        f"{k} at once")
    plain = plain_grid(cfg.train, variant, k, device)
    trial_seconds = [x["seconds"] for x in plain.trials]
    log(f"  plain train() in {k} processes: {plain.wall_seconds:.1f} s (trials "
        f"{', '.join(f'{seconds:.0f}' for seconds in trial_seconds)} s)")
    ray = ray_grid(cfg, k, device)
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


def orchestration_grid(args, sizes: Sizes, base_cfg: TrainConfig, device, variant: str,
                       images_per_second: float) -> SweepConfig:
    """The grid both routes run: `variant` x K seeds, K trials at once on one thread (a 1/K GPU share on CUDA)."""
    root = data.resolve_data_dir(args.data_dir)
    want = sizes.grid_per_class
    if sizes.grid_train_seconds and images_per_second:
        want = round(images_per_second * sizes.grid_train_seconds / (14 * sizes.grid_epochs))  # 14 samples/class
    per_class = even_per_class(max(want, 2), root)
    train_cfg = dataclasses.replace(base_cfg, epochs=sizes.grid_epochs, subset_per_class=per_class,
                                    latency_batch1_calls=sizes.batch1_calls)
    return SweepConfig(train=train_cfg, variants=(variant,), seeds=args.parallel_k, cpus_per_trial=1, report=False,
                       max_failures=0, gpus_per_trial=(1 / args.parallel_k if device.type == "cuda" else 0.0))


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
    from orchestrator.sweep.driver import run_sweep
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


def bench_latency(args, sizes: Sizes, base_cfg: TrainConfig, device, log) -> dict:
    root = data.resolve_data_dir(args.data_dir)
    vx, vy = data.load_cifar10(root, "test")
    vx, vy = vx[:sizes.latency_images], vy[:sizes.latency_images]
    log(f"latency: {len(vy)} validation images, {sizes.batch1_calls} batch-1 calls, {sizes.latency_repeats} repeats")
    rows = {v: {"latency_ms_per_image": [], "latency_ms_batch1": []} for v in args.variants}
    load = Load()
    for _ in range(sizes.latency_repeats):
        for v in args.variants:  # variants interleaved within each repeat
            trainer = build(base_cfg, v, device)
            m = measure_latency(trainer.model, vx, vy, device, batch1_calls=sizes.batch1_calls,
                                memory_format=trainer.memory_format)
            for key in rows[v]:
                rows[v][key].append(m[key])
    return {"images": len(vy), "batch1_calls": sizes.batch1_calls, "variants": rows, "load": load.stop()}


def project(tp: dict, par: dict | None, orch: dict | None, lat: dict | None, k: int, steps: dict | None = None) -> dict:
    """The paper's grid on this machine: per trial, 10 epochs of 70,000 training images and 10 validation passes
    over 10,000 images, then the latency measurement; K trials at once at the measured efficiency. Ray/MLflow
    adds its measured start-up once and its measured extra time per wave of K trials. With part 7, also the grid
    with --fuse-seeds: training at the trainer's rate times the measured fused-seeds speed-up of each variant."""
    g = PAPER_GRID
    eff = par["efficiency"] if par else 1.0
    # Part 1 times whole epochs of the uncompiled trainer; part 7's step times scale them to the compiled trainer
    # (the default) and to --fuse-seeds.
    step_rows = (steps or {}).get("variants", {})
    scale = {v: {"trainer": row.get("compiled_ms_per_step", row["eager_ms_per_step"]) / row["eager_ms_per_step"],
                 "fused": row["fused_ms_per_step"] / row["eager_ms_per_step"]} for v, row in step_rows.items()}
    serial = {"trainer": 0.0, "plain": 0.0, "fused": 0.0}
    flops = 0.0
    for v, row in tp["variants"].items():
        eval_s = g["epochs"] * g["val_images"] / row["eval_median_images_per_second"]
        lat_s = 0.0
        if lat:
            lv = lat["variants"][v]
            lat_s = (g["val_images"] * statistics.median(lv["latency_ms_per_image"])
                     + 220 * statistics.median(lv["latency_ms_batch1"])) / 1e3
        for route in serial:
            rate = row[f"{'plain' if route == 'plain' else 'trainer'}_median_images_per_second"]
            train_s = g["epochs"] * g["train_images_per_epoch"] / rate * scale.get(v, {}).get(route, 1.0)
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
            # --fuse-seeds: the same epochs at the fused step's rate (part 7), K trials at once as above
            "fused_wall_seconds": (serial["fused"] / (k * eff) + orchestration_s) if scale else None,
            "trainer_scaled_by_steps": bool(scale),
            "total_flops": flops, "floor_seconds": flops / (peak * 1e9),
            "partial_grid": len(tp["variants"]) < g["variants"]}


def even_per_class(want: int, root) -> int:
    """`want` per class, at most what the smallest class holds, rounded down to even (no 1-image batch)."""
    _, labels = data.load_cifar10(root, "train")
    have = int(torch.bincount(labels, minlength=10).min())
    n = min(want, have) // 2 * 2
    if n < 2:
        raise ValueError(f"the training set has {have} images in its smallest class; the benchmark needs >= 2")
    return n
