"""Study report: the paper's Tables 2 and 5 and Figures 6–10 as mean ± std over seeds, beside the paper.

    python -m orchestrator.report [--tracking-uri URI] [--experiment-name NAME] [--sweep ID] [--out DIR]
    python -m orchestrator.report --results DIR [--out OUT]

Reads one sweep from MLflow (parent run + child trial runs), or a folder of trial records, into one `Study`
(orchestrator.analysis.study); writes tables (Markdown, CSV, LaTeX: orchestrator.analysis.tables), PNG figures
(orchestrator.analysis.figures) and report.md to the output folder and prints the tables. A sweep's report is also logged
as artifacts of its parent run under `report/`. Failed or missing trials are never averaged in silently: n is
shown per variant and a variant with fewer finished seeds than requested is flagged in every table.
"""
import math
import sys
from pathlib import Path

import pandas as pd

from models import reference
from orchestrator.analysis import stats
from orchestrator.analysis import tables as fmt
from orchestrator.cli import ArgumentParser
from orchestrator.analysis.figures import (accuracy_vs_latency_figure, accuracy_vs_size_figure, curves_figure,
                                  int8_accuracy_vs_bytes_figure)
from orchestrator.names import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI
from orchestrator.analysis.study import (LATENCY_METRICS, ReportError, Study, list_sweeps, load_records, load_sweep,
                                unmixed_latencies)

ALPHA = 0.05  # significance level of the claims check


NOT_COMPARABLE = "not comparable"


def _yes_no_or_not_comparable(x) -> str:
    return x if x == NOT_COMPARABLE else fmt.yes_no(x)


def _seeds_text(row) -> str:
    return f"{row['n']}" + ("" if pd.isna(row["n_requested"]) else f"/{row['n_requested']}") + " seeds"


def _flag(row) -> str:
    return f"⚠ incomplete ({_seeds_text(row)})" if row["incomplete"] else ""


def _latency_flag(row) -> str:
    """Table 5's flag: incomplete, and latencies that are not averaged because several machines measured them."""
    mixed = f"⚠ latencies from {row['latency_machines']} machines: see latency by machine" \
        if row["latency_machines"] > 1 else ""
    return "; ".join(flag for flag in (_flag(row), mixed) if flag)


# -------------------------------------------------------------------------------------------------- tables
def table2(study: Study):
    summary = study.summary
    base = summary["size_mb"].get("base", math.nan)
    num = pd.DataFrame({
        "model": [study.label(v) for v in summary.index], "params": summary["params"], "size_mb": summary["size_mb"],
        "size_change_pct": 100.0 * (summary["size_mb"] - base) / base, "n": summary["n"],
        "n_requested": summary["n_requested"], "incomplete": summary["incomplete"]}, index=summary.index)
    shown = pd.DataFrame({
        "Model": num["model"], "Parameters": num["params"].map(lambda x: fmt.num(x, 0)),
        "Size (MB)": num["size_mb"].map(lambda x: fmt.num(x, 4)),
        "% change in size vs Base": [fmt.DASH if v == "base" else fmt.num(x, 2)
                                     for v, x in num["size_change_pct"].items()],
        "n": num["n"], "Flag": summary.apply(_flag, axis=1)})
    return num, shown


def table5(study: Study):
    summary = study.summary
    cols = ["val_accuracy_pct_mean", "val_accuracy_pct_std", "n", "latency_ms_per_image_mean",
            "latency_ms_per_image_std", "latency_ms_batch1_mean", "latency_ms_batch1_std", "size_mb", "params",
            "n_requested", "incomplete"]
    num = summary[cols].copy()
    num.insert(0, "model", [study.label(v) for v in summary.index])

    def mean_std(metric: str, digits: int) -> list[str]:
        return [fmt.pm(m, sd, digits) for m, sd in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])]
    shown = pd.DataFrame({
        "Model": num["model"], "Val. accuracy (%)": mean_std("val_accuracy_pct", 2), "n": num["n"],
        "Inference (ms/image, batch 4)": mean_std("latency_ms_per_image", 3),
        "Inference (ms, batch 1)": mean_std("latency_ms_batch1", 3),
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
        "n": num["n"],
        "Inference (ms/image, batch 4)": [fmt.pm(m, sd, 3) for m, sd in zip(num.latency_ms_per_image_mean,
                                                                           num.latency_ms_per_image_std)],
        "Inference (ms, batch 1)": [fmt.pm(m, sd, 3) for m, sd in zip(num.latency_ms_batch1_mean,
                                                                     num.latency_ms_batch1_std)]})
    return num, shown


