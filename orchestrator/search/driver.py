"""The search's driver: open (check everything, then start, or reopen to resume), build the tuner (OptunaSearch asks
TPE for each candidate through the define-by-run space; ASHA stops the weak between the proxy's epochs), fit, close
(table, specs, next steps). Tune keeps the state (trials, the pickled Optuna study) in <storage>/search-<name>, so
--resume continues a search without re-running finished candidates."""
from __future__ import annotations

import functools
import json
import os
import shlex
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's classic live table, with our columns
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Tune snapshots the search (trials, the pickled Optuna study) at most every 10 s by default; a driver killed in
# between loses the candidates sampled since. Every second costs a few ms of writing and loses far less.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

import data  # noqa: E402
from orchestrator.names import sqlite_path  # noqa: E402
from orchestrator.search import proxy  # noqa: E402
from orchestrator.search import results as tables  # noqa: E402
from orchestrator.search import tracking as search_tracking  # noqa: E402
from orchestrator.search.config import ConfigError, SearchConfig  # noqa: E402
from orchestrator.sweep import preflight, records, tracking  # noqa: E402
from orchestrator.sweep.config import SweepConfig  # noqa: E402
from orchestrator.sweep.driver import library_versions  # noqa: E402
from orchestrator.sweep.preflight import SweepError  # noqa: E402


class SearchError(RuntimeError):
    """The search cannot start or resume; the message says how to fix it."""


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a lost driver's candidates) left the search unfinished; the message is how to continue it."""


@dataclass(frozen=True)
class Search:
    """One search (or proxy check) as the driver runs it: its config, its ids in MLflow, where Tune keeps it."""
    cfg: SearchConfig
    experiment_id: str
    parent_run_id: str
    storage: str
    data_dir: str  # absolute: Ray workers run in their trial folders
    source_tags: dict

    @property
    def path(self) -> str:
        return tune_folder(self.storage, self.cfg.name)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir) / self.cfg.name

    def context(self) -> dict:
        """What every candidate needs to know of the search (Tune's config, constant over the candidates)."""
        cfg = self.cfg
        return {"search_id": cfg.name, "tracking_uri": cfg.tracking_uri, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id, "source_tags": self.source_tags, "data_dir": self.data_dir,
                "max_params": cfg.max_params, "max_macs": cfg.max_macs, "seed": cfg.seed,
                # only when set: Tune.restore refuses a param_space with keys its saved state lacks (older searches)
                **({"max_size_mb": cfg.max_size_mb} if cfg.max_size_mb else {}),
                "cpus_per_trial": cfg.cpus_per_trial}

    def proxy(self) -> dict:
        cfg = self.cfg
        return {"epochs": cfg.proxy_epochs, "per_class": cfg.proxy_per_class, "holdout_per_class":
                cfg.holdout_per_class, "batch_size": cfg.proxy_batch_size, "latency_calls": cfg.latency_calls}


# --- 1. open ------------------------------------------------------------------------------------------------------
def check_data(cfg: SearchConfig) -> str:
    """Load the training split and cut the proxy's slices once, here, so a bad flag fails before any trial. Returns
    the absolute data directory. Only the training split is read (proxy.proxy_data)."""
    root = data.resolve_data_dir(cfg.data_dir or None).expanduser().resolve()
    try:
        proxy.proxy_data(str(root), cfg.holdout_per_class, cfg.proxy_per_class)
    except ValueError as e:  # data.DataError is a ValueError too, and already one line naming the file
        if isinstance(e, data.DataError):
            raise
        flag = "--holdout-per-class" if "holding out" in str(e) else "--proxy-per-class"
        raise ConfigError(f"{flag}: {e}: pass a smaller number") from None
    return str(root)


def tune_folder(storage: str, name: str) -> str:
    """Where Tune keeps search `name`'s state under --storage-path (a local folder or a remote URI)."""
    sep = "/" if "://" in storage else os.sep
    return f"{storage.rstrip('/')}{sep}search-{name}"


