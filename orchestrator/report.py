"""Sweep report: the paper's Tables 2 and 5 and Figures 6–10 as mean ± std over seeds, beside the paper.

    python -m orchestrator.report [--tracking-uri URI] [--experiment-name NAME] [--sweep ID] [--out DIR]

Reads one sweep from MLflow (parent run + child trial runs; README: "What each trial records in MLflow"),
aggregates the finished trials per variant with pandas, writes tables (Markdown, CSV, LaTeX: orchestrator.tables),
PNG figures (orchestrator.figures) and report.md to the output folder, prints the tables, and logs every file
as an artifact of the sweep's parent run under `report/`. Failed or missing trials are never averaged in
silently: n is shown per variant and a variant with fewer finished seeds than requested is flagged in every table.
"""
import math
import sys
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from models import reference
from models.reference import label
from orchestrator import stats
from orchestrator import tables as fmt
from orchestrator.config import ArgumentParser
from orchestrator.figures import accuracy_vs_latency_figure, accuracy_vs_size_figure, curves_figure
from orchestrator.tracking import all_pages

DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
DEFAULT_EXPERIMENT = "resnet-revisited"
ALPHA = 0.05  # significance level of the claims check
# What the report reads of what every trial logs (orchestrator.train.EPOCH_METRICS / FINAL_METRICS; a test
# keeps these a subset of those, so a renamed metric cannot silently empty a table).
CURVE_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
TABLE_METRICS = ("final_val_accuracy", "latency_ms_per_image", "latency_ms_batch1", "size_mb", "param_count")


class ReportError(ValueError):
    """Bad input to the report (no such experiment / sweep, no runs); the message names the fix."""


# ----------------------------------------------------------------------------------------------- reading


def _client(tracking_uri: str) -> MlflowClient:
    # A read-only report must not create an empty database as a side effect of a typo'd path.
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise ReportError(f"no MLflow database at {db}; run a sweep first (python -m orchestrator.run) "
                              f"or pass --tracking-uri pointing at an existing store")
    return MlflowClient(tracking_uri=tracking_uri)


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str, order_by=None) -> list:
    return all_pages(client.search_runs, [experiment_id], filter_string, max_results=1000, order_by=order_by)


def _find_sweep(client: MlflowClient, tracking_uri: str, experiment_name: str, sweep_id: str | None):
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        raise ReportError(f"no MLflow experiment named {experiment_name!r} at {tracking_uri}; "
                          f"pass --experiment-name / --tracking-uri of the store the sweep wrote to")
    if sweep_id is not None:
        if "'" in sweep_id:
            raise ReportError(f"sweep id {sweep_id!r} contains a quote; pass the id shown in the parent run name")
        runs = _search_all(client, exp.experiment_id, f"tags.kind = 'sweep' and tags.sweep_id = '{sweep_id}'",
                           ["attributes.start_time DESC"])
        if not runs:
            raise ReportError(f"no sweep {sweep_id!r} in experiment {experiment_name!r}; pass a sweep id from a "
                              f"parent run named sweep-<id>, or omit --sweep for the latest finished sweep")
    else:
        runs = _search_all(client, exp.experiment_id, "tags.kind = 'sweep' and attributes.status = 'FINISHED'",
                           ["attributes.start_time DESC"])
        if not runs:
            raise ReportError(f"no finished sweep in experiment {experiment_name!r}; run one with "
                              f"python -m orchestrator.run, or pass --sweep <id> for an unfinished one")
    return runs[0]


def _int_list(tag: str | None) -> list[int]:
    try:
        return [int(s) for s in (tag or "").split(",") if s.strip()]
    except ValueError:
        return []