def deployment(study: Study):
    """What a device would see (orchestrator.training.export): ONNX file bytes, fp32 and int8 accuracy and the int8 drop,
    and ONNX Runtime latency (1 thread), beside the paper's size (parameters x 4 bytes)."""
    summary = study.summary
    num = summary[[c for c in summary.columns if c.startswith(("onnx_", "int8_", "ort_")) or c == "n_exported"]]
    num = num.assign(paper_size_mb=[study.paper.loc[v, "size_mb"] if v in study.paper.index else math.nan
                                    for v in summary.index])
    num.insert(0, "model", [study.label(v) for v in summary.index])

    def cell(metric: str, digits: int, scale: float = 1.0) -> list[str]:
        return [fmt.pm(scale * m, scale * sd, digits) for m, sd in zip(num[f"{metric}_mean"], num[f"{metric}_std"])]
    shown = pd.DataFrame({
        "Model": num["model"], "n": num["n_exported"], "Paper size (MB)": num["paper_size_mb"].map(lambda x: fmt.num(x, 4)),
        "ONNX fp32 (KB)": cell("onnx_bytes", 1, 1 / 1024), "ONNX int8 (KB)": cell("int8_bytes", 1, 1 / 1024),
        "fp32 acc. (%)": cell("onnx_val_accuracy", 2, 100.0), "int8 acc. (%)": cell("int8_val_accuracy", 2, 100.0),
        "int8 drop (pp)": cell("int8_drop_pp", 2),
        "ORT fp32 ms, batch 1": cell("ort_latency_ms_batch1_fp32", 3),
        "ORT int8 ms, batch 1": cell("ort_latency_ms_batch1_int8", 3),
        "ORT fp32 ms/image, batch 4": cell("ort_latency_ms_per_image_fp32", 3),
        "ORT int8 ms/image, batch 4": cell("ort_latency_ms_per_image_int8", 3)}, index=summary.index)
    return num, shown


# (our column in the trials frame, paper column, label, digits)
_VS_PAPER = [("val_accuracy_pct", "val_accuracy_pct", "Val. accuracy (%)", 2),
             ("latency_ms_per_image", "latency_ms_per_image", "Inference (ms/image)", 3),
             ("size_mb", "size_mb", "Size (MB)", 4), ("param_count", "params", "Parameters", 0)]
_PAPER_PLACES = {("size_mb", v): int(d) for v, d in reference.size_mb_decimals().items()}


def _vs_paper_row(study: Study, finished: pd.DataFrame, variant: str, metric: tuple) -> dict:
    ours, theirs, name, digits = metric
    values = finished.loc[finished.variant == variant, ours].dropna().tolist()
    mean = sum(values) / len(values) if values else math.nan
    ci95_low, ci95_high = stats.mean_ci(values)
    paper = study.paper.loc[variant, theirs] if variant in study.paper.index else math.nan
    # Compare at the precision the paper printed: a deterministic quantity (size, params) has a zero-width
    # interval that would otherwise miss the paper's rounded value by a rounding error.
    places = _PAPER_PLACES.get((theirs, variant), digits)
    inside = (math.nan if pd.isna(ci95_low) or pd.isna(paper)
              else bool(round(ci95_low, places) <= paper <= round(ci95_high, places)))
    if ours == "val_accuracy_pct" and not study.comparable:
        inside = NOT_COMPARABLE  # another protocol: its accuracy says nothing about the paper's
    return {"variant": variant, "model": study.label(variant), "metric": ours, "metric_label": name,
            "digits": digits, "ours_mean": mean, "paper": paper, "difference": mean - paper,
            "ci95_low": ci95_low, "ci95_high": ci95_high, "paper_in_ci95": inside, "n": len(values),
            "flag": _flag(study.summary.loc[variant])}