def _reopen(cfg: SearchConfig, uri: str) -> tuple[SearchConfig, str, str]:
    """(stored config, parent run id, storage) of the search --resume continues."""
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise SearchError(f"no MLflow store at {db}, so no search to resume: pass the --tracking-uri the search "
                          f"used, or start a new search without --resume")
    experiment_id = tracking.ensure_experiment(uri, cfg.experiment_name)
    runs = search_tracking.search_runs(uri, experiment_id, cfg.name or None, unfinished=not cfg.name)
    if not runs:
        which = f"search {cfg.name!r}" if cfg.name else "an unfinished search"
        raise SearchError(f"found no {which} in experiment {cfg.experiment_name!r} at {uri}: check --name and "
                          f"--tracking-uri, or start a new search without --resume")
    run = runs[0]
    if run.data.tags.get("search_status") == "finished":
        out = f"{json.loads(run.data.tags['config_json'])['out_dir']}/{cfg.name}"
        raise SearchError(f"search {cfg.name!r} finished already: its results are in {out}/; re-validate its "
                          f"top specs with `sh {out}/revalidate.sh`")
    # Where to run and what to do afterwards may change between attempts; what to search may not.
    stored = SearchConfig.from_flags(json.loads(run.data.tags["config_json"])).replace(
        resume=True, address=cfg.address, revalidate=cfg.revalidate, tracking_uri=uri)
    _check_tune_state(run.data.tags["ray_storage_path"], stored.name)
    return stored, run.info.run_id, run.data.tags["ray_storage_path"]


def _check_tune_state(storage: str, name: str) -> None:
    """TPE's history lives in Tune's saved state. When Tune cannot read that (a driver killed while writing it), it
    restarts with a searcher that has forgotten every candidate: refuse, before anything is reopened."""
    from ray.tune.execution.tune_controller import TuneController
    if "://" in storage:  # remote storage: Tune reads it itself
        return
    states = sorted(Path(tune_folder(storage, name)).glob(TuneController.CKPT_FILE_TMPL.format("*")))
    if not states:
        return
    try:
        json.loads(states[-1].read_bytes())  # the newest is the one Tune restores
    except ValueError:
        raise SearchError(f"Tune's saved state of search {name!r} ({states[-1]}) is cut short, so --resume cannot "
                          f"continue it: start it again with another --name (its candidates stay in MLflow)") from None


def _start_parent(cfg: SearchConfig, uri: str, experiment_id: str, kind: str, storage: str, tags: dict) -> str:
    if any(search_tracking.search_runs(uri, experiment_id, cfg.name, kind=k) for k in ("search", "proxy-check")):
        raise SearchError(f"a search named {cfg.name!r} exists in experiment {cfg.experiment_name!r}: continue "
                          f"it with --resume --name {cfg.name}, or pass another --name")
    flags = cfg.to_flags()
    return search_tracking.start_search_run(uri, experiment_id, cfg.name, kind, {
        **tags, "git_commit": records.git_state()["git_commit"], "host": socket.gethostname(),
        "command": shlex.join([sys.executable, "-m", "orchestrator.search", *sys.argv[1:]]),
        "ray_storage_path": storage, "config_json": json.dumps(flags), "objective": cfg.objective,
        **library_versions()}, flags)


def open_search(cfg: SearchConfig, kind: str = "search") -> Search:
    """Check everything that can be checked, then start a new search (or proxy check) or reopen one to resume."""
    cfg = cfg.validate().replace(tracking_uri=tracking.resolve_tracking_uri(cfg.tracking_uri))
    uri = cfg.tracking_uri
    preflight.check_address(cfg.address)  # cheap checks that write nothing come first
    tracking.check_tracking(uri)
    parent_run_id = storage = None
    if cfg.resume:
        cfg, parent_run_id, storage = _reopen(cfg, uri)
    elif not cfg.name:
        cfg = cfg.replace(name=time.strftime("search-%Y%m%d-%H%M%S"))
    data_dir = check_data(cfg)
    storage = preflight.check_storage(storage or cfg.storage_path)
    preflight.start_ray(SweepConfig(address=cfg.address, cpus_per_trial=cfg.cpus_per_trial,
                                    gpus_per_trial=cfg.gpus_per_trial))
    experiment_id, parent_run_id, source_tags = tracking.open_parent_run(
        uri, cfg.experiment_name, records.git_state()["git_commit"], parent_run_id,
        lambda experiment_id, tags: _start_parent(cfg, uri, experiment_id, kind, storage, tags))
    return Search(cfg, experiment_id, parent_run_id, storage, data_dir, source_tags)


