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
