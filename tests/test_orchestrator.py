"""The orchestrator end to end: the plain training function, the CLI's checks, and real sweeps through a
local Ray and a real MLflow SQLite store (no mocks)."""
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import models

import orchestrator.run as orchestrator_run
from orchestrator.sweep import driver as orun
from orchestrator.training.config import TrainConfig
from orchestrator.sweep.config import SWEEP_FIELDS, TRAIN_FIELDS, SweepConfig, build_parser, parse_config
from orchestrator.training.metrics import EPOCH_METRICS, FINAL_METRICS
from orchestrator.training.protocol import load_trial_data
from orchestrator.training.train import train
from orchestrator.training.export import EXPORT_METRICS
from orchestrator.sweep.trainable import FAULT_ENV

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, data_dir, **kw) -> SweepConfig:
    # One trial per (variant, seed), as these tests count and kill them (--fuse-seeds auto: tests/test_sweep_cli.py).
    base = dict(data_dir=str(data_dir), epochs=2, compile=False, export="none", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                storage_path=str(tmp_path / "ray_results"), latency_batch1_calls=20, report=False, fuse_seeds="off")
    return SweepConfig.from_flags({**base, **kw})


# --- config ----------------------------------------------------------------------------------------
def test_every_config_field_is_one_cli_flag():
    parser = build_parser()
    flags = {a.dest for a in parser._actions if a.dest not in ("help", "config")}  # --config: a file of these
    assert flags == set(SWEEP_FIELDS) | set(TRAIN_FIELDS)
    defaults = TrainConfig()
    assert (defaults.lr, defaults.weight_decay, defaults.batch_size, defaults.epochs, defaults.lr_patience) == \
        (5e-4, 1e-4, 4, 10, 4)
    cfg = parse_config(["--variants", "base,v6", "--seed-list", "3,7", "--no-channels-last", "--lr", "0.01"])
    assert cfg.variants == ("base", "v6") and cfg.seed_values() == (3, 7)
    assert cfg.train.channels_last is False and cfg.train.lr == 0.01
    quick = parse_config(["--quick"]).train
    assert quick.epochs == 2 and quick.subset_per_class == 500


def test_config_file_sets_any_field_and_command_line_flags_win(tmp_path):
    """A TOML file with the flags' names as keys; the same types the flags take; flags override it."""
    path = tmp_path / "sweep.toml"
    path.write_text('variants = ["base", "v6"]\nseed-list = "3,7"\nepochs = 3\nlr = 1\n'
                    'channels_last = false\naugment = "none"\n')
    cfg = parse_config(["--config", str(path)])
    assert (cfg.variants, cfg.seed_values(), cfg.train.epochs, cfg.train.lr, cfg.train.channels_last,
            cfg.train.augment) == \
        (("base", "v6"), (3, 7), 3, 1.0, False, "none")
    assert isinstance(cfg.train.lr, float)
    cfg = parse_config(["--config", str(path), "--epochs", "5", "--channels-last", "--variants", "alpha"])
    assert (cfg.train.epochs, cfg.train.channels_last, cfg.variants, cfg.seed_values()) == (5, True, ("alpha",), (3, 7))
    quick = parse_config(["--config", str(path), "--quick"])  # --quick fills in only what the file leaves out
    assert (quick.train.epochs, quick.train.subset_per_class) == (3, 500)


def test_all_pages_follows_page_tokens_for_runs_and_logged_models(tmp_path):
    from orchestrator.sweep.tracking import all_pages
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("paging")
    run_ids = {client.create_run(experiment_id).info.run_id for _ in range(5)}
    for run_id in list(run_ids)[:3]:
        client.create_logged_model(experiment_id, source_run_id=run_id)
    runs = all_pages(client.search_runs, [experiment_id], "", max_results=2)  # 3 pages
    assert {r.info.run_id for r in runs} == run_ids and len(runs) == 5
    assert len(all_pages(client.search_logged_models, [experiment_id], max_results=2)) == 3


