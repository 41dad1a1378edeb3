"""Faults injected for real into real sweeps (local Ray, real MLflow): Ctrl-C or SIGTERM on the driver, the tracking
server going away mid-sweep, a full or read-only disk at start, a diverging trial, and a kernel that crashed trials.

A SIGKILLed trial and a SIGKILLed driver are tested in test_orchestrator.py; a lost worker node in test_cluster.py.
"""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import free_port, start_tracking_server, stop_tracking_server
import orchestrator.run as orchestrator_run
from orchestrator.sweep import driver as orun
from orchestrator.sweep import tracking
from orchestrator.sweep.config import SweepConfig
from test_orchestrator import (assert_complete_trial_run, child_runs, epoch_steps, trial_runs,
                               wait_for)

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "resnet-revisited"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def driver_args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    # One trial per (variant, seed), whatever the machine's CPUs: these tests interrupt single trials.
    return [sys.executable, "-m", "orchestrator.run", "--data-dir", str(data),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "ray"),
            "--latency-batch1-calls", "20", "--no-report", "--no-compile", "--export", "none", "--fuse-seeds", "off",
            *extra]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of a driver's process group (the local Ray it started), and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --- the driver gets Ctrl-C ---------------------------------------------------------------------------
def test_ctrl_c_on_the_driver_then_resume_finishes_only_unfinished_trials(tiny_cifar, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # The store exists before this test polls it: two processes creating one SQLite store race on its schema.
    tracking.ensure_experiment(uri, EXPERIMENT)
    client = MlflowClient(uri)
    # 8 epochs: the third trial starts as the first finishes, and must not finish too before Ctrl-C lands.
    args = driver_args(tmp_path, tiny_cifar, "--variants", "base", "--seed-list", "0,1,2", "--epochs", "8")
    log = tmp_path / "driver.err"
    driver = subprocess.Popen(args, cwd=REPO, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(log, "wb"))

    # Interrupt once a trial has finished: on 2 CPUs the third trial still has its 8 epochs ahead then. (Waiting
    # for one mid-training as well left a window of a tiny epoch or two, which a loaded CI machine missed.)
    def one_finished():
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        try:
            return any(r.info.status == "FINISHED" for r in trial_runs(client))
        except Exception:  # the store is busy: poll again
            return False
    try:
        wait_for(one_finished, 420, "one finished trial")
        os.killpg(driver.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: SIGINT to the foreground group
        code = driver.wait(timeout=240)
    finally:
        kill_group(driver)  # anything of that group still alive
    err = log.read_text(errors="replace")
    assert code == 130, err[-3000:]
    assert "interrupted: continue with `python -m orchestrator.run --resume`" in err.splitlines(), err[-3000:]
    [sweep] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.kind = 'sweep'")
    assert sweep.info.status == "KILLED" and "sweep_status" not in sweep.data.tags
    before = {r.info.run_name: (r.info.run_id, r.info.end_time) for r in trial_runs(client)
              if r.info.status == "FINISHED"}
    assert 1 <= len(before) < 3, before

    resumed = subprocess.run(args + ["--resume"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = trial_runs(client)
    assert sorted(r.info.run_name for r in runs) == ["base-seed0", "base-seed1", "base-seed2"], "duplicate runs"
    for r in runs:
        assert_complete_trial_run(client, r, epochs=8)
        if r.info.run_name in before:  # finished before Ctrl-C: the same run, not trained again
            assert (r.info.run_id, r.info.end_time) == before[r.info.run_name]
    sweeps = client.search_runs([sweep.info.experiment_id], "tags.kind = 'sweep'")
    assert [(s.info.run_id, s.info.status) for s in sweeps] == [(sweep.info.run_id, "FINISHED")]


# --- the driver gets SIGTERM ------------------------------------------------------------------------------
def test_sigterm_on_the_driver_ends_its_runs_killed_and_resume_finishes_them(tiny_cifar, tmp_path):
    """`kill <driver pid>` (a scheduler's time limit, a closed session): as Ctrl-C, the sweep stops with exit 130,
    its parent and open trial runs end KILLED (not RUNNING forever), Ray dumps no C++ stacks, and --resume
    finishes the same runs. 12 epochs: the trials are found mid-training with many epochs left, a window that
    a loaded machine's delay before the signal cannot close."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.ensure_experiment(uri, EXPERIMENT)
    client = MlflowClient(uri)
    args = driver_args(tmp_path, tiny_cifar, "--variants", "base", "--seed-list", "0,1", "--epochs", "12")
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(args, cwd=REPO, env=ENV, start_new_session=True, stdout=open(log, "wb"),
                              stderr=subprocess.STDOUT)

    def training() -> bool:
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        try:
            return any(r.info.status == "RUNNING" and client.get_metric_history(r.info.run_id, "val_accuracy")
                       for r in trial_runs(client))
        except Exception:  # the store is busy: poll again
            return False
    try:
        wait_for(training, 420, "a trial that has logged an epoch")
        os.kill(driver.pid, signal.SIGTERM)  # the driver alone, as `kill <pid>` does
        code = driver.wait(timeout=240)
    finally:
        kill_group(driver)
    out = log.read_text(errors="replace")
    assert code == 130, out[-3000:]
    assert "interrupted: continue with `python -m orchestrator.run --resume`" in out.splitlines(), out[-3000:]
    assert "SIGTERM received" not in out and "Traceback" not in out, out[-3000:]  # no C++ stack dumps
    [sweep] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.kind = 'sweep'")
    assert sweep.info.status == "KILLED" and "sweep_status" not in sweep.data.tags
    statuses = {r.info.run_name: r.info.status for r in trial_runs(client)}
    assert "KILLED" in statuses.values() and set(statuses.values()) <= {"KILLED", "FINISHED"}, statuses
    run_ids = {r.info.run_name: r.info.run_id for r in trial_runs(client)}

    resumed = subprocess.run(args + ["--resume"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = trial_runs(client)
    assert {r.info.run_name: r.info.run_id for r in runs} == run_ids, "the resumed sweep opened new runs"
    for r in runs:
        assert_complete_trial_run(client, r, epochs=12)
    assert client.get_run(sweep.info.run_id).info.status == "FINISHED"


# --- a kernel bug that aborted trials -----------------------------------------------------------------------
def test_v2_and_alpha_train_in_channels_last_without_crashing_the_process(tiny_cifar):
    """oneDNN's channels_last backward of a strided 1x1 conv with 3 input channels corrupted the heap (double
    free / SIGSEGV) in every V2/Alpha trial; train() now keeps those models contiguous on CPU. Run in a child
    process: a regression aborts it, not pytest."""
    code = ("import torch; torch.set_num_threads(1)\n"
            "from orchestrator.sweep.config import TrainConfig\n"
            "from orchestrator.training.train import train\n"
            f"cfg = TrainConfig(data_dir={str(tiny_cifar)!r}, epochs=1, compile=False, export='none')\n"
            "assert cfg.channels_last\n"
            "for v in ('v2', 'alpha'):\n"
            "    print(v, train(cfg, v, 0, measure=False)['history'][-1]['train_loss'], flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["v2", "alpha"]


# --- a full or read-only disk at start ------------------------------------------------------------------
MOUNT = """set -e
mkdir -p "$1"
case "$2" in
  full) mount -t tmpfs -o size=256k tmpfs "$1"; dd if=/dev/zero of="$1/filler" bs=4k 2>/dev/null || true ;;
  ro) mount -t tmpfs -o ro,size=256k tmpfs "$1" ;;
esac
shift 2
exec "$@"
"""


def in_mount_namespace(mount_point: Path, mode: str, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run cmd with a real tmpfs at mount_point, filled up (full) or read-only (ro), in a private mount namespace
    (unshare: no root needed where user namespaces are allowed; the mount vanishes with the process)."""
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", MOUNT, "sh",
                           str(mount_point), mode, *cmd], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory):
    probe = in_mount_namespace(tmp_path_factory.mktemp("mount-probe") / "m", "ro", ["true"]) \
        if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user+mount namespace here: {probe.stderr.strip() if probe else ''}")