def vs_paper(study: Study):
    finished = unmixed_latencies(study.finished).assign(val_accuracy_pct=100.0 * study.finished["final_val_accuracy"])
    num = pd.DataFrame([_vs_paper_row(study, finished, v, metric)
                        for metric in _VS_PAPER for v in study.summary.index])
    shown = pd.DataFrame({
        "Model": num["model"], "Metric": num["metric_label"],
        "Ours (mean)": [fmt.num(x, d) for x, d in zip(num.ours_mean, num.digits)],
        "Paper": [fmt.num(x, d) for x, d in zip(num.paper, num.digits)],
        "Difference": [fmt.DASH if pd.isna(x) else f"{x:+,.{d}f}" for x, d in zip(num.difference, num.digits)],
        "95% CI": [fmt.DASH if pd.isna(lo) else f"[{fmt.num(lo, d)}, {fmt.num(hi, d)}]"
                   for lo, hi, d in zip(num.ci95_low, num.ci95_high, num.digits)],
        "Paper in 95% CI": num["paper_in_ci95"].map(_yes_no_or_not_comparable), "n": num["n"],
        "Flag": num["flag"]})
    return num.drop(columns=["metric_label", "digits", "flag"]).assign(incomplete=num["flag"] != ""), shown


def _paper_accuracy(study: Study, variant: str) -> float:
    return study.paper.loc[variant, "val_accuracy_pct"] if variant in study.paper.index else math.nan


def _claim_row(study: Study, variant: str) -> dict:
    summary = study.summary
    welch = stats.welch_t_test(study.accuracies_pct(variant), study.accuracies_pct("base"))
    paper_difference = _paper_accuracy(study, variant) - _paper_accuracy(study, "base")
    if pd.isna(welch.p_value):
        verdict = "n/a (needs ≥2 runs per group)"
    elif welch.p_value >= ALPHA:
        verdict = "not significant"
    else:
        verdict = "agrees with paper" if (welch.difference > 0) == (paper_difference > 0) else "contradicts paper"
        verdict = verdict if study.comparable else f"significant; {NOT_COMPARABLE} with the paper"
    return {"variant": variant, "model": study.label(variant),
            "ours_mean_pct": summary.loc[variant, "val_accuracy_pct_mean"],
            "base_mean_pct": summary["val_accuracy_pct_mean"].get("base", math.nan),
            "difference_pp": welch.difference, "t": welch.t, "df": welch.df, "p_value": welch.p_value,
            "significant": math.nan if pd.isna(welch.p_value) else bool(welch.p_value < ALPHA),
            "paper_difference_pp": paper_difference, "verdict": verdict, "n": summary.loc[variant, "n"],
            "n_base": summary["n"].get("base", 0), "flag": _flag(summary.loc[variant])}


CLAIM_COLUMNS = ["variant", "model", "ours_mean_pct", "base_mean_pct", "difference_pp", "t", "df", "p_value",
                 "significant", "paper_difference_pp", "verdict", "n", "n_base", "flag"]


def claims(study: Study):
    num = pd.DataFrame([_claim_row(study, v) for v in study.summary.index if v != "base"], columns=CLAIM_COLUMNS)
    signed = lambda x, d=2: fmt.DASH if pd.isna(x) else f"{x:+.{d}f}"  # noqa: E731
    shown = pd.DataFrame({
        "Model": num["model"], "Δ acc. vs Base (pp)": num["difference_pp"].map(signed),
        "Welch t": num["t"].map(signed), "df": num["df"].map(lambda x: fmt.num(x, 1)),
        "p": num["p_value"].map(lambda x: fmt.DASH if pd.isna(x) else f"{x:.3g}"),
        f"Significant at {ALPHA}": num["significant"].map(fmt.yes_no),
        "Paper Δ (pp)": num["paper_difference_pp"].map(signed), "Verdict": num["verdict"],
        "n": num["n"], "n Base": num["n_base"], "Flag": num["flag"]})
    return num.drop(columns=["flag"]).assign(incomplete=num["flag"] != ""), shown


