"""The images every part reads: CIFAR-10 when there is a copy, else synthetic images of its size."""
import os
import shutil
import tempfile
from pathlib import Path

import torch

import data
from bench.routes import TrialData

SYNTHETIC = Path(tempfile.gettempdir()) / "bench-synthetic-cifar10"  # made once, reused by later runs


def resolve_data(data_dir: str | None) -> tuple[str, str]:
    """(the CIFAR-10 directory every part reads, what it holds): --data-dir, else $CIFAR10_DIR, else the default
    cache; if none was named and the cache holds none (a bare GPU machine), synthetic images of its size, written once
    to the temp dir (a step's time does not depend on what they show). A named one that does not load: DataError."""
    root = data.resolve_data_dir(data_dir)
    try:
        return str(root), f"{root} ({len(data.load_cifar10(root, 'train')[1]):,} training images)"
    except data.DataError:
        if data_dir or os.environ.get("CIFAR10_DIR"):
            raise
    if not (SYNTHETIC / "test_batch.bin").is_file():  # written whole to a temp dir, then renamed: never half
        tmp = Path(tempfile.mkdtemp(prefix=SYNTHETIC.name + "-"))
        data.write_cifar10_binary(tmp, *data.synthetic_cifar10(5000, seed=0), *data.synthetic_cifar10(1000, seed=1))
        try:
            tmp.rename(SYNTHETIC)
        except OSError:  # another run wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(SYNTHETIC), f"synthetic ({SYNTHETIC}: 50,000 training images of CIFAR-10's size, no CIFAR-10 found)"


def load(root: str, per_class: int = 0, val_images: int | None = None) -> TrialData:
    """`per_class` training images of each class (0 = all) and the first `val_images` validation images."""
    x, y = data.load_cifar10(root, "train")
    if per_class:
        x, y = data.stratified_subset(x, y, per_class, seed=0)
    vx, vy = data.load_cifar10(root, "test")
    return TrialData(x, y, vx[:val_images], vy[:val_images])


def even_per_class(want: int, root: str) -> int:
    """`want` per class, at most what the smallest class holds, rounded down to even (no 1-image batch)."""
    _, labels = data.load_cifar10(root, "train")
    have = int(torch.bincount(labels, minlength=10).min())
    n = min(want, have) // 2 * 2
    if n < 2:
        raise ValueError(f"the training set has {have} images in its smallest class; the benchmark needs >= 2")
    return n
