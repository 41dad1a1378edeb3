"""Trial records (--results-dir): written per finished trial, read back to the logged numbers, skipped with
--skip-existing, refused when corrupt, of another schema or of another protocol."""
import json
import math

import pytest
from mlflow import MlflowClient

from orchestrator import records
from orchestrator import run as orun
from orchestrator.config import TrainConfig
from orchestrator.train import EPOCH_METRICS, FINAL_METRICS


def sweep_args(tmp_path, data_dir, results, *extra):
    return ["--data-dir", str(data_dir), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage-path", str(tmp_path / "ray"), "--epochs", "1", "--latency-batch1-calls", "5",
            "--no-report", "--results-dir", str(results), *extra]


def test_sweep_writes_one_record_per_trial_with_the_logged_numbers_and_skip_existing_trains_only_the_rest(
        tiny_cifar, tmp_path, local_ray):
    results = tmp_path / "results"
    args = sweep_args(tmp_path, tiny_cifar, results, "--variants", "base,v6", "--seeds", "1")
    assert orun.main(args) == 0
    assert sorted(p.name for p in results.iterdir()) == ["base-seed0.json", "v6-seed0.json"]  # no temp files left
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for record in records.load_records(results):
        run = client.get_run(record["mlflow"]["run_id"])
        assert run.data.tags["variant"] == record["variant"] and int(run.data.tags["seed"]) == record["seed"]
        assert record["final"] == {k: run.data.metrics[k] for k in FINAL_METRICS}
        assert [h["epoch"] for h in record["history"]] == [1]
        for key in EPOCH_METRICS:
            assert record["history"][0][key] == client.get_metric_history(run.info.run_id, key)[0].value
        assert record["protocol"]["epochs"] == 1 and record["protocol"]["focus_classes"] == [2, 3, 4, 5]
        assert len(record["protocol"]["data_fingerprint"]) == 64
        assert record["protocol_hash"] == records.protocol_hash(record["protocol"])
        assert record["speed"]["flush_denormal"] is True and record["environment"]["denormals_flushed"] is True
        assert record["environment"]["device"] == "cpu" and record["environment"]["git_commit"]
        text = json.dumps(record)
        assert "sqlite" not in text and str(tmp_path) not in text  # no paths, hosts or users

    # Delete one record: --skip-existing trains only that pair, in a new sweep of one trial.
    kept = (results / "base-seed0.json").read_text()
    (results / "v6-seed0.json").unlink()
    assert orun.main(args + ["--skip-existing"]) == 0
    assert (results / "base-seed0.json").read_text() == kept  # not trained again, not rewritten
    sweeps = client.search_runs([client.get_experiment_by_name("resnet-revisited").experiment_id],
                                "tags.kind = 'sweep'", order_by=["attributes.start_time DESC"])
    newest = client.search_runs([sweeps[0].info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{sweeps[0].info.run_id}'")
    assert [r.info.run_name for r in newest] == ["v6-seed0"]
    assert records.load_record(results / "v6-seed0.json")["mlflow"]["run_id"] == newest[0].info.run_id

    # Everything there: nothing starts, exit 0.
    assert orun.main(args + ["--skip-existing"]) == 0
    assert len(client.search_runs([sweeps[0].info.experiment_id], "tags.kind = 'sweep'")) == 2


def a_record(tmp_path, **protocol_changes) -> dict:
    protocol = {**records.protocol_of(TrainConfig(epochs=1), "0" * 64), **protocol_changes}
    return {"schema_version": records.SCHEMA_VERSION, "variant": "base", "seed": 0, "protocol": protocol,
            "protocol_hash": records.protocol_hash(protocol), "history": [], "final": {}}


@pytest.mark.parametrize("make_bad, expected", [
    (lambda d, r: records.write_record(d, {**r, "protocol": {**r["protocol"], "lr": 0.01},
                                           "protocol_hash": records.protocol_hash({**r["protocol"], "lr": 0.01})}),
     "another protocol than this sweep (differs in data_fingerprint, lr)"),
    (lambda d, r: (d / "base-seed0.json").write_text('{"schema_version": 1, "variant": "ba'), "is not readable JSON"),
    (lambda d, r: (d / "base-seed0.json").write_text(json.dumps({**r, "schema_version": 99})),
     "has schema version 99, this code reads 1"),
])
def test_a_bad_record_is_refused_in_one_line_before_anything_runs(make_bad, expected, tiny_cifar, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    make_bad(results, a_record(tmp_path))
    before = sorted(p.read_bytes() for p in results.iterdir())
    code = orun.main(sweep_args(tmp_path, tiny_cifar, results, "--variants", "base", "--seeds", "1",
                                "--skip-existing"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "ray").exists(), "nothing may start"
    assert sorted(p.read_bytes() for p in results.iterdir()) == before, "the folder is left as it was"


def test_write_record_is_atomic_and_leaves_no_temp_file_when_it_fails(tmp_path):
    record = a_record(tmp_path)
    path = records.write_record(tmp_path, record)
    assert records.load_record(path) == record
    with pytest.raises(TypeError):  # not JSON-serialisable: the old file stays whole
        records.write_record(tmp_path, {**record, "final": {"x": object()}})
    assert records.load_record(path) == record and [p.name for p in tmp_path.iterdir()] == ["base-seed0.json"]
    nan = records.write_record(tmp_path, {**record, "final": {"latency_ms_batch1": math.nan}})
    assert math.isnan(records.load_record(nan)["final"]["latency_ms_batch1"])