def ranking(study: Study):
    summary = study.summary
    ours = summary["val_accuracy_pct_mean"]
    theirs = pd.Series({v: _paper_accuracy(study, v) for v in summary.index})
    has_both = ours.notna() & theirs.notna()  # rank among the same set of variants on both sides
    num = pd.DataFrame({
        "model": [study.label(v) for v in summary.index], "ours_mean_pct": ours,
        "ours_rank": ours[has_both].rank(ascending=False, method="min"), "paper_pct": theirs,
        "paper_rank": theirs[has_both].rank(ascending=False, method="min"), "n": summary["n"],
        "incomplete": summary["incomplete"]}, index=summary.index)
    num["same_rank"] = (num["ours_rank"] == num["paper_rank"]).where(has_both)
    if not study.comparable:
        num["same_rank"] = num["same_rank"].astype(object).where(num["same_rank"].isna(), NOT_COMPARABLE)
    num = num.sort_values(["ours_rank", "paper_rank"], na_position="last")
    # The table shows competition ranks (method="min": 1, 2, 2, 4), which read naturally. rho is computed on the
    # accuracies by scipy's spearmanr, which gives ties their average rank: Spearman's definition. (A Pearson
    # correlation of the min-ranks equals it only without ties.)
    rho = stats.spearman_rho(ours[has_both], theirs[has_both])
    shown = pd.DataFrame({
        "Model": num["model"], "Our rank": num["ours_rank"].map(lambda x: fmt.num(x, 0)),
        "Ours (%)": num["ours_mean_pct"].map(lambda x: fmt.num(x, 2)),
        "Paper rank": num["paper_rank"].map(lambda x: fmt.num(x, 0)),
        "Paper (%)": num["paper_pct"].map(lambda x: fmt.num(x, 2)), "Same rank": num["same_rank"].map(_yes_no_or_not_comparable),
        "n": num["n"], "Flag": summary.loc[num.index].apply(_flag, axis=1)})
    return num, shown, rho


# -------------------------------------------------------------------------------------------------- report
def _md_list(df: pd.DataFrame, empty: str) -> str:
    return fmt.to_markdown(df) if len(df) else empty


def _problems_md(study: Study) -> list[str]:
    """The failed, missing and superseded trials, so nothing goes missing from the averages silently."""
    not_ok = study.trials[study.trials.status != "FINISHED"].sort_values(["variant", "seed"])
    have = set(zip(study.finished.variant, study.finished.seed))
    missing = pd.DataFrame([(study.label(v), ", ".join(str(k) for k in study.requested_seeds if (v, k) not in have))
                            for v in study.summary.index], columns=["Model", "Missing seeds"])
    missing = missing[missing["Missing seeds"] != ""]
    failed = pd.DataFrame({"Model": [study.label(v) if isinstance(v, str) else "?" for v in not_ok.variant],
                           "Seed": not_ok.seed.astype("Int64"), "Run": not_ok.run_name, "Run id": not_ok.run_id,
                           "Status": not_ok.status, "Failure reason": not_ok.failure_reason.replace("", fmt.DASH)})
    md = ["## Failed trials", "", "Failed or unfinished runs are listed here and never averaged.", "",
          _md_list(failed, "None."), "", "## Missing trials", "",
          "Requested (variant, seed) pairs with no finished run.", "", _md_list(missing, "None."), ""]
    if len(study.superseded):
        md += ["## Superseded runs", "", "Earlier finished runs of a (variant, seed) that was run again; "
               "only the latest is averaged.", "",
               fmt.to_markdown(study.superseded[["variant", "seed", "run_name", "run_id"]]), ""]
    return md


