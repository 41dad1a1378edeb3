"""Machine-load accounting (`Load`) and the one pool of spawned worker processes: they train epochs (3), whole
trials (the plain side of 4) and timed steps on the device (concurrency)."""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import statistics
import time

import torch

import data
from bench.routes import TrainConfig, TrialData, sync, train, trainer_step


def machine_busy_seconds() -> float:
    """Busy CPU-seconds of the whole machine since boot: every state but idle and iowait (psutil.cpu_times)."""
    import psutil
    times = psutil.cpu_times()
    return sum(getattr(times, state, 0.0) for state in ("user", "nice", "system", "irq", "softirq", "steal"))


class Load:
    """CPU use during a phase, in cores: the whole machine, this process and everything it started (workers, Ray's
    daemons and trial processes; sampled every 0.5 s, so a child that lives < 0.5 s is missed), and the rest:
    other people's processes, which this benchmark cannot control."""

    def __init__(self):
        import psutil
        import threading
        self._psutil, self._seen, self._labels, self._stop = psutil, {}, {}, threading.Event()
        self.samples = []  # (time, {label: CPU-seconds since the start}) every 0.5 s
        self._sample()
        self._base = dict(self._seen)  # CPU already spent before the phase
        self._t0, self._busy0 = time.time(), machine_busy_seconds()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = self._psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    key = (p.pid, p.create_time())
                    self._seen[key] = t.user + t.system
                if key not in self._labels:
                    self._labels[key] = process_label(p)
            except self._psutil.Error:
                pass
        if hasattr(self, "_base"):
            self.samples.append((time.time(), self._by_label()))

    def _by_label(self) -> dict:
        out = {}
        for k, v in self._seen.items():
            out[self._labels.get(k, "?")] = out.get(self._labels.get(k, "?"), 0.0) + v - self._base.get(k, 0.0)
        return out

    def cores_between(self, t0: float, t1: float) -> dict | None:
        """Our CPU by process label between two times (nearest samples), in cores; None if too short."""
        inside = [(t, c) for t, c in self.samples if t0 <= t <= t1]
        if len(inside) < 4:
            return None
        (ta, a), (tb, b) = inside[0], inside[-1]
        return {k: (b.get(k, 0.0) - a.get(k, 0.0)) / (tb - ta) for k in b}

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.time() - self._t0
        by_label = {k: v / wall for k, v in self._by_label().items()}
        ours = sum(by_label.values()) * wall
        machine = machine_busy_seconds() - self._busy0
        return {"wall_seconds": wall, "machine_cores": machine / wall, "ours_cores": ours / wall,
                "other_cores": max(0.0, machine - ours) / wall,
                "ours_by_process_cores": dict(sorted(by_label.items(), key=lambda kv: -kv[1]))}


RAY_WORKER = "Ray workers (trials)"


def process_label(p) -> str:
    """A short name for one of our processes: Ray's titles ('ray::ImplicitFunc'), daemons, scripts, workers."""
    try:
        cmd = p.cmdline()
    except Exception:
        return "?"
    if not cmd:
        return p.name()
    if cmd[0].startswith("ray::") or any(a.endswith(("default_worker.py", "setup_worker.py")) for a in cmd):
        return RAY_WORKER
    if any("multiprocessing" in a for a in cmd):
        return "spawned worker"
    if "-m" in cmd[:-1]:
        return "python -m " + cmd[cmd.index("-m") + 1]
    scripts = [os.path.basename(a) for a in cmd[1:] if a.endswith(".py")]
    return scripts[0] if scripts else os.path.basename(cmd[0])


