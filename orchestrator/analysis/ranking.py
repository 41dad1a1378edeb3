"""The accuracy ranking: ours (of the mean over seeds) against the paper's, and how stable ours is from seed to
seed: each variant's rank within each seed, and the share of seeds in which it holds its rank in the mean
ranking. Ranks are competition ranks (method="min": 1, 2, 2, 4), highest accuracy first.
"""
import math

import pandas as pd

from orchestrator.analysis import stats
from orchestrator.analysis import tables as fmt
from orchestrator.analysis.comparisons import paper_value
from orchestrator.analysis.study import Study


def _rank(values: pd.Series) -> pd.Series:
    return values.rank(ascending=False, method="min")


def ranking(study: Study):
    summary = study.summary
    ours = summary["val_accuracy_pct_mean"]
    theirs = pd.Series({v: paper_value(study, v) for v in summary.index}, dtype=float)
    has_both = ours.notna() & theirs.notna()  # rank among the same set of variants on both sides
    num = pd.DataFrame({
        "model": [study.label(v) for v in summary.index], "ours_mean_pct": ours,
        "ours_rank": _rank(ours[has_both]), "paper_pct": theirs,
        "paper_rank": _rank(theirs[has_both]), "n": summary["n"],
        "incomplete": summary["incomplete"]}, index=summary.index)
    num["same_rank"] = (num["ours_rank"] == num["paper_rank"]).where(has_both)
    if not study.comparable:
        num["same_rank"] = num["same_rank"].astype(object).where(num["same_rank"].isna(), fmt.NOT_COMPARABLE)
    num = num.sort_values(["ours_rank", "paper_rank"], na_position="last")
    # rho is computed on the accuracies by scipy's spearmanr, which gives ties their average rank: Spearman's
    # definition. (A Pearson correlation of the min-ranks the table shows equals it only without ties.)
    rho = stats.spearman_rho(ours[has_both], theirs[has_both])
    shown = pd.DataFrame({
        "Model": num["model"], "Our rank": num["ours_rank"].map(lambda x: fmt.num(x, 0)),
        "Ours (%)": num["ours_mean_pct"].map(lambda x: fmt.num(x, 2)),
        "Paper rank": num["paper_rank"].map(lambda x: fmt.num(x, 0)),
        "Paper (%)": num["paper_pct"].map(lambda x: fmt.num(x, 2)),
        "Same rank": num["same_rank"].map(fmt.yes_no_or_not_comparable),
        "n": num["n"], "Flag": summary.loc[num.index].apply(fmt.incomplete_flag, axis=1)})
    return num, shown, rho


def rank_stability(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per variant (rows of `accuracy`: variants x seeds, nan where a trial is missing; all-nan rows dropped): its
    rank in the mean ranking, its rank within each seed that every variant finished (`seed_<k>`; other seeds rank
    other sets of variants), and in how many of those seeds it holds its mean rank, and the share; by mean rank."""
    accuracy = accuracy.dropna(how="all")
    mean_rank = _rank(accuracy.mean(axis=1))
    complete = [s for s in accuracy.columns if accuracy[s].notna().all()]
    per_seed = pd.DataFrame({f"seed_{s}": _rank(accuracy[s]) for s in complete}, index=accuracy.index)
    held = per_seed.eq(mean_rank, axis=0).sum(axis=1)
    # With no complete seed, held / 0 and the min and max over no column are nan, as they should be.
    out = pd.DataFrame({"mean_rank": mean_rank, "seeds_compared": len(complete), "seeds_held": held,
                        "held_share": held / len(complete)}).join(per_seed)
    out["rank_min"], out["rank_max"] = per_seed.min(axis=1), per_seed.max(axis=1)
    return out.sort_values("mean_rank", kind="stable")


def accuracy_by_seed(study: Study) -> pd.DataFrame:
    """Validation accuracy (%) of the averaged trials, variants (in the study's order) x seeds."""
    table = study.finished.pivot_table(index="variant", columns="seed", values="final_val_accuracy", aggfunc="first")
    return 100.0 * table.reindex([v for v in study.variants if v in table.index])


MIN_SEEDS = 2  # a share of one seed says nothing about stability


def ranking_stability(study: Study):
    """rank_stability of the study, as (num, shown, seeds compared); below MIN_SEEDS complete seeds the held
    counts and shares are not shown (the per-seed ranks still are)."""
    num = rank_stability(accuracy_by_seed(study))
    k = int(num["seeds_compared"].iloc[0]) if len(num) else 0
    if k < MIN_SEEDS:
        num[["seeds_held", "held_share"]] = math.nan
    num.insert(0, "model", [study.label(v) for v in num.index])
    seed_columns = [c for c in num.columns if c.startswith("seed_")]  # not seeds_compared, seeds_held
    shown = pd.DataFrame({"Model": num["model"], "Mean rank": num["mean_rank"].map(lambda x: fmt.num(x, 0)),
                          **{f"Seed {c[5:]}": num[c].map(lambda x: fmt.num(x, 0)) for c in seed_columns},
                          "Holds its rank": [fmt.DASH if pd.isna(h) else f"{int(h)}/{k}" for h in num.seeds_held],
                          "Share (%)": num["held_share"].map(lambda x: fmt.num(100.0 * x, 0))})
    return num, shown, k