def _report_md(study: Study, tables, figures, rho) -> str:
    """report.md: what was run, how to read it, every table, the figures, and what is missing or failed."""
    summary = study.summary
    n_not_ok = int((study.trials.status != "FINISHED").sum())
    incomplete = [f"{study.label(v)} ({_seeds_text(summary.loc[v])})" for v in summary.index[summary["incomplete"]]]
    machines = sorted(m for m in study.finished["latency_hardware"].unique() if m)
    md = [f"# Report: {study.title}", "", *study.provenance,
          f"Latency measured on: {'; '.join(machines) or fmt.DASH}.",
          f"Requested variants: {', '.join(study.requested_variants) or fmt.DASH}; seeds: "
          f"{', '.join(map(str, study.requested_seeds)) or fmt.DASH}. Finished trials averaged: "
          f"{len(study.finished)}; failed or unfinished: {n_not_ok}.", ""]
    if not study.comparable:
        md += [f"> ⚠ **Not the paper's protocol**: {'; '.join(study.protocol_differences())}. Accuracies are "
               f"not comparable with the paper's: the comparison, the claims check and the ranking mark them "
               f"*{NOT_COMPARABLE}*.", ""]
    if incomplete:
        md += [f"> ⚠ **Incomplete variants** (fewer finished seeds than requested): {', '.join(incomplete)}. "
               "See *Missing trials* and *Failed trials* below.", ""]
    md += ["How to read: values are the mean ± sample standard deviation (ddof = 1) over seeds; n is the number "
           "of finished trials averaged. Accuracy is the validation accuracy after the last epoch. The 95% "
           "interval is the Student t-interval of the mean (needs n ≥ 2). The claims check compares each "
           f"variant with Base by Welch's two-sided t-test at α = {ALPHA}. The paper ran one seed per "
           "variant on its own hardware, so its values have no spread and its latencies are not directly "
           f"comparable with ours. {fmt.DASH} marks a value that is not available (an interval or a test needs "
           "n ≥ 2 per group).", ""]
    for name, title, _, shown in tables:
        md += [f"## {title}", "", fmt.to_markdown(shown), "",
               f"Files: [{name}.csv]({name}.csv) · [{name}.tex]({name}.tex)", ""]
        if name == "ranking":
            md += [f"Spearman rank correlation, ours vs paper: {fmt.num(rho, 3)}.", ""]
    md += ["## Figures", ""] + [f"### {cap}\n\n![{cap}]({f})\n" for f, cap in figures]
    md += _problems_md(study)
    md += ["Per-trial values: [trials.csv](trials.csv); per-epoch mean/std: [curves.csv](curves.csv).", ""]
    return "\n".join(md)


FIGURES = [("loss_curves.png", "Training and validation loss per epoch (Figures 6 and 8)"),
           ("accuracy_curves.png", "Training and validation accuracy per epoch (Figures 7 and 9)"),
           ("accuracy_vs_latency.png", "Accuracy vs inference time (Figure 10)"),
           ("accuracy_vs_size.png", "Accuracy vs size")]


def _write_figures(study: Study, out: Path) -> list[tuple[str, str]]:
    figures = FIGURES
    if not study.curves.empty:
        curves_figure(study.curves, study.variants, study.paper, "loss", out / "loss_curves.png")
        curves_figure(study.curves, study.variants, study.paper, "accuracy", out / "accuracy_curves.png")
    else:
        figures = figures[2:]
    accuracy_vs_latency_figure(study.summary, study.paper, out / "accuracy_vs_latency.png")
    accuracy_vs_size_figure(study.summary, study.paper, out / "accuracy_vs_size.png")
    if study.summary["n_exported"].fillna(0).sum() > 0:
        int8_accuracy_vs_bytes_figure(study.summary, study.paper, out / "int8_accuracy_vs_bytes.png")
        figures = [*figures, ("int8_accuracy_vs_bytes.png", "int8 accuracy vs int8 file size (deployment)")]
    return figures