# --- worker processes -------------------------------------------------------------------------------------------
def _worker(conn, threads: int, device: str) -> None:
    torch.set_num_threads(threads)
    cache = {}
    while (msg := conn.recv()) is not None:
        try:
            conn.send(("ok", _WORK[msg["kind"]](msg, cache, torch.device(device))))
        except Exception as e:  # report, keep serving: the driver decides
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _work_epoch(msg, cache, device) -> dict:
    """One training epoch of `train()` on a subset, started at msg['start_at'] so K processes overlap."""
    key = (msg["data_dir"], msg["per_class"], msg["val_images"])
    if key not in cache:
        root = data.resolve_data_dir(msg["data_dir"])
        x, y = data.stratified_subset(*data.load_cifar10(root, "train"), msg["per_class"], seed=0)
        vx, vy = data.load_cifar10(root, "test")
        cache[key] = TrialData(x, y, vx[:msg["val_images"]], vy[:msg["val_images"]])
    cfg = TrainConfig(**msg["cfg"])
    d = cache[key]
    samples = data.TrainSet(d.train_images, d.train_labels, augment=cfg.augment,
                            focus_classes=data.parse_focus_classes(cfg.focus_classes)).num_samples()
    ends = []
    time.sleep(max(0.0, msg["start_at"] - time.time()))
    h = train(cfg, msg["variant"], msg["seed"], trial_data=d, device=device, measure=False,
              on_epoch_end=lambda seed, epoch, metrics, make_state: ends.append(time.time()))["history"][0]
    train_s = samples / h["train_images_per_second"]
    t_end = ends[0] - (h["epoch_seconds"] - train_s)  # the callback comes after the (tiny) validation pass
    return {"images_per_second": h["train_images_per_second"], "start": t_end - train_s, "end": t_end}


def _work_trial(msg, cache, device) -> dict:
    """One whole trial exactly as the Ray trainable runs it (it loads its own data and measures latency)."""
    t0 = time.time()
    history = train(TrainConfig(**msg["cfg"]), msg["variant"], msg["seed"], device=device)["history"]
    return trial_stats(t0, time.time(), [h["epoch_seconds"] for h in history],
                       [h["train_images_per_second"] for h in history])


def trial_stats(start: float, end: float, epoch_seconds: list, rates: list) -> dict:
    return {"start": start, "end": end, "seconds": end - start, "epoch_seconds": sum(epoch_seconds),
            "train_images_per_second": statistics.mean(rates) if rates else float("nan")}


def ray_trial_stats(uri: str, out: dict) -> list[dict]:
    """Each Ray trial's MLflow child run: its life (run start to end) and its logged epoch times and rates."""
    from mlflow import MlflowClient
    client = MlflowClient(uri)
    runs = client.search_runs([out["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{out['parent_run_id']}'")
    return [trial_stats(r.info.start_time / 1e3, r.info.end_time / 1e3,
                        [m.value for m in client.get_metric_history(r.info.run_id, "epoch_seconds")],
                        [m.value for m in client.get_metric_history(r.info.run_id, "train_images_per_second")])
            for r in runs]


def _work_steps(msg, cache, device) -> dict:
    """`variant` trained with train()'s step on the device (one CUDA graph there) for msg['seconds'] from
    msg['start_at']: the model-steps made. The first request builds and warms the route, so that the K workers'
    timed requests start together."""
    if "steps" not in cache:
        x, y = data.synthetic_cifar10(msg["per_class"], seed=0)  # a step's time does not depend on the images
        cache["steps"] = trainer_step(TrainConfig(compile=False), msg["variant"], data.TrainSet(x, y, device=device),
                                      device, graphed=device.type == "cuda")
        for _ in range(10):
            cache["steps"]()
        sync(device)
    time.sleep(max(0.0, msg["start_at"] - time.time()))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < msg["seconds"]:
        cache["steps"]()
        n += 1
    sync(device)
    return {"steps": n, "seconds": time.perf_counter() - t0}


_WORK = {"epoch": _work_epoch, "trial": _work_trial, "steps": _work_steps}


class Workers:
    """K spawned processes, each with `threads` torch threads, serving _WORK requests over pipes. A request that
    fails raises RuntimeError in `run` (the worker keeps serving)."""

    def __init__(self, k: int, threads: int, device):
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(k):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, threads, str(device)), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def run(self, requests: list[list[dict]]) -> list[list[dict]]:
        """requests[i] goes to worker i, in order; returns each worker's results."""
        results = [[] for _ in requests]
        pending = [list(r) for r in requests]
        for i, r in enumerate(pending):
            if r:
                self.conns[i].send(r.pop(0))
        busy = {i for i, r in enumerate(requests) if r}
        while busy:
            for conn in multiprocessing.connection.wait([self.conns[i] for i in busy]):
                i = self.conns.index(conn)
                status, value = conn.recv()
                if status != "ok":
                    raise RuntimeError(f"worker {i}: {value}")
                results[i].append(value)
                if pending[i]:
                    conn.send(pending[i].pop(0))
                else:
                    busy.discard(i)
        return results

    def close(self) -> None:
        for conn, p in zip(self.conns, self.procs):
            try:
                conn.send(None)
            except OSError:
                pass
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
