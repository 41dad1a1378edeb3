"""Study report: the paper's Tables 2 and 5 and Figures 6–10 as mean ± std over seeds, beside the paper.

    python -m orchestrator.report [--tracking-uri URI] [--experiment-name NAME] [--sweep ID] [--out DIR]
    python -m orchestrator.report --results DIR [--out OUT]

Reads one sweep from MLflow (parent run + child trial runs), or a folder of trial records, into one `Study`;
writes every table (Markdown, CSV, LaTeX), the PNG figures and report.md to the output folder, prints the tables,
and logs a sweep's report to its parent run under `report/`. A records folder with a one-pass latency table
(`python -m bench.published`) has its latencies from that table. Failed or missing trials are never averaged in
silently: n is shown per variant and a variant with fewer finished seeds than requested is flagged in every table.
"""
import shutil
import sys
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from orchestrator.analysis import latency_table
from orchestrator.analysis import tables as fmt
from orchestrator.analysis.claims import claims, verdict_lines
from orchestrator.analysis.comparisons import ALPHA, vs_paper
from orchestrator.analysis.discoveries import discoveries, goal_lines, own_variants, references
from orchestrator.analysis.figures import (accuracy_vs_latency_figure, accuracy_vs_size_figure, curves_figure,
                                           int8_accuracy_vs_bytes_figure, ranking_stability_figure)
from orchestrator.analysis.paper_tables import deployment, latency_by_machine, table2, table5
from orchestrator.analysis.ranking import MIN_SEEDS, ranking, ranking_stability
from orchestrator.analysis.study import ReportError, Study, list_sweeps, load_records, load_sweep
from orchestrator.cli import ArgumentParser, directory_problem
from orchestrator.names import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI
from orchestrator.sweep.tracking import TrackingError, check_readable


def _problems_md(study: Study) -> list[str]:
    """The failed, missing and superseded trials, so nothing goes missing from the averages silently."""
    not_ok = study.trials[study.trials.status != "FINISHED"].sort_values(["variant", "seed"])
    have = set(zip(study.finished.variant, study.finished.seed))
    missing = pd.DataFrame([(study.label(v), ", ".join(str(k) for k in study.seeds_requested(v)
                                                        if (v, k) not in have))
                            for v in study.summary.index], columns=["Model", "Missing seeds"])
    missing = missing[missing["Missing seeds"] != ""]
    failed = pd.DataFrame({"Model": [study.label(v) if isinstance(v, str) else "?" for v in not_ok.variant],
                           "Seed": not_ok.seed.astype("Int64"), "Run": not_ok.run_name, "Run id": not_ok.run_id,
                           "Status": not_ok.status, "Failure reason": not_ok.failure_reason.replace("", fmt.DASH)})
    md = ["## Failed trials", "", "Failed or unfinished runs are listed here and never averaged.", "",
          fmt.to_markdown(failed) if len(failed) else "None.", "", "## Missing trials", "",
          "Requested (variant, seed) pairs with no finished run.", "",
          fmt.to_markdown(missing) if len(missing) else "None.", ""]
    if len(study.superseded):
        md += ["## Superseded runs", "", "Earlier finished runs of a (variant, seed) that was run again; "
               "only the latest is averaged.", "",
               fmt.to_markdown(study.superseded[["variant", "seed", "run_name", "run_id"]]), ""]
    return md


HOW_TO_READ = ("How to read: values are the mean ± sample standard deviation (ddof = 1) over seeds; n is the number "
               "of finished trials averaged. Accuracy is the validation accuracy after the last epoch. The 95% "
               "interval is the Student t-interval of the mean (needs n ≥ 2); Table 5 says whether the paper's value "
               "lies inside it. The claims check compares each variant with Base by Welch's two-sided t-test, with "
               f"Holm's correction over the comparisons tested, at α = {ALPHA}; the seed spread is the pooled "
               "standard deviation of one run. The paper ran one seed per variant on its own hardware, so its values "
               f"have no spread and its latencies are not directly comparable with ours. {fmt.DASH} marks a value "
               "that is not available (an interval or a test needs n ≥ 2 per group).")


def _seeds_text(study: Study) -> str:
    """The seeds requested, per group of variants where they differ ("0, 1, 2 (rank1-…); 0, …, 4 (Base, …)")."""
    groups: dict[tuple, list[str]] = {}
    for v in study.variants:
        groups.setdefault(tuple(study.seeds_requested(v)), []).append(study.label(v))
    if len(groups) <= 1:
        return ", ".join(map(str, study.requested_seeds)) or fmt.DASH
    return "; ".join(f"{', '.join(map(str, seeds)) or fmt.DASH} ({', '.join(labels)})"
                     for seeds, labels in groups.items())


