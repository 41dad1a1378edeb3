"""Shared fixtures: a tiny learnable CIFAR-10 on disk, the real copy when present, a local Ray."""
import os
from pathlib import Path

import pytest

import data

REAL_CIFAR10 = os.environ.get("CIFAR10_DIR", "")


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """A synthetic dataset in the official binary layout: 16 train and 4 test images per class."""
    root = tmp_path_factory.mktemp("tiny-cifar")
    train_x, train_y = data.synthetic_cifar10(16, seed=0)
    test_x, test_y = data.synthetic_cifar10(4, seed=1)
    data.write_cifar10_binary(root, train_x, train_y, test_x, test_y)
    return root


@pytest.fixture(scope="session")
def real_cifar() -> Path:
    if not REAL_CIFAR10 or not Path(REAL_CIFAR10).is_dir():
        pytest.skip("real CIFAR-10 not available: set CIFAR10_DIR to a CIFAR-10 directory to run this test")
    return Path(REAL_CIFAR10)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module (starting Ray costs seconds); shut down afterwards."""
    import ray
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Like every trial (1 CPU each): on 2 cores, more threads than free cores makes OpenMP spin and crawl."""
    import torch
    torch.set_num_threads(1)
