"""Parts 7 and 8: ms per model-step, route by route, interleaved round by round in one process on one device.

7. steps   per variant, fresh models: plain (bench/plain.py), eager (--no-compile; what --no-cuda-graph runs on
           CUDA), the default (compiled: one torch.compile on CPU; graph: one CUDA graph on CUDA) with its first
           call (compiling or capturing: a trial pays it once), fused (--fuse-seeds, K seeds as one network; / K).
8. late    V6 from a real checkpoint trained without flushing (late_state.py), the plain and the default route
           each with denormals flushed and not, and inference latency both ways. Flushing matters only from such a
           state, and only on a CPU (a part of the CPU benchmark).
"""
import dataclasses
import statistics

import torch

import data
from bench.inputs import load
from bench.late_state import count_subnormal, load_late_state
from bench.measure import latency_rounds, paired, time_rounds, timed
from bench.plain import plain_step
from bench.routes import Route, TrainConfig, fresh_model, fused_step, trainer_step

LATE_VARIANT = "v6"  # the variant whose late epochs hold subnormals (base, v3 and v5 end with none)


def default_route(device, sizes) -> str:
    """A trial's default step here: one CUDA graph on CUDA, compiled on CPU (eager in a quick run: no compile timed)."""
    return "graph" if device.type == "cuda" else "compiled" if sizes.step_compile else "eager"


def step_data(args, sizes, cfg: TrainConfig) -> tuple:
    """The images 7 and 8 train on, the trainer's TrainSet of them on the device, the focus classes."""
    d = load(args.data_dir, sizes.step_per_class)
    focus = data.parse_focus_classes(cfg.focus_classes)
    return d, data.TrainSet(d.train_images, d.train_labels, focus_classes=focus, device=args.device), focus


def step_routes(args, sizes, cfg: TrainConfig, trainer: str, variant: str, d, train_set, focus) -> tuple:
    """{route: Route} of fresh `variant` models on this device, `trainer` the default, and why any is not timed."""
    eager = dataclasses.replace(cfg, compile=False)
    routes = {"plain": Route(plain_step(variant, d.train_images, d.train_labels, focus, args.device), flush=False),
              "eager": Route(trainer_step(eager, variant, train_set, args.device))}
    if trainer != "eager":  # one CUDA graph on CUDA, one torch.compile on CPU
        routes[trainer] = Route(trainer_step(dataclasses.replace(cfg, compile=trainer == "compiled"), variant,
                                             train_set, args.device, graphed=trainer == "graph"))
    not_timed = ({"compiled": "CUDA: the CUDA graph takes --compile's place"} if args.device.type == "cuda"
                 else {"graph": "CPU: no CUDA graphs"} if trainer == "compiled"
                 else {"graph": "CPU: no CUDA graphs", "compiled": "quick run: not compiled"})
    # --fuse-seeds trains uncompiled (compiling the fused step cost minutes for 0.91-1.14x): time what it runs.
    routes["fused"] = Route(fused_step(eager, variant, sizes.fused_k, d, args.device), per_call=sizes.fused_k)
    return routes, not_timed


