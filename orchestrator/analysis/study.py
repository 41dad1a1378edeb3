"""A study's trials, loaded once, from an MLflow sweep or from a folder of trial records, for the report.

Both sources give the same `Study`: what was asked for (variants, seeds), one row per trial, the per-epoch
history of the finished ones, and the paper's reference numbers. Everything the tables and figures need is
derived once, here: the trials averaged (`finished`), the runs superseded by a retry, the per-variant summary
and the per-epoch curves.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from models import reference
from orchestrator.analysis import latency_table
from orchestrator.sweep import records
from orchestrator.names import sqlite_path, trial_name
from orchestrator.sweep.tracking import all_pages

# What the report reads of what every trial logs (orchestrator.training.metrics: EPOCH_METRICS, FINAL_METRICS; a test
# keeps these a subset of those, so a renamed metric cannot silently empty a table).
CURVE_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
TABLE_METRICS = ("final_val_accuracy", "latency_ms_per_image", "latency_ms_batch1", "size_mb", "param_count")
# The deployment view (orchestrator.training.metrics.EXPORT_METRICS), where the trials exported their models.
DEPLOYMENT_METRICS = ("onnx_bytes", "int8_bytes", "onnx_val_accuracy", "int8_val_accuracy",
                      "ort_latency_ms_batch1_fp32", "ort_latency_ms_batch1_int8", "ort_latency_ms_per_image_fp32",
                      "ort_latency_ms_per_image_int8")
TRIAL_COLUMNS = ["run_id", "run_name", "status", "start_time", "variant", "seed", "failure_reason",
                 *TABLE_METRICS, "latency_hardware", *DEPLOYMENT_METRICS]
HISTORY_COLUMNS = ["variant", "seed", "run_id", "metric", "epoch", "value"]


class ReportError(ValueError):
    """Bad input to the report (no such experiment / sweep, no runs, bad records); the message names the fix."""


@dataclass
class Study:
    title: str                      # what the report is of: "sweep `<id>`" or "records in `<dir>`"
    provenance: list[str]           # report.md lines saying where the trials were read from
    requested_variants: list[str]
    requested_seeds: list[int]      # of every variant, unless seeds_by_variant says otherwise
    trials: pd.DataFrame            # TRIAL_COLUMNS, one row per trial run
    history: pd.DataFrame           # HISTORY_COLUMNS, the finished trials' per-epoch metrics
    protocol: dict | None = None    # records.PROTOCOL_FIELDS as run (None: unknown, e.g. an old sweep)
    # How the latencies were measured, when not by each trial itself: the one-pass table's description
    latency_source: str | None = None
    latency_dir: Path | None = None  # the folder holding that table (latency_table.CSV_NAME, MD_NAME)
    paper: pd.DataFrame = field(default_factory=reference.load)
    seeds_by_variant: dict[str, list[int]] = field(default_factory=dict)
    # derived in __post_init__
    variants: list[str] = field(init=False)
    finished: pd.DataFrame = field(init=False)     # the trials averaged: FINISHED, the latest of each pair
    superseded: pd.DataFrame = field(init=False)   # earlier FINISHED runs of a pair that was run again
    summary: pd.DataFrame = field(init=False)      # per-variant statistics, one row per variant
    curves: pd.DataFrame = field(init=False)       # per (variant, metric, epoch): mean, std, n

    def __post_init__(self):
        # Requested and observed variants, in the paper's order; unknown names after, alphabetically.
        names = set(self.requested_variants) | set(self.trials["variant"].dropna())
        self.variants = [v for v in self.paper.index if v in names] + sorted(names - set(self.paper.index))
        # Only FINISHED trials are averaged. A (variant, seed) retried into several finished runs counts once:
        # the latest run wins and the others are listed as superseded.
        finished = self.trials[self.trials.status == "FINISHED"].sort_values("start_time")
        self.finished = finished.drop_duplicates(["variant", "seed"], keep="last")
        self.superseded = finished.drop(self.finished.index)
        n_requested = {v: len(self.seeds_requested(v)) for v in self.variants}
        self.summary = summarize(self.finished, self.variants, n_requested if any(n_requested.values()) else None)
        kept = self.history[self.history.run_id.isin(self.finished.run_id)]
        self.curves = (kept.groupby(["variant", "metric", "epoch"])["value"].agg(["mean", "std", "count"])
                       .rename(columns={"count": "n"}).reset_index())

    def protocol_differences(self) -> list[str]:
        """How this study's protocol differs from the paper's ("epochs 2 (paper 10)"); empty when it is the
        paper's. The data's fingerprint is not compared: the paper's copy of CIFAR-10 is not at hand."""
        return [] if self.protocol is None else records.differences_from_paper(self.protocol)

    @property
    def comparable(self) -> bool:
        """Whether accuracies may be set beside the paper's: only under the paper's protocol."""
        return not self.protocol_differences()

    def seeds_requested(self, variant: str) -> list[int]:
        return self.seeds_by_variant.get(variant, self.requested_seeds)

    def label(self, variant: str) -> str:
        return reference.label(variant, self.paper)

    def accuracies_pct(self, variant: str) -> list[float]:
        """The final validation accuracies (%) of the variant's averaged trials."""
        rows = self.finished.loc[self.finished.variant == variant, "final_val_accuracy"].dropna()
        return (100.0 * rows).tolist()


