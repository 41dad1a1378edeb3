"""Fused seeds through a real sweep (local Ray, MLflow SQLite): one Tune trial per variant, one complete MLflow
run and record per seed, and a killed fused trial resuming every seed."""
from orchestrator.training.config import TrainConfig
from orchestrator.training.train import train


def test_a_fused_sweep_logs_one_complete_run_per_seed_and_a_killed_trial_resumes_every_seed(
        tiny_cifar, tmp_path, local_ray, monkeypatch, capsys):
    """--fuse-seeds: one Tune trial per variant, one MLflow child run per (variant, seed) with every metric,
    epoch and model. base's trial is SIGKILLed right after epoch 1's checkpoint, before it logs the epoch:
    the restart resumes both seeds and back-fills the epoch, so each is logged exactly once per seed."""
    from mlflow import MlflowClient

    from orchestrator.sweep import driver as orun
    from orchestrator.sweep.config import SweepConfig
    from orchestrator.sweep.trainable import FAULT_ENV
    from test_orchestrator import assert_complete_trial_run, child_runs
    monkeypatch.setenv(FAULT_ENV, "base-seed1:1")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = SweepConfig.from_flags(dict(variants=("base", "v6"), seeds=2, epochs=2, data_dir=str(tiny_cifar),
                                      compile=False, export="none", fuse_seeds=True, tracking_uri=uri,
                                      storage_path=str(tmp_path / "ray"), latency_batch1_calls=5, report=False,
                                      results_dir=str(tmp_path / "records")))
    out = orun.run_sweep(cfg)
    # The fused trials report their epoch time, so the sweep's line has an ETA (not "after the first epoch").
    sweep_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("sweep:")]
    assert "sweep: 2/2 trials finished, 0 running; 4 of 4 epochs done; ETA 0 min" in sweep_lines, sweep_lines
    client = MlflowClient(uri)
    runs = child_runs(uri, out["parent_run_id"])
    assert sorted(r.info.run_name for r in runs) == ["base-seed0", "base-seed1", "v6-seed0", "v6-seed1"]
    for r in runs:
        assert_complete_trial_run(client, r, epochs=2)
    assert sorted(p.name for p in (tmp_path / "ray").glob("sweep-*/*-seeds*")) == ["base-seeds0-1", "v6-seeds0-1"]
    assert list((tmp_path / "ray").glob("sweep-*/base-seeds0-1/error.txt")), "the fused trial was not killed"
    assert list(out["summary"]["status"]) == ["done"] * 4 and list(out["summary"]["seed"]) == [0, 1, 0, 1]
    assert sorted(p.name for p in (tmp_path / "records").glob("*.json")) == \
        ["base-seed0.json", "base-seed1.json", "v6-seed0.json", "v6-seed1.json"]
    # Records and runs say the trial was fused, with which seeds, and that fused trials do not compile.
    from orchestrator.sweep.records import load_records
    for record in load_records(tmp_path / "records"):
        assert record["speed"]["fused"] is True and record["speed"]["fused_seeds"] == [0, 1]
        assert record["speed"]["compile"] is False and (tmp_path / "records" / record["weights"]["file"]).is_file()
    assert {r.data.tags["fused"] for r in runs} == {"true"} and {r.data.tags["fused_seeds"] for r in runs} == {"0,1"}
    # Each seed trained on its own: the same numbers as an unfused trial of it, up to float rounding.
    seed0 = next(r for r in runs if r.info.run_name == "base-seed0")
    unfused = train(TrainConfig(data_dir=str(tiny_cifar), epochs=2, compile=False), "base", 0, measure=False)
    assert abs(seed0.data.metrics["final_val_accuracy"] - unfused["final"]["final_val_accuracy"]) <= 0.05


def test_a_results_folder_carries_a_stopped_fused_trial_to_another_machine_and_ends_as_if_never_stopped(
        tiny_cifar, tmp_path, local_ray, monkeypatch, capsys):
    """A fused trial that stops for good after epoch 1 leaves each seed's checkpoint in --results-dir, and no
    record. A new sweep with nothing but a copy of that folder (its own MLflow store and Ray storage, as on another
    machine) and --skip-existing goes on after epoch 1, and ends with what an uninterrupted sweep writes: the same
    history, accuracy and weights, every epoch in its MLflow run, and no checkpoint left."""
    import shutil

    from mlflow import MlflowClient

    from orchestrator.sweep import driver as orun
    from orchestrator.sweep.config import SweepConfig
    from orchestrator.sweep.records import load_records
    from orchestrator.sweep.trainable import FAULT_ENV
    from test_orchestrator import assert_complete_trial_run, child_runs

    def sweep(where, **flags):
        return orun.run_sweep(SweepConfig.from_flags(dict(
            variants=("base",), seeds=2, epochs=3, data_dir=str(tiny_cifar), compile=False, export="none",
            fuse_seeds="on", tracking_uri=f"sqlite:///{where}/mlflow.db", storage_path=str(where / "ray"),
            latency_batch1_calls=5, report=False, results_dir=str(where / "records"), **flags)))

    sweep(tmp_path / "whole")
    whole = {r["seed"]: r for r in load_records(tmp_path / "whole" / "records")}
    monkeypatch.setenv(FAULT_ENV, "base-seed0:1")
    assert sweep(tmp_path / "first", max_failures=0)["failed_trials"] == ["base-seed0", "base-seed1"]
    left = sorted(p.name for p in (tmp_path / "first" / "records").iterdir())
    assert left == ["base-seed0.checkpoint.pt", "base-seed1.checkpoint.pt"], left
    monkeypatch.delenv(FAULT_ENV)
    shutil.copytree(tmp_path / "first" / "records", tmp_path / "second" / "records")
    capsys.readouterr()
    out = sweep(tmp_path / "second", skip_existing=True)
    printed = capsys.readouterr().out
    for seed in (0, 1):
        assert f"resuming base-seed{seed} after epoch 1 from {tmp_path / 'second' / 'records'}" in printed, printed
    # It trained epochs 2 and 3 only (Tune's progress.csv: one row per report, the last one the trial's end).
    import pandas as pd
    progress = pd.read_csv(next((tmp_path / "second" / "ray").glob("sweep-*/base-seeds0-1/progress.csv")))
    assert list(progress["epoch"]) == [2, 3, 3], list(progress["epoch"])
    resumed = {r["seed"]: r for r in load_records(tmp_path / "second" / "records")}
    assert sorted(p.name for p in (tmp_path / "second" / "records").glob("*.pt")) == ["base-seed0.pt", "base-seed1.pt"]
    for seed in (0, 1):
        untimed = [{k: v for k, v in e.items() if "second" not in k} for e in whole[seed]["history"]]
        assert [{k: v for k, v in e.items() if "second" not in k} for e in resumed[seed]["history"]] == untimed
        assert resumed[seed]["final"]["final_val_accuracy"] == whole[seed]["final"]["final_val_accuracy"]
        assert resumed[seed]["weights"]["sha256"] == whole[seed]["weights"]["sha256"]
    client = MlflowClient(f"sqlite:///{tmp_path}/second/mlflow.db")
    for run in child_runs(f"sqlite:///{tmp_path}/second/mlflow.db", out["parent_run_id"]):
        assert_complete_trial_run(client, run, epochs=3)
