"""Inference latency, two ways, measured one trial at a time per node and on a fixed thread count."""
from __future__ import annotations

import contextlib
import fcntl
import os
import statistics
import tempfile
import time

import torch

import data
from orchestrator.training.device import cpu_model, flush_denormal, sync, torch_threads

LOCK_PATH = os.path.join(tempfile.gettempdir(), "resnet-revisited-latency.lock")
LATENCY_THREADS = 1  # the same for every trial, so latencies compare across variants and sweeps


@contextlib.contextmanager
def node_lock(path: str = LOCK_PATH):
    """Serialize latency measurements on this node: parallel trials would otherwise slow each other down."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def latency_context(device: torch.device) -> dict:
    """Where a latency was measured: recorded beside every measurement."""
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {"latency_device": device.type, "latency_hardware": hardware,
            "latency_threads": str(LATENCY_THREADS), "torch_version": torch.__version__}


@torch.no_grad()
def measure_latency(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                    *, batch1_calls: int = 200, memory_format=torch.contiguous_format,
                    warmup_calls: int = 20, flush_denormals: bool = True) -> dict:
    """latency_ms_per_image: the paper's definition (forward + argmax on batches of 4 over the validation
    set, total time / images). latency_ms_batch1: median of `batch1_calls` single-image calls after warm-up
    (timed one call at a time: torch.utils.benchmark.Timer's blocks would average calls before the median).
    Subnormals are flushed unless told otherwise: a trained V6 holds some, and they slow inference 4x."""
    model.eval()
    flush_denormal(flush_denormals)
    batches = [x.contiguous(memory_format=memory_format) for x, _ in data.eval_batches(images, labels, 4, device)]
    single = batches[0][:1]
    with node_lock(), torch_threads(LATENCY_THREADS):
        for _ in range(warmup_calls):
            model(single).argmax(1)
        sync(device)
        t0 = time.perf_counter()
        for x in batches:
            model(x).argmax(1)
        sync(device)
        per_image_ms = (time.perf_counter() - t0) * 1e3 / len(labels)
        times = []
        for _ in range(batch1_calls):
            t = time.perf_counter()
            model(single).argmax(1)
            sync(device)
            times.append((time.perf_counter() - t) * 1e3)
    return {"latency_ms_per_image": per_image_ms, "latency_ms_batch1": statistics.median(times)}
