"""The report at n = 5 on made-up studies whose answers are known: Holm's correction and the verdicts it gives,
Table 5's 95% interval and whether the paper's value lies in it, and the ranking's stability across seeds."""
import math
import random

import pandas as pd
import pytest

from orchestrator.analysis import claims, ranking, report, stats
from orchestrator.analysis.paper_tables import table5
from orchestrator.analysis.study import HISTORY_COLUMNS, TRIAL_COLUMNS, Study
from orchestrator.sweep import records

T975_DF4 = 2.7764451052  # Student t, 97.5% quantile, 4 degrees of freedom (tables)


def made_up_study(accuracy_pct: dict[str, list[float]], protocol: dict | None = None) -> Study:
    """A finished study: variant -> final validation accuracy (%) of seeds 0, 1, ... (nan: no trial)."""
    rows = [{"run_id": f"{v}{k}", "run_name": f"{v}-seed{k}", "status": "FINISHED", "start_time": k, "variant": v,
             "seed": k, "failure_reason": "", "final_val_accuracy": acc / 100.0, "latency_ms_per_image": 1.0,
             "latency_ms_batch1": 1.0, "size_mb": 0.52, "param_count": 136380, "latency_hardware": "cpu A"}
            for v, accs in accuracy_pct.items() for k, acc in enumerate(accs) if not math.isnan(acc)]
    seeds = sorted({k for accs in accuracy_pct.values() for k in range(len(accs))})
    return Study("made up", [], list(accuracy_pct), seeds, pd.DataFrame(rows, columns=TRIAL_COLUMNS),
                 pd.DataFrame(columns=HISTORY_COLUMNS), protocol=protocol or records.paper_protocol())


# ------------------------------------------------------------------------------------------------ Holm
def test_holm_adjusted_p_values_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> made non-decreasing: 0.06
    assert stats.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = stats.holm_adjust([0.01, math.nan, 0.04])  # an untested comparison is not in the family
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert stats.holm_adjust([0.6, 0.9]) == [1.0, 1.0]  # capped at 1
    assert stats.holm_adjust([]) == []