# --- 2. the tuner -------------------------------------------------------------------------------------------------
def _searcher(cfg: SearchConfig):
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    from orchestrator.search.space import define_space
    with warnings.catch_warnings():  # TPE's `group` is marked experimental; it is what a define-by-run space needs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # multivariate + group: TPE models the parameters that occur together (a block's kind and widths exist
        # only at that depth) jointly; constant_liar keeps parallel candidates from being sampled alike.
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_candidates,
                                             multivariate=True, group=True, constant_liar=True)
    metrics, modes = zip(*cfg.objectives())
    single = len(metrics) == 1  # one objective: a plain metric, so Optuna also hears every epoch's value
    space = functools.partial(define_space, max_params=cfg.max_params, max_macs=cfg.max_macs,
                              max_size_mb=cfg.max_size_mb)
    return OptunaSearch(space,
                        metric=metrics[0] if single else list(metrics), mode=modes[0] if single else list(modes),
                        sampler=sampler)


def build_tuner(search: Search):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from orchestrator.search.progress import CandidateCloser, SearchReporter, candidate_name
    from orchestrator.search.trainable import run_candidate
    cfg = search.cfg
    trainable = tune.with_resources(run_candidate, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    param_space = {"search": search.context(), "proxy": search.proxy()}
    if cfg.resume and tune.Tuner.can_restore(search.path):
        # Tune's saved state holds no search space: Tune's own contract is to give it again.
        return tune.Tuner.restore(search.path, trainable=trainable, param_space=param_space, resume_unfinished=True,
                                  resume_errored=True)
    # ASHA ranks on accuracy even with a second objective: latency and MACs are known before the first epoch.
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="heldout_accuracy", mode="max",
                              max_t=cfg.proxy_epochs, grace_period=cfg.grace_epochs,
                              reduction_factor=cfg.reduction_factor)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=_searcher(cfg), scheduler=scheduler, num_samples=cfg.candidates,
                                    max_concurrent_trials=cfg.concurrent or None, reuse_actors=True,
                                    trial_name_creator=candidate_name, trial_dirname_creator=candidate_name),
        run_config=tune.RunConfig(name=f"search-{cfg.name}", storage_path=search.storage, verbose=1,
                                  progress_reporter=SearchReporter(cfg.candidates, cfg.proxy_epochs),
                                  callbacks=[CandidateCloser(search.context(), cfg.proxy_epochs)],
                                  failure_config=tune.FailureConfig(max_failures=cfg.max_failures)))


# --- 4. close -----------------------------------------------------------------------------------------------------
def settle_runs(search: Search, results) -> bool:
    """Mark the candidates Ray gave up on FAILED; True when every candidate was sampled and its run closed (False:
    the search was interrupted, and --resume continues it)."""
    uri, search_id = search.cfg.tracking_uri, search.cfg.name
    for r in results:
        if r.error is not None:  # the trial's folder is named like its run (progress.candidate_name)
            first_line = (str(r.error).strip().splitlines() or [""])[0]
            search_tracking.fail_candidate(uri, search.experiment_id, search_id, Path(r.path).name,
                                           f"{type(r.error).__name__}: {first_line}")
    trial_ids = {r.metrics["trial_id"] for r in results if r.metrics and "trial_id" in r.metrics}
    if len(results) < search.cfg.candidates or any(
            r.info.status == "RUNNING" and r.data.tags.get("trial_id") in trial_ids
            for r in search_tracking.candidate_runs(uri, search.experiment_id, search_id)):
        return False
    for name in search_tracking.close_orphans(uri, search.experiment_id, search_id, trial_ids):
        print(f"{name}: started before the driver was killed, unknown to the resumed search: marked KILLED",
              flush=True)
    return True