def _report_md(study: Study, tables, figures) -> str:
    """report.md: what was run, how to read it, every table, the figures, and what is missing or failed."""
    summary = study.summary
    incomplete = [f"{study.label(v)} ({fmt.seeds_text(summary.loc[v])})" for v in summary.index[summary["incomplete"]]]
    machines = "; ".join(sorted(m for m in study.finished["latency_hardware"].unique() if m))
    latency = (f"Latency (Table 5, the deployment table, the accuracy-vs-latency figure): {study.latency_source}; "
               "see [latency.md](latency.md). The trials' own latencies are not used." if study.latency_source
               else f"Latency measured by each trial, on: {machines or fmt.DASH}.")
    md = [f"# Report: {study.title}", "", *study.provenance, latency,
          f"Requested variants: {', '.join(study.requested_variants) or fmt.DASH}; seeds: "
          f"{_seeds_text(study)}. Finished trials averaged: "
          f"{len(study.finished)}; failed or unfinished: {int((study.trials.status != 'FINISHED').sum())}.", ""]
    if not study.comparable:
        md += [f"> ⚠ **Not the paper's protocol**: {'; '.join(study.protocol_differences())}. Accuracies are "
               f"not comparable with the paper's: the comparison, the claims check and the ranking mark them "
               f"*{fmt.NOT_COMPARABLE}*.", ""]
    if incomplete:
        md += [f"> ⚠ **Incomplete variants** (fewer finished seeds than requested): {', '.join(incomplete)}. "
               "See *Missing trials* and *Failed trials* below.", ""]
    md += [HOW_TO_READ, ""]
    for name, title, _, shown, notes in tables:
        md += [f"## {title}", "", fmt.to_markdown(shown), "",
               f"Files: [{name}.csv]({name}.csv) · [{name}.tex]({name}.tex)", "", *notes]
    md += ["## Figures", ""] + [f"### {cap}\n\n![{cap}]({f})\n" for f, cap in figures]
    md += _problems_md(study)
    md += ["Per-trial values: [trials.csv](trials.csv); per-epoch mean/std: [curves.csv](curves.csv).", ""]
    return "\n".join(md)


def figure_caveat(study: Study) -> str | None:
    """The warning every figure's title carries when the study is not under the paper's protocol."""
    return None if study.comparable else f"⚠ not the paper's protocol: {'; '.join(study.protocol_differences())}"


def _write_figures(study: Study, out: Path, stability: pd.DataFrame, stable_seeds: int) -> list[tuple[str, str]]:
    """The figures the study has data for, drawn into `out`; returns their (file name, caption)."""
    figures, caveat = [], figure_caveat(study)
    if not study.curves.empty:
        for kind, caption in (("loss", "Training and validation loss per epoch (Figures 6 and 8)"),
                              ("accuracy", "Training and validation accuracy per epoch (Figures 7 and 9)")):
            curves_figure(study.curves, study.variants, study.paper, kind, out / f"{kind}_curves.png", caveat)
            figures.append((f"{kind}_curves.png", caption))
    machines = sorted(m for m in study.finished["latency_hardware"].unique() if m)
    where = f"one pass on {'; '.join(machines)}" if study.latency_source else "each trial on its own machine"
    accuracy_vs_latency_figure(study.summary, study.paper, out / "accuracy_vs_latency.png", caveat, where)
    accuracy_vs_size_figure(study.summary, study.paper, out / "accuracy_vs_size.png", caveat)
    figures += [("accuracy_vs_latency.png", "Accuracy vs inference time (Figure 10)"),
                ("accuracy_vs_size.png", "Accuracy vs size and parameters")]
    if study.summary["n_exported"].fillna(0).sum() > 0:
        int8_accuracy_vs_bytes_figure(study.summary, study.paper, out / "int8_accuracy_vs_bytes.png", caveat)
        figures.append(("int8_accuracy_vs_bytes.png", "int8 accuracy vs int8 file size (deployment)"))
    if stable_seeds >= MIN_SEEDS:
        ranking_stability_figure(stability, out / "ranking_stability.png", caveat)
        figures.append(("ranking_stability.png", "Ranking stability: each variant's rank within each seed"))
    return figures


