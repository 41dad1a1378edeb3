"""CIFAR-10 for the paper's protocol: offline-safe loading and fast, batched focused augmentation.

    import data
    root = data.resolve_data_dir(None)                    # --data-dir, else $CIFAR10_DIR, else ~/.cache/...
    x, y = data.load_cifar10(root, "train")               # uint8 [50000,3,32,32], int64 [50000]
    train = data.TrainSet(x, y, augment="focused", focus_classes=data.parse_focus_classes("bird,cat,deer,dog"))
    for xb, yb in train.batches(epoch=0): ...             # 70,000 samples, normalized, re-augmented per epoch
"""
from .cifar import (CLASSES, DataError, download_cifar10, fingerprint, load_cifar10, parse_focus_classes, resolve_data_dir,
                    stratified_subset, synthetic_cifar10, write_cifar10_binary, write_cifar10_python)
from .split import stratified_split
from .trainset import MODES, TrainSet, eval_batches, normalize

__all__ = ["CLASSES", "DataError", "MODES", "TrainSet", "download_cifar10", "eval_batches", "fingerprint", "load_cifar10",
           "normalize", "parse_focus_classes", "resolve_data_dir", "stratified_split", "stratified_subset", "synthetic_cifar10",
           "write_cifar10_binary", "write_cifar10_python"]
