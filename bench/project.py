"""Part 5: the paper's grid (8 variants x 5 seeds x 10 epochs) projected on this machine from the measured figures,
under the sweep's old default (one trial per (variant, seed), the default step) and under `--fuse-seeds auto` (a
variant's seeds fused into one trial when the (variant, seed) pairs outnumber the trial slots: on a 2-core box,
40 > 2); also the plain route at the same parallelism, and the compute floor."""
import statistics

import models
from bench.sizes import PAPER_GRID, STEPS_PER_EPOCH

ASSUMPTIONS = (
    "training runs at part 1's whole-epoch rate of the uncompiled trainer, scaled to the default and the fused "
    "step by part 7's ratios; without part 1, at part 7's ms per step (17,500 steps an epoch)",
    "validation at part 1's eval rate; without part 1, what an epoch cost base outside training (epoch part); "
    "then the latency measurement (part 6) and, with a compiled or graphed default, one compile per variant",
    "K trials at once at the measured speed-up (part 3, or the best K of the concurrency part; else K x, "
    "unmeasured), packed perfectly: the last wave's imbalance is ignored",
    "Ray/MLflow (part 4): its start-up once, the later start per trial, the extra time outside the epochs per "
    "(variant, seed) (a fused trial still logs each seed's run), its daemons' share of the cores all along")


def epoch_seconds(v: str, res: dict) -> dict:
    """One epoch of `v` per route (trainer, fused, plain): its training seconds plus the validation pass."""
    g, tp, epoch = PAPER_GRID, res.get("throughput"), res.get("epoch") or {}
    step = (res.get("steps") or {}).get("variants", {}).get(v)
    if tp:
        row = tp["variants"][v]
        eager = g["train_images_per_epoch"] / row["trainer_median_images_per_second"]
        train = {"trainer": eager, "fused": None, "plain": g["train_images_per_epoch"]
                 / row["plain_median_images_per_second"]}
        if step:
            train["trainer"] *= step[f"{step['trainer_route']}_ms_per_step"] / step["eager_ms_per_step"]
            train["fused"] = eager * step["fused_ms_per_step"] / step["eager_ms_per_step"]
        eval_s = g["val_images"] / row["eval_median_images_per_second"]
    else:
        train = {route: STEPS_PER_EPOCH * step[f"{name}_ms_per_step"] / 1e3
                 for route, name in (("trainer", step["trainer_route"]), ("fused", "fused"), ("plain", "plain"))}
        eval_s = max(0.0, epoch.get("outside_training_seconds", 0.0))
    return {route: None if s is None else s + eval_s for route, s in train.items()}


def trial_tail_seconds(v: str, lat: dict | None) -> float:
    """The latency measurement at a trial's end: 10,000 images in batches of 4 and 220 batch-1 calls."""
    return 0.0 if not lat else (PAPER_GRID["val_images"] * statistics.median(lat["variants"][v]["latency_ms_per_image"])
            + 220 * statistics.median(lat["variants"][v]["latency_ms_batch1"])) / 1e3


def trials_at_once(res: dict, k: int) -> tuple[int, float, bool]:
    """(trials at once, speed-up over one, measured?): part 3's, else the concurrency part's best K, else K."""
    if res.get("parallel"):
        return res["parallel"]["k"], res["parallel"]["k"] * res["parallel"]["efficiency"], True
    rows = {int(n): r["speedup"] for n, r in (res.get("concurrency") or {}).get("k", {}).items() if r.get("speedup")}
    best = max(rows, key=rows.get, default=None)
    return (best, rows[best], True) if rows else (k, float(k), False)


def orchestration_seconds(orch: dict | None, trials: int, pairs: int, k: int, train_wall: float) -> float:
    """Ray/MLflow's share of the grid's wall time, as ASSUMPTIONS says."""
    return 0.0 if not orch else (max(0.0, orch["fixed_seconds"]) + (orch["late_start_seconds"] * trials
            + orch["outside_epochs_extra_seconds"] * pairs) / k + orch["daemon_cores"] / k * train_wall)


