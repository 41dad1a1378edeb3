"""The paper's own tables, ours as mean ± std over seeds: Table 2 (size), Table 5 (accuracy with its 95%
interval beside the paper's value, latency, size), and the deployment and by-machine latency views.

Each function returns (num, shown): the numbers (for CSV) and the formatted cells (for Markdown and LaTeX).
"""
import math

import pandas as pd

from models.budget import MARGIN_PCT
from orchestrator.analysis import tables as fmt
from orchestrator.analysis.comparisons import accuracy_vs_paper, paper_value
from orchestrator.analysis.study import LATENCY_METRICS, Study


def _latency_flag(row) -> str:
    """Table 5's flag: incomplete, and latencies that are not averaged because several machines measured them."""
    mixed = f"⚠ latencies from {row['latency_machines']} machines: see latency by machine" \
        if row["latency_machines"] > 1 else ""
    return "; ".join(flag for flag in (fmt.incomplete_flag(row), mixed) if flag)


def _pm_cells(frame: pd.DataFrame, metric: str, digits: int, scale: float = 1.0) -> list[str]:
    """"mean ± std" cells of the frame's <metric>_mean and <metric>_std columns, each times `scale`."""
    return [fmt.pm(scale * m, scale * sd, digits) for m, sd in zip(frame[f"{metric}_mean"], frame[f"{metric}_std"])]


def _size_flag(row) -> str:
    """Table 2's flag: incomplete, and a model more than the paper's 2% over Base's size (a search under the
    parameter budget alone can land there: BatchNorm's running statistics add size, not parameters)."""
    over = f"⚠ over the paper's {MARGIN_PCT}% size margin" if row["size_change_pct"] > MARGIN_PCT else ""
    return "; ".join(flag for flag in (fmt.incomplete_flag(row), over) if flag)


def table2(study: Study):
    summary = study.summary
    base = summary["size_mb"].get("base", math.nan)
    num = pd.DataFrame({
        "model": [study.label(v) for v in summary.index], "params": summary["params"], "size_mb": summary["size_mb"],
        "size_change_pct": 100.0 * (summary["size_mb"] - base) / base, "n": summary["n"],
        "n_requested": summary["n_requested"], "incomplete": summary["incomplete"]}, index=summary.index)
    num["over_size_margin"] = num["size_change_pct"] > MARGIN_PCT  # False without Base's records (NaN)
    shown = pd.DataFrame({
        "Model": num["model"], "Parameters": num["params"].map(lambda x: fmt.num(x, 0)),
        "Size (MB)": num["size_mb"].map(lambda x: fmt.num(x, 4)),
        "% change in size vs Base": [fmt.DASH if v == "base" else fmt.num(x, 2)
                                     for v, x in num["size_change_pct"].items()],
        "n": num["n"], "Flag": num.apply(_size_flag, axis=1)})
    return num, shown


def table5(study: Study):
    """Table 5, with the 95% t-interval of each variant's mean accuracy and whether the paper's value is in it."""
    summary = study.summary
    cols = ["val_accuracy_pct_mean", "val_accuracy_pct_std", "n", "latency_ms_per_image_mean",
            "latency_ms_per_image_std", "latency_ms_batch1_mean", "latency_ms_batch1_std", "size_mb", "params",
            "n_requested", "incomplete"]
    num = summary[cols].copy()
    num.insert(0, "model", [study.label(v) for v in summary.index])
    interval = pd.DataFrame([accuracy_vs_paper(study, v) for v in summary.index], index=summary.index)
    num = num.join(interval[["ci95_low", "ci95_high", "paper", "paper_in_ci95"]]
                   .rename(columns={"paper": "paper_val_accuracy_pct"}))
    shown = pd.DataFrame({
        "Model": num["model"], "Val. accuracy (%)": _pm_cells(summary, "val_accuracy_pct", 2),
        "95% CI (%)": [fmt.interval(lo, hi, 2) for lo, hi in zip(num.ci95_low, num.ci95_high)],
        "Paper (%)": num["paper_val_accuracy_pct"].map(lambda x: fmt.num(x, 2)),
        "Paper in 95% CI": num["paper_in_ci95"].map(fmt.yes_no_or_not_comparable), "n": num["n"],
        "Inference (ms/image, batch 4)": _pm_cells(summary, "latency_ms_per_image", 3),
        "Inference (ms, batch 1)": _pm_cells(summary, "latency_ms_batch1", 3),
        "Size (MB)": num["size_mb"].map(lambda x: fmt.num(x, 4)),
        "Parameters": num["params"].map(lambda x: fmt.num(x, 0)),
        "Flag": summary.apply(_latency_flag, axis=1)})
    return num, shown


def latency_by_machine(study: Study):
    """Both latencies per (variant, machine model): the figures that are never averaged across machines."""
    groups = study.finished.groupby(["variant", "latency_hardware"])
    num = groups.agg(n=("run_id", "count"), **{f"{m}_{stat}": (m, stat) for m in LATENCY_METRICS
                                                 for stat in ("mean", "std")}).reset_index()
    num = num.sort_values("variant", key=lambda col: col.map(study.variants.index), kind="stable")
    shown = pd.DataFrame({
        "Model": num["variant"].map(study.label), "Machine": num["latency_hardware"].replace("", fmt.DASH),
        "n": num["n"], "Inference (ms/image, batch 4)": _pm_cells(num, "latency_ms_per_image", 3),
        "Inference (ms, batch 1)": _pm_cells(num, "latency_ms_batch1", 3)})
    return num, shown


def deployment(study: Study):
    """What a device would see (orchestrator.training.export): ONNX file bytes, fp32 and int8 accuracy and the
    int8 drop, and ONNX Runtime latency (1 thread), beside the paper's size (parameters x 4 bytes)."""
    summary = study.summary
    num = summary[[c for c in summary.columns if c.startswith(("onnx_", "int8_", "ort_")) or c == "n_exported"]]
    num = num.assign(paper_size_mb=[paper_value(study, v, "size_mb") for v in summary.index])
    num.insert(0, "model", [study.label(v) for v in summary.index])
    shown = pd.DataFrame({
        "Model": num["model"], "n": num["n_exported"],
        "Paper size (MB)": num["paper_size_mb"].map(lambda x: fmt.num(x, 4)),
        "ONNX fp32 (KB)": _pm_cells(num, "onnx_bytes", 1, 1 / 1024),
        "ONNX int8 (KB)": _pm_cells(num, "int8_bytes", 1, 1 / 1024),
        "fp32 acc. (%)": _pm_cells(num, "onnx_val_accuracy", 2, 100.0),
        "int8 acc. (%)": _pm_cells(num, "int8_val_accuracy", 2, 100.0),
        "int8 drop (pp)": _pm_cells(num, "int8_drop_pp", 2),
        "ORT fp32 ms, batch 1": _pm_cells(num, "ort_latency_ms_batch1_fp32", 3),
        "ORT int8 ms, batch 1": _pm_cells(num, "ort_latency_ms_batch1_int8", 3),
        "ORT fp32 ms/image, batch 4": _pm_cells(num, "ort_latency_ms_per_image_fp32", 3),
        "ORT int8 ms/image, batch 4": _pm_cells(num, "ort_latency_ms_per_image_int8", 3)}, index=summary.index)
    return num, shown