# --- the plain training function ----------------------------------------------------------------------
def test_train_is_deterministic_and_resumes_exactly(tiny_cifar):
    cfg = TrainConfig(data_dir=str(tiny_cifar), epochs=2, latency_batch1_calls=5, compile=False)
    d = load_trial_data(cfg)
    states = {}

    def keep(seed, epoch, metrics, make_state):
        states[epoch] = make_state()

    full = train(cfg, "base", 0, trial_data=d, on_epoch_end=keep, measure=False)
    again = train(cfg, "base", 0, trial_data=d, measure=False)
    resumed = train(cfg, "base", 0, trial_data=d, state=states[1], measure=False)
    other_seed = train(cfg, "base", 1, trial_data=d, measure=False)

    assert [h["epoch"] for h in full["history"]] == [1, 2]
    assert set(EPOCH_METRICS) <= set(full["history"][0])
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert [h[key] for h in again["history"]] == [h[key] for h in full["history"]]
        assert [h[key] for h in resumed["history"]] == [h[key] for h in full["history"]]
    assert other_seed["history"][0]["train_loss"] != full["history"][0]["train_loss"]
    assert full["history"][0]["lr"] == 5e-4
    assert full["final"]["param_count"] == 136_380


@pytest.mark.parametrize("variant", models.list_models())
def test_every_variant_trains_with_the_default_kernels(variant, tiny_cifar):
    """channels_last + fused Adam on every architecture: a kernel bug here (oneDNN once crashed V2/Alpha's
    strided 1x1 skip) would kill every trial of that variant."""
    cfg = TrainConfig(data_dir=str(tiny_cifar), epochs=1, compile=False)  # compiled: tests/test_fastpath.py
    result = train(cfg, variant, 0, measure=False)
    assert math.isfinite(result["history"][0]["train_loss"])
    assert set(result["history"][0]) == {"epoch", *EPOCH_METRICS}  # the names trials log and tests check
    assert set(result["final"]) == set(FINAL_METRICS) - {"latency_ms_per_image", "latency_ms_batch1"}
    assert result["final"]["param_count"] == models.count_parameters(models.create_model(variant))


def test_base_learns_real_cifar_in_one_epoch(real_cifar):
    """The paper's protocol on 1,000 images per class for one epoch: well above chance (10%)."""
    cfg = TrainConfig(data_dir=str(real_cifar), epochs=1, subset_per_class=1000, compile=False)
    result = train(cfg, "base", 0, measure=False)
    assert result["history"][0]["val_accuracy"] >= 0.35, result["history"]


# --- bad input fails before any trial starts -----------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (["--variants", "base,v9"], "unknown variant v9"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow tracking server"),
    (["--address", "127.0.0.1:9"], "cannot reach the Ray cluster at 127.0.0.1:9"),
    (["--cpus-per-trial", "64"], "more than the cluster's"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, tiny_cifar, tmp_path, capsys, local_ray):
    base = ["--data-dir", str(tiny_cifar), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage-path", str(tmp_path / "ray"), "--epochs", "1", "--no-compile", "--export", "none"]
    assert orchestrator_run.main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "ray").glob("sweep-*")), "no trial may start on bad input"


def test_cli_error_has_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "orchestrator.run", "--variants", "nope",
                          "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: unknown variant nope") and "Traceback" not in out.stderr


# --- real sweeps: local Ray + MLflow SQLite ------------------------------------------------------------
def child_runs(uri, parent_run_id):
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def trial_runs(client, experiment="resnet-revisited") -> list:
    """Every trial run of the experiment (none before the experiment exists)."""
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.kind = 'trial'") if exp else []


