"""MLflow: the store checks the driver makes, the sweep's parent run and each trial's child run (the tracking
server's lifecycle is orchestrator.sweep.server's). A trial logs an epoch only once its checkpoint is persisted,
and only the steps its run lacks: a restarted trial never logs an epoch twice and never skips one."""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from orchestrator.names import SQLITE_PREFIX, sqlite_path, trial_name

# Fail fast when a server is down at start-up; trials keep MLflow's default retries (minutes).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says how to fix it."""


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative SQLite path absolute, so trials on other processes and nodes write the same file."""
    if sqlite_path(uri) is not None:
        return f"{SQLITE_PREFIX}{sqlite_path(uri).expanduser().resolve()}"
    if "://" not in uri:  # a plain directory path: MLflow's file store is deprecated, keep users on SQLite
        raise TrackingError(f"tracking URI {uri!r} is not a URI: use sqlite:///path/to/mlflow.db or http://host:port")
    return uri


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingError with one line if the store cannot be reached or written."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout_s)
    elif sqlite_path(uri) is not None:
        _check_sqlite(sqlite_path(uri))
    else:
        raise TrackingError(f"unsupported tracking URI {uri!r}: use sqlite:///path/to/mlflow.db or http://host:port")


def check_readable(uri: str, timeout_s: float = 5.0) -> None:
    """For commands that only read (the report): a bare path is refused and a server must answer within
    seconds, each in one line. Creates nothing: a missing SQLite file is the reader's to report."""
    if "://" not in uri:
        resolve_tracking_uri(uri)  # raises with the line `run` gives
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout_s)


def _check_server(uri: str, timeout_s: float) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            if r.status != 200:
                raise TrackingError(f"MLflow server at {uri} answered {r.status}; check that it is an MLflow server")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"cannot reach the MLflow tracking server at {uri} ({reason}): start it with "
                            f"`python -m orchestrator.tracking serve` or pass another --tracking-uri") from None


def _check_sqlite(db: Path) -> None:
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingError(f"cannot create the tracking store directory {db.parent} ({e.strerror}): "
                            f"pass a writable --tracking-uri sqlite:///path/mlflow.db") from None
    if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise TrackingError(f"tracking store {db} is not writable: pass a writable --tracking-uri")
    probe = db.parent / f".write-test-{os.getpid()}"
    try:  # a full disk passes os.access; only a write finds out, and better here than after Ray started
        probe.write_bytes(b"x" * 65536)
    except OSError as e:
        raise TrackingError(f"cannot write the tracking store {db} ({e.strerror}): free space or pass "
                            f"another --tracking-uri") from None
    finally:
        probe.unlink(missing_ok=True)


def ensure_experiment(uri: str, name: str) -> str:
    """Create (or find) the experiment on the driver, before any trial starts; return its id."""
    db = sqlite_path(uri)
    try:
        client = MlflowClient(uri)  # opens (and migrates) the store: a file that is not a database fails here
        exp = client.get_experiment_by_name(name)
        if exp is None:  # a local SQLite store keeps artifacts beside it (mlflow/artifacts/); a server its own
            artifacts = (db.parent / "artifacts").resolve().as_uri() if db is not None else None
            return client.create_experiment(name, artifact_location=artifacts)
    except Exception as e:  # MLflow raises many types for a broken store; say it in one line
        raise TrackingError(f"cannot use the MLflow store {uri}: {str(e).splitlines()[0]}") from None
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment {name!r} is deleted in {uri}: restore it in the MLflow UI "
                            f"or pass another --experiment-name")
    return exp.experiment_id


def all_pages(search, *args, **kwargs) -> list:
    """Every result of an MLflow search (`search_runs`, `search_logged_models`), following its page tokens.
    (MlflowClient returns one page; the fluent mlflow.search_runs pages, but only over the global tracking URI.)"""
    items, token = [], None
    while True:
        page = search(*args, page_token=token, **kwargs)
        items += list(page)
        if not (token := page.token):
            return items


def find_runs(uri: str, experiment_id: str, **tags) -> list:
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    return MlflowClient(uri).search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])