def _load_trials(client: MlflowClient, parent) -> pd.DataFrame:
    """One row per child run: identity, status, failure reason and the final metrics."""
    children = _search_all(client, parent.info.experiment_id,
                           f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    rows = []
    for run in children:
        tags, metrics = run.data.tags, run.data.metrics
        seed = tags.get("seed", run.data.params.get("seed"))
        rows.append({
            "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "start_time": run.info.start_time, "variant": tags.get("variant", run.data.params.get("variant")),
            "seed": int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else None,
            "failure_reason": tags.get("failure_reason", ""),
            **{m: metrics.get(m, math.nan) for m in TABLE_METRICS},
        })
    return pd.DataFrame(rows, columns=["run_id", "run_name", "status", "start_time", "variant", "seed",
                                       "failure_reason", *TABLE_METRICS])


def _load_history(client: MlflowClient, trials: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch metrics of the given trials, long format: variant, seed, run_id, metric, epoch, value."""
    rows = [
        (t.variant, t.seed, t.run_id, key, m.step, m.value)
        for t in trials.itertuples() for key in CURVE_METRICS
        for m in client.get_metric_history(t.run_id, key)
    ]
    return pd.DataFrame(rows, columns=["variant", "seed", "run_id", "metric", "epoch", "value"])


# ------------------------------------------------------------------------------------------- aggregating


def _variant_order(requested: list[str], seen: list[str], paper: pd.DataFrame) -> list[str]:
    """Requested and observed variants, in the paper's order; unknown names after, alphabetically."""
    names = set(requested) | set(seen)
    return [v for v in paper.index if v in names] + sorted(names - set(paper.index))


def _summarize(ok: pd.DataFrame, variants: list[str], n_requested: int | None) -> pd.DataFrame:
    """Per-variant statistics of the finished trials (sample std, ddof=1), one row per variant."""
    ok = ok.assign(val_accuracy_pct=100.0 * ok["final_val_accuracy"])
    agg = ok.groupby("variant").agg(
        n=("run_id", "count"),
        val_accuracy_pct_mean=("val_accuracy_pct", "mean"), val_accuracy_pct_std=("val_accuracy_pct", "std"),
        latency_ms_per_image_mean=("latency_ms_per_image", "mean"),
        latency_ms_per_image_std=("latency_ms_per_image", "std"),
        latency_ms_batch1_mean=("latency_ms_batch1", "mean"), latency_ms_batch1_std=("latency_ms_batch1", "std"),
        size_mb=("size_mb", "mean"), params=("param_count", "median"),
    ).reindex(variants)
    agg["n"] = agg["n"].fillna(0).astype(int)
    agg["n_requested"] = n_requested if n_requested is not None else pd.NA
    agg["incomplete"] = agg["n"] < n_requested if n_requested is not None else agg["n"] == 0
    return agg


def _seeds_text(row) -> str:
    return f"{row['n']}" + ("" if pd.isna(row["n_requested"]) else f"/{row['n_requested']}") + " seeds"


def _flag(row) -> str:
    return f"⚠ incomplete ({_seeds_text(row)})" if row["incomplete"] else ""


# -------------------------------------------------------------------------------------------------- tables


def _table2(s: pd.DataFrame, paper: pd.DataFrame):
    base = s["size_mb"].get("base", math.nan)
    num = pd.DataFrame({
        "model": [label(v, paper) for v in s.index], "params": s["params"], "size_mb": s["size_mb"],
        "size_change_pct": 100.0 * (s["size_mb"] - base) / base, "n": s["n"], "n_requested": s["n_requested"],
        "incomplete": s["incomplete"]}, index=s.index)
    shown = pd.DataFrame({
        "Model": num["model"], "Parameters": num["params"].map(lambda x: fmt.num(x, 0)),
        "Size (MB)": num["size_mb"].map(lambda x: fmt.num(x, 4)),
        "% change in size vs Base": [fmt.DASH if v == "base" else fmt.num(x, 2)
                                     for v, x in num["size_change_pct"].items()],
        "n": num["n"], "Flag": s.apply(_flag, axis=1)})
    return num, shown


def _table5(s: pd.DataFrame, paper: pd.DataFrame):
    cols = ["val_accuracy_pct_mean", "val_accuracy_pct_std", "n", "latency_ms_per_image_mean",
            "latency_ms_per_image_std", "latency_ms_batch1_mean", "latency_ms_batch1_std", "size_mb", "params",
            "n_requested", "incomplete"]
    num = s[cols].copy()
    num.insert(0, "model", [label(v, paper) for v in s.index])
    shown = pd.DataFrame({
        "Model": num["model"],
        "Val. accuracy (%)": [fmt.pm(m, sd, 2) for m, sd in zip(s.val_accuracy_pct_mean, s.val_accuracy_pct_std)],
        "n": num["n"],
        "Inference (ms/image, batch 4)": [fmt.pm(m, sd, 3) for m, sd in
                                          zip(s.latency_ms_per_image_mean, s.latency_ms_per_image_std)],
        "Inference (ms, batch 1)": [fmt.pm(m, sd, 3) for m, sd in
                                    zip(s.latency_ms_batch1_mean, s.latency_ms_batch1_std)],
        "Size (MB)": num["size_mb"].map(lambda x: fmt.num(x, 4)),
        "Parameters": num["params"].map(lambda x: fmt.num(x, 0)),
        "Flag": s.apply(_flag, axis=1)})
    return num, shown


# (our column in the trials frame, paper column, label, digits)
_VS_PAPER = [("val_accuracy_pct", "val_accuracy_pct", "Val. accuracy (%)", 2),
             ("latency_ms_per_image", "latency_ms_per_image", "Inference (ms/image)", 3),
             ("size_mb", "size_mb", "Size (MB)", 4), ("param_count", "params", "Parameters", 0)]


_PAPER_PLACES = {("size_mb", v): int(d) for v, d in reference.size_mb_decimals().items()}


def _vs_paper(ok: pd.DataFrame, s: pd.DataFrame, paper: pd.DataFrame):
    rows = []
    for ours, theirs, name, digits in _VS_PAPER:
        for v in s.index:
            values = ok.loc[ok.variant == v, ours].dropna().tolist()
            mean = sum(values) / len(values) if values else math.nan
            lo, hi = stats.mean_ci(values)
            ref = paper.loc[v, theirs] if v in paper.index else math.nan
            # Compare at the precision the paper printed: a deterministic quantity (size, params) has a
            # zero-width interval that would otherwise miss the paper's rounded value by a rounding error.
            places = _PAPER_PLACES.get((theirs, v), digits)
            inside = (math.nan if pd.isna(lo) or pd.isna(ref)
                      else bool(round(lo, places) <= ref <= round(hi, places)))
            rows.append({"variant": v, "model": label(v, paper), "metric": ours, "metric_label": name,
                         "digits": digits, "ours_mean": mean, "paper": ref, "difference": mean - ref,
                         "ci95_low": lo, "ci95_high": hi, "paper_in_ci95": inside, "n": len(values),
                         "flag": _flag(s.loc[v])})
    num = pd.DataFrame(rows)
    shown = pd.DataFrame({
        "Model": num["model"], "Metric": num["metric_label"],
        "Ours (mean)": [fmt.num(x, d) for x, d in zip(num.ours_mean, num.digits)],
        "Paper": [fmt.num(x, d) for x, d in zip(num.paper, num.digits)],
        "Difference": [fmt.DASH if pd.isna(x) else f"{x:+,.{d}f}" for x, d in zip(num.difference, num.digits)],
        "95% CI": [fmt.DASH if pd.isna(lo) else f"[{fmt.num(lo, d)}, {fmt.num(hi, d)}]"
                   for lo, hi, d in zip(num.ci95_low, num.ci95_high, num.digits)],
        "Paper in 95% CI": num["paper_in_ci95"].map(fmt.yes_no), "n": num["n"], "Flag": num["flag"]})
    return num.drop(columns=["metric_label", "digits", "flag"]).assign(incomplete=num["flag"] != ""), shown


def _claims(ok: pd.DataFrame, s: pd.DataFrame, paper: pd.DataFrame):
    acc = lambda v: (100.0 * ok.loc[ok.variant == v, "final_val_accuracy"].dropna()).tolist()  # noqa: E731
    paper_acc = lambda v: paper.loc[v, "val_accuracy_pct"] if v in paper.index else math.nan  # noqa: E731
    base = acc("base")
    rows = []
    for v in s.index:
        if v == "base":
            continue
        w = stats.welch_t_test(acc(v), base)
        paper_diff = paper_acc(v) - paper_acc("base")
        if pd.isna(w.p_value):
            verdict = "n/a (needs ≥2 runs per group)"
        elif w.p_value >= ALPHA:
            verdict = "not significant"
        else:
            verdict = "agrees with paper" if (w.difference > 0) == (paper_diff > 0) else "contradicts paper"
        rows.append({"variant": v, "model": label(v, paper), "ours_mean_pct": s.loc[v, "val_accuracy_pct_mean"],
                     "base_mean_pct": s["val_accuracy_pct_mean"].get("base", math.nan),
                     "difference_pp": w.difference, "t": w.t, "df": w.df, "p_value": w.p_value,
                     "significant": math.nan if pd.isna(w.p_value) else bool(w.p_value < ALPHA),
                     "paper_difference_pp": paper_diff, "verdict": verdict, "n": s.loc[v, "n"],
                     "n_base": s["n"].get("base", 0), "flag": _flag(s.loc[v])})
    num = pd.DataFrame(rows, columns=["variant", "model", "ours_mean_pct", "base_mean_pct", "difference_pp", "t",
                                      "df", "p_value", "significant", "paper_difference_pp", "verdict", "n",
                                      "n_base", "flag"])
    sign = lambda x, d=2: fmt.DASH if pd.isna(x) else f"{x:+.{d}f}"  # noqa: E731
    shown = pd.DataFrame({
        "Model": num["model"], "Δ acc. vs Base (pp)": num["difference_pp"].map(sign),
        "Welch t": num["t"].map(sign), "df": num["df"].map(lambda x: fmt.num(x, 1)),
        "p": num["p_value"].map(lambda x: fmt.DASH if pd.isna(x) else f"{x:.3g}"),
        f"Significant at {ALPHA}": num["significant"].map(fmt.yes_no),
        "Paper Δ (pp)": num["paper_difference_pp"].map(sign), "Verdict": num["verdict"],
        "n": num["n"], "n Base": num["n_base"], "Flag": num["flag"]})
    return num.drop(columns=["flag"]).assign(incomplete=num["flag"] != ""), shown


def _ranking(s: pd.DataFrame, paper: pd.DataFrame):
    ours = s["val_accuracy_pct_mean"]
    theirs = pd.Series({v: paper.loc[v, "val_accuracy_pct"] if v in paper.index else math.nan for v in s.index})
    has_both = ours.notna() & theirs.notna()  # rank among the same set of variants on both sides
    num = pd.DataFrame({
        "model": [label(v, paper) for v in s.index], "ours_mean_pct": ours,
        "ours_rank": ours[has_both].rank(ascending=False, method="min"), "paper_pct": theirs,
        "paper_rank": theirs[has_both].rank(ascending=False, method="min"), "n": s["n"],
        "incomplete": s["incomplete"]}, index=s.index)
    num["same_rank"] = (num["ours_rank"] == num["paper_rank"]).where(has_both)
    num = num.sort_values(["ours_rank", "paper_rank"], na_position="last")
    # The table shows competition ranks (method="min": 1, 2, 2, 4), which read naturally. rho is computed on the
    # accuracies by scipy's spearmanr, which gives ties their average rank: Spearman's definition. (A Pearson
    # correlation of the min-ranks equals it only without ties.)
    rho = stats.spearman_rho(ours[has_both], theirs[has_both])
    shown = pd.DataFrame({
        "Model": num["model"], "Our rank": num["ours_rank"].map(lambda x: fmt.num(x, 0)),
        "Ours (%)": num["ours_mean_pct"].map(lambda x: fmt.num(x, 2)),
        "Paper rank": num["paper_rank"].map(lambda x: fmt.num(x, 0)),
        "Paper (%)": num["paper_pct"].map(lambda x: fmt.num(x, 2)), "Same rank": num["same_rank"].map(fmt.yes_no),
        "n": num["n"], "Flag": s.loc[num.index].apply(_flag, axis=1)})
    return num, shown, rho



# -------------------------------------------------------------------------------------------------- report


def _md_list(df: pd.DataFrame, empty: str) -> str:
    return fmt.to_markdown(df) if len(df) else empty


def _report_md(parent, experiment_name, tracking_uri, sweep_id, trials, ok, superseded, s, paper, tables, figures,
               rho) -> str:
    """report.md: what was run, how to read it, every table, the figures, and what is missing or failed."""
    requested_variants = [v.strip() for v in parent.data.tags.get("variants", "").split(",") if v.strip()]
    requested_seeds = _int_list(parent.data.tags.get("seeds"))
    not_ok = trials[trials.status != "FINISHED"].sort_values(["variant", "seed"])
    # What was asked for but is not in the averages, so nothing goes missing silently.
    have = set(zip(ok.variant, ok.seed))
    missing = pd.DataFrame([(label(v, paper), ", ".join(str(k) for k in requested_seeds if (v, k) not in have))
                            for v in s.index], columns=["Model", "Missing seeds"])
    missing = missing[missing["Missing seeds"] != ""]
    failed = pd.DataFrame({"Model": [label(v, paper) if isinstance(v, str) else "?" for v in not_ok.variant],
                           "Seed": not_ok.seed.astype("Int64"), "Run": not_ok.run_name, "Run id": not_ok.run_id,
                           "Status": not_ok.status, "Failure reason": not_ok.failure_reason.replace("", fmt.DASH)})
    incomplete = [f"{label(v, paper)} ({_seeds_text(s.loc[v])})" for v in s.index[s["incomplete"]]]

    md = [f"# Report: sweep `{sweep_id}`", "",
          f"Experiment `{experiment_name}` at `{tracking_uri}`; parent run `{parent.info.run_name}` "
          f"(`{parent.info.run_id}`, status {parent.info.status}).",
          f"Requested variants: {', '.join(requested_variants) or fmt.DASH}; seeds: "
          f"{', '.join(map(str, requested_seeds)) or fmt.DASH}. Finished trials averaged: {len(ok)}; "
          f"failed or unfinished: {len(not_ok)}.", ""]
    if incomplete:
        md += [f"> ⚠ **Incomplete variants** (fewer finished seeds than requested): {', '.join(incomplete)}. "
               "See *Missing trials* and *Failed trials* below.", ""]
    md += ["How to read: values are the mean ± sample standard deviation (ddof = 1) over seeds; n is the number "
           "of finished trials averaged. Accuracy is the validation accuracy after the last epoch. The 95% "
           "interval is the Student t-interval of the mean (needs n ≥ 2). The claims check compares each "
           f"variant with Base by Welch's two-sided t-test at α = {ALPHA}. The paper ran one seed per "
           "variant on its own hardware, so its values have no spread and its latencies are not directly "
           "comparable with ours.", ""]
    for name, title, _, shown in tables:
        md += [f"## {title}", "", fmt.to_markdown(shown), "",
               f"Files: [{name}.csv]({name}.csv) · [{name}.tex]({name}.tex)", ""]
        if name == "ranking":
            md += [f"Spearman rank correlation, ours vs paper: {fmt.num(rho, 3)}.", ""]
    md += ["## Figures", ""] + [f"### {cap}\n\n![{cap}]({f})\n" for f, cap in figures]
    md += ["## Failed trials", "", "Failed or unfinished runs are listed here and never averaged.", "",
           _md_list(failed, "None."), "", "## Missing trials", "",
           "Requested (variant, seed) pairs with no finished run.", "", _md_list(missing, "None."), ""]
    if len(superseded):
        md += ["## Superseded runs", "", "Earlier finished runs of a (variant, seed) that was run again; "
               "only the latest is averaged.", "",
               fmt.to_markdown(superseded[["variant", "seed", "run_name", "run_id"]]), ""]
    md += ["Per-trial values: [trials.csv](trials.csv); per-epoch mean/std: [curves.csv](curves.csv).", ""]
    return "\n".join(md)


def build_report(tracking_uri: str, experiment_name: str, sweep_id: str | None = None,
                 out_dir: str | Path | None = None) -> Path:
    """Write the report of one sweep (default: the latest finished one); return the output folder."""
    client = _client(tracking_uri)
    parent = _find_sweep(client, tracking_uri, experiment_name, sweep_id)
    tags = parent.data.tags
    sweep_id = tags.get("sweep_id", sweep_id)
    trials = _load_trials(client, parent)
    if trials.empty:
        raise ReportError(f"sweep {sweep_id!r} (run {parent.info.run_id}) has no trial runs; "
                          f"rerun it with python -m orchestrator.run or pick another with --sweep")
    paper = reference.load()
    requested_variants = [v.strip() for v in tags.get("variants", "").split(",") if v.strip()]
    requested_seeds = _int_list(tags.get("seeds"))
    variants = _variant_order(requested_variants, trials["variant"].dropna().unique().tolist(), paper)

    # Only FINISHED trials are averaged. A (variant, seed) retried into several finished runs counts once:
    # the latest run wins and the others are listed as superseded.
    finished = trials[trials.status == "FINISHED"].sort_values("start_time")
    ok = finished.drop_duplicates(["variant", "seed"], keep="last")
    superseded = finished.drop(ok.index)
    s = _summarize(ok, variants, len(requested_seeds) or None)

    out = Path(out_dir) if out_dir is not None else Path("reports") / str(sweep_id)
    out.mkdir(parents=True, exist_ok=True)

    t2, t2_shown = _table2(s, paper)
    t5, t5_shown = _table5(s, paper)
    vs, vs_shown = _vs_paper(ok.assign(val_accuracy_pct=100.0 * ok["final_val_accuracy"]), s, paper)
    cl, cl_shown = _claims(ok, s, paper)
    rk, rk_shown, rho = _ranking(s, paper)
    tables = [
        ("table2", "Table 2: parameters and size", t2, t2_shown),
        ("table5", "Table 5: model comparison (mean ± std over seeds)", t5, t5_shown),
        ("vs_paper", "Ours against the paper (95% t-interval over seeds)", vs, vs_shown),
        ("claims", f"Claims check: accuracy vs Base, Welch's t-test (α = {ALPHA})", cl, cl_shown),
        ("ranking", "Accuracy ranking, ours vs the paper", rk, rk_shown),
    ]
    for name, title, num, shown in tables:
        num.to_csv(out / f"{name}.csv", index=name in ("table2", "table5", "ranking"),
                   index_label="variant", float_format="%.10g")
        (out / f"{name}.md").write_text(f"**{title}**\n\n{fmt.to_markdown(shown)}\n")
        (out / f"{name}.tex").write_text(fmt.to_latex(shown, title, name))
        print(f"\n{title}\n{fmt.to_markdown(shown)}")

    history = _load_history(client, ok)
    curves = (history.groupby(["variant", "metric", "epoch"])["value"].agg(["mean", "std", "count"])
              .rename(columns={"count": "n"}).reset_index())
    curves.to_csv(out / "curves.csv", index=False, float_format="%.10g")
    trials.drop(columns=["start_time"]).sort_values(["variant", "seed"]).to_csv(out / "trials.csv", index=False)
    figures = [("loss_curves.png", "Training and validation loss per epoch (Figures 6 and 8)"),
               ("accuracy_curves.png", "Training and validation accuracy per epoch (Figures 7 and 9)"),
               ("accuracy_vs_latency.png", "Accuracy vs inference time (Figure 10)"),
               ("accuracy_vs_size.png", "Accuracy vs size")]
    if not curves.empty:
        curves_figure(curves, variants, paper, "loss", out / "loss_curves.png")
        curves_figure(curves, variants, paper, "accuracy", out / "accuracy_curves.png")
    else:
        figures = figures[2:]
    accuracy_vs_latency_figure(s, paper, out / "accuracy_vs_latency.png")
    accuracy_vs_size_figure(s, paper, out / "accuracy_vs_size.png")

    (out / "report.md").write_text(_report_md(
        parent, experiment_name, tracking_uri, sweep_id, trials, ok, superseded, s, paper, tables, figures, rho))

    client.log_artifacts(parent.info.run_id, str(out), artifact_path="report")
    return out


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow tracking URI (default %(default)s)")
    p.add_argument("--experiment-name", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default %(default)s)")
    p.add_argument("--sweep", default=None, help="sweep id (default: the latest finished sweep)")
    p.add_argument("--out", default=None, help="output folder (default reports/<sweep id>/)")
    args = p.parse_args(argv)
    try:
        out = build_report(args.tracking_uri, args.experiment_name, args.sweep, args.out)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nreport written to {out}/report.md (also logged to the sweep's parent run under report/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