def write_report(study: Study, out: Path) -> Path:
    """Every table (Markdown, CSV, LaTeX), the figures and report.md of the study into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    rank_num, rank_shown, rho = ranking(study)
    tables = [
        ("table2", "Table 2: parameters and size", *table2(study)),
        ("table5", "Table 5: model comparison (mean ± std over seeds)", *table5(study)),
        ("vs_paper", "Ours against the paper (95% t-interval over seeds)", *vs_paper(study)),
        ("claims", f"Claims check: accuracy vs Base, Welch's t-test (α = {ALPHA})", *claims(study)),
        ("ranking", "Accuracy ranking, ours vs the paper", rank_num, rank_shown),
    ]
    if study.summary["n_exported"].fillna(0).sum() > 0:
        tables.append(("deployment", "Deployment: ONNX and int8 files, accuracy and ONNX Runtime latency",
                       *deployment(study)))
    if study.finished["latency_hardware"].nunique() > 1:
        tables.append(("latency_by_machine", "Inference time by machine (never averaged across machines)",
                       *latency_by_machine(study)))
    for name, title, num, shown in tables:
        num.to_csv(out / f"{name}.csv", index=name in ("table2", "table5", "ranking"),
                   index_label="variant", float_format="%.10g")
        (out / f"{name}.md").write_text(f"**{title}**\n\n{fmt.to_markdown(shown)}\n")
        (out / f"{name}.tex").write_text(fmt.to_latex(shown, title, name))
        print(f"\n{title}\n{fmt.to_markdown(shown)}")
    study.curves.to_csv(out / "curves.csv", index=False, float_format="%.10g")
    study.trials.drop(columns=["start_time"]).sort_values(["variant", "seed"]).to_csv(out / "trials.csv", index=False)
    figures = _write_figures(study, out)
    (out / "report.md").write_text(_report_md(study, tables, figures, rho))
    return out


def build_report(tracking_uri: str, experiment_name: str, sweep_id: str | None = None,
                 out_dir: str | Path | None = None) -> Path:
    """Write the report of one sweep (default: the latest finished one) and log it to the sweep's parent run."""
    study, parent = load_sweep(tracking_uri, experiment_name, sweep_id)
    out = Path(out_dir) if out_dir is not None else Path("reports") / parent.data.tags.get("sweep_id", str(sweep_id))
    write_report(study, out)
    from mlflow import MlflowClient
    MlflowClient(tracking_uri).log_artifacts(parent.info.run_id, str(out), artifact_path="report")
    return out


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow tracking URI (default %(default)s)")
    p.add_argument("--experiment-name", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default %(default)s)")
    p.add_argument("--sweep", default=None, help="sweep id (default: the latest finished sweep)")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="build the report from the trial records in DIR instead of an MLflow store")
    p.add_argument("--out", default=None, help="output folder (default reports/<sweep id>/, or DIR with --results)")
    p.add_argument("--list", action="store_true", help="list the sweeps in the store, one line each, and exit")
    args = p.parse_args(argv)
    try:
        out = _run(args)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if out is not None:
        logged = "" if args.results else " (also logged to the sweep's parent run under report/)"
        print(f"\nreport written to {out}/report.md{logged}")
    return 0


def _run(args) -> Path | None:
    """main's work; bad input (an output folder that cannot be one, a tracking URI that is not one, a server that
    does not answer, any refusal of the store) raises ReportError with one line."""
    from mlflow.exceptions import MlflowException

    from orchestrator.cli import directory_problem
    from orchestrator.sweep.tracking import TrackingError, check_readable
    flag, out_dir = ("--out", args.out) if args.out else ("--results", args.results)
    problem = directory_problem(out_dir) if out_dir and not args.list else None
    if problem:
        raise ReportError(f"{flag} {out_dir} {problem}: pass a writable directory")
    if args.results:
        return write_report(load_records(args.results), Path(args.out or args.results))
    try:
        check_readable(args.tracking_uri)  # in seconds: MLflow's client would retry a dead server for minutes
        if args.list:
            print("\n".join(list_sweeps(args.tracking_uri, args.experiment_name)) or "no sweeps yet")
            return None
        return build_report(args.tracking_uri, args.experiment_name, args.sweep, args.out)
    except (TrackingError, MlflowException) as e:
        raise ReportError(str(e).strip().splitlines()[0]) from None