def _tables(study: Study) -> tuple[list, pd.DataFrame, int]:
    """Every table as (file name, title, num, shown, the lines report.md says under it); and the ranking
    stability's num and number of seeds compared, for its figure."""
    claims_num, claims_shown = claims(study)
    rank_num, rank_shown, rho = ranking(study)
    stable_num, stable_shown, k = ranking_stability(study)
    stable_note = (f"Stability needs at least {MIN_SEEDS} seeds that every variant finished; this study has {k}."
                   if k < MIN_SEEDS else f"Ranks within each of the {k} seeds that every variant finished; *Holds "
                   "its rank*: in how many of them the variant has its rank in the mean ranking.")
    latency = "; latency: one machine, one pass, see latency.md" if study.latency_source else ""
    tables = [
        ("table2", "Table 2: parameters and size", *table2(study), []),
        ("table5", f"Table 5: model comparison (mean ± std over seeds, 95% interval{latency})", *table5(study), []),
        ("vs_paper", "Ours against the paper (95% t-interval over seeds)", *vs_paper(study), []),
        ("claims", f"Claims check: accuracy vs Base, Welch's t-test, Holm-corrected (α = {ALPHA})", claims_num,
         claims_shown, verdict_lines(claims_num)),
        ("ranking", "Accuracy ranking, ours vs the paper", rank_num, rank_shown,
         [f"Spearman rank correlation, ours vs paper: {fmt.num(rho, 3)}.", ""]),
        ("ranking_stability", "Ranking stability across seeds", stable_num, stable_shown, [stable_note, ""]),
    ]
    if own_variants(study) and references(study):
        found_num, found_shown = discoveries(study)
        tables.insert(4, ("discoveries", "Own architectures against Base, V6 and Alpha (accuracy, Welch's t-test; "
                          "Holm over this table)", found_num, found_shown, goal_lines(found_num)))
    if study.summary["n_exported"].fillna(0).sum() > 0:
        tables.append(("deployment", "Deployment: ONNX and int8 files, accuracy and ONNX Runtime latency"
                       + (f" ({latency[2:]})" if latency else ""), *deployment(study), []))
    if study.finished["latency_hardware"].nunique() > 1:
        tables.append(("latency_by_machine", "Inference time by machine (never averaged across machines)",
                       *latency_by_machine(study), []))
    return tables, stable_num, k


def _copy_latency_table(study: Study, out: Path) -> None:
    """The one-pass latency table beside a report written elsewhere than its records, so report.md's link holds."""
    if study.latency_dir is None or out.resolve() == study.latency_dir.resolve():
        return
    for name in (latency_table.CSV_NAME, latency_table.MD_NAME):
        if (study.latency_dir / name).is_file():
            shutil.copyfile(study.latency_dir / name, out / name)


INDEXED_TABLES = ("table2", "table5", "ranking", "ranking_stability")  # their CSV rows are keyed by variant


def write_report(study: Study, out: Path) -> Path:
    """Every table (Markdown, CSV, LaTeX), the figures and report.md of the study into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tables, stability, stable_seeds = _tables(study)
    for name, title, num, shown, _ in tables:
        num.to_csv(out / f"{name}.csv", index=name in INDEXED_TABLES, index_label="variant", float_format="%.10g")
        (out / f"{name}.md").write_text(f"**{title}**\n\n{fmt.to_markdown(shown)}\n")
        (out / f"{name}.tex").write_text(fmt.to_latex(shown, title, name))
        print(f"\n{title}\n{fmt.to_markdown(shown)}")
    study.curves.to_csv(out / "curves.csv", index=False, float_format="%.10g")
    study.trials.drop(columns=["start_time"]).sort_values(["variant", "seed"]).to_csv(out / "trials.csv", index=False)
    figures = _write_figures(study, out, stability, stable_seeds)
    _copy_latency_table(study, out)
    (out / "report.md").write_text(_report_md(study, tables, figures))
    return out


def build_report(tracking_uri: str, experiment_name: str, sweep_id: str | None = None,
                 out_dir: str | Path | None = None) -> Path:
    """Write the report of one sweep (default: the latest finished one) and log it to the sweep's parent run."""
    study, parent = load_sweep(tracking_uri, experiment_name, sweep_id)
    return publish_report(tracking_uri, study, parent, out_dir)


def publish_report(tracking_uri: str, study, parent, out_dir: str | Path | None = None) -> Path:
    """Write the report of a loaded sweep (load_sweep's study and parent run) and log it to that parent run."""
    sweep_id = parent.data.tags.get("sweep_id", parent.info.run_id)
    out = Path(out_dir) if out_dir is not None else Path("reports") / sweep_id
    write_report(study, out)
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
