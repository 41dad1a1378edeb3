"""Where training and timing run: the device a trial gets, its thread count, and denormal flushing."""
from __future__ import annotations

import contextlib
import platform

import torch


def flush_denormal(enabled: bool = True) -> bool:
    """Flush subnormal floats to zero on this thread (and the threads it starts later); True when the CPU
    supports it. Subnormal weights and Adam moments appear after ~5 epochs of V6 and make every op that
    touches them several times slower; values below 1.2e-38 change no prediction."""
    return torch.set_flush_denormal(enabled) and enabled


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's model name (psutil and platform give none on Linux: /proc/cpuinfo has it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_device(want_gpu: bool = True) -> torch.device:
    return torch.device("cuda") if want_gpu and torch.cuda.is_available() else torch.device("cpu")


def resolve_device(choice: str = "auto", gpu_assigned: bool = True) -> torch.device:
    """The device of --device `choice`: auto = CUDA when the trial was given a GPU (`gpu_assigned`: by Ray in a
    trial; outside Ray, assumed) and torch sees one, else CPU. cuda where torch sees none is an error, never a
    silent CPU run (the driver refuses it before a local sweep starts; a remote node can still lack one)."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device cuda but torch {torch.__version__} sees no CUDA device in this process: "
                               f"give the trial a GPU node (--gpus-per-trial) or pass --device auto")
        return torch.device("cuda")
    return pick_device(gpu_assigned)
