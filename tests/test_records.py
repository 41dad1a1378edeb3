"""Trial records (--results-dir): written per finished trial, read back to the logged numbers, skipped with
--skip-existing, refused when corrupt, of another schema or of another protocol."""
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from orchestrator.sweep import records

from orchestrator.analysis import report
import orchestrator.run as orchestrator_run
from orchestrator.training.config import TrainConfig
from orchestrator.training.metrics import EXPORT_METRICS
from orchestrator.training.metrics import EPOCH_METRICS, FINAL_METRICS


def sweep_args(tmp_path, data_dir, results, *extra):
    return ["--data-dir", str(data_dir), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage-path", str(tmp_path / "ray"), "--epochs", "1", "--latency-batch1-calls", "5",
            "--no-report", "--no-compile", "--fuse-seeds", "off", "--results-dir", str(results), *extra]


def test_sweep_writes_one_record_per_trial_with_the_logged_numbers_and_skip_existing_trains_only_the_rest(
        tiny_cifar, tmp_path, local_ray):
    results = tmp_path / "results"
    args = sweep_args(tmp_path, tiny_cifar, results, "--variants", "base,v6", "--seeds", "2")
    assert orchestrator_run.main(args) == 0
    assert sorted(p.name for p in results.iterdir()) == [
        f"{v}-seed{s}.{ext}" for v in ("base", "v6") for s in (0, 1) for ext in ("json", "pt")]  # no temp files
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for record in records.load_records(results):
        run = client.get_run(record["mlflow"]["run_id"])
        assert run.data.tags["variant"] == record["variant"] and int(run.data.tags["seed"]) == record["seed"]
        assert record["final"] == {k: run.data.metrics[k] for k in (*FINAL_METRICS, *EXPORT_METRICS)}
        assert record["final"]["int8_bytes"] < record["final"]["onnx_bytes"]  # the deployment view, too
        assert [h["epoch"] for h in record["history"]] == [1]
        for key in EPOCH_METRICS:
            assert record["history"][0][key] == client.get_metric_history(run.info.run_id, key)[0].value
        assert record["protocol"]["epochs"] == 1 and record["protocol"]["focus_classes"] == [2, 3, 4, 5]
        assert len(record["protocol"]["data_fingerprint"]) == 64
        assert record["protocol_hash"] == records.protocol_hash(record["protocol"])
        assert record["speed"]["flush_denormal"] is True and record["environment"]["denormals_flushed"] is True
        # What took effect: not fused, and --no-compile really uncompiled; the run says the same as its record.
        assert record["speed"]["fused"] is False and record["speed"]["fused_seeds"] == []
        assert record["speed"]["compile"] is False and run.data.tags["fused"] == "false"
        # The weights beside the record are the trained model's, as logged to the run.
        weights = results / record["weights"]["file"]
        assert weights.name == f"{record['variant']}-seed{record['seed']}.pt"
        state = torch.load(weights, weights_only=True)
        logged = torch.load(client.download_artifacts(run.info.run_id, "model/state_dict.pt", str(tmp_path)),
                            weights_only=True)
        assert state.keys() == logged.keys() and all(torch.equal(state[k], logged[k]) for k in state)
        assert record["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert record["environment"]["device"] == "cpu" and record["environment"]["git_commit"]
        text = json.dumps(record)
        assert "sqlite" not in text and str(tmp_path) not in text  # no paths, hosts or users

    # The records alone rebuild the report of the sweep: every table and the curves equal the MLflow report's.
    from_mlflow, from_records = tmp_path / "report-mlflow", tmp_path / "report-records"
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--out", str(from_mlflow)]) == 0
    assert report.main(["--results", str(results), "--out", str(from_records)]) == 0
    for name in ("table2", "table5", "vs_paper", "claims", "ranking", "curves", "trials"):
        assert (from_records / f"{name}.csv").read_text() == (from_mlflow / f"{name}.csv").read_text(), name
    assert "| Base  |" in (from_records / "table5.md").read_text()

    # Delete one record: --skip-existing trains only that pair, in a new sweep of one trial.
    kept = (results / "base-seed0.json").read_text()
    (results / "v6-seed0.json").unlink()
    assert orchestrator_run.main(args + ["--skip-existing"]) == 0
    assert (results / "base-seed0.json").read_text() == kept  # not trained again, not rewritten
    sweeps = client.search_runs([client.get_experiment_by_name("resnet-revisited").experiment_id],
                                "tags.kind = 'sweep'", order_by=["attributes.start_time DESC"])
    newest = client.search_runs([sweeps[0].info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{sweeps[0].info.run_id}'")
    assert [r.info.run_name for r in newest] == ["v6-seed0"]
    assert records.load_record(results / "v6-seed0.json")["mlflow"]["run_id"] == newest[0].info.run_id

    # Everything there: nothing starts, exit 0.
    assert orchestrator_run.main(args + ["--skip-existing"]) == 0
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
    code = orchestrator_run.main(sweep_args(tmp_path, tiny_cifar, results, "--variants", "base", "--seeds", "1",
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


def write_study(folder, hardware=("cpu A", "cpu A"), deployment=None, **protocol_changes):
    """Two hand-made seeds of base and v6: known numbers, one record each (and `deployment`'s figures)."""
    for seed, machine in enumerate(hardware):
        for variant, accuracy in (("base", 0.70 + seed / 100), ("v6", 0.77 + seed / 100)):
            record = {**a_record(None, **protocol_changes), "variant": variant, "seed": seed,
                      "history": [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_accuracy": 0.6,
                                   "val_accuracy": accuracy}],
                      "final": {"final_val_accuracy": accuracy, "latency_ms_per_image": 1.0 + seed,
                                "latency_ms_batch1": 2.0 + seed, "size_mb": 0.52, "param_count": 136380,
                                **(deployment(variant, seed) if deployment else {})},
                      "environment": {"hardware": machine}, "mlflow": {"run_id": f"{variant}{seed}"}}
            records.write_record(folder, record)


def test_report_from_records_never_averages_latencies_of_different_machines(tmp_path):
    write_study(tmp_path / "same")
    assert report.main(["--results", str(tmp_path / "same")]) == 0
    table5 = (tmp_path / "same" / "table5.md").read_text()
    assert "1.500 ± 0.707" in table5 and not (tmp_path / "same" / "latency_by_machine.md").exists()
    write_study(tmp_path / "mixed", hardware=("cpu A", "gpu B"))
    assert report.main(["--results", str(tmp_path / "mixed")]) == 0
    table5 = (tmp_path / "mixed" / "table5.md").read_text()
    assert "1.500" not in table5 and "latencies from 2 machines" in table5
    by_machine = (tmp_path / "mixed" / "latency_by_machine.md").read_text()
    assert "| cpu A   |" in by_machine and "| gpu B   |" in by_machine and "2.000 ± —" in by_machine
    assert "70.50 ± 0.71" in table5  # accuracies still averaged: they do not depend on the machine


def test_report_has_a_deployment_table_and_figure_when_trials_exported(tmp_path):
    write_study(tmp_path / "plain")
    assert report.main(["--results", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "deployment.md").exists()  # nothing exported: no empty table

    def exported(variant, seed):  # int8 costs base 1 and 3 points, v6 nothing
        drop = {"base": (0.01, 0.03), "v6": (0.0, 0.0)}[variant][seed]
        return {"onnx_bytes": 550_000 + 1024 * seed, "int8_bytes": 157_000, "onnx_val_accuracy": 0.70,
                "int8_val_accuracy": 0.70 - drop, "ort_latency_ms_batch1_fp32": 0.1, "ort_latency_ms_batch1_int8": 0.2,
                "ort_latency_ms_per_image_fp32": 0.3, "ort_latency_ms_per_image_int8": 0.4}
    write_study(tmp_path / "exported", deployment=exported)
    assert report.main(["--results", str(tmp_path / "exported")]) == 0
    table = (tmp_path / "exported" / "deployment.md").read_text()
    base = next(line for line in table.splitlines() if line.startswith("| Base"))
    assert "2.00 ± 1.41" in base and "537.6 ± 0.7" in base and "153.3 ± 0.0" in base and "0.5218" in base
    assert (tmp_path / "exported" / "int8_accuracy_vs_bytes.png").stat().st_size > 10_000
    assert "deployment.csv" in (tmp_path / "exported" / "report.md").read_text()


def test_a_report_of_another_protocol_says_so_and_marks_the_comparison_with_the_paper(tmp_path):
    write_study(tmp_path / "paper", epochs=10)  # the paper's protocol
    assert report.main(["--results", str(tmp_path / "paper")]) == 0
    md = (tmp_path / "paper" / "report.md").read_text()
    assert "Not the paper's protocol" not in md and "not comparable" not in md
    write_study(tmp_path / "short", epochs=1, subset_per_class=500)
    assert report.main(["--results", str(tmp_path / "short")]) == 0
    md = (tmp_path / "short" / "report.md").read_text()
    assert "⚠ **Not the paper's protocol**: epochs 1 (paper 10); subset_per_class 500 (paper 0)" in md
    vs_paper = (tmp_path / "short" / "vs_paper.md").read_text().splitlines()
    accuracy = [line for line in vs_paper if "Val. accuracy" in line]
    assert accuracy and all("not comparable" in line for line in accuracy)
    assert all("not comparable" not in line for line in vs_paper if "Parameters" in line)  # still comparable
    assert "not comparable" in (tmp_path / "short" / "ranking.md").read_text()


@pytest.mark.parametrize("make_bad, expected", [
    (lambda d: (d / "v6-seed0.json").write_text("not json"), "is not readable JSON"),
    (lambda d: (d / "v6-seed0.json").write_text(json.dumps({"schema_version": 0})), "has schema version 0"),
    (lambda d: write_study(d / "x", lr=0.01) or (d / "x" / "base-seed0.json").rename(d / "base-seed0.json"),
     "another protocol than"),
    (lambda d: [p.unlink() for p in d.glob("*.json")], "no trial records"),
])
def test_report_from_bad_records_is_one_line_and_exit_2(make_bad, expected, tmp_path, capsys):
    write_study(tmp_path)
    make_bad(tmp_path)
    assert report.main(["--results", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


REPO = Path(__file__).resolve().parents[1]
PUBLISHED = sorted(p.parent for p in (REPO / "results").glob("*/report.md"))


@pytest.mark.parametrize("published", PUBLISHED, ids=lambda p: p.name)
def test_published_report_is_what_its_records_build_now(published, tmp_path, monkeypatch):
    """results/<name>/report.md (and its tables) cannot drift from the records beside them."""
    monkeypatch.chdir(REPO)
    assert report.main(["--results", str(published.relative_to(REPO)), "--out", str(tmp_path)]) == 0
    for built in sorted(tmp_path.glob("*.md")) + sorted(tmp_path.glob("*.csv")) + sorted(tmp_path.glob("*.tex")):
        assert (published / built.name).read_text() == built.read_text(), f"rebuild {built.name}: see README"