def project(res: dict, k: int) -> dict:
    """The grid's wall time under each default and route; see ASSUMPTIONS."""
    g, tp, steps = PAPER_GRID, res.get("throughput"), res.get("steps")
    variants = list((tp or steps or {}).get("variants", {}))
    if not variants:
        return {"error": "no rates to project from: run the throughput or the steps part"}
    per_epoch = {v: epoch_seconds(v, res) for v in variants}
    tail = {v: trial_tail_seconds(v, res.get("latency")) for v in variants}
    serial = {route: sum(g["seeds"] * (g["epochs"] * per_epoch[v][route] + tail[v]) for v in variants)
              if all(per_epoch[v][route] is not None for v in variants) else None
              for route in ("trainer", "fused", "plain")}
    trainer_route = steps["trainer_route"] if steps else "eager"
    compile_seconds = sum(max(steps["variants"][v]["compile_seconds"].values(), default=0.0)
                          for v in variants) if steps else 0.0
    serial["trainer"] += compile_seconds  # once per variant: Inductor's cache serves its later trials
    k, speedup, measured = trials_at_once(res, k)
    trials, orch = g["seeds"] * len(variants), res.get("orchestration")
    trainer_s = serial["trainer"] / speedup
    orchestration_s = orchestration_seconds(orch, trials, trials, k, trainer_s)
    fused_s = None if serial["fused"] is None else ((fused_train_s := serial["fused"] / speedup)
               + orchestration_seconds(orch, len(variants), trials, k, fused_train_s))
    # `make run`'s choice: the whole grid's pairs against the trial slots, whatever part of it was measured here
    pairs = g["variants"] * g["seeds"]
    auto_fuses = pairs > k
    trainer_wall_s = trainer_s + orchestration_s
    default_s = fused_s if auto_fuses else trainer_wall_s
    flops = sum(g["seeds"] * 2 * models.macs_per_image(models.create_model(v))  # training counts 3x
                * (g["epochs"] * (3 * g["train_images_per_epoch"] + g["val_images"]) + g["val_images"] + 220)
                for v in variants)
    peak = max(tp["peak_all_cores_gflops"], tp["peak_gflops"]) if tp else None  # loaded cores can measure lower
    return {"k": k, "efficiency": speedup / k, "sharing_measured": measured, "variants_measured": len(variants),
            "trials": trials, "pairs": pairs, "slots": k, "trainer_route": trainer_route,
            "trainer_wall_seconds": trainer_wall_s, "orchestration_seconds": orchestration_s,
            "orchestration_measured": bool(orch), "orchestration_fraction": orchestration_s / trainer_wall_s,
            "plain_wall_seconds": serial["plain"] / speedup, "serial_trainer_seconds": serial["trainer"],
            "compile_seconds": compile_seconds, "fused_wall_seconds": fused_s,
            "trainer_scaled_by_steps": bool(tp and steps), "auto_fuses": auto_fuses, "default_wall_seconds": default_s,
            "default_speedup": trainer_wall_s / default_s if default_s else None,
            # the old default's training time at every K the concurrency part measured (processes sharing one device)
            "sharing": [{"k": int(n), "speedup": r["speedup"], "wall_seconds": serial["trainer"] / r["speedup"]}
                        for n, r in (res.get("concurrency") or {}).get("k", {}).items() if r.get("speedup")],
            "total_flops": flops, "floor_seconds": flops / (peak * 1e9) if peak else None,
            "partial_grid": len(variants) < g["variants"], "assumptions": list(ASSUMPTIONS)}


def bench_projection(args, sizes, cfg, log, earlier: dict) -> dict:
    """The part: the projection from the figures of the parts run before it (and earlier --parts runs)."""
    out = project(earlier, args.parallel_k)
    if "error" not in out:
        log(f"projection: make run {out['trainer_wall_seconds'] / 3600:.2f} h under the old default, "
            f"{(out['default_wall_seconds'] or float('nan')) / 3600:.2f} h under --fuse-seeds auto")
    return out
