"""Ours against the paper: each metric's mean over seeds and its 95% t-interval beside the paper's value, as
(num, shown): the numbers (for CSV) and the formatted cells (Markdown, LaTeX)."""
import math

import pandas as pd

from models import reference
from orchestrator.analysis import stats
from orchestrator.analysis import tables as fmt
from orchestrator.analysis.study import Study, unmixed_latencies

ALPHA = 0.05  # significance level of the claims check, after Holm's correction


def paper_value(study: Study, variant: str, column: str = "val_accuracy_pct") -> float:
    return study.paper.loc[variant, column] if variant in study.paper.index else math.nan


# ------------------------------------------------------------------------------------------ ours vs the paper
# (our column in the trials frame, paper column, label, digits)
_VS_PAPER = [("val_accuracy_pct", "val_accuracy_pct", "Val. accuracy (%)", 2),
             ("latency_ms_per_image", "latency_ms_per_image", "Inference (ms/image)", 3),
             ("size_mb", "size_mb", "Size (MB)", 4), ("param_count", "params", "Parameters", 0)]
_PAPER_PLACES = {("size_mb", v): int(d) for v, d in reference.size_mb_decimals().items()}


def _measured(study: Study) -> pd.DataFrame:
    return unmixed_latencies(study.finished).assign(val_accuracy_pct=100.0 * study.finished["final_val_accuracy"])


def _vs_paper_row(study: Study, finished: pd.DataFrame, variant: str, metric: tuple) -> dict:
    ours, theirs, name, digits = metric
    values = finished.loc[finished.variant == variant, ours].dropna().tolist()
    mean = sum(values) / len(values) if values else math.nan
    ci95_low, ci95_high = stats.mean_ci(values)
    paper = paper_value(study, variant, theirs)
    # Compare at the precision the paper printed: a deterministic quantity (size, params) has a zero-width
    # interval that would otherwise miss the paper's rounded value by a rounding error.
    places = _PAPER_PLACES.get((theirs, variant), digits)
    inside = (math.nan if pd.isna(ci95_low) or pd.isna(paper)
              else bool(round(ci95_low, places) <= paper <= round(ci95_high, places)))
    if ours == "val_accuracy_pct" and not study.comparable:
        inside = fmt.NOT_COMPARABLE  # another protocol: its accuracy says nothing about the paper's
    return {"variant": variant, "model": study.label(variant), "metric": ours, "metric_label": name,
            "digits": digits, "ours_mean": mean, "paper": paper, "difference": mean - paper,
            "ci95_low": ci95_low, "ci95_high": ci95_high, "paper_in_ci95": inside, "n": len(values),
            "flag": fmt.incomplete_flag(study.summary.loc[variant])}


def accuracy_vs_paper(study: Study, variant: str) -> dict:
    """The variant's mean validation accuracy (%), its 95% t-interval, the paper's value and whether it lies
    inside (nan below n = 2; NOT_COMPARABLE under another protocol)."""
    return _vs_paper_row(study, _measured(study), variant, _VS_PAPER[0])


def vs_paper(study: Study):
    finished = _measured(study)
    num = pd.DataFrame([_vs_paper_row(study, finished, v, metric)
                        for metric in _VS_PAPER for v in study.summary.index])
    shown = pd.DataFrame({
        "Model": num["model"], "Metric": num["metric_label"],
        "Ours (mean)": [fmt.num(x, d) for x, d in zip(num.ours_mean, num.digits)],
        "Paper": [fmt.num(x, d) for x, d in zip(num.paper, num.digits)],
        "Difference": [fmt.DASH if pd.isna(x) else f"{x:+,.{d}f}" for x, d in zip(num.difference, num.digits)],
        "95% CI": [fmt.interval(lo, hi, d) for lo, hi, d in zip(num.ci95_low, num.ci95_high, num.digits)],
        "Paper in 95% CI": num["paper_in_ci95"].map(fmt.yes_no_or_not_comparable), "n": num["n"],
        "Flag": num["flag"]})
    return num.drop(columns=["metric_label", "digits", "flag"]).assign(incomplete=num["flag"] != ""), shown
