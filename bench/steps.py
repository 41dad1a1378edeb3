"""Parts 7 and 8 of `python -m bench`: ms per model-step on the CPU, route by route, on fresh models
and on a late-epoch state that holds subnormal floats. Routes interleave round by round in one process on the
bench's thread count (the order rotates, so drift in the machine's load hits them alike); medians over rounds.

7. steps   per variant, from a fresh model:
           plain      bench/plain.py's route (PIL + DataLoader batches, torch's default Adam, loss.item())
           eager      the trainer's step uncompiled (--no-compile)
           compiled   the default full-run trainer: forward, loss, backward and Adam in one torch.compile
           fused      --fuse-seeds: K seeds as one stacked network (uncompiled, as it trains); its call time / K
           and what the compiled route's first call took (compiling: a trial pays it once).
8. late    V6 from a real checkpoint trained without flushing (late_state.py), the plain and the compiled route
           each with denormals flushed and not, and inference latency (orchestrator.training.latency) both ways.
           Flushing matters only from such a state: a fresh model holds no subnormals.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import torch

import data
import models
from bench.gpu import fused_route, plain_route, time_ms_per_call, trainer_route
from bench.late_state import count_subnormal, late_state_path, load_late_state
from bench.measure import trainer_format
from bench.sizes import Sizes
from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import measure_latency
from orchestrator.training.train import TrialData

LATE_VARIANT = "v6"  # the variant whose late epochs hold subnormals (base, v3 and v5 end with none)


@dataclasses.dataclass
class Route:
    step: object          # one call: `per_call` model-steps
    per_call: int = 1
    flush: bool = True    # torch.set_flush_denormal while this route runs


def step_data(args, sizes: Sizes, cfg: TrainConfig) -> tuple[TrialData, data.TrainSet, list[int]]:
    root = data.resolve_data_dir(args.data_dir)
    x, y = data.stratified_subset(*data.load_cifar10(root, "train"), sizes.train_per_class, seed=0)
    vx, vy = data.load_cifar10(root, "test")
    focus = data.parse_focus_classes(cfg.focus_classes)
    return TrialData(x, y, vx, vy), data.TrainSet(x, y, focus_classes=focus), focus


def first_call_seconds(route: Route) -> float:
    torch.set_flush_denormal(route.flush)
    t0 = time.perf_counter()
    route.step()
    return time.perf_counter() - t0


def time_routes(routes: dict[str, Route], rounds: int, steps: int) -> dict[str, list[float]]:
    """ms per model-step of each route, per round; a few warm-up calls first."""
    for route in routes.values():
        torch.set_flush_denormal(route.flush)
        for _ in range(3):
            route.step()
    names, times = list(routes), {name: [] for name in routes}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            torch.set_flush_denormal(routes[name].flush)
            times[name].append(time_ms_per_call(routes[name].step, steps, torch.device("cpu")) / routes[name].per_call)
    torch.set_flush_denormal(True)
    return times


def paired(times: dict, a: str, b: str) -> float:
    """Median over rounds of a's time / b's (each round's pair ran back to back): how much faster b is."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def bench_steps(args, sizes: Sizes, base_cfg: TrainConfig, device, log) -> dict:
    d, train_set, focus = step_data(args, sizes, base_cfg)
    eager_cfg, compiled_cfg = (dataclasses.replace(base_cfg, compile=c) for c in (False, True))
    log(f"steps: {args.variants}, {sizes.step_rounds} rounds x {sizes.step_calls} calls per route, "
        f"fused K={sizes.fused_k}, compiled route {'on' if sizes.step_compile else 'off (quick)'}")
    out = {"rounds": sizes.step_rounds, "calls": sizes.step_calls, "fused_k": sizes.fused_k,
           "compiled": sizes.step_compile, "variants": {}}
    for v in args.variants:
        routes = {"plain": Route(plain_route(v, d, focus, device), flush=False),
                  "eager": Route(trainer_route(eager_cfg, v, train_set, device, graphed=False))}
        compile_seconds = {}
        if sizes.step_compile:
            routes["compiled"] = Route(trainer_route(compiled_cfg, v, train_set, device, graphed=False))
        # --fuse-seeds trains uncompiled (compiling the fused step cost minutes for 0.91-1.14x): time what it runs.
        fused_step, k, _ = fused_route(eager_cfg, v, sizes.fused_k, d, device)
        routes["fused"] = Route(fused_step, per_call=k)
        if sizes.step_compile:
            compile_seconds["compiled"] = first_call_seconds(routes["compiled"])
        times = time_routes(routes, sizes.step_rounds, sizes.step_calls)
        trainer = "compiled" if sizes.step_compile else "eager"
        row = {f"{name}_ms_per_step": statistics.median(ts) for name, ts in times.items()}
        row.update({"ms_per_round": times, "compile_seconds": compile_seconds, "trainer_route": trainer,
                    "trainer_speedup": paired(times, "plain", trainer),
                    "fused_speedup": paired(times, trainer, "fused")})
        out["variants"][v] = row
        log(f"  {v}: " + ", ".join(f"{name} {row[f'{name}_ms_per_step']:.2f}" for name in times) +
            f" ms/step; {trainer} vs plain {row['trainer_speedup']:.2f}x, fused vs {trainer} {row['fused_speedup']:.2f}x")
    return out


def bench_late(args, sizes: Sizes, base_cfg: TrainConfig, device, log) -> dict:
    """The late-epoch state: training steps and inference with subnormals flushed and not."""
    state = load_late_state(LATE_VARIANT)
    subnormal_params, subnormal_moments = count_subnormal(state)
    d, train_set, focus = step_data(args, sizes, base_cfg)
    cfg = dataclasses.replace(base_cfg, compile=sizes.step_compile)
    trainer = "compiled" if sizes.step_compile else "eager"
    log(f"late state: {late_state_path(LATE_VARIANT).name}, epoch {state['epoch']}, {subnormal_params} subnormal "
        f"parameters, {subnormal_moments} subnormal exp_avg entries; {trainer} trainer and plain, flushed and not")
    # Each route trains its own copy: a flushed step writes the subnormals back as zeros.
    routes = {"plain": Route(plain_route(LATE_VARIANT, d, focus, device, state), flush=False),
              "plain, flushed": Route(plain_route(LATE_VARIANT, d, focus, device, state)),
              trainer: Route(trainer_route(cfg, LATE_VARIANT, train_set, device, graphed=False, state=state)),
              f"{trainer}, not flushed": Route(trainer_route(cfg, LATE_VARIANT, train_set, device, graphed=False,
                                                            state=state), flush=False)}
    times = time_routes(routes, sizes.step_rounds, sizes.step_calls)
    left = {name: count_subnormal({"model": r.step.model.state_dict(), "optimizer": r.step.optimizer.state_dict()})
            for name, r in routes.items()}
    out = {"state": late_state_path(LATE_VARIANT).name, "epoch": state["epoch"], "trainer_route": trainer,
           "subnormal_parameters": subnormal_params, "subnormal_exp_avg": subnormal_moments,
           "subnormal_after_timing": left, "ms_per_round": times,
           **{f"{name}_ms_per_step": statistics.median(ts) for name, ts in times.items()},
           "trainer_speedup": paired(times, "plain", trainer),
           "flush_speedup": paired(times, f"{trainer}, not flushed", trainer),
           "plain_flush_speedup": paired(times, "plain", "plain, flushed"),
           "latency": late_latency(state, d, sizes, device)}
    log(f"  {trainer} vs plain {out['trainer_speedup']:.2f}x; without flushing the {trainer} step is "
        f"{out['flush_speedup']:.2f}x slower; inference per image "
        f"{out['latency']['per_image_slowdown']:.2f}x slower")
    return out


def late_latency(state: dict, d: TrialData, sizes: Sizes, device) -> dict:
    """orchestrator.training.latency's two definitions on the late state, flushed and not, interleaved over repeats."""
    fmt = trainer_format(TrainConfig(), LATE_VARIANT, device)
    model = models.create_model(LATE_VARIANT)
    model.load_state_dict(state["model"])
    model = model.to(device=device, memory_format=fmt)
    vx, vy = d.val_images[:sizes.latency_images], d.val_labels[:sizes.latency_images]
    rows = {flush: {"latency_ms_per_image": [], "latency_ms_batch1": []} for flush in (True, False)}
    for _ in range(sizes.latency_repeats):
        for flush in rows:
            m = measure_latency(model, vx, vy, device, batch1_calls=sizes.batch1_calls, memory_format=fmt,
                                flush_denormals=flush)
            for key in rows[flush]:
                rows[flush][key].append(m[key])
    torch.set_flush_denormal(True)
    med = {flush: {key: statistics.median(xs) for key, xs in row.items()} for flush, row in rows.items()}
    return {"flushed": rows[True], "not_flushed": rows[False], "images": len(vy),
            "per_image_slowdown": med[False]["latency_ms_per_image"] / med[True]["latency_ms_per_image"],
            "batch1_slowdown": med[False]["latency_ms_batch1"] / med[True]["latency_ms_batch1"]}