@pytest.mark.parametrize("mode, what, expected", [
    ("full", "storage", "error: storage path {m}/ray_results is not writable (No space left on device): free "
                        "space or pass another --storage-path"),
    ("ro", "storage", "error: storage path {m}/ray_results is not writable (Read-only file system)"),
    ("full", "tracking", "error: cannot write the tracking store {m}/mlflow.db (No space left on device)"),
    ("ro", "tracking", "error: tracking store {m}/mlflow.db is not writable: pass a writable --tracking-uri"),
])
def test_full_or_read_only_disk_fails_in_one_line_before_any_trial(mode, what, expected, tiny_cifar, tmp_path,
                                                                    can_mount):
    m = tmp_path / "disk"
    args = driver_args(tmp_path, tiny_cifar, "--variants", "base", "--seeds", "1", "--epochs", "1")
    if what == "storage":
        args[args.index("--storage-path") + 1] = str(m / "ray_results")
    else:
        args[args.index("--tracking-uri") + 1] = f"sqlite:///{m}/mlflow.db"
    out = in_mount_namespace(m, mode, args)
    err = out.stderr.strip()
    assert out.returncode == 2, err[-3000:]
    # One line, and nothing was started: no Ray (it would log), no store, no Tune experiment outside the mount.
    assert err.startswith(expected.format(m=m)) and len(err.splitlines()) == 1, err[-3000:]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