def bench_steps(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    d, train_set, focus = step_data(args, sizes, cfg)
    trainer = default_route(args.device, sizes)
    log(f"steps: {','.join(args.variants)}, {sizes.rounds} rounds x {sizes.step_calls} calls per route, "
        f"fused K={sizes.fused_k}, default route {trainer}")
    out = {"rounds": sizes.rounds, "calls": sizes.step_calls, "fused_k": sizes.fused_k,
           "compiled": trainer == "compiled", "samples_per_epoch": train_set.num_samples(), "trainer_route": trainer,
           "variants": {}, "routes": ["plain", "eager", "graph" if args.device.type == "cuda" else "compiled", "fused"]}
    for v in args.variants:
        routes, not_timed = step_routes(args, sizes, cfg, trainer, v, d, train_set, focus)
        # the default route's first call alone: compiling or capturing, what a trial pays once
        compile_seconds = {trainer: timed(routes[trainer], 1, args.device) / 1e3} if trainer != "eager" else {}
        times = time_rounds(routes, sizes.rounds, sizes.step_calls, args.device)
        row = out["variants"][v] = {
            **{f"{name}_ms_per_step": statistics.median(ts) for name, ts in times.items()}, "ms_per_round": times,
            "compile_seconds": compile_seconds, "trainer_route": trainer, "not_timed": not_timed,
            "trainer_speedup": paired(times, "plain", trainer), "eager_speedup": paired(times, "eager", trainer),
            "fused_speedup": paired(times, trainer, "fused")}
        log(f"  {v}: " + ", ".join(f"{name} {row[f'{name}_ms_per_step']:.2f}" for name in times) +
            f" ms/step; {trainer} vs plain {row['trainer_speedup']:.2f}x, fused {row['fused_speedup']:.2f}x")
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def bench_late(args, sizes, cfg: TrainConfig, log, earlier: dict) -> dict:
    """The late-epoch state: training steps and inference with subnormals flushed and not."""
    path, state = load_late_state(LATE_VARIANT)
    subnormal_params, subnormal_moments = count_subnormal(state)
    d, train_set, focus = step_data(args, sizes, cfg)
    trainer = default_route(args.device, sizes)
    cfg = dataclasses.replace(cfg, compile=trainer == "compiled")
    log(f"late state: {path.name}, epoch {state['epoch']}, {subnormal_params} subnormal "
        f"parameters, {subnormal_moments} subnormal exp_avg entries; {trainer} trainer and plain, flushed and not")

    def plain(flush):  # each route trains its own copy: a flushed step writes the subnormals back as zeros
        return Route(plain_step(LATE_VARIANT, d.train_images, d.train_labels, focus, args.device, state), flush=flush)

    def ours(flush):
        return Route(trainer_step(cfg, LATE_VARIANT, train_set, args.device, trainer == "graph", state), flush=flush)
    routes = {"plain": plain(False), "plain, flushed": plain(True), trainer: ours(True),
              f"{trainer}, not flushed": ours(False)}
    times = time_rounds(routes, sizes.rounds, sizes.step_calls, args.device)
    left = {name: count_subnormal({"model": r.step.model.state_dict(), "optimizer": r.step.optimizer.state_dict()})
            for name, r in routes.items()}
    out = {"state": path.name, "epoch": state["epoch"], "trainer_route": trainer,
           "subnormal_parameters": subnormal_params, "subnormal_exp_avg": subnormal_moments,
           "subnormal_after_timing": left, "ms_per_round": times,
           **{f"{name}_ms_per_step": statistics.median(ts) for name, ts in times.items()},
           "trainer_speedup": paired(times, "plain", trainer),
           "flush_speedup": paired(times, f"{trainer}, not flushed", trainer),
           "plain_flush_speedup": paired(times, "plain", "plain, flushed"),
           "latency": late_latency(state, d, sizes, args.device)}
    log(f"  {trainer} vs plain {out['trainer_speedup']:.2f}x; without flushing the {trainer} step is "
        f"{out['flush_speedup']:.2f}x slower; inference per image {out['latency']['per_image_slowdown']:.2f}x slower")
    return out


def late_latency(state: dict, d, sizes, device) -> dict:
    """measure_latency's two definitions on the late state, flushed and not, interleaved over repeats."""
    model, fmt = fresh_model(TrainConfig(), LATE_VARIANT, device)
    model.load_state_dict(state["model"])
    vx, vy = d.val_images[:sizes.latency_images], d.val_labels[:sizes.latency_images]
    rows = latency_rounds({flush: (lambda: (model, fmt), flush) for flush in (True, False)}, vx, vy, sizes, device)
    return {"flushed": rows[True], "not_flushed": rows[False], "images": len(vy),
            **{f"{name}_slowdown": statistics.median(rows[False][key]) / statistics.median(rows[True][key])
               for name, key in (("per_image", "latency_ms_per_image"), ("batch1", "latency_ms_batch1"))}}
