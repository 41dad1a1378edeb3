"""A trained state holding subnormal floats, for timing what fresh models never show: V6 trained without flushing
holds thousands of subnormal weights and Adam moments from about epoch 5 on, and every op that touches them is then
several times slower. late_states/ keeps one such real checkpoint (made by scripts/make_late_state.py)."""
from pathlib import Path

import torch

LATE_STATES = Path(__file__).with_name("late_states")
SMALLEST_NORMAL_BITS = 0x00800000  # float32 bits of the smallest normal number: below it (and not 0) is subnormal


def _subnormal(t: torch.Tensor) -> int:
    """Subnormal float32 entries, read from the bits: with denormals flushed (DAZ), float comparisons see them as 0."""
    if t.dtype != torch.float32:
        return 0
    bits = t.detach().contiguous().view(torch.int32) & 0x7FFFFFFF
    return int(((bits > 0) & (bits < SMALLEST_NORMAL_BITS)).sum())


def count_subnormal(state: dict) -> tuple[int, int]:
    """(subnormal parameter and buffer entries, subnormal Adam exp_avg entries) in a `train.snapshot`."""
    return (sum(_subnormal(t) for t in state["model"].values()),
            sum(_subnormal(s["exp_avg"]) for s in state["optimizer"]["state"].values() if "exp_avg" in s))


def load_late_state(variant: str = "v6") -> tuple[Path, dict]:
    """The newest late state of `variant` in late_states/, and its path (weights_only: a state is data, never code)."""
    paths = sorted(LATE_STATES.glob(f"{variant}-seed*-epoch*-noflush.pt"))
    if not paths:
        raise FileNotFoundError(f"no late state for {variant} in {LATE_STATES}: make one with "
                                f"`python scripts/make_late_state.py --variant {variant} --out {LATE_STATES}`")
    return paths[-1], torch.load(paths[-1], map_location="cpu", weights_only=True)
