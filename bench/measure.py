"""Small timing helpers: device sync, median step time, peak matmul rate, and where a step's time goes."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import data
import models
from bench.plain import paper_adam, plain_loader
from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import sync, torch_threads
from orchestrator.training.train import build


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


def step_components(cfg: TrainConfig, variant: str, device, seconds: float, images, labels, focus) -> dict:
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
        opt = paper_adam(model.parameters(), fused=fused)
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


def trainer_format(cfg: TrainConfig, variant: str, device) -> torch.memory_format:
    """The memory format the trainer really uses (train.build keeps V2/Alpha contiguous on CPU: a oneDNN bug)."""
    return build(cfg, variant, device).memory_format
