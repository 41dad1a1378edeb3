"""The sweep report against hand-computed statistics, on real MLflow runs in a temporary SQLite store."""
import contextlib
import csv
import io
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from orchestrator.analysis import report, stats, study

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "report-test"

# ------------------------------------------------------------------------------------------- statistics


def _t_two_sided_p(t: float, df: float, steps: int = 4000) -> float:
    """P(|T| >= |t|) for Student's t, by Simpson's rule on the density: a check independent of scipy."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    density = lambda x: math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))  # noqa: E731
    h = abs(t) / steps
    inner = sum((4 if k % 2 else 2) * density(k * h) for k in range(1, steps))
    return 1.0 - 2.0 * h / 3 * (density(0.0) + inner + density(abs(t)))


@pytest.mark.parametrize("t", [-30.0, -3.0, -0.5, 0.0, 0.7, 2.0, 10.0])
def test_welch_p_matches_closed_forms(t):
    # Equal n and equal variances give df = 2 (n = 2) and df = 4 (n = 3) exactly, where the t CDF has an
    # elementary closed form. Groups shifted by d: t = -d / sqrt(2 * var / n).
    w2 = stats.welch_t_test([0.0, 2.0], [-t * math.sqrt(2), 2 - t * math.sqrt(2)])  # var 2, n 2
    assert w2.t == pytest.approx(t, abs=1e-12) and w2.df == pytest.approx(2.0)
    assert w2.p_value == pytest.approx(1 - abs(w2.t) / math.sqrt(2 + w2.t**2), abs=1e-12)
    d = -t * math.sqrt(2 / 3)
    w4 = stats.welch_t_test([0.0, 1.0, 2.0], [d, d + 1, d + 2])  # var 1, n 3
    assert w4.t == pytest.approx(t, abs=1e-12) and w4.df == pytest.approx(4.0)
    u = 1 + w4.t**2 / 4
    assert w4.p_value == pytest.approx(1 - 3 / 4 * abs(w4.t) / math.sqrt(u) * (1 - w4.t**2 / (12 * u)), abs=1e-12)


@pytest.mark.parametrize("n, q975", [(2, 12.7062047), (3, 4.30265273), (6, 2.57058184), (11, 2.22813885),
                                     (31, 2.04227246)])
def test_ci_half_width_matches_t_tables(n, q975):
    values = [float(k % 2) for k in range(n)]  # 0, 1, 0, 1, ...: a known spread
    mean = sum(values) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    lo, hi = stats.mean_ci(values)
    assert (hi - lo) / 2 == pytest.approx(q975 * sem, abs=1e-7 * sem)
    assert (lo + hi) / 2 == pytest.approx(mean, abs=1e-12)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.99])
def test_ci_at_any_level_matches_closed_form_quantiles(level):
    lo, hi = stats.mean_ci([0.0, 2.0], level)  # df = 1 (Cauchy), standard error 1
    assert hi == pytest.approx(1 + math.tan(math.pi * level / 2), rel=1e-10)
    lo, hi = stats.mean_ci([0.0, 1.0, 2.0], level)  # df = 2, standard error 1 / sqrt(3)
    assert hi - 1 == pytest.approx(level * math.sqrt(2 / (1 - level**2)) / math.sqrt(3), rel=1e-10)


def test_welch_and_ci_by_hand():
    a, b = [1.0, 2.0, 4.0], [5.0, 9.0]  # var a = 7/3, var b = 8
    sa, sb = 7 / 3 / 3, 8 / 2
    w = stats.welch_t_test(a, b)
    assert w.difference == pytest.approx(7 / 3 - 7)
    assert w.t == pytest.approx((7 / 3 - 7) / math.sqrt(sa + sb))
    assert w.df == pytest.approx((sa + sb) ** 2 / (sa**2 / 2 + sb**2 / 1))
    assert w.p_value == pytest.approx(_t_two_sided_p(w.t, w.df), abs=1e-9)
    # Equal n = 2 and equal variances give df = 2 exactly, where the CDF has a closed form.
    w2 = stats.welch_t_test([0.0, 2.0], [3.0, 5.0])
    assert w2.df == pytest.approx(2.0)
    assert w2.p_value == pytest.approx(1 - abs(w2.t) / math.sqrt(2 + w2.t**2))
    lo, hi = stats.mean_ci([1.0, 2.0, 4.0])
    half = 4.30265273 * math.sqrt(7 / 3 / 3)
    assert (lo, hi) == (pytest.approx(7 / 3 - half, abs=1e-6), pytest.approx(7 / 3 + half, abs=1e-6))
    assert math.isnan(stats.welch_t_test([1.0], [2.0, 3.0]).p_value)  # n = 1: no test, but a difference
    assert stats.welch_t_test([1.0], [2.0, 3.0]).difference == pytest.approx(-1.5)
    assert all(math.isnan(x) for x in stats.mean_ci([1.0]))


def test_no_spread_means_no_test_and_a_zero_width_interval():
    w = stats.welch_t_test([3.0, 3.0], [5.0, 5.0, 5.0])
    assert w.difference == pytest.approx(-2.0) and all(math.isnan(x) for x in (w.t, w.df, w.p_value))
    assert stats.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)  # a deterministic quantity, e.g. a model's size
    assert all(math.isnan(x) for x in stats.welch_t_test([], [1.0, 2.0]).__dict__.values())


def test_spearman_by_hand():
    # No ties: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)); rank differences d = 0, -1, 1, 0 here.
    assert stats.spearman_rho([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == pytest.approx(1 - 6 * 2 / 60)
    assert stats.spearman_rho([3.0, 2.0, 1.0], [1.0, 5.0, 9.0]) == pytest.approx(-1.0)
    # Ties take their average rank: x ranks 1, 2.5, 2.5, 4 against 1, 3, 2, 4; Pearson of those = 4.5 / sqrt(4.5 * 5).
    assert stats.spearman_rho([1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(stats.spearman_rho([1.0, 2.0], [2.0, 1.0]))  # two points always correlate perfectly
    assert math.isnan(stats.spearman_rho([1.0, 2.0, 3.0], [7.0, 7.0, 7.0]))  # no order on one side


# ------------------------------------------------------------------------------------ the sweep fixture

T0 = int(time.time() * 1000) - 3_600_000
# variant -> {seed: (final_val_accuracy, latency_ms_per_image, latency_ms_batch1, size_mb, param_count)}
FINISHED = {
    "base": {0: (0.70, 0.40, 1.0, 0.50, 136380), 1: (0.72, 0.42, 1.2, 0.50, 136380),
             2: (0.75, 0.47, 1.1, 0.50, 136380)},
    "v1": {0: (0.60, 0.70, 2.0, 0.505, 136430), 1: (0.61, 0.70, 2.0, 0.505, 136430),
           2: (0.62, 0.70, 2.0, 0.505, 136430)},
    "v6": {0: (0.80, 0.80, 1.5, 0.51, 136960), 1: (0.84, 0.90, 1.7, 0.51, 136960)},  # seed 2 failed
}


def _trial(client, exp_id, parent_id, sweep, variant, seed, values, start, status="FINISHED", failure=None):
    tags = {"mlflow.parentRunId": parent_id, "kind": "trial", "variant": variant, "seed": str(seed),
            "sweep_id": sweep, "node": "n0", "device": "cpu"}
    if failure:
        tags["failure_reason"] = failure
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=f"{variant}-seed{seed}")
    acc, lat, lat1, size, params = values
    ts = int(time.time() * 1000)
    final = dict(final_val_accuracy=acc, best_val_accuracy=acc, latency_ms_per_image=lat, latency_ms_batch1=lat1,
                 size_mb=size, param_count=params, state_dict_bytes=size * 2**20, macs_per_image=1e6)
    metrics = [Metric(k, v, ts, 0) for k, v in final.items()]
    for epoch in (1, 2):  # val accuracy climbs 10 points to its final value; losses depend on epoch and seed
        metrics += [Metric("val_accuracy", acc - 0.1 * (2 - epoch), ts, epoch),
                    Metric("train_accuracy", acc - 0.05 * (2 - epoch), ts, epoch),
                    Metric("train_loss", 2.0 - 0.5 * epoch + 0.1 * seed, ts, epoch),
                    Metric("val_loss", 2.2 - 0.5 * epoch + 0.1 * seed, ts, epoch),
                    Metric("lr", 5e-4, ts, epoch)]
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[Param("variant", variant), Param("seed", str(seed)), Param("lr", "0.0005")])
    client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def _sweep(client, exp_id, sweep, variants, seeds, start, status="FINISHED"):
    run = client.create_run(exp_id, start_time=start, run_name=f"sweep-{sweep}", tags={
        "kind": "sweep", "sweep_id": sweep, "variants": variants, "seeds": seeds, "git_commit": "abc",
        "command": "python -m orchestrator.run", "host": "test"})
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store with: an old finished sweep, the sweep under test (s1), a newer RUNNING sweep, an empty one."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))

    _sweep(client, exp_id, "empty", "base", "0", T0 - 5000)
    old = _sweep(client, exp_id, "old", "base", "0", T0)
    _trial(client, exp_id, old, "old", "base", 0, (0.10, 9.0, 9.0, 9.0, 1), T0 + 10)

    parent = _sweep(client, exp_id, "s1", "base,v1,v6,alpha", "0,1,2", T0 + 1000, status="RUNNING")
    for variant, seeds in FINISHED.items():
        for seed, values in seeds.items():
            _trial(client, exp_id, parent, "s1", variant, seed, values, T0 + 1100 + seed)
    failed = _trial(client, exp_id, parent, "s1", "v6", 2, (0.99, 0.1, 0.1, 0.51, 136960), T0 + 1200,
                    status="FAILED", failure="RuntimeError: CUDA out of memory")
    client.set_terminated(parent, status="FINISHED")

    live = _sweep(client, exp_id, "s2", "base", "0", T0 + 2000, status="RUNNING")
    _trial(client, exp_id, live, "s2", "base", 0, (0.50, 0.5, 0.5, 0.5, 136380), T0 + 2100)

    out = tmp / "report"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # the CLI with no --sweep: the latest *finished* sweep is s1
        rc = report.main(["--tracking-uri", uri, "--experiment-name", EXPERIMENT, "--out", str(out)])
    assert rc == 0
    return dict(uri=uri, client=client, parent=parent, failed=failed, out=out, stdout=stdout.getvalue(), tmp=tmp)


def _csv(path: Path, key: str = "variant") -> dict:
    with open(path) as f:
        return {row[key]: row for row in csv.DictReader(f)}


def _f(x: str) -> float:
    return float(x) if x != "" else math.nan


# ----------------------------------------------------------------------------------------------- tables


def test_table5_means_stds_and_n_equal_hand_computation(store):
    t5 = _csv(store["out"] / "table5.csv")
    assert list(t5) == ["base", "v1", "v6", "alpha"]  # the paper's order
    # base accuracy 70, 72, 75 %: mean 217/3, sample variance ((-7/3)^2 + (-1/3)^2 + (8/3)^2) / 2 = 19/3
    expect = {
        "base": dict(n=3, acc=(217 / 3, math.sqrt(19 / 3)), lat=(0.43, math.sqrt(0.0013)), lat1=(1.1, 0.1)),
        "v1": dict(n=3, acc=(61.0, 1.0), lat=(0.70, 0.0), lat1=(2.0, 0.0)),
        # v6: seeds 0 and 1 only; the failed seed 2 (99 %) must not be averaged
        "v6": dict(n=2, acc=(82.0, math.sqrt(8.0)), lat=(0.85, math.sqrt(0.005)), lat1=(1.6, math.sqrt(0.02))),
    }
    for v, e in expect.items():
        row = t5[v]
        assert int(row["n"]) == e["n"]
        assert (_f(row["val_accuracy_pct_mean"]), _f(row["val_accuracy_pct_std"])) == pytest.approx(e["acc"])
        assert (_f(row["latency_ms_per_image_mean"]), _f(row["latency_ms_per_image_std"])) == pytest.approx(
            e["lat"], abs=1e-9)
        assert (_f(row["latency_ms_batch1_mean"]), _f(row["latency_ms_batch1_std"])) == pytest.approx(
            e["lat1"], abs=1e-9)
    assert int(t5["alpha"]["n"]) == 0 and math.isnan(_f(t5["alpha"]["val_accuracy_pct_mean"]))
    assert int(_f(t5["v6"]["params"])) == 136960 and _f(t5["v1"]["size_mb"]) == pytest.approx(0.505)
    # The same numbers, formatted, in the Markdown and LaTeX versions.
    md = (store["out"] / "table5.md").read_text()
    for text in ["72.33 ± 2.52", "61.00 ± 1.00", "82.00 ± 2.83", "0.430 ± 0.036", "1.600 ± 0.141"]:
        assert text in md
    assert r"72.33 $\pm$ 2.52" in (store["out"] / "table5.tex").read_text()


def test_table2_size_change_against_base(store):
    t2 = _csv(store["out"] / "table2.csv")
    assert _f(t2["v6"]["size_change_pct"]) == pytest.approx(2.0)  # 0.51 vs 0.50 MB
    assert _f(t2["v1"]["size_change_pct"]) == pytest.approx(1.0)
    assert _f(t2["base"]["size_change_pct"]) == pytest.approx(0.0)
    assert int(_f(t2["base"]["params"])) == 136380 and int(t2["base"]["n"]) == 3


def test_missing_seed_flagged_in_every_table(store):
    for name in ["table2", "table5", "vs_paper", "claims", "ranking"]:
        md = (store["out"] / f"{name}.md").read_text()
        v6 = [line for line in md.splitlines() if line.startswith("| V6 ")]
        assert v6 and all("⚠ incomplete (2/3 seeds)" in line for line in v6), name
        if name != "claims":  # claims rows are the non-Base variants; Alpha (no runs) is flagged too
            base = [line for line in md.splitlines() if line.startswith("| Base ")]
            assert base and not any("incomplete" in line for line in base), name
        tex = (store["out"] / f"{name}.tex").read_text()
        assert "incomplete" in tex and tex.isascii(), name  # ASCII: compiles with plain pdflatex + booktabs
        rows = list(csv.DictReader(open(store["out"] / f"{name}.csv")))
        assert {r["incomplete"] for r in rows if r["variant"] == "v6"} == {"True"}, name
    md = (store["out"] / "claims.md").read_text()
    assert any("Alpha" in line and "⚠ incomplete (0/3 seeds)" in line for line in md.splitlines())


def test_against_the_paper_interval(store):
    rows = [r for r in csv.DictReader(open(store["out"] / "vs_paper.csv")) if r["metric"] == "val_accuracy_pct"]
    rows = {r["variant"]: r for r in rows}
    t975_2 = 4.30265273
    half = t975_2 * math.sqrt(19 / 3) / math.sqrt(3)
    base = rows["base"]
    assert _f(base["ours_mean"]) == pytest.approx(217 / 3) and _f(base["paper"]) == pytest.approx(73.09)
    assert _f(base["difference"]) == pytest.approx(217 / 3 - 73.09)
    assert (_f(base["ci95_low"]), _f(base["ci95_high"])) == pytest.approx((217 / 3 - half, 217 / 3 + half), abs=1e-5)
    assert base["paper_in_ci95"] == "True"  # 73.09 in [66.1, 78.6]
    assert rows["v1"]["paper_in_ci95"] == "False"  # 72.78 outside 61 ± 2.48
    assert rows["v6"]["paper_in_ci95"] == "True"  # 80.67 in 82 ± 12.706 * 2
    assert rows["alpha"]["paper_in_ci95"] == "" and rows["alpha"]["n"] == "0"


def test_claims_welch_by_hand(store):
    claims = _csv(store["out"] / "claims.csv")
    assert list(claims) == ["v1", "v6", "alpha"]
    sa, sb = 8.0 / 2, 19 / 3 / 3  # v6 vs base: squared standard errors
    v6 = claims["v6"]
    assert _f(v6["difference_pp"]) == pytest.approx(82 - 217 / 3)
    assert _f(v6["t"]) == pytest.approx((82 - 217 / 3) / math.sqrt(sa + sb))
    assert _f(v6["df"]) == pytest.approx((sa + sb) ** 2 / (sa**2 / 1 + sb**2 / 2))
    assert _f(v6["p_value"]) == pytest.approx(_t_two_sided_p(_f(v6["t"]), _f(v6["df"])), abs=1e-9)
    assert 0.05 < _f(v6["p_value"]) < 0.07 and v6["significant"] == "False" and v6["verdict"] == "not significant"
    v1 = claims["v1"]  # 61 vs 72.3 %, tight spread: significant, same direction as the paper's -0.31 pp
    assert _f(v1["p_value"]) < 0.05 and v1["significant"] == "True" and v1["verdict"] == "agrees with paper"
    assert _f(v1["paper_difference_pp"]) == pytest.approx(72.78 - 73.09)
    assert claims["alpha"]["p_value"] == "" and claims["alpha"]["verdict"].startswith("n/a")


def test_ranking_ours_vs_paper(store):
    rk = _csv(store["out"] / "ranking.csv")
    assert list(rk) == ["v6", "base", "v1", "alpha"]
    assert [rk[v]["ours_rank"] for v in ("v6", "base", "v1")] == ["1", "2", "3"]
    assert [rk[v]["paper_rank"] for v in ("v6", "base", "v1")] == ["1", "2", "3"]
    assert "Spearman rank correlation, ours vs paper: 1.000" in (store["out"] / "report.md").read_text()


def test_report_reads_only_metrics_every_trial_logs():
    from orchestrator.training.metrics import EPOCH_METRICS, FINAL_METRICS
    assert set(study.CURVE_METRICS) <= set(EPOCH_METRICS) and set(study.TABLE_METRICS) <= set(FINAL_METRICS)


def test_per_epoch_curves(store):
    rows = list(csv.DictReader(open(store["out"] / "curves.csv")))
    get = {(r["variant"], r["metric"], int(r["epoch"])): r for r in rows}
    r = get[("base", "val_accuracy", 1)]  # 0.60, 0.62, 0.65
    assert (_f(r["mean"]), _f(r["std"]), int(r["n"])) == pytest.approx((0.62333333, math.sqrt(19 / 3) / 100, 3))
    r = get[("v6", "train_loss", 1)]  # 1.5 + 0.1 * seed for seeds 0, 1; the failed seed 2 excluded
    assert (_f(r["mean"]), int(r["n"])) == pytest.approx((1.55, 2))
    assert ("v6", "val_loss", 2) in get and ("alpha", "val_loss", 1) not in get


# ------------------------------------------------------------------------------------- report and files


def test_failed_trial_listed_not_averaged_and_old_sweeps_ignored(store):
    md = (store["out"] / "report.md").read_text()
    failed = md.split("## Failed trials")[1].split("## Missing trials")[0]
    assert "v6-seed2" in failed and "RuntimeError: CUDA out of memory" in failed and store["failed"] in failed
    missing = [[c.strip() for c in line.strip("|").split("|")]
               for line in md.split("## Missing trials")[1].splitlines() if line.startswith("| ")]
    assert missing[2:] == [["V6", "2"], ["Alpha", "0, 1, 2"]]  # alpha: requested, never run
    assert "sweep `s1`" in md and "Incomplete variants" in md
    trials = list(csv.DictReader(open(store["out"] / "trials.csv")))
    assert len(trials) == 9 and {t["run_name"] for t in trials} >= {"v6-seed2", "base-seed0"}


def test_console_prints_tables(store):
    out = store["stdout"]
    assert "Table 2: parameters and size" in out and "Table 5: model comparison" in out
    assert "| Base " in out and "72.33 ± 2.52" in out and "report written to" in out


def test_figures_are_real_pngs(store):
    for name in ["loss_curves", "accuracy_curves", "accuracy_vs_latency", "accuracy_vs_size"]:
        data = (store["out"] / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"]({name}.png)" in (store["out"] / "report.md").read_text()


def test_artifacts_attached_to_parent_run(store):
    listed = {Path(a.path).name for a in store["client"].list_artifacts(store["parent"], "report")}
    written = {p.name for p in store["out"].iterdir()}
    assert written <= listed and {"report.md", "table5.csv", "table2.tex", "accuracy_vs_latency.png"} <= listed


def test_explicit_unfinished_sweep_and_default_out_dir(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = report.build_report(store["uri"], EXPERIMENT, "s2")  # explicit id: a running sweep is fine
    assert out == Path("reports") / "s2" and (tmp_path / out / "report.md").is_file()
    t5 = _csv(out / "table5.csv")
    assert list(t5) == ["base"] and _f(t5["base"]["val_accuracy_pct_mean"]) == pytest.approx(50.0)


# -------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, words", [
    (["--experiment-name", "nope"], ["no MLflow experiment named 'nope'", "--experiment-name"]),
    (["--experiment-name", EXPERIMENT, "--sweep", "zzz"], ["no sweep 'zzz'", "--sweep"]),
    (["--experiment-name", EXPERIMENT, "--sweep", "empty"], ["has no trial runs"]),
])
def test_cli_bad_input_one_line_exit_2(store, args, words, capsys):
    assert report.main(["--tracking-uri", store["uri"], *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and all(w in err for w in words)


def test_cli_missing_database_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.report", "--tracking-uri",
                           f"sqlite:///{tmp_path}/none.db"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no MLflow database" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "none.db").exists()  # a report never creates a store as a side effect


def test_list_shows_every_sweep_one_line_each_newest_first(store, capsys):
    assert report.main(["--tracking-uri", store["uri"], "--experiment-name", EXPERIMENT, "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["s2", "s1", "old", "empty"]
    s1 = lines[1]
    assert "FINISHED" in s1 and "4 variants x 3 seeds (base,v1,v6,alpha)" in s1
    assert "trials: 8 finished, 1 failed, 12 requested" in s1
    assert "RUNNING" in lines[0] and "trials: 1 finished, 0 failed, 1 requested" in lines[0]
