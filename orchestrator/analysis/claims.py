"""The claims check: each variant's validation accuracy against Base by Welch's two-sided t-test, with Holm's
correction over the comparisons, judged against the paper's claimed direction (better or worse than Base).

The paper's conclusions are the signs of its Table 5 differences from Base (models/paper_reference.csv). A claim
holds when our difference has that sign and survives the correction at ALPHA. A difference smaller than the
seed-to-seed spread (the pooled standard deviation of one run in either group) is named as such: one seed, as
the paper ran, could have shown it either way.
"""
import math

import numpy as np
import pandas as pd

from orchestrator.analysis import stats
from orchestrator.analysis import tables as fmt
from orchestrator.analysis.comparisons import ALPHA, paper_value
from orchestrator.analysis.study import Study

AGREES, CONTRADICTS, NOT_SIGNIFICANT = "agrees with paper", "contradicts paper", "not significant"
UNTESTED = "n/a (needs ≥2 runs per group)"
SIGNIFICANT_NOT_COMPARABLE = f"significant; {fmt.NOT_COMPARABLE} with the paper"

CLAIM_COLUMNS = ["variant", "model", "ours_mean_pct", "base_mean_pct", "difference_pp", "t", "df", "p_value",
                 "significant", "p_holm", "significant_holm", "paper_difference_pp", "paper_claim", "verdict",
                 "seed_spread_pp", "smaller_than_spread", "n", "n_base", "flag"]


def paper_claim(paper_difference_pp: float) -> str:
    """The paper's conclusion about a variant: its claimed direction against Base."""
    if pd.isna(paper_difference_pp) or paper_difference_pp == 0:
        return fmt.DASH
    return "better than Base" if paper_difference_pp > 0 else "worse than Base"


def verdict(p_holm: float, difference_pp: float, paper_difference_pp: float, comparable: bool = True) -> str:
    """What our data say about the paper's claim, at ALPHA after Holm's correction."""
    if pd.isna(p_holm):
        return UNTESTED
    if p_holm >= ALPHA:
        return NOT_SIGNIFICANT
    if not comparable:
        return SIGNIFICANT_NOT_COMPARABLE
    return AGREES if (difference_pp > 0) == (paper_difference_pp > 0) else CONTRADICTS


def seed_spread(a: list[float], b: list[float]) -> float:
    """The seed-to-seed standard deviation of one run, pooled over two groups (nan below 2 runs in either)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2.0)


def _claim_row(study: Study, variant: str) -> dict:
    summary = study.summary
    ours, base = study.accuracies_pct(variant), study.accuracies_pct("base")
    welch = stats.welch_t_test(ours, base)
    paper_difference = paper_value(study, variant) - paper_value(study, "base")
    spread = seed_spread(ours, base)
    return {"variant": variant, "model": study.label(variant),
            "ours_mean_pct": summary.loc[variant, "val_accuracy_pct_mean"],
            "base_mean_pct": summary["val_accuracy_pct_mean"].get("base", math.nan),
            "difference_pp": welch.difference, "t": welch.t, "df": welch.df, "p_value": welch.p_value,
            "significant": math.nan if pd.isna(welch.p_value) else bool(welch.p_value < ALPHA),
            "paper_difference_pp": paper_difference, "paper_claim": paper_claim(paper_difference),
            "seed_spread_pp": spread,
            "smaller_than_spread": math.nan if pd.isna(spread) else bool(abs(welch.difference) < spread),
            "n": summary.loc[variant, "n"], "n_base": summary["n"].get("base", 0),
            "flag": fmt.incomplete_flag(summary.loc[variant])}


def claims(study: Study):
    """One row per paper variant but Base: Welch's test, its Holm-adjusted p over the comparisons tested, the
    paper's claim and the verdict on it, and whether the difference is within the seed-to-seed spread. A study's
    own architectures are left out: the paper claims nothing of them (the discoveries table tests them), and in
    Holm's family they would weaken the paper's real claims."""
    claimed = [v for v in study.summary.index if v != "base" and v in study.paper.index]
    num = pd.DataFrame([_claim_row(study, v) for v in claimed], columns=CLAIM_COLUMNS)
    num["p_holm"] = stats.holm_adjust(num["p_value"])
    num["significant_holm"] = [math.nan if pd.isna(p) else bool(p < ALPHA) for p in num["p_holm"]]
    num["verdict"] = [verdict(p, d, paper_d, study.comparable)
                      for p, d, paper_d in zip(num.p_holm, num.difference_pp, num.paper_difference_pp)]
    shown = pd.DataFrame({
        "Model": num["model"], "Δ acc. vs Base (pp)": num["difference_pp"].map(fmt.signed),
        "Seed spread (pp)": num["seed_spread_pp"].map(lambda x: fmt.num(x, 2)),
        "Within spread": num["smaller_than_spread"].map(fmt.yes_no),
        "Welch t": num["t"].map(fmt.signed), "df": num["df"].map(lambda x: fmt.num(x, 1)),
        "p": num["p_value"].map(fmt.p_value), "p (Holm)": num["p_holm"].map(fmt.p_value),
        f"Significant (Holm, α = {ALPHA})": num["significant_holm"].map(fmt.yes_no),
        "Paper's claim": [c if c == fmt.DASH else f"{c} ({fmt.signed(d)} pp)"
                          for c, d in zip(num.paper_claim, num.paper_difference_pp)],
        "Verdict": num["verdict"], "n": num["n"], "n Base": num["n_base"], "Flag": num["flag"]})
    return num.drop(columns=["flag"]).assign(incomplete=num["flag"] != ""), shown


def _names(num: pd.DataFrame, mask) -> str:
    rows = num[mask]
    return ", ".join(f"{m} ({c}; p_Holm {p:.3g})" if not pd.isna(p) else m
                     for m, c, p in zip(rows.model, rows.paper_claim, rows.p_holm)) or "none"


def verdict_lines(num: pd.DataFrame) -> list[str]:
    """report.md's reading of the claims table: which of the paper's conclusions hold, and the differences
    smaller than the seed-to-seed spread."""
    tested = int(num["p_holm"].notna().sum())
    lines = [f"The paper's conclusions (each variant better or worse than Base), at α = {ALPHA} after Holm's "
             f"correction over the {tested} comparisons that could be tested:", "",
             f"- **hold**: {_names(num, num.verdict == AGREES)}",
             f"- **contradicted**: {_names(num, num.verdict == CONTRADICTS)}",
             f"- **not shown** (not significant): {_names(num, num.verdict == NOT_SIGNIFICANT)}",
             f"- **untested** (fewer than 2 runs in a group): {_names(num, num.verdict == UNTESTED)}"]
    if (num.verdict == SIGNIFICANT_NOT_COMPARABLE).any():
        lines.append(f"- **significant, but {fmt.NOT_COMPARABLE}** (another protocol): "
                     f"{_names(num, num.verdict == SIGNIFICANT_NOT_COMPARABLE)}")
    within = num[num.smaller_than_spread == True]  # noqa: E712  (the column holds True, False and nan)
    named = ", ".join(f"{m} ({d:+.2f} pp vs a spread of {s:.2f} pp)"
                      for m, d, s in zip(within.model, within.difference_pp, within.seed_spread_pp))
    lines += ["", f"Differences from Base smaller than the seed-to-seed spread: {named or 'none'}."
              + ("" if num.seed_spread_pp.notna().any() else " (No spread yet: it needs 2 runs per group.)"), ""]
    return lines