# --- the tracking server goes away mid-sweep -----------------------------------------------------------
class ServerOutage:
    """SIGKILL the MLflow server once the first epoch is in its store, keep it down while the trials train on
    (until one has checkpointed another epoch or 60 s have passed, then 2 s), restart it on the same port and
    store. Runs in a thread; `outage` holds the times and what the store had when the server died."""

    def __init__(self, store: Path, port: int, ray_dir: Path):
        self.store, self.port, self.ray_dir = store, port, ray_dir
        self.server = start_tracking_server(store, port)
        self.outage: dict = {}
        self.thread = threading.Thread(target=self.fault, daemon=True)

    def epochs_in_store(self) -> set:
        """(run id, epoch) of every epoch whose train_loss the store holds."""
        try:
            with sqlite3.connect(f"file:{self.store}/mlflow.db?mode=ro", uri=True, timeout=5) as db:
                return set(db.execute("select run_uuid, step from metrics where key = 'train_loss'").fetchall())
        except sqlite3.Error:
            return set()

    def checkpoints(self) -> set:
        return set(self.ray_dir.glob("sweep-*/*/checkpoint_*"))

    def fault(self):
        try:
            wait_for(lambda: self.epochs_in_store(), 300, "the first epoch in the store")
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
            self.outage["down_ms"] = time.time() * 1000
            self.outage["stored_before"] = self.epochs_in_store()
            # Down until a trial has checkpointed another epoch, which it logs right after (orchestrator.sweep.trainable),
            # so that a log call surely meets the outage (a fixed 5 s missed every epoch on a loaded machine); but
            # for 60 s at most: a trial the kill caught mid-call checkpoints nothing until that call, retried by
            # MLflow's client for ~4 min, gets through, so the server must be back within those retries.
            before, deadline = self.checkpoints(), time.time() + 60
            while not self.checkpoints() - before and time.time() < deadline:
                time.sleep(0.5)
            time.sleep(2)
            self.server = start_tracking_server(self.store, self.port)  # same port, same SQLite store and artifacts
            self.outage["up_ms"] = time.time() * 1000
        except BaseException as e:  # reported by the test thread
            self.outage["error"] = e
            if self.server.poll() is not None:  # bring it back, or the sweep waits out MLflow's retries on every call
                self.server = start_tracking_server(self.store, self.port)


