"""A search's re-validated specs in the report: each against Base, V6 and Alpha by Welch's test, the goal (beat
Alpha by 2 points, p < 0.05) judged from those numbers, and all eight of the paper's points on the figures."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as sps

from orchestrator.analysis import discoveries, figures, paper_tables, report
from orchestrator.analysis.study import HISTORY_COLUMNS, TRIAL_COLUMNS, Study, load_records
from orchestrator.sweep import records

REFERENCE_ACCURACIES = {"base": [70.3, 70.8, 71.0], "v6": [77.0, 77.4, 77.9], "alpha": [77.6, 78.1, 78.4]}


def study(own: dict[str, list[float]], references=REFERENCE_ACCURACIES, sizes_mb=None) -> Study:
    accuracies = {**references, **own}
    rows = [{"run_id": f"{v}{k}", "run_name": f"{v}-seed{k}", "status": "FINISHED", "start_time": k, "variant": v,
             "seed": k, "failure_reason": "", "final_val_accuracy": acc / 100, "latency_ms_per_image": 0.5,
             "latency_ms_batch1": 0.9, "size_mb": (sizes_mb or {}).get(v, 0.53), "param_count": 137000,
             "latency_hardware": "cpu A"}
            for v, seeds in accuracies.items() for k, acc in enumerate(seeds)]
    return Study("made up", [], list(accuracies), [0, 1, 2], pd.DataFrame(rows, columns=TRIAL_COLUMNS),
                 pd.DataFrame(columns=HISTORY_COLUMNS), protocol=records.paper_protocol())


def test_each_own_architecture_is_tested_against_base_v6_and_alpha():
    own = {"rank1-aaaa": [80.9, 81.2, 81.0], "rank2-bbbb": [78.2, 78.9, 77.8]}
    num, shown = discoveries.discoveries(study(own))
    assert [(r.variant, r.reference) for r in num.itertuples()] == [
        (v, ref) for v in sorted(own) for ref in ("base", "v6", "alpha")]
    for r in num.itertuples():
        ours, theirs = own[r.variant], REFERENCE_ACCURACIES[r.reference]
        expected = sps.ttest_ind(ours, theirs, equal_var=False)
        assert r.p_value == pytest.approx(expected.pvalue) and r.t == pytest.approx(expected.statistic)
        assert r.difference_pp == pytest.approx(sum(ours) / 3 - sum(theirs) / 3)
        assert r.ours_std_pct == pytest.approx(pd.Series(ours).std())
    assert (num.p_holm >= num.p_value).all() and len(shown) == 6


def test_the_goal_needs_two_points_over_alpha_and_significance():
    clear = discoveries.discoveries(study({"win": [80.9, 81.2, 81.0]}))[0]
    assert clear.goal_met.tolist() == [False, False, True]  # judged against Alpha only
    assert "**met** by win" in discoveries.goal_lines(clear)[0]
    close = discoveries.discoveries(study({"near": [79.4, 79.9, 80.1]}))[0]  # +1.8 points over Alpha
    assert not close.goal_met.any() and "**not met**: the best is near, +1.77 points" in discoveries.goal_lines(close)[0]
    noisy = discoveries.discoveries(study({"noisy": [76.0, 84.0, 82.0]}))[0]  # +2.6 points, p > 0.05
    alpha_row = noisy[noisy.reference == "alpha"].iloc[0]
    assert alpha_row.difference_pp >= 2 and alpha_row.p_value >= 0.05 and not noisy.goal_met.any()
    no_alpha = discoveries.discoveries(study({"x": [75.0, 75.5]}, {"base": [70.0, 70.5]}))[0]
    assert "Not tested" in discoveries.goal_lines(no_alpha)[0]


def test_table_2_flags_a_model_more_than_the_papers_2_percent_over_bases_size():
    s = study({"fat": [80.0, 80.5, 81.0], "lean": [79.0, 79.5, 80.0]},
              sizes_mb={"base": 0.5218, "v6": 0.5268, "alpha": 0.5124, "fat": 0.5346, "lean": 0.5300})
    num, shown = paper_tables.table2(s)
    assert num["over_size_margin"].to_dict() == {"base": False, "v6": False, "alpha": False, "fat": True,
                                                 "lean": False}
    assert shown.loc["fat", "Flag"] == "⚠ over the paper's 2% size margin" and shown.loc["lean", "Flag"] == ""


def test_report_has_the_table_and_the_figures_all_eight_paper_points(tmp_path):
    s = study({"rank1-aaaa": [80.9, 81.2, 81.0]})
    report.write_report(s, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Own architectures against Base, V6 and Alpha" in md and "**met** by rank1-aaaa" in md
    assert len(pd.read_csv(tmp_path / "discoveries.csv")) == 3
    fig = figures.accuracy_vs_size_figure(s.summary, s.paper, tmp_path / "size.png")
    for ax in fig.axes:  # size (MB) and parameters
        [paper_points] = [c for c in ax.collections if c.get_label() == "paper (1 run)"]
        assert len(paper_points.get_offsets()) == 8  # the paper's eight, though the study ran three of them
    assert [ax.get_xlabel() for ax in fig.axes] == ["Model size (MB)", "Parameters"]
    # A study of the paper's variants only keeps its own points: nothing to report on discoveries.
    plain = study({})
    assert not discoveries.own_variants(plain)
    fig = figures.accuracy_vs_size_figure(plain.summary, plain.paper, tmp_path / "plain.png")
    [paper_points] = [c for c in fig.axes[0].collections if c.get_label() == "paper (1 run)"]
    assert len(paper_points.get_offsets()) == 3


def test_a_records_folder_of_a_revalidation_beside_the_grid(tmp_path):
    """The README's workflow: the grid's records (5 seeds) copied beside a re-validation's 3. The own spec is
    complete at 3 seeds, and the claims check, which judges the paper's conclusions, leaves it out."""
    grid = Path(__file__).resolve().parents[1] / "results" / "paper-grid"
    if not (grid / "alpha-seed4.json").is_file():
        pytest.skip("results/paper-grid is not in this checkout")
    for variant in ("base", "alpha"):
        for path in grid.glob(f"{variant}-seed*.json"):
            shutil.copy(path, tmp_path)
    for seed in range(3):  # an own architecture's records, made from Alpha's (1 point better), seeds 0-2 only
        record = json.loads((grid / f"alpha-seed{seed}.json").read_text())
        record["variant"], record["final"]["final_val_accuracy"] = "mine", record["final"]["final_val_accuracy"] + 0.01
        (tmp_path / records.record_name("mine", seed)).write_text(json.dumps(record))
    s = load_records(tmp_path)
    assert s.seeds_requested("mine") == [0, 1, 2] and s.seeds_requested("alpha") == [0, 1, 2, 3, 4]
    assert not s.summary["incomplete"].any() and s.summary.loc["mine", "n_requested"] == 3
    out = tmp_path / "report"
    report.write_report(s, out)
    md = (out / "report.md").read_text()
    assert "Incomplete variants" not in md and "seeds: 0, 1, 2, 3, 4 (Base, Alpha); 0, 1, 2 (mine)" in md
    assert pd.read_csv(out / "claims.csv")["variant"].tolist() == ["alpha"]
    assert set(pd.read_csv(out / "discoveries.csv")["variant"]) == {"mine"}
    # A seed of the grid missing is still flagged: the paper's variants are judged on their own seeds.
    (tmp_path / "alpha-seed4.json").unlink()
    assert load_records(tmp_path).summary["incomplete"].tolist() == [False, True, False]
