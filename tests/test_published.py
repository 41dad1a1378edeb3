"""`python -m bench.published`: the published weights load and reproduce their records' accuracy, every model is
timed interleaved into one machine-tagged table, and the report uses that table in place of the trials' own
latencies."""
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

import data
import models
from bench import published
from orchestrator.analysis import latency_table, report, study
from orchestrator.sweep import records
from orchestrator.training import latency

REPO = Path(__file__).resolve().parents[1]


def write_made_up(folder: Path, variant: str, seed: int, accuracy: float, hardware: str) -> dict:
    """A record and a freshly initialised weights file for (variant, seed), as a sweep writes them."""
    torch.manual_seed(seed)
    source = folder / f".{variant}-{seed}.state"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(models.create_model(variant).state_dict(), source)
    weights = records.write_weights(folder, variant, seed, source)
    source.unlink()
    protocol = {**records.paper_protocol(), "data_fingerprint": "made-up"}
    record = {"schema_version": records.SCHEMA_VERSION, "variant": variant, "seed": seed, "protocol": protocol,
              "protocol_hash": records.protocol_hash(protocol),
              "speed": {"channels_last": True, "flush_denormal": True, "fused": False},
              "measurement": {"export_calibration_images": 16},
              "environment": {"hardware": hardware, "torch_version": torch.__version__},
              "history": [{"epoch": 1, "val_accuracy": accuracy}],
              "final": {"final_val_accuracy": accuracy, "latency_ms_per_image": 99.0, "latency_ms_batch1": 98.0,
                        "size_mb": 0.52, "param_count": 136380},
              "mlflow": {"run_id": f"{variant}{seed}"}, "weights": weights}
    records.write_record(folder, record)
    return record