def test_tracking_server_down_mid_sweep_loses_and_doubles_nothing(tiny_cifar, tmp_path, local_ray):
    """The server dies after the first epoch is stored and comes back while both trials train on (ServerOutage).
    Epochs logged meanwhile are retried by MLflow's client (7 retries, exponential backoff: ~4 min) and arrive;
    each epoch is in the store exactly once. 6 epochs: after the first is in the store, the trials have epochs
    enough ahead that a loaded machine cannot finish them all before the server is down."""
    port = free_port()
    chaos = ServerOutage(tmp_path / "server", port, tmp_path / "ray")
    uri, outage = f"http://127.0.0.1:{port}", chaos.outage
    chaos.thread.start()
    try:
        cfg = SweepConfig.from_flags(dict(variants=("base",), seeds=2, epochs=6, data_dir=str(tiny_cifar),
                                          compile=False, export="none", fuse_seeds="off",
                                          tracking_uri=uri, storage_path=str(tmp_path / "ray"),
                                          latency_batch1_calls=20, report=False))
        out = orun.run_sweep(cfg)
        chaos.thread.join(timeout=900)
        assert "error" not in outage, outage.get("error")
        assert "up_ms" in outage, "the server was never restarted"
        client = MlflowClient(uri)
        runs = child_runs(uri, out["parent_run_id"])
        assert sorted(r.info.run_name for r in runs) == ["base-seed0", "base-seed1"], "lost or duplicate runs"
        met_the_outage = []
        for r in runs:
            assert_complete_trial_run(client, r, epochs=6)
            met_the_outage += [m for m in client.get_metric_history(r.info.run_id, "train_loss")
                               if m.timestamp < outage["up_ms"] and (r.info.run_id, m.step) not in outage["stored_before"]]
        # The fault really hit logging: an epoch logged (client-side timestamp) before the server was back, but
        # not in the store when it died, was sent while nothing listened (or was cut off) and arrived on a retry.
        assert met_the_outage, outage
        assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"
    finally:
        chaos.thread.join(timeout=300)
        stop_tracking_server(chaos.server)


# --- a trial out of retries ----------------------------------------------------------------------------
@pytest.mark.parametrize("tune_state", ["kept", "cut short"])
def test_trial_out_of_retries_fails_the_sweep_with_exit_1_and_resume_retries_only_it(tune_state, tiny_cifar, tmp_path,
                                                                                     local_ray, monkeypatch, capsys):
    """With --max-failures 0, one SIGKILL is final: the sweep still finishes the other trial, marks the killed
    trial's run FAILED with Ray's error (it could not end its own run), exits 1 saying which trial and how to
    retry, and `--resume` retries just that trial from its checkpoint. Also when Tune cannot read its saved state
    (a driver killed while writing it): Tune then restarts the grid, and the finished trial still trains nothing."""
    from orchestrator.sweep.trainable import FAULT_ENV
    monkeypatch.setenv(FAULT_ENV, "base-seed1:1")
    args = driver_args(tmp_path, tiny_cifar, "--variants", "base", "--seed-list", "0,1", "--epochs", "2",
                       "--max-failures", "0")[3:]
    assert orchestrator_run.main(args) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 trials failed after --max-failures 0 restarts (base-seed1)"), last
    assert "--resume --sweep-id" in last
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {r.info.run_name: r for r in trial_runs(client)}
    assert runs["base-seed1"].info.status == "FAILED" and runs["base-seed1"].data.tags["failure_reason"]
    assert_complete_trial_run(client, runs["base-seed0"], epochs=2)
    finished_at = runs["base-seed0"].info.end_time
    sweep = client.search_runs([runs["base-seed0"].info.experiment_id], "tags.kind = 'sweep'")[0]
    assert sweep.info.status == "FAILED" and sweep.data.tags["sweep_status"] == "failed"

    # The hint's id resumes it, also when given as Ray's folder name for the sweep (sweep-<id>).
    sweep_id = last.split("--resume --sweep-id ")[1].split()[0].rstrip("`")
    assert sweep_id == sweep.data.tags["sweep_id"], last
    monkeypatch.delenv(FAULT_ENV)  # a retry from scratch would kill itself again
    if tune_state == "cut short":
        state_file = max((tmp_path / "ray" / f"sweep-{sweep_id}").glob("experiment_state-*.json"))
        state_file.write_bytes(state_file.read_bytes()[:1000])
    assert orchestrator_run.main(driver_args(tmp_path, tiny_cifar, "--resume", "--sweep-id", f"sweep-{sweep_id}")[3:]) == 0
    runs = {r.info.run_name: r for r in trial_runs(client)}
    assert sorted(runs) == ["base-seed0", "base-seed1"]  # the retry continued the same run
    for r in runs.values():
        assert_complete_trial_run(client, r, epochs=2)
    assert runs["base-seed0"].info.end_time == finished_at  # the finished trial was not run again
    assert client.get_run(sweep.info.run_id).data.tags["sweep_status"] == "finished"


