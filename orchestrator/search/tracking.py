"""MLflow for a search: one parent run (kind=search) and one nested run per candidate (kind=candidate), found
again, never duplicated, when a search resumes. The store checks and experiment handling are the sweep's
(orchestrator.sweep.tracking)."""
from __future__ import annotations

import json
import time

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from orchestrator.sweep.tracking import ChildRun, all_pages, find_runs


def search_runs(uri: str, experiment_id: str, name: str | None = None, unfinished: bool = False,
                kind: str = "search") -> list:
    """Parent runs of searches (or of proxy checks), newest first: the one named `name`, or all; only unfinished
    ones if asked."""
    runs = find_runs(uri, experiment_id, kind=kind, **({"search_id": name} if name else {}))
    return [r for r in runs if not unfinished or r.data.tags.get("search_status") != "finished"]


def start_search_run(uri: str, experiment_id: str, name: str, kind: str, tags: dict, params: dict) -> str:
    """The parent run of a search (kind=search) or of a proxy check (kind=proxy-check)."""
    client = MlflowClient(uri)
    run = client.create_run(experiment_id, run_name=name, tags={"kind": kind, "search_id": name, **tags})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])  # it batches
    return run.info.run_id


def finish_search_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client = MlflowClient(uri)
    client.set_tag(run_id, "search_status", status.lower())
    client.set_terminated(run_id, status=status)


def candidate_runs(uri: str, experiment_id: str, search_id: str) -> list:
    """Every candidate run of a search (all pages), oldest first."""
    client = MlflowClient(uri)
    query = f"tags.kind = 'candidate' and tags.search_id = '{search_id}'"
    return all_pages(client.search_runs, [experiment_id], filter_string=query, order_by=["attributes.start_time ASC"])


class CandidateRun(ChildRun):
    """The MLflow run of one candidate (one Tune trial): nested under the search's parent run, keyed by the Tune
    trial id, which a restored search keeps. A restarted candidate finds its run and logs only what it lacks."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, search_id: str, trial_id: str,
                 run_name: str, tags: dict):
        super().__init__(uri, experiment_id, parent_run_id, run_name,
                         {"kind": "candidate", "search_id": search_id, "trial_id": trial_id}, tags)

    def finish(self, status: str, epochs_run: int, reason: str = "") -> None:
        """Not stopped early: progress.CandidateCloser closes the runs of candidates ASHA stopped."""
        self.set_tags({"stopped_early": "false", **({"failure_reason": reason[:4000]} if reason else {})})
        self.log_metrics({"epochs_run": epochs_run}, step=0)
        self.client.set_terminated(self.run_id, status=status)


def finished_candidate(uri: str, experiment_id: str, search_id: str, spec_hash: str):
    """The finished run of a candidate of this spec in this search, if any: a candidate sampled again (Optuna may
    repeat a shape; a search resumed from an older Tune snapshot re-asks what it asked before) is not re-run."""
    runs = find_runs(uri, experiment_id, kind="candidate", search_id=search_id, spec_hash=spec_hash)
    return next((r for r in runs if r.info.status == "FINISHED"), None)


def close_orphans(uri: str, experiment_id: str, search_id: str, trial_ids: set[str]) -> list[str]:
    """Runs left RUNNING by candidates a killed driver had started after Tune's last snapshot of the search: the
    resumed search does not know them (it sampled anew). Marked KILLED; returns their names."""
    client, names = MlflowClient(uri), []
    for run in candidate_runs(uri, experiment_id, search_id):
        if run.info.status == "RUNNING" and run.data.tags.get("trial_id") not in trial_ids:
            client.set_tag(run.info.run_id, "failure_reason", "its driver was killed before Tune saved the "
                                                              "candidate; the resumed search sampled anew")
            client.set_terminated(run.info.run_id, status="KILLED")
            names.append(run.info.run_name)
    return names


def close_stopped_candidate(uri: str, experiment_id: str, search_id: str, trial_id: str, epochs_run: int) -> None:
    """A candidate ASHA stopped (its process is ended at a report, so it cannot close its own run): mark its run
    FINISHED with stopped_early=true."""
    runs = find_runs(uri, experiment_id, kind="candidate", search_id=search_id, trial_id=trial_id)
    if runs and runs[0].info.status == "RUNNING":
        client, run_id = MlflowClient(uri), runs[0].info.run_id
        client.log_batch(run_id, metrics=[Metric("epochs_run", float(epochs_run), int(time.time() * 1000), 0)],
                         tags=[RunTag("stopped_early", "true")])
        client.set_terminated(run_id, status="FINISHED")


def fail_candidate(uri: str, experiment_id: str, search_id: str, trial_name: str, reason: str) -> None:
    """A candidate Ray gave up on (killed outright, it could not end its own run): FAILED, with Ray's reason."""
    client = MlflowClient(uri)
    for run in find_runs(uri, experiment_id, kind="candidate", search_id=search_id, trial_name=trial_name):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "failure_reason", reason[:4000])
            client.set_terminated(run.info.run_id, status="FAILED")


def spec_params(spec_dict: dict) -> dict:
    """A spec flattened into MLflow params (`spec.depth`, `spec.b3.kind`, `spec.b3.out`, `spec.pool_after`, ...),
    so the runs table can filter and sort candidates by shape."""
    return {"spec.depth": len(spec_dict["blocks"]), "spec.pool_after": ",".join(map(str, spec_dict["pool_after"])),
            "spec.head": spec_dict["head"]["kind"], "spec.head.hidden": spec_dict["head"].get("hidden", ""),
            "spec.dense_from": json.dumps(spec_dict.get("dense_from", {}), sort_keys=True),
            **{f"spec.b{k}.{name}": value for k, block in enumerate(spec_dict["blocks"], start=1)
               for name, value in block.items()}}