class ChildRun:
    """An MLflow run nested under a parent run and keyed by `key_tags`: found again, never duplicated, on restart,
    and logging only what it lacks (a restarted trial or candidate never logs a param or an epoch twice)."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, run_name: str, key_tags: dict,
                 tags: dict | None = None):
        self.client = MlflowClient(uri)
        existing = find_runs(uri, experiment_id, **key_tags)
        self.previous = existing[0] if existing else None  # what an earlier attempt left, if any
        if self.previous is not None:
            self.run_id = self.previous.info.run_id
            if self.previous.info.status != "FINISHED":
                self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags={
                "mlflow.parentRunId": parent_run_id, **key_tags, **(tags or {})}).info.run_id
        self._logged_steps: dict[str, set[int]] = {}

    def set_tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, params: dict) -> None:
        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in have]
        if new:
            self.client.log_batch(self.run_id, params=new)

    def _steps(self, key: str) -> set[int]:
        if key not in self._logged_steps:
            self._logged_steps[key] = {m.step for m in self.client.get_metric_history(self.run_id, key)}
        return self._logged_steps[key]

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Log the metrics this run lacks at `step` in one batch."""
        now = int(time.time() * 1000)
        new = [Metric(k, float(v), now, step) for k, v in metrics.items() if step not in self._steps(k)]
        if new:
            self.client.log_batch(self.run_id, metrics=new)
            for m in new:
                self._steps(m.key).add(step)


class TrialRun(ChildRun):
    """The MLflow child run of one (variant, seed) trial."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, sweep_id: str, variant: str, seed: int,
                 tags: dict | None = None):
        super().__init__(uri, experiment_id, parent_run_id, trial_name(variant, seed),
                         {"kind": "trial", "sweep_id": sweep_id, "variant": variant, "seed": str(seed)}, tags)

    def log_history(self, history: list[dict]) -> None:
        """Back-fill epochs a crashed attempt checkpointed but did not get to log."""
        for h in history:
            self.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.set_tags({"failure_reason": reason[:4000]})
        elif status == "FINISHED" and self.previous is not None and "failure_reason" in self.previous.data.tags:
            # An earlier attempt's reason (a crash, a Ctrl-C) no longer describes this finished run.
            self.client.delete_tag(self.run_id, "failure_reason")
        self.client.set_terminated(self.run_id, status=status)


ENTRY_POINT = str(Path(__file__).resolve().parents[1] / "run.py")  # every sweep starts there


def open_parent_run(uri: str, experiment_name: str, git_commit: str, parent_run_id: str | None,
                    start) -> tuple[str, str, dict]:
    """(experiment id, parent run id, source tags) of a sweep or search: a new parent run from `start(experiment_id,
    source_tags)`, or the resumed one set RUNNING again."""
    experiment_id, tags = ensure_experiment(uri, experiment_name), source_tags(git_commit)
    if parent_run_id is None:
        parent_run_id = start(experiment_id, tags)
    else:
        MlflowClient(uri).update_run(parent_run_id, status="RUNNING")
    return experiment_id, parent_run_id, tags


def source_tags(git_commit: str) -> dict:
    """MLflow's standard source tags (the UI's Source, Version and User columns) for a sweep and its trials: the
    user MLflow resolves, the sweep's entry point and the commit of its code. Resolved once, on the driver:
    a trial's own process is a Ray worker, whose entry point says nothing."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import mlflow_tags
    return {mlflow_tags.MLFLOW_USER: resolve_tags().get(mlflow_tags.MLFLOW_USER, "unknown"),
            mlflow_tags.MLFLOW_SOURCE_TYPE: "LOCAL", mlflow_tags.MLFLOW_SOURCE_NAME: ENTRY_POINT,
            mlflow_tags.MLFLOW_GIT_COMMIT: git_commit}


# How Tune stops a trial of an interrupted sweep (Ctrl-C: KeyboardInterrupt). A trial so stopped ends its runs
# KILLED; a run FAILED by one of these (its failure_reason starts with the name) is ended KILLED by end_open_runs.
INTERRUPTIONS = (SystemExit, KeyboardInterrupt)
INTERRUPTED_REASON = "interrupted: the sweep was stopped (Ctrl-C or SIGTERM); --resume continues this run"


def end_open_runs(uri: str, experiment_id: str, sweep_id: str, status: str = "KILLED") -> None:
    """End an interrupted sweep's parent run and each trial run still RUNNING, or FAILED by the interruption
    itself, as `status`. Nothing marks the sweep finished, so --resume finds it (a resumed trial sets its run
    RUNNING again). Other ends (FINISHED, a crash, a divergence) are kept."""
    client = MlflowClient(uri)
    for run in find_runs(uri, experiment_id, sweep_id=sweep_id):
        trial = run.data.tags.get("kind") == "trial"
        stopped = run.info.status == "FAILED" and run.data.tags.get("failure_reason", "").startswith(
            tuple(e.__name__ for e in INTERRUPTIONS))
        if run.info.status == "RUNNING" or (trial and stopped):
            if trial:
                client.set_tag(run.info.run_id, "failure_reason", INTERRUPTED_REASON)
            client.set_terminated(run.info.run_id, status=status)