# --- a diverging trial ------------------------------------------------------------------------------------
def test_diverging_trial_fails_alone_with_its_reason_and_the_report_flags_it(tiny_cifar, tmp_path, local_ray,
                                                                              monkeypatch):
    """At lr 1e10 Base overflows to a NaN loss in its first epoch (it does from ~1e8) while V2 stays finite (up to
    ~1e12): one real divergence beside one healthy trial of the same sweep."""
    monkeypatch.chdir(tmp_path)  # the report goes to ./reports/<sweep id>/
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = SweepConfig.from_flags(dict(variants=("base", "v2"), seeds=1, epochs=1, lr=1e10, compile=False, export="none",
                                      data_dir=str(tiny_cifar),
                                      tracking_uri=uri, storage_path=str(tmp_path / "ray"), latency_batch1_calls=20,
                                      report=True))
    out = orchestrator_run.sweep_and_report(cfg)
    assert dict(zip(out["summary"].variant, out["summary"].status)) == {"base": "diverged", "v2": "done"}
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in child_runs(uri, out["parent_run_id"])}
    assert set(runs) == {"base-seed0", "v2-seed0"}
    failed, healthy = runs["base-seed0"], runs["v2-seed0"]
    assert failed.info.status == "FAILED"
    reason = failed.data.tags["failure_reason"]
    assert reason.startswith("base-seed0: train_loss became ") and reason.endswith(" in epoch 1"), reason
    assert epoch_steps(client, failed.info.run_id, "train_loss") == []  # nothing of the diverged epoch logged
    # Diverging is deterministic: the trial ended without Ray retrying it from a checkpoint.
    assert not list(Path(out["storage_path"]).glob("base-seed0/error.txt"))
    assert healthy.info.status == "FINISHED" and "final_val_accuracy" in healthy.data.metrics
    assert client.get_run(out["parent_run_id"]).info.status == "FINISHED"

    report = (tmp_path / "reports" / out["sweep_id"] / "report.md").read_text()
    failed_section = report.split("## Failed trials", 1)[1].split("## Missing trials", 1)[0]
    assert "base-seed0" in failed_section and "FAILED" in failed_section and reason in failed_section
    assert "v2-seed0" not in failed_section
    assert "Incomplete variants" in report  # flagged at the top, too


def test_retried_model_logging_replaces_a_half_logged_model_and_never_doubles_a_ready_one(tracking_server):
    """Issue 8 (seen in CI): a node died inside `log_model`, leaving a PENDING LoggedModel; the retried trial must
    end with exactly one READY model for the run, and a second call after success must not add another."""
    import mlflow

    from models import create_model
    from orchestrator.sweep.seed_run import log_model

    uri, _, _ = tracking_server
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("half-logged")
    run_id = client.create_run(experiment_id).info.run_id
    client.create_logged_model(experiment_id, name="mlflow_model", source_run_id=run_id)  # the dead attempt's

    def statuses():
        found = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
        return [m.status.value for m in found]

    assert statuses() == ["PENDING"]
    model = create_model("base")
    log_model(run_id, experiment_id, model)
    assert statuses() == ["READY"]
    log_model(run_id, experiment_id, model)  # a retry after the model was fully logged
    assert statuses() == ["READY"]
    assert client.get_run(run_id).info.status == "RUNNING"  # the trial, not log_model, ends the run
