"""An architecture of one's own through everything the paper's variants get: `orchestrator.run --spec FILE.toml`
trains it (named after its file), logs it to MLflow (the spec as params and as spec.toml), records it (the spec
and its hash) and reports it; a bad spec file is one line and exit 2 before anything runs."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

import models
from orchestrator.analysis import report
import orchestrator.run as orchestrator_run
from orchestrator.sweep import records

SPEC = """blocks = [
  { kind = "res", out = 8 },
  { kind = "fire", out = 12, squeeze = 4, expand1x1 = 6, expand3x3 = 6 },
]
pool_after = [1, 2]
head = { kind = "gap" }

[dense_from]
2 = [0]
"""


def sweep_args(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path",
            str(tmp_path / "ray"), "--epochs", "1", "--seeds", "1", "--latency-batch1-calls", "5", "--no-compile",
            "--export", "none", "--no-report", *extra]


def test_a_spec_file_sweep_writes_records_and_a_report_row(tiny_cifar, tmp_path, local_ray):
    spec_file = tmp_path / "tiny-net.toml"
    spec_file.write_text(SPEC)
    spec = models.load_spec(spec_file)
    results = tmp_path / "results"
    assert orchestrator_run.main(sweep_args(tmp_path, tiny_cifar, "--spec", str(spec_file), "--results-dir", str(results))) == 0
    [record] = records.load_records(results)  # --variants defaults to none beside --spec: the spec alone trained
    assert record["variant"] == "tiny-net" and record["spec_hash"] == models.spec_hash(spec)
    assert models.from_dict(record["spec"]) == spec
    assert record["final"]["param_count"] == models.param_count(spec)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(record["mlflow"]["run_id"])
    assert {k: run.data.params[k] for k in models.spec_params(spec)} == models.spec_params(spec)
    spec_toml = client.download_artifacts(run.info.run_id, "spec.toml", str(tmp_path))
    assert models.load_spec(spec_toml) == spec
    assert report.main(["--results", str(results), "--out", str(tmp_path / "report")]) == 0
    table5 = pd.read_csv(tmp_path / "report" / "table5.csv")
    assert "tiny-net" in table5.iloc[:, 0].tolist()
    # The file edited, --skip-existing must not take the old network's record for the new one (a fresh process:
    # this one has the old spec registered under the name).
    spec_file.write_text(SPEC.replace("out = 8", "out = 10"))
    before = (results / records.record_name("tiny-net", 0)).read_bytes()
    done = subprocess.run([sys.executable, "-m", "orchestrator.run", *sweep_args(tmp_path, tiny_cifar, "--spec",
                           str(spec_file), "--results-dir", str(results), "--skip-existing")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "tiny-net-seed0.json is of another architecture than 'tiny-net'" in done.stderr
    assert (results / records.record_name("tiny-net", 0)).read_bytes() == before


def test_a_bad_spec_file_is_one_line_and_exit_2_before_anything_runs(tiny_cifar, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace("out = 8", "out = 0"))
    assert orchestrator_run.main(sweep_args(tmp_path, tiny_cifar, "--spec", str(bad))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --spec") and "block 1 out" in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


@pytest.mark.parametrize("stem, words", [("o'net", "is not letters, digits"), ("net-seed1", "holds '-seed'"),
                                         ("base", "is taken by another architecture")])
def test_a_spec_file_name_that_cannot_name_its_runs_is_one_line_and_exit_2(stem, words, tiny_cifar, tmp_path,
                                                                           capsys):
    """The name goes into MLflow filter strings, trial names and paths: a quote would break every run query."""
    spec_file = tmp_path / f"{stem}.toml"
    spec_file.write_text(SPEC)
    assert orchestrator_run.main(sweep_args(tmp_path, tiny_cifar, "--spec", str(spec_file))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: --spec {spec_file}") and words in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()