def epoch_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def assert_complete_trial_run(client, run, epochs):
    """FINISHED, each epoch logged exactly once, every final metric, tags, params and exactly one model."""
    assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("failure_reason"))
    assert "failure_reason" not in run.data.tags, run.data.tags["failure_reason"]  # not even a stale one
    for key in EPOCH_METRICS:
        steps = epoch_steps(client, run.info.run_id, key)
        assert steps == list(range(1, epochs + 1)), (run.info.run_name, key, steps)
    for key in FINAL_METRICS:
        assert key in run.data.metrics, (run.info.run_name, key)
    assert {"variant", "seed", "sweep_id", "node", "device"} <= set(run.data.tags)
    assert run.data.params["lr"] == "0.0005"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/state_dict.pt" in artifacts
    models_logged = client.search_logged_models([run.info.experiment_id],
                                                filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [m.status for m in models_logged] == ["READY"], models_logged


def test_sweep_two_variants_two_seeds(tiny_cifar, tmp_path, local_ray, capsys):
    from ray.tune.utils.log import Verbosity, set_verbosity
    set_verbosity(Verbosity.V1_EXPERIMENT)  # as an earlier sweep in this process leaves it: the table must still print
    cfg = tiny_config(tmp_path, tiny_cifar, variants=("base", "v6"), seeds=2)
    out = orchestrator_run.sweep_and_report(cfg)
    console = capsys.readouterr().out  # Tune's live table: epoch as k/N, elapsed time, and the sweep's ETA line
    assert "sweep: 4/4 trials finished, 0 running; 8 of 8 epochs done; ETA 0 min" in console
    assert "| epoch " in console and "elapsed s" in console and " 2/2 " in console
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["kind"] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.tags["variants"] == "base,v6" and parent.data.tags["seeds"] == "0,1"
    # MLflow's standard source tags on the parent and every trial, and per-variant summaries on the parent.
    from mlflow.utils import mlflow_tags
    source = {k: parent.data.tags.get(k) for k in (mlflow_tags.MLFLOW_GIT_COMMIT, mlflow_tags.MLFLOW_SOURCE_NAME,
                                                   mlflow_tags.MLFLOW_USER)}
    assert len(source[mlflow_tags.MLFLOW_GIT_COMMIT]) == 40 and source[mlflow_tags.MLFLOW_SOURCE_NAME].endswith("run.py")
    assert source[mlflow_tags.MLFLOW_USER]
    for variant in ("base", "v6"):
        finals = [r.data.metrics["final_val_accuracy"] for r in child_runs(uri, out["parent_run_id"])
                  if r.data.tags["variant"] == variant]
        assert parent.data.metrics[f"{variant}_n"] == 2
        assert math.isclose(parent.data.metrics[f"{variant}_val_accuracy_pct_mean"], 50.0 * sum(finals))
        assert parent.data.metrics[f"{variant}_latency_ms_batch1_std"] >= 0
    runs = child_runs(uri, out["parent_run_id"])
    assert sorted(r.info.run_name for r in runs) == ["base-seed0", "base-seed1", "v6-seed0", "v6-seed1"]
    for r in runs:
        assert_complete_trial_run(client, r, epochs=2)
        # A trial logs exactly what it trains with: its TrainConfig, variant and seed; nothing of the sweep's.
        spec = models.get_spec(r.data.tags["variant"])  # and the architecture it trains, as params and a file
        assert set(r.data.params) == set(TRAIN_FIELDS) | {"variant", "seed"} | set(models.spec_params(spec))
        assert r.data.params["spec_hash"] == r.data.tags["spec_hash"] == models.spec_hash(spec)
        assert client.download_artifacts(r.info.run_id, "spec.toml", str(tmp_path / r.info.run_id)).endswith(".toml")
        assert r.data.params["epochs"] == "2" and r.data.params["variant"] == r.data.tags["variant"]
        # --export none: no deployment figures, no ONNX files
        assert not set(EXPORT_METRICS) & set(r.data.metrics) and not client.list_artifacts(r.info.run_id, "onnx")
        assert all(r.data.tags[k] == v for k, v in source.items()), "a trial's source tags are its sweep's"
    assert list(out["summary"]["status"]) == ["done"] * 4
    # Each trial's checkpoint names its seeds' MLflow runs, the runs a restart continues.
    ckpts = list(Path(out["storage_path"]).glob("base-seed0/checkpoint_*/state.pt"))
    state = torch.load(ckpts[-1], weights_only=True)
    assert state["mlflow_run_ids"][0] in {r.info.run_id for r in runs if r.info.run_name == "base-seed0"}


def test_killed_trial_resumes_from_checkpoint_and_logs_each_epoch_once(tiny_cifar, tmp_path, local_ray,
                                                                        monkeypatch):
    # SIGKILL right after epoch 1's checkpoint, before epoch 1 is logged: the restart must back-fill it.
    monkeypatch.setenv(FAULT_ENV, "base-seed1:1")
    cfg = tiny_config(tmp_path, tiny_cifar, variants=("base",), seeds=2, epochs=3)
    out = orun.run_sweep(cfg)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    runs = child_runs(uri, out["parent_run_id"])
    assert sorted(r.info.run_name for r in runs) == ["base-seed0", "base-seed1"]
    for r in runs:
        assert_complete_trial_run(client, r, epochs=3)
    # The killed trial really restarted: Ray recorded the failure, and its run's history is one continuous
    # training (from the checkpoint, not from scratch): epoch 2 starts where epoch 1 ended.
    error_files = list(Path(out["storage_path"]).glob("base-seed1/error.txt"))
    assert error_files, "the trial was not killed"
    assert list(out["summary"]["status"]) == ["done", "done"]


def wait_for(predicate, timeout_s, what):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_interrupted_sweep_resumes_only_unfinished_trials(tiny_cifar, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [sys.executable, "-m", "orchestrator.run", "--variants", "base", "--seed-list", "0,1,2",
            "--epochs", "2", "--data-dir", str(tiny_cifar), "--tracking-uri", uri, "--storage-path",
            str(tmp_path / "ray"), "--latency-batch1-calls", "20", "--no-report", "--no-compile", "--export", "none",
            "--fuse-seeds", "off"]
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    driver = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(uri)

    def finished_runs():
        try:
            exps = client.search_experiments()
            return [r for r in client.search_runs([e.experiment_id for e in exps], "tags.kind = 'trial'")
                    if r.info.status == "FINISHED"]
        except Exception:
            return []
    try:
        wait_for(lambda: len(finished_runs()) >= 1, 240, "a finished trial")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    # Ray's workers outlive the driver by a moment; read the store once it has stopped changing.
    before, settled = None, {}
    while before != settled:
        before, _ = settled, time.sleep(3)
        settled = {r.info.run_name: (r.info.end_time, r.info.status) for r in finished_runs()}
    before = {name: end for name, (end, _) in before.items()}
    assert 1 <= len(before) < 3

    resumed = subprocess.run(args + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    exp = client.get_experiment_by_name("resnet-revisited")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial'")
    assert sorted(r.info.run_name for r in runs) == ["base-seed0", "base-seed1", "base-seed2"], "duplicate runs"
    for r in runs:
        assert_complete_trial_run(client, r, epochs=2)
        if r.info.run_name in before:  # finished before the interruption: not trained again
            assert r.info.end_time == before[r.info.run_name]
    sweeps = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"


def test_a_long_epoch_shows_signs_of_life_without_new_steps(tiny_cifar, tmp_path, monkeypatch, capsys):
    """Inside an epoch: a console line and the run's `progress` tag, at most once a minute (here: always)."""
    from orchestrator.training import protocol as train_module
    from orchestrator.sweep.trainable import SignOfLife
    from orchestrator.sweep.tracking import TrialRun
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("signs")
    parent = client.create_run(experiment_id).info.run_id
    run = TrialRun(uri, experiment_id, parent, "s", "base", 0)
    monkeypatch.setattr(train_module, "PROGRESS_EVERY_STEPS", 10)
    monkeypatch.setattr(SignOfLife, "EVERY_SECONDS", 0.0)
    cfg = TrainConfig(data_dir=str(tiny_cifar), epochs=1, compile=False)
    sign_of_life = SignOfLife([run], "base-seed0", cfg.epochs)
    train(cfg, "base", 0, measure=False, on_progress=sign_of_life)
    sign_of_life.tagging.join(timeout=60)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("base-seed0: epoch 1/1")]
    assert lines and "step 10/56 (18%)" in lines[0] and "step 50/56" in lines[-1]
    assert re.fullmatch(r"epoch 1/1, step [1-5]0/56 \(\d+%\)", client.get_run(run.run_id).data.tags["progress"])
    assert not client.get_run(run.run_id).data.metrics  # no metric, no step: only the tag


def test_a_sign_of_life_never_waits_for_the_tracking_server(capsys):
    """A server that does not answer holds MLflow's client for minutes; the epoch must not wait for its tag."""
    from orchestrator.sweep.trainable import SignOfLife

    class UnansweredRun:  # a run whose server is down: every call hangs in MLflow's retries
        def set_tags(self, tags):
            time.sleep(60)

    sign_of_life = SignOfLife([UnansweredRun()], "base-seed0", 10)
    sign_of_life.EVERY_SECONDS = 0.0
    started = time.monotonic()
    for step in (500, 1000, 1500):
        sign_of_life(1, step, 17_500)
    assert time.monotonic() - started < 10, "the training thread waited for the progress tag"
    assert capsys.readouterr().out.count("base-seed0: epoch 1/10") == 3