def close_search(search: Search, results, wall_seconds: float) -> dict:
    cfg, uri = search.cfg, search.cfg.tracking_uri
    client = tracking.MlflowClient(uri)
    if not settle_runs(search, results):
        client.set_terminated(search.parent_run_id, status="KILLED")
        raise SearchInterrupted(f"continue with `python -m orchestrator.search --resume --name {cfg.name}`")
    runs = search_tracking.candidate_runs(uri, search.experiment_id, cfg.name)
    epoch_seconds = {r.info.run_id: [m.value for m in client.get_metric_history(r.info.run_id, "epoch_seconds")]
                     for r in runs}
    rows = tables.rank(tables.candidate_rows(runs, cfg.proxy_epochs, epoch_seconds), cfg.objectives())
    cost = tables.cost_line(rows, cfg.cpus_per_trial, cfg.gpus_per_trial)
    md, csv_path = tables.write_table(rows, search.out_dir, cost)
    chosen = tables.selected(rows, cfg.top_k, pareto=len(cfg.objectives()) > 1)
    spec_files = tables.write_specs(chosen, search.out_dir)
    shared = tables.revalidation_flags(cfg.data_dir and search.data_dir, cfg.tracking_uri, cfg.experiment_name)
    commands, script = tables.write_revalidation(tables.longest_first(chosen, spec_files), cfg.revalidate_seeds,
                                                 cfg.name, search.out_dir, shared)
    for path in (md, csv_path, script, *spec_files):
        client.log_artifact(search.parent_run_id, str(path), artifact_path="search" if path.suffix != ".toml"
                            else "search/specs")
    best = [r["heldout_accuracy"] for r in rows if r["status"] == "done"][:1]  # rows are ranked
    metrics = {"search_wall_seconds": wall_seconds, "candidates_trained": len(rows),
               "candidate_hours": tables.candidate_hours(rows),
               "candidates_stopped_early": sum(r["status"] == "stopped" for r in rows),
               **({"best_heldout_accuracy": best[0]} if best else {})}
    for key, value in metrics.items():
        client.log_metric(search.parent_run_id, key, float(value))
    search_tracking.finish_search_run(uri, search.parent_run_id)
    return {"rows": rows, "chosen": chosen, "spec_files": spec_files, "commands": commands, "table": md, "cost": cost,
            "script": script, "wall_seconds": wall_seconds, "parent_run_id": search.parent_run_id}


def print_summary(search: Search, out: dict) -> None:
    cfg, rows = search.cfg, out["rows"]
    killed = sum(r["status"] == "killed" for r in rows)
    print(f"\nsearch {cfg.name} finished in {out['wall_seconds'] / 60:.1f} min: {len(rows) - killed} candidates, "
          f"{sum(r['status'] == 'stopped' for r in rows)} stopped early by ASHA"
          + (f" ({killed} more killed with an earlier driver)" if killed else "") + f"\n{out['cost']}\n", flush=True)
    print(tables.markdown_table(rows[:20]) + (f"... {len(rows) - 20} more in {out['table']}\n" if len(rows) > 20
                                              else ""))
    what = "the Pareto front" if len(cfg.objectives()) > 1 else f"the top {cfg.top_k}"
    print(f"next steps:\n  {what} ({len(out['spec_files'])} specs) re-validated under the full paper protocol with "
          f"{cfg.revalidate_seeds} seeds each, the first use of the test set ({out['script']}):")
    print("".join(f"    {shlex.join(c)}\n" for c in out["commands"])
          or "    (none: no candidate ran the whole proxy)\n")
    print(f"  every candidate is a nested run under run {cfg.name} ({out['parent_run_id']}) in experiment "
          f"{cfg.experiment_name!r} at {cfg.tracking_uri} (`make ui`)", flush=True)


def run_search(cfg: SearchConfig) -> dict:
    search = open_search(cfg)
    cfg = search.cfg
    size_cap = f" and {cfg.max_size_mb} MB" if cfg.max_size_mb else ""
    print(f"search {cfg.name}: {cfg.candidates} candidates within {cfg.max_params:,} parameters{size_cap}, proxy "
          f"{cfg.proxy_epochs} epochs on {cfg.proxy_per_class or 'all'} images per class, ranked on "
          f"{cfg.holdout_per_class} held-out training images per class; MLflow run {search.parent_run_id} in "
          f"{cfg.tracking_uri}", flush=True)
    tuner = build_tuner(search)
    started = time.perf_counter()
    results = tuner.fit()
    out = close_search(search, results, time.perf_counter() - started)
    print_summary(search, out)
    return {**out, "search": search}
