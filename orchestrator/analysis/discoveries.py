"""Architectures of a study's own (a search's re-validated specs) against the paper's references, Base, V6 and
Alpha: mean ± std over seeds, the difference, Welch's two-sided t-test and its Holm-adjusted p over the table; and
the search's goal, to beat Alpha by GOAL_MARGIN_PP points at p < ALPHA (unadjusted, as the goal is stated)."""
import pandas as pd

from orchestrator.analysis import stats
from orchestrator.analysis import tables as fmt
from orchestrator.analysis.comparisons import ALPHA
from orchestrator.analysis.study import Study

REFERENCES = ("base", "v6", "alpha")
GOAL_REFERENCE, GOAL_MARGIN_PP = "alpha", 2.0


def own_variants(study: Study) -> list[str]:
    """The study's variants that are not the paper's, with a finished trial."""
    return [v for v in study.summary.index if v not in study.paper.index and study.summary.loc[v, "n"] > 0]


def references(study: Study) -> list[str]:
    """Base, V6 and Alpha, those of them with a finished trial in the study."""
    return [r for r in REFERENCES if r in study.summary.index and study.summary.loc[r, "n"] > 0]


def _row(study: Study, variant: str, reference: str) -> dict:
    welch = stats.welch_t_test(study.accuracies_pct(variant), study.accuracies_pct(reference))
    ours, theirs = study.summary.loc[variant], study.summary.loc[reference]
    return {"variant": variant, "model": study.label(variant), "reference": reference,
            "reference_model": study.label(reference), "ours_mean_pct": ours["val_accuracy_pct_mean"],
            "ours_std_pct": ours["val_accuracy_pct_std"], "reference_mean_pct": theirs["val_accuracy_pct_mean"],
            "reference_std_pct": theirs["val_accuracy_pct_std"], "difference_pp": welch.difference,
            "t": welch.t, "df": welch.df, "p_value": welch.p_value, "n": ours["n"], "n_reference": theirs["n"]}


def discoveries(study: Study):
    """One row per (own variant, reference present in the study), as (num, shown); the study has both."""
    num = pd.DataFrame([_row(study, v, r) for v in own_variants(study) for r in references(study)])
    num["p_holm"] = stats.holm_adjust(num["p_value"])
    num["goal_met"] = [r == GOAL_REFERENCE and d >= GOAL_MARGIN_PP and p < ALPHA
                       for r, d, p in zip(num.reference, num.difference_pp, num.p_value)]
    shown = pd.DataFrame({
        "Model": num["model"], "Acc. (%)": [fmt.pm(m, s, 2) for m, s in zip(num.ours_mean_pct, num.ours_std_pct)],
        "Against": num["reference_model"],
        "Its acc. (%)": [fmt.pm(m, s, 2) for m, s in zip(num.reference_mean_pct, num.reference_std_pct)],
        "Δ (pp)": num["difference_pp"].map(fmt.signed), "Welch t": num["t"].map(fmt.signed),
        "df": num["df"].map(lambda x: fmt.num(x, 1)), "p": num["p_value"].map(fmt.p_value),
        "p (Holm)": num["p_holm"].map(fmt.p_value), "n": num["n"], "n ref.": num["n_reference"]})
    return num, shown


def goal_lines(num: pd.DataFrame) -> list[str]:
    """report.md's reading of the table: whether any own architecture reached the search's goal."""
    against = num[num.reference == GOAL_REFERENCE]
    goal = (f"Goal: beat Alpha by at least {GOAL_MARGIN_PP:g} points, Welch p < {ALPHA} (mean over seeds, the "
            f"paper's protocol).")
    if against.empty:
        return [goal + " Not tested: the study has no Alpha records (copy them in from results/paper-grid).", ""]
    met = against[against.goal_met]
    best = against.loc[against.difference_pp.idxmax()]
    verdict = (f"**met** by {', '.join(met.model)}" if not met.empty else
               f"**not met**: the best is {best.model}, {fmt.signed(best.difference_pp)} points "
               f"(p {'untested' if pd.isna(best.p_value) else fmt.p_value(best.p_value)})")
    return [f"{goal} {verdict}.", ""]