def plain_accuracy(variant: str, seed: int, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The made-up model's accuracy, computed independently of train.evaluate: one batch, contiguous."""
    torch.manual_seed(seed)
    model = models.create_model(variant).eval()
    with torch.no_grad():
        return (model(data.normalize(images)).argmax(1) == labels).sum().item() / len(labels)


@pytest.fixture
def made_up(tmp_path, tiny_cifar):
    """Base and V2 (which validates contiguous on CPU), seed 0 each, recorded with their true accuracy."""
    val_x, val_y = data.load_cifar10(tiny_cifar, "test")
    folder = tmp_path / "published"
    for variant in ("base", "v2"):
        write_made_up(folder, variant, 0, plain_accuracy(variant, 0, val_x, val_y), latency.cpu_model())
    return folder


def test_one_run_times_every_model_into_one_machine_tagged_table(made_up, tiny_cifar, capsys):
    assert published.main(["--results", str(made_up), "--data-dir", str(tiny_cifar), "--rounds", "2",
                           "--images", "8", "--batch1-calls", "3"]) == 0
    table = latency_table.read(made_up)
    assert table.metadata["machine"] == latency.cpu_model() and table.metadata["rounds"] == "2"
    assert table.metadata["torch"] == torch.__version__ and table.metadata["threads"] == "1"
    assert table.metadata["onnxruntime"] and table.metadata["date"] and table.metadata["denormals_flushed"] == "True"
    assert sorted(zip(table.rows.variant, table.rows.seed)) == [("base", 0), ("v2", 0)]
    values = table.rows[list(latency_table.LATENCY_COLUMNS)].to_numpy()
    assert (values > 0).all() and (values < 98.0).all()  # measured here, not the records' made-up 99 and 98
    shas = {r["variant"]: r["weights"]["sha256"] for r in records.load_records(made_up)}
    assert dict(zip(table.rows.variant, table.rows.weights_sha256)) == shas
    md = (made_up / latency_table.MD_NAME).read_text()
    assert latency.cpu_model() in md and "| base-seed0 |" in md

    # The report now takes its latencies from that table, and says which machine measured them.
    s = study.load_records(made_up)
    assert s.trials.set_index("variant")["latency_ms_per_image"].to_dict() == pytest.approx(
        table.rows.set_index("variant")["latency_ms_per_image"].to_dict())
    report.write_report(s, made_up)
    md = (made_up / "report.md").read_text()
    assert f"one pass by `python -m bench.published` on **{latency.cpu_model()}**" in md
    t5 = pd.read_csv(made_up / "table5.csv", index_col="variant")
    assert t5.loc["base", "latency_ms_batch1_mean"] == pytest.approx(
        table.rows.set_index("variant").loc["base", "latency_ms_batch1"])


def test_rounds_are_interleaved_and_each_figure_is_their_median(monkeypatch):
    visits = []

    def fake_time_once(p, sessions, images, labels, batch1_calls):
        visits.append(p.record["variant"])
        value = float(len(visits))  # the k-th measurement overall measures k ms
        return {column: value for column in latency_table.LATENCY_COLUMNS}
    monkeypatch.setattr(published, "time_once", fake_time_once)
    fakes = [published.Published({"variant": v, "seed": 0, "weights": {"sha256": v}}, Path(v), None, None)
             for v in ("a", "b", "c")]
    rows = published.time_interleaved(fakes, [{}] * 3, None, None, rounds=3, batch1_calls=1, progress=lambda m: None)
    assert visits == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # every round visits all, starting one later
    # a was measured 1st, 6th, 8th: median 6; b 2nd, 4th, 9th: 4; c 3rd, 5th, 7th: 5
    assert rows.set_index("variant")["latency_ms_per_image"].to_dict() == {"a": 6.0, "b": 4.0, "c": 5.0}


def test_check_passes_when_the_record_holds_the_models_accuracy_and_fails_when_not(made_up, tiny_cifar, capsys):
    assert published.main(["--results", str(made_up), "--data-dir", str(tiny_cifar), "--check"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok   ") == 2 and "exact (the machine that trained it)" in out
    record = records.load_record(made_up / "v2-seed0.json")
    record["final"]["final_val_accuracy"] += 0.025  # one image of 40
    records.write_record(made_up, record)
    assert published.main(["--results", str(made_up), "--data-dir", str(tiny_cifar), "--check"]) == 1
    assert "FAIL v2-seed0" in capsys.readouterr().out


def test_elsewhere_the_check_allows_five_hundredths_of_a_point():
    p = published.Published({"variant": "base", "seed": 0, "final": {"final_val_accuracy": 0.7000},
                             "environment": {"hardware": "another CPU", "torch_version": torch.__version__}},
                            Path("x"), None, None)
    assert published.check_line(p, 0.7004)[0] and published.check_line(p, 0.6996)[0]  # 0.04 points
    assert not published.check_line(p, 0.7006)[0]  # 0.06 points
    p.record["environment"]["hardware"] = latency.cpu_model()  # where it trained: exactly
    assert not published.check_line(p, 0.7001)[0] and published.check_line(p, 0.7)[0]


def test_weights_that_are_not_the_records_are_refused_in_one_line(made_up, tiny_cifar, capsys):
    (made_up / "base-seed0.pt").write_bytes(b"not these weights")
    assert published.main(["--results", str(made_up), "--data-dir", str(tiny_cifar), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "base-seed0.pt" in err and "sha256" in err


def test_a_stale_or_partial_table_leaves_those_trials_without_latency_and_says_so():
    trials = pd.DataFrame({"variant": ["base", "base", "v6"], "seed": [0, 1, 0], "latency_hardware": "cpu A",
                           **{c: 9.0 for c in latency_table.LATENCY_COLUMNS}})
    rows = pd.DataFrame({"variant": ["base", "base"], "seed": [0, 1], "weights_sha256": ["s0", "old"],
                         **{c: [1.0, 2.0] for c in latency_table.LATENCY_COLUMNS}})
    table = latency_table.LatencyTable({"machine": "cpu Z"}, rows)
    got, missing = latency_table.apply(trials, table, {("base", 0): "s0", ("base", 1): "s1", ("v6", 0): "s6"})
    assert got.loc[0, "latency_ms_batch1"] == 1.0 and got.loc[0, "latency_hardware"] == "cpu Z"
    assert math.isnan(got.loc[1, "latency_ms_batch1"]) and math.isnan(got.loc[2, "ort_latency_ms_batch1_int8"])
    assert missing == ["base-seed1", "v6-seed0"]  # other weights; not in the table


def test_the_tables_columns_are_metrics_the_report_reads():
    assert set(latency_table.LATENCY_COLUMNS) <= {*study.TABLE_METRICS, *study.DEPLOYMENT_METRICS}


# ------------------------------------------------------------------------------------- the published weights
def published_folders() -> list[Path]:
    """Folders of records with weights: $PUBLISHED_RESULTS if set, else every folder under results/."""
    chosen = os.environ.get("PUBLISHED_RESULTS")
    folders = [Path(chosen)] if chosen else sorted(p for p in (REPO / "results").glob("*") if p.is_dir())
    return [f for f in folders if any(r.get("weights") for r in records.load_records(f))]


@pytest.mark.real_data
def test_published_weights_reproduce_their_records_validation_accuracy(real_cifar):
    folders = published_folders()
    if not folders:
        pytest.skip("no published record with weights (results/*/<variant>-seed<k>.pt)")
    for folder in folders:
        models_by_variant = {}
        for p in published.load_published(folder):  # one model per variant: every validation format is covered
            models_by_variant.setdefault(p.record["variant"], p)
        protocol = next(iter(models_by_variant.values())).record["protocol"]
        _, val_x, val_y = published.load_data(str(real_cifar), protocol)
        for p in models_by_variant.values():
            ok, line = published.check_line(p, published.reproduced_accuracy(p, val_x, val_y))
            assert ok, line
