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


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tracking_server(store: Path, port: int):
    """`python -m orchestrator.tracking serve` on 127.0.0.1:port over a SQLite store in `store`; waits for /health."""
    import subprocess
    import sys
    import time
    import urllib.request
    store.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.tracking", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                             "--artifacts-destination", str(store / "artifacts")],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                            stderr=open(store / "server.log", "ab"), start_new_session=True)
    deadline = time.time() + 300  # MLflow's server has taken over 2 minutes to start on a loaded 2-core box
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"tracking server exited: {(store / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("tracking server did not answer /health within 300 s")


def stop_tracking_server(proc) -> None:
    import os
    import signal
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, OSError):
        pass
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def tracking_server(tmp_path):
    """A real MLflow tracking server over HTTP on 127.0.0.1; yields (uri, store dir, port)."""
    port = free_port()
    proc = start_tracking_server(tmp_path / "server", port)
    yield f"http://127.0.0.1:{port}", tmp_path / "server", port
    stop_tracking_server(proc)