def _holm_rejects(p: list[float], alpha: float) -> list[bool]:
    """Holm's procedure as stated: reject the smallest p-values in order while p_(i) <= alpha / (m - i + 1)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = [False] * len(p)
    for rank, i in enumerate(order):
        if p[i] > alpha / (len(p) - rank):
            break
        rejected[i] = True
    return rejected


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_adjusted_p_below_alpha_is_exactly_holms_step_down_rejection(alpha):
    rng = random.Random(0)
    for m in range(1, 9):
        for _ in range(50):
            p = [rng.choice([rng.random() * 0.05, rng.random()]) for _ in range(m)]
            assert [q < alpha for q in stats.holm_adjust(p)] == _holm_rejects(p, alpha), (p, alpha)


def _pair_with_p(p: float, sign: int) -> list[float]:
    """Two accuracies that, against Base's [70, 72], give Welch's two-sided p exactly: equal n = 2 and equal
    variances make df = 2, where p = 1 - |t| / sqrt(2 + t^2); so t^2 = 2 (1 - p)^2 / (1 - (1 - p)^2)."""
    t = math.sqrt(2 * (1 - p) ** 2 / (1 - (1 - p) ** 2))
    d = sign * t * math.sqrt(2)  # t = d / sqrt(var / 2 + var / 2), var = 2
    return [70.0 + d, 72.0 + d]


# variant: (raw p, sign of our difference). The paper says V6, V2, Alpha better than Base; V1, V3, V4, V5 worse.
KNOWN = {"v6": (0.001, +1), "v5": (0.006, +1), "v3": (0.009, -1), "alpha": (0.02, +1), "v4": (0.04, -1),
         "v1": (0.3, -1), "v2": (0.7, +1)}
# Holm, m = 7: 0.001*7, 0.006*6, 0.009*5, 0.02*4, 0.04*3, 0.3*2, 0.7*1 (already non-decreasing)
HOLM = {"v6": 0.007, "v5": 0.036, "v3": 0.045, "alpha": 0.08, "v4": 0.12, "v1": 0.6, "v2": 0.7}


def test_holm_corrected_verdicts_on_known_p_values():
    study = made_up_study({"base": [70.0, 72.0], **{v: _pair_with_p(p, s) for v, (p, s) in KNOWN.items()}})
    num, shown = claims.claims(study)
    num = num.set_index("variant")
    for v, (p, _) in KNOWN.items():
        assert num.loc[v, "p_value"] == pytest.approx(p, rel=1e-9) and num.loc[v, "df"] == pytest.approx(2.0)
        assert num.loc[v, "p_holm"] == pytest.approx(HOLM[v], rel=1e-9)
    # Significant before the correction: the five below 0.05; after it, the three below 0.05 / (7, 6, 5).
    assert set(num.index[num.significant == True]) == {"v6", "v5", "v3", "alpha", "v4"}  # noqa: E712
    assert set(num.index[num.significant_holm == True]) == {"v6", "v5", "v3"}  # noqa: E712
    assert num.loc["v6", "verdict"] == claims.AGREES and num.loc["v3", "verdict"] == claims.AGREES
    assert num.loc["v5", "verdict"] == claims.CONTRADICTS  # significant, but better where the paper says worse
    assert {num.loc[v, "verdict"] for v in ("alpha", "v4", "v1", "v2")} == {claims.NOT_SIGNIFICANT}
    assert num.loc["v5", "paper_claim"] == "worse than Base" and num.loc["v6", "paper_claim"] == "better than Base"
    # Spread: pooled sd sqrt(2); |d| = |t| sqrt(2) < sqrt(2) only where |t| < 1, i.e. V2 (p = 0.7) alone.
    assert set(num.index[num.smaller_than_spread == True]) == {"v2"}  # noqa: E712
    assert num.loc["v2", "seed_spread_pp"] == pytest.approx(math.sqrt(2))
    lines = "\n".join(claims.verdict_lines(num.reset_index()))
    assert "**hold**: V3 (worse than Base; p_Holm 0.045), V6 (better than Base; p_Holm 0.007)" in lines
    assert "**contradicted**: V5 (worse than Base; p_Holm 0.036)" in lines
    assert "over the 7 comparisons" in lines and "smaller than the seed-to-seed spread: V2 (+" in lines
    assert list(shown["p (Holm)"]) == ["0.6", "0.7", "0.045", "0.12", "0.036", "0.007", "0.08"]  # paper's order


def test_claims_below_two_seeds_say_untested_and_another_protocol_is_not_judged():
    study = made_up_study({"base": [70.0], "v6": [80.0, 81.0]})
    num, _ = claims.claims(study)
    assert num.loc[0, "verdict"] == claims.UNTESTED and math.isnan(num.loc[0, "p_holm"])
    assert "untested** (fewer than 2 runs in a group): V6" in "\n".join(claims.verdict_lines(num))
    quick = made_up_study({"base": [70.0, 72.0], "v6": _pair_with_p(0.001, +1)},
                          protocol={**records.paper_protocol(), "epochs": 2})
    num, _ = claims.claims(quick)
    assert num.loc[0, "verdict"] == claims.SIGNIFICANT_NOT_COMPARABLE


# ------------------------------------------------------------------------------------------------ Table 5
def test_table5_gives_the_95_interval_and_whether_the_paper_lies_in_it():
    base = [72.0, 73.0, 74.0, 73.5, 72.5]  # mean 73, sample sd sqrt(0.625): the paper's 73.09 lies inside
    v1 = [60.0, 61.0, 62.0, 61.0, 60.0]  # the paper's 72.78 lies far outside
    num, shown = table5(made_up_study({"base": base, "v1": v1, "v6": [80.0]}))
    half = T975_DF4 * math.sqrt(0.625 / 5)
    assert (num.loc["base", "ci95_low"], num.loc["base", "ci95_high"]) == pytest.approx((73 - half, 73 + half))
    assert num.loc["base", "paper_in_ci95"] is True and num.loc["v1", "paper_in_ci95"] is False
    assert num.loc["base", "paper_val_accuracy_pct"] == pytest.approx(73.09)
    assert math.isnan(num.loc["v6", "ci95_low"]) and pd.isna(num.loc["v6", "paper_in_ci95"])  # n = 1: no interval
    rows = shown.set_index("Model")
    assert rows.loc["Base", "95% CI (%)"] == f"[{73 - half:.2f}, {73 + half:.2f}]"
    assert list(rows["Paper in 95% CI"]) == ["yes", "no", "—"]
    quick = made_up_study({"base": base}, protocol={**records.paper_protocol(), "epochs": 2})
    assert table5(quick)[1]["Paper in 95% CI"].tolist() == ["not comparable"]


# ------------------------------------------------------------------------------------------------ ranking
def test_rank_stability_on_a_known_ranking():
    nan = math.nan
    accuracy = pd.DataFrame({  # seeds 0..3 complete; seed 4 lacks C, so it ranks another set and is left out
        0: {"A": 90.0, "B": 80.0, "C": 70.0, "D": nan}, 1: {"A": 90.0, "B": 70.0, "C": 80.0, "D": nan},
        2: {"A": 80.0, "B": 90.0, "C": 70.0, "D": nan}, 3: {"A": 90.0, "B": 80.0, "C": 70.0, "D": nan},
        4: {"A": 95.0, "B": 85.0, "C": nan, "D": nan}})
    got = ranking.rank_stability(accuracy)
    # Means over all of a variant's seeds: A 89, B 81, C 72.5: the mean ranking is A, B, C. D never ran.
    assert list(got.index) == ["A", "B", "C"] and list(got["mean_rank"]) == [1, 2, 3]
    assert [got.loc["A", f"seed_{s}"] for s in range(4)] == [1, 1, 2, 1]
    assert [got.loc["B", f"seed_{s}"] for s in range(4)] == [2, 3, 1, 2]
    assert [got.loc["C", f"seed_{s}"] for s in range(4)] == [3, 2, 3, 3]
    assert "seed_4" not in got.columns and set(got["seeds_compared"]) == {4}
    assert got["seeds_held"].to_dict() == {"A": 3, "B": 2, "C": 3}
    assert got["held_share"].to_dict() == {"A": 0.75, "B": 0.5, "C": 0.75}
    assert got["rank_max"].to_dict() == {"A": 2, "B": 3, "C": 3}


def test_ranking_stability_table_figure_and_its_absence_below_two_complete_seeds(tmp_path):
    stable = made_up_study({"base": [70.0, 71.0, 72.0], "v6": [80.0, 69.0, 81.0], "v1": [60.0, 61.0, 62.0]})
    num, shown, k = ranking.ranking_stability(stable)
    assert k == 3 and list(shown["Model"]) == ["V6", "Base", "V1"]  # mean ranks 1, 2, 3
    assert list(shown["Holds its rank"]) == ["2/3", "2/3", "3/3"]  # V6 falls to 3rd in seed 1, lifting Base
    report.write_report(stable, tmp_path / "stable")
    assert (tmp_path / "stable" / "ranking_stability.png").stat().st_size > 10_000
    assert "ranking_stability.png" in (tmp_path / "stable" / "report.md").read_text()
    thin = made_up_study({"base": [70.0, 71.0], "v6": [80.0, math.nan]})  # one seed that both finished
    num, shown, k = ranking.ranking_stability(thin)
    assert k == 1 and list(shown["Holds its rank"]) == ["—", "—"] and num["held_share"].isna().all()
    report.write_report(thin, tmp_path / "thin")
    assert not (tmp_path / "thin" / "ranking_stability.png").exists()
    assert "Stability needs at least 2 seeds" in (tmp_path / "thin" / "report.md").read_text()


def test_claims_table_headings_name_holm_and_the_spread():
    _, shown = claims.claims(made_up_study({"base": [70.0, 72.0], "v6": [80.0, 81.0]}))
    assert {"p (Holm)", "Seed spread (pp)", "Within spread", "Paper's claim", "Verdict"} <= set(shown.columns)
