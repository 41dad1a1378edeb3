"""The benchmark's timers: interleaved rounds, routes' steps, latency, the peak matmul rate, a step's components."""
import statistics
import time

import torch
import torch.nn.functional as F

import data
import models
from bench.plain import paper_adam, plain_loader
from bench.routes import Route, TrainConfig, cycle, fresh_model, latency, sync, torch_threads


def rotated(names: list, r: int) -> list:
    """Round r's order, the names rotated by r, so that drift in the machine's load hits every route alike (ABBA)."""
    return names[r % len(names):] + names[:r % len(names)]


def interleaved(work: dict, rounds: int, after_round=lambda r: None) -> dict[str, list]:
    """Each of `work`'s functions called once a round with the round's number, in rotated order; their results."""
    out = {name: [] for name in work}
    for r in range(rounds):
        for name in rotated(list(work), r):
            out[name].append(work[name](r))
        after_round(r)
    return out


def timed(route: Route, calls: int, device) -> float:
    """ms per model-step over `calls` calls of the route, with its denormal flushing."""
    torch.set_flush_denormal(route.flush)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        route.step()
    sync(device)
    return (time.perf_counter() - t0) / calls * 1e3 / route.per_call


def time_rounds(routes: dict[str, Route], rounds: int, calls: int, device) -> dict[str, list[float]]:
    """ms per model-step of each route per round, interleaved, after warm-up calls (on CUDA more: graph capture)."""
    for route in routes.values():
        timed(route, 10 if device.type == "cuda" else 3, device)
    times = interleaved({name: lambda r, route=route: timed(route, calls, device) for name, route in routes.items()},
                        rounds)
    torch.set_flush_denormal(True)
    return times


def latency_rounds(models: dict, images, labels, sizes, device) -> dict:
    """`measure_latency`'s two definitions of each of `models` ({name: (a function giving a model and its memory
    format, whether to flush denormals)}), interleaved over repeats: {name: {definition: [ms per repeat]}}."""
    def measure(make, flush: bool) -> dict:
        model, fmt = make()
        return latency.measure_latency(model, images, labels, device, batch1_calls=sizes.batch1_calls,
                                       memory_format=fmt, flush_denormals=flush)
    got = interleaved({name: lambda r, m=m: measure(*m) for name, m in models.items()}, sizes.latency_repeats)
    torch.set_flush_denormal(True)
    return {name: {key: [m[key] for m in ms] for key in ("latency_ms_per_image", "latency_ms_batch1")}
            for name, ms in got.items()}


def per_second(fn, seconds: float) -> float:
    """What fn() returns (images, steps), per second over calls for at least `seconds` (at least one call)."""
    total, t0 = 0, time.perf_counter()
    while True:
        total += fn()
        if (elapsed := time.perf_counter() - t0) >= seconds:
            return total / elapsed


def paired(times: dict, a: str, b: str) -> float:
    """Median over rounds of a's figure / b's (each round's pair ran back to back): robust to load drifting."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


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


def step_components(cfg: TrainConfig, variant: str, device, seconds: float, images, labels, focus) -> dict:
    """Mean ms per step of batch fetch, zero_grad+forward+loss+backward and optimizer step, for a plain and a
    trainer-style step run alternately with a timer per part, so machine load hits all six parts alike."""
    train_set = data.TrainSet(images, labels, augment=cfg.augment, focus_classes=focus, device=device)
    routes = {}
    for name, fmt, fused, batches in (
            ("plain", torch.contiguous_format, None, cycle(lambda epoch: plain_loader(images, labels, focus))),
            ("trainer", fresh_model(cfg, variant, device)[1], cfg.fused_adam, cycle(train_set.batches))):
        torch.manual_seed(0)
        model = models.create_model(variant).to(device=device, memory_format=fmt).train()
        routes[name] = (model, paper_adam(model.parameters(), fused=fused), fmt, batches)
    totals = {f"{r}_{part}_ms": 0.0 for r in routes for part in ("data", "fwd_bwd", "adam")}

    def step(name) -> tuple[float, float, float]:
        model, opt, fmt, batches = routes[name]
        t0 = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(device).contiguous(memory_format=fmt), y.to(device)
        sync(device)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        sync(device)
        t2 = time.perf_counter()
        opt.step()
        sync(device)
        return t1 - t0, t2 - t1, time.perf_counter() - t2  # seconds of data, fwd_bwd, adam
    for _ in range(3):  # warm-up
        step("plain"), step("trainer")
    n, t_end = 0, time.perf_counter() + seconds
    while n < 5 or time.perf_counter() < t_end:
        for name in routes:
            for part, s in zip(("data", "fwd_bwd", "adam"), step(name)):
                totals[f"{name}_{part}_ms"] += s
        n += 1
    return {k: v / n * 1e3 for k, v in totals.items()}