LATENCY_METRICS = ("latency_ms_per_image", "latency_ms_batch1")


def unmixed_latencies(finished: pd.DataFrame, metrics=LATENCY_METRICS) -> pd.DataFrame:
    """The trials with the latencies (`metrics`) of a variant measured on more than one machine model set to NaN:
    such latencies are never averaged together (the report lists them per machine instead)."""
    machines = finished.groupby("variant")["latency_hardware"].transform("nunique")
    return finished.assign(**{m: finished[m].where(machines <= 1) for m in metrics})


def deployment_summary(finished: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean and std of each deployment figure, the int8 accuracy drop (pp, per trial, then
    averaged) and how many trials exported (the ORT latencies count only when measured on one machine)."""
    finished = unmixed_latencies(finished, [m for m in DEPLOYMENT_METRICS if m.startswith("ort_")])
    finished = finished.assign(int8_drop_pp=100.0 * (finished["onnx_val_accuracy"] - finished["int8_val_accuracy"]))
    columns = {f"{m}_{stat}": (m, stat) for m in (*DEPLOYMENT_METRICS, "int8_drop_pp") for stat in ("mean", "std")}
    return finished.groupby("variant").agg(n_exported=("int8_bytes", "count"), **columns)


def summarize(finished: pd.DataFrame, variants: list[str], n_requested: dict[str, int] | None) -> pd.DataFrame:
    """Per-variant statistics of the finished trials (sample std, ddof=1), one row per variant; `n_requested`:
    each variant's number of seeds asked for (None: unknown, so only a variant with none finished is incomplete)."""
    machines = finished.groupby("variant")["latency_hardware"].nunique()
    finished = unmixed_latencies(finished).assign(val_accuracy_pct=100.0 * finished["final_val_accuracy"])
    agg = finished.groupby("variant").agg(
        n=("run_id", "count"), **{f"{m}_{stat}": (m, stat) for m in ("val_accuracy_pct", *LATENCY_METRICS)
                                  for stat in ("mean", "std")},
        size_mb=("size_mb", "mean"), params=("param_count", "median")).reindex(variants)
    agg = agg.join(deployment_summary(finished).reindex(variants))
    agg["n"] = agg["n"].fillna(0).astype(int)
    agg["latency_machines"] = machines.reindex(variants).fillna(0).astype(int)
    requested = pd.Series(n_requested, dtype="Int64").reindex(variants) if n_requested else None
    agg["n_requested"] = requested if requested is not None else pd.NA
    agg["incomplete"] = agg["n"] < requested if requested is not None else agg["n"] == 0
    return agg


# ------------------------------------------------------------------------------------------ from MLflow
def _client(tracking_uri: str) -> MlflowClient:
    # A read-only report must not create an empty database as a side effect of a typo'd path.
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise ReportError(f"no MLflow database at {db}; run a sweep first (python -m orchestrator.run) "
                          f"or pass --tracking-uri pointing at an existing store")
    return MlflowClient(tracking_uri=tracking_uri)


def search_all(client: MlflowClient, experiment_id: str, filter_string: str, order_by=None) -> list:
    return all_pages(client.search_runs, [experiment_id], filter_string, max_results=1000, order_by=order_by)


def _experiment(client: MlflowClient, tracking_uri: str, experiment_name: str):
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        raise ReportError(f"no MLflow experiment named {experiment_name!r} at {tracking_uri}; "
                          f"pass --experiment-name / --tracking-uri of the store the sweep wrote to")
    return exp


def find_sweep(client: MlflowClient, tracking_uri: str, experiment_name: str, sweep_id: str | None):
    """The sweep's parent run: the given sweep, or the latest finished one."""
    exp = _experiment(client, tracking_uri, experiment_name)
    if sweep_id is None:
        which = "attributes.status = 'FINISHED'"
        none_found = (f"no finished sweep in experiment {experiment_name!r}; run one with "
                      f"python -m orchestrator.run, or pass --sweep <id> for an unfinished one")
    elif "'" in sweep_id:
        raise ReportError(f"sweep id {sweep_id!r} contains a quote; pass the id shown in the parent run name")
    else:
        which = f"tags.sweep_id = '{sweep_id}'"
        none_found = (f"no sweep {sweep_id!r} in experiment {experiment_name!r}; pass a sweep id from a "
                      f"parent run named sweep-<id>, or omit --sweep for the latest finished sweep")
    runs = search_all(client, exp.experiment_id, f"tags.kind = 'sweep' and {which}", ["attributes.start_time DESC"])
    if not runs:
        raise ReportError(none_found)
    return runs[0]


def list_sweeps(tracking_uri: str, experiment_name: str) -> list[str]:
    """One line per sweep in the store, newest first: id, start time, status, variants x seeds, trials."""
    client = _client(tracking_uri)
    exp = _experiment(client, tracking_uri, experiment_name)
    lines = []
    for parent in search_all(client, exp.experiment_id, "tags.kind = 'sweep'", ["attributes.start_time DESC"]):
        tags = parent.data.tags
        children = search_all(client, exp.experiment_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        statuses = [r.info.status for r in children]
        started = pd.Timestamp(parent.info.start_time, unit="ms").strftime("%Y-%m-%d %H:%M")
        variants, seeds = tags.get("variants", "").split(","), _int_list(tags.get("seeds"))
        lines.append(f"{tags.get('sweep_id', '?')}  {started}  {parent.info.status:<8}  {len(variants)} variants x "
                     f"{len(seeds)} seeds ({tags.get('variants', '')})  trials: {statuses.count('FINISHED')} "
                     f"finished, {statuses.count('FAILED')} failed, {len(variants) * len(seeds)} requested")
    return lines


def _int_list(tag: str | None) -> list[int]:
    try:
        return [int(s) for s in (tag or "").split(",") if s.strip()]
    except ValueError:
        return []


def _trial_row(run) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    seed = tags.get("seed", run.data.params.get("seed"))
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "start_time": run.info.start_time, "variant": tags.get("variant", run.data.params.get("variant")),
            "seed": int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else None,
            "failure_reason": tags.get("failure_reason", ""), "latency_hardware": tags.get("latency_hardware", ""),
            **{m: metrics.get(m, math.nan) for m in (*TABLE_METRICS, *DEPLOYMENT_METRICS)}}


def load_sweep(tracking_uri: str, experiment_name: str, sweep_id: str | None = None) -> tuple[Study, object]:
    """The Study of one sweep (default: the latest finished one) and its parent run."""
    client = _client(tracking_uri)
    parent = find_sweep(client, tracking_uri, experiment_name, sweep_id)
    tags = parent.data.tags
    sweep_id = tags.get("sweep_id", sweep_id)
    children = search_all(client, parent.info.experiment_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = pd.DataFrame([_trial_row(run) for run in children], columns=TRIAL_COLUMNS)
    if trials.empty:
        raise ReportError(f"sweep {sweep_id!r} (run {parent.info.run_id}) has no trial runs; "
                          f"rerun it with python -m orchestrator.run or pick another with --sweep")
    history = pd.DataFrame([(t.variant, t.seed, t.run_id, key, m.step, m.value)
                            for t in trials[trials.status == "FINISHED"].itertuples() for key in CURVE_METRICS
                            for m in client.get_metric_history(t.run_id, key)], columns=HISTORY_COLUMNS)
    provenance = [f"Experiment `{experiment_name}` at `{tracking_uri}`; parent run `{parent.info.run_name}` "
                  f"(`{parent.info.run_id}`, status {parent.info.status})."]
    variants = [v.strip() for v in tags.get("variants", "").split(",") if v.strip()]
    protocol = None  # unknown: a sweep from before config_json was tagged
    if "config_json" in tags:
        from orchestrator.sweep.config import SweepConfig
        protocol = records.protocol_of(SweepConfig.from_flags(json.loads(tags["config_json"])).train, "")
    study = Study(f"sweep `{sweep_id}`", provenance, variants, _int_list(tags.get("seeds")), trials, history,
                  protocol=protocol)
    return study, parent


# ------------------------------------------------------------------------------------------ from records
def load_records(results_dir: str | Path) -> Study:
    """The Study of a folder of trial records (orchestrator.sweep.records): one protocol, or a one-line refusal."""
    try:
        found = records.load_records(results_dir)
        records.check_one_protocol(found, str(results_dir))
    except records.RecordError as e:
        raise ReportError(str(e)) from None
    if not found:
        raise ReportError(f"no trial records (*.json) in {results_dir}; write some with "
                          f"python -m orchestrator.run --results-dir {results_dir}")
    trials = pd.DataFrame([{
        "run_id": r["mlflow"]["run_id"], "run_name": trial_name(r["variant"], r["seed"]), "status": "FINISHED",
        "start_time": i, "variant": r["variant"], "seed": r["seed"], "failure_reason": "",
        "latency_hardware": r["environment"].get("hardware") or "",
        **{m: r["final"].get(m, math.nan) for m in (*TABLE_METRICS, *DEPLOYMENT_METRICS)}}
        for i, r in enumerate(found)], columns=TRIAL_COLUMNS)
    history = pd.DataFrame([(r["variant"], r["seed"], r["mlflow"]["run_id"], key, h["epoch"], h[key])
                            for r in found for h in r["history"] for key in CURVE_METRICS if key in h],
                           columns=HISTORY_COLUMNS)
    trials, latency_source = _one_pass_latencies(results_dir, found, trials)
    provenance = [f"{len(found)} trial records in `{results_dir}`, protocol `{found[0]['protocol_hash']}`."]
    seeds_by_variant = seeds_by_group(found, set(reference.load().index))
    return Study(f"records in `{results_dir}`", provenance, [], sorted({r["seed"] for r in found}), trials, history,
                 protocol=found[0]["protocol"], latency_source=latency_source,
                 latency_dir=Path(results_dir) if latency_source else None, seeds_by_variant=seeds_by_variant)


def seeds_by_group(found: list[dict], paper_variants: set[str]) -> dict[str, list[int]]:
    """The seeds a records folder's variants count as requested: the seeds of their group. A folder keeps no
    request, and the paper's variants and a study's own architectures come from separate sweeps with their own
    seed counts (the grid's 5 copied in beside a re-validation's 3), so each group is judged on its own."""
    def group(variant: str) -> bool:
        return variant in paper_variants
    seeds = {g: sorted({r["seed"] for r in found if group(r["variant"]) == g}) for g in (True, False)}
    return {r["variant"]: seeds[group(r["variant"])] for r in found}


def _one_pass_latencies(results_dir, found: list[dict], trials: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The trials with the folder's one-pass latency table (latency_table) in place of their own latencies, and
    a sentence saying so; the trials as they are, and None, when the folder has no such table."""
    try:
        table = latency_table.read(results_dir)
    except latency_table.LatencyTableError as e:
        raise ReportError(str(e)) from None
    if table is None:
        return trials, None
    weights = {(r["variant"], r["seed"]): r.get("weights", {}).get("sha256") for r in found}
    trials, missing = latency_table.apply(trials, table, weights)
    source = table.describe()
    if missing:
        source += (f". Not in it (or timed with other weights), so shown without latency: {', '.join(missing)}; "
                   f"rerun python -m bench.published --results {results_dir}")
    return trials, source
