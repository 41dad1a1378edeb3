"""The sweep driver: the paper's variants × seeds as parallel Ray Tune trials, tracked in MLflow.

A sweep is four steps: open it (check everything that can be checked, then start a new sweep or find the one to
resume), build the tuner, fit it, close it (records, summary, failed trials). Bad input costs one line and a
non-zero exit before any trial starts (orchestrator.sweep.preflight), never a half-run sweep. The command,
orchestrator.run, then adds the analysis: the parent run's summary metrics and the report.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import shlex
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # keep Tune's classic live table, with our columns
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import models  # noqa: E402
from orchestrator.cli import ignoring_interrupts, sigterm_as_ctrl_c  # noqa: E402
from orchestrator.sweep import preflight, records, tracking  # noqa: E402
from orchestrator.sweep.config import SweepConfig  # noqa: E402
from orchestrator.names import fused_trial_name, parse_ray_trial_name, trial_name  # noqa: E402
from orchestrator.sweep.preflight import SweepError  # noqa: E402

TABLE_COLUMNS = ["variant", "seed", "status", "epoch", "val_accuracy", "best_val_accuracy",
                 "latency_ms_per_image", "latency_ms_batch1"]
PERCENT_COLUMNS = ("val_accuracy", "best_val_accuracy")  # fractions in the trials' metrics; % as the tables show


@dataclass(frozen=True)
class Sweep:
    """One sweep as the driver runs it: its config, ids in MLflow and Ray, and the trials it trains."""
    cfg: SweepConfig
    sweep_id: str
    experiment_id: str
    parent_run_id: str
    storage: str                   # Ray Tune's storage root; the sweep's folder is `path`
    pairs: list[dict]              # {"variant", "seed"} of each (variant, seed) this sweep trains
    protocol: dict | None          # the records' protocol, with --results-dir
    source_tags: dict              # MLflow's standard source tags, for the parent and every trial run
    owns_ray: bool = False         # this driver started (or connected to) Ray: its caller did not
    specs: dict = field(default_factory=dict)  # --spec architectures by name, as models.to_dict gives them
    start_states: dict = field(default_factory=dict)  # (variant, seed): the --results-dir checkpoint it goes on from

    @property
    def path(self) -> str:
        sep = "/" if "://" in self.storage else os.sep
        return f"{self.storage.rstrip('/')}{sep}sweep-{self.sweep_id}"

    def trial_context(self) -> dict:
        """What every trial needs to know of the sweep beyond its TrainConfig."""
        from orchestrator.sweep.trainable import FAULT_ENV
        return {"sweep_id": self.sweep_id, "parent_run_id": self.parent_run_id, "experiment_id": self.experiment_id,
                "tracking_uri": self.cfg.tracking_uri, "cpus_per_trial": self.cfg.cpus_per_trial,
                "source_tags": self.source_tags, "fault": os.environ.get(FAULT_ENV, ""), "specs": self.specs}


def library_versions() -> dict:
    return {**{f"{name}_version": importlib.import_module(name).__version__
               for name in ("torch", "torchvision", "ray", "mlflow")}, "python_version": platform.python_version()}


# --- 1. open the sweep ------------------------------------------------------------------------------
def find_resumable(cfg: SweepConfig, experiment_id: str) -> tuple[str, str, SweepConfig, str]:
    """(sweep_id, parent_run_id, stored config, storage path) of the sweep to resume."""
    # The id may be given as Ray's folder name for the sweep, sweep-<id>.
    sweep_id = cfg.sweep_id.removeprefix("sweep-")
    tags = {"kind": "sweep", **({"sweep_id": sweep_id} if sweep_id else {})}
    runs = [r for r in tracking.find_runs(cfg.tracking_uri, experiment_id, **tags)
            if r.data.tags.get("sweep_status") != "finished"]
    if not runs:
        which = f"sweep {sweep_id!r}" if sweep_id else "an unfinished sweep"
        raise SweepError(f"found no {which} to resume in experiment {cfg.experiment_name!r} at "
                         f"{cfg.tracking_uri}: check --sweep-id/--tracking-uri, or start a new sweep without --resume")
    run = runs[0]
    # Where to run may change between attempts; what to run may not.
    stored = SweepConfig.from_flags(json.loads(run.data.tags["config_json"])).replace(
        address=cfg.address, resume=True, report=cfg.report)
    return run.data.tags["sweep_id"], run.info.run_id, stored, run.data.tags["ray_storage_path"]


def start_parent_run(cfg: SweepConfig, experiment_id: str, sweep_id: str, storage: str, source_tags: dict,
                     fuse_reason: str) -> str:
    flags, client = cfg.to_flags(), tracking.MlflowClient(cfg.tracking_uri)  # fuse_seeds decided: --resume keeps it
    parent_run_id = client.create_run(experiment_id, run_name=f"sweep-{sweep_id}", tags={
        "kind": "sweep", "sweep_id": sweep_id, **source_tags, "variants": ",".join(cfg.variants),
        "seeds": ",".join(map(str, cfg.seed_values())), "fuse_seeds": cfg.fuse_seeds, "fuse_seeds_reason": fuse_reason,
        "git_commit": records.git_state()["git_commit"],
        "command": shlex.join([sys.executable, "-m", "orchestrator.run", *sys.argv[1:]]),
        "host": socket.gethostname(), "ray_storage_path": storage, "config_json": json.dumps(flags),
        **library_versions()}).info.run_id
    client.log_batch(parent_run_id, params=[tracking.Param(k, str(v)) for k, v in flags.items()])
    return parent_run_id


def open_sweep(cfg: SweepConfig) -> Sweep | None:
    """Check everything, then start a new sweep or reopen the one to resume; None when nothing is left to train."""
    cfg = cfg.validate().replace(tracking_uri=tracking.resolve_tracking_uri(cfg.tracking_uri))
    uri = cfg.tracking_uri
    # Cheap checks that write nothing come first, so bad input leaves no store, experiment or run behind.
    preflight.check_address(cfg.address)
    preflight.check_device(cfg)
    preflight.check_output_dirs(cfg)
    tracking.check_tracking(uri)
    sweep_id, parent_run_id, storage = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6], None, None
    if cfg.resume:
        preflight.check_resumable(cfg, uri)
        sweep_id, parent_run_id, cfg, storage = find_resumable(cfg, tracking.ensure_experiment(uri, cfg.experiment_name))
        preflight.check_device(cfg)  # the stored config's --device and output folders
        preflight.check_output_dirs(cfg)
    for name, spec in cfg.specs().items():  # this process builds them too (preflight, records, the report)
        models.register_spec(name, spec)
    data_fingerprint = preflight.check_data(cfg)
    protocol = records.protocol_of(cfg.train, data_fingerprint) if cfg.results_dir else None
    pairs = preflight.trials_to_run(cfg, data_fingerprint)
    if not pairs:
        print(f"nothing to train: every (variant, seed) of this sweep has a record in {cfg.results_dir}", flush=True)
        return None
    start_states = preflight.checkpoints_to_resume(cfg, pairs, protocol)
    storage = preflight.check_storage(storage or cfg.storage_path)
    owns_ray = preflight.start_ray(cfg)
    cfg, fuse_reason = choose_fuse_seeds(cfg, pairs, resumed=parent_run_id is not None)
    print(f"fuse seeds: {cfg.fuse_seeds} ({fuse_reason})", flush=True)
    experiment_id, parent_run_id, source_tags = tracking.open_parent_run(
        uri, cfg.experiment_name, records.git_state()["git_commit"], parent_run_id,
        lambda experiment_id, tags: start_parent_run(cfg, experiment_id, sweep_id, storage, tags, fuse_reason))
    specs = {name: models.to_dict(spec) for name, spec in cfg.specs().items()}
    return Sweep(cfg, sweep_id, experiment_id, parent_run_id, storage, pairs, protocol, source_tags, owns_ray, specs,
                 start_states)


def choose_fuse_seeds(cfg: SweepConfig, pairs: list[dict], resumed: bool) -> tuple[SweepConfig, str]:
    """The config with --fuse-seeds decided (on or off), and why. auto looks at the cluster Ray is now up on
    (preflight.fuse_seeds_choice); a resumed sweep keeps the choice it started with, as its stored config says."""
    if cfg.fuse_seeds != "auto":
        return cfg, "as the sweep being resumed started" if resumed else f"--fuse-seeds {cfg.fuse_seeds}"
    import ray
    fuse, why = preflight.fuse_seeds_choice(pairs, ray.cluster_resources(), cfg.cpus_per_trial, cfg.gpus_per_trial)
    return cfg.replace(fuse_seeds="on" if fuse else "off"), f"auto: {why}"


# --- 2. build the tuner -------------------------------------------------------------------------------
def trial_specs(sweep: Sweep) -> list[dict]:
    """One Tune trial per (variant, seed), or with fused seeds one per variant: {"variant", "seeds": [...]}. Fused
    seeds train in step, so a variant's seeds resuming from checkpoints of different epochs are separate trials,
    each with "resumes_after_epoch" (the ETA counts those epochs done). Tune starts trials in this order as slots
    free up, so those with the most epochs left come first: the last trial to start is then a short one, not a
    whole run alone on a cluster of idle slots."""
    def start(variant: str, seed: int) -> int:
        return sweep.start_states.get((variant, seed), {}).get("epoch", 0)

    def spec(variant: str, seeds: dict, epoch: int) -> dict:
        return {"variant": variant, **seeds, **({"resumes_after_epoch": epoch} if epoch else {})}

    if sweep.cfg.fuse_seeds != "on":
        specs = [spec(p["variant"], {"seed": p["seed"]}, start(p["variant"], p["seed"])) for p in sweep.pairs]
        return sorted(specs, key=lambda s: s.get("resumes_after_epoch", 0))
    groups: dict[tuple, list[int]] = {}  # in order, once each
    for p in sweep.pairs:
        groups.setdefault((p["variant"], start(p["variant"], p["seed"])), []).append(p["seed"])
    by_epochs_left = sorted(groups.items(), key=lambda group: group[0][1])
    return [spec(variant, {"seeds": seeds}, epoch) for (variant, epoch), seeds in by_epochs_left]


def _tune_trial_name(trial) -> str:
    spec = trial.config["trial"]
    return fused_trial_name(spec["variant"], spec["seeds"]) if "seeds" in spec else trial_name(spec["variant"],
                                                                                             spec["seed"])


def build_tuner(sweep: Sweep):
    from ray import tune
    from orchestrator.sweep.callbacks import RecordWriter, SweepReporter
    from orchestrator.sweep.trainable import run_trial
    cfg = sweep.cfg
    # The start states travel through Ray's object store (with_parameters), so trials on any node get them.
    trainable = tune.with_resources(tune.with_parameters(run_trial, start_states=sweep.start_states),
                                    {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    param_space = {"trial": tune.grid_search(trial_specs(sweep)), "train": cfg.train.to_dict(),
                   "sweep": sweep.trial_context()}
    if cfg.resume and tune.Tuner.can_restore(sweep.path):
        # Tune's saved state holds no search space. Given again, a state Tune cannot read (a driver killed while
        # writing it) restarts this grid, whose finished trials find their runs finished and train nothing.
        return tune.Tuner.restore(sweep.path, trainable=trainable, param_space=param_space, resume_unfinished=True,
                                  resume_errored=True)
    callbacks = [RecordWriter(cfg.results_dir, cfg.train, sweep.trial_context(), sweep.protocol)] \
        if sweep.protocol else None
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(trial_name_creator=_tune_trial_name, trial_dirname_creator=_tune_trial_name,
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=f"sweep-{sweep.sweep_id}", storage_path=sweep.storage,
                                  progress_reporter=SweepReporter(), callbacks=callbacks, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


# --- 4. close the sweep -------------------------------------------------------------------------------
def pairs_of(result) -> list[tuple[str, int]]:
    """The (variant, seed) pairs a Tune result stands for: one, or every seed of a fused trial."""
    if not result.config:  # failed before its first report: Ray kept no config, but its folder has the name
        return parse_ray_trial_name(Path(result.path).name)
    spec = result.config["trial"]
    return [(spec["variant"], int(s)) for s in spec.get("seeds", [spec.get("seed")])]


def seed_outcomes(result) -> list[tuple[str, int, str, dict]]:
    """(variant, seed, status, last metrics) per pair: status error, diverged or done (or unfinished)."""
    metrics, outcomes = result.metrics or {}, []
    for variant, seed in pairs_of(result):
        seed_metrics = (metrics.get("per_seed") or {}).get(str(seed), metrics)
        diverged = seed_metrics.get("diverged") or seed_metrics.get("status") == "diverged"
        status = ("error" if result.error else "diverged" if diverged else
                  "done" if metrics.get("done") else "unfinished")
        outcomes.append((variant, seed, status, seed_metrics))
    return outcomes


def write_missing_records(sweep: Sweep, results) -> None:
    """Records of trials that finished while an earlier driver died before writing them."""
    from orchestrator.sweep.callbacks import RecordWriter
    writer = RecordWriter(sweep.cfg.results_dir, sweep.cfg.train, sweep.trial_context(), sweep.protocol)
    for variant, seed, status, _ in (o for r in results for o in seed_outcomes(r)):
        if status == "done" and not (Path(sweep.cfg.results_dir) / records.record_name(variant, seed)).is_file():
            writer.write(variant, seed)


def close_errored_runs(sweep: Sweep, results) -> list[str]:
    """Names of the trials Ray gave up on. A trial killed outright (OOM, SIGKILL, lost node) could not end its
    own MLflow run: mark it FAILED with Ray's error, so the UI doesn't show it running forever."""
    failed, uri, client = [], sweep.cfg.tracking_uri, tracking.MlflowClient(sweep.cfg.tracking_uri)
    for r, (variant, seed) in ((r, pair) for r in results if r.error for pair in pairs_of(r)):
        failed.append(trial_name(variant, seed))
        for run in tracking.find_runs(uri, sweep.experiment_id, kind="trial", sweep_id=sweep.sweep_id,
                                      variant=variant, seed=str(seed)):
            if run.info.status == "RUNNING":
                first_line = (str(r.error).strip().splitlines() or [""])[0]
                client.set_tag(run.info.run_id, "failure_reason", f"{type(r.error).__name__}: {first_line}"[:4000])
                client.set_terminated(run.info.run_id, status="FAILED")
    return sorted(failed)


def summarize(results):
    import pandas as pd
    rows = [{"variant": variant, "seed": seed, "status": status, **{c: m.get(c) for c in TABLE_COLUMNS[3:]}}
            for r in results for variant, seed, status, m in seed_outcomes(r)]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS).sort_values(["variant", "seed"]).reset_index(drop=True)


def summary_text(summary, train_cfg) -> str:
    """The summary as the console shows it: accuracies in % (as the report's tables), and a warning line when
    the protocol is not the paper's (as report.md says)."""
    shown = summary.rename(columns={c: f"{c}_pct" for c in PERCENT_COLUMNS})
    for c in PERCENT_COLUMNS:
        shown[f"{c}_pct"] = [f"{100 * x:.2f}" if x == x and x is not None else "-" for x in summary[c]]
    text = shown.to_string(index=False, na_rep="-")
    if differences := records.differences_from_paper(records.protocol_of(train_cfg, "")):
        text += (f"\n⚠ not the paper's protocol: {'; '.join(differences)}. Accuracies are not comparable with "
                 f"the paper's.")
    return text


def close_sweep(sweep: Sweep, results, wall_seconds: float) -> dict:
    client = tracking.MlflowClient(sweep.cfg.tracking_uri)
    if any(not r.error and not any((r.metrics or {}).get(k) for k in ("done", "diverged")) for r in results):
        # Ctrl-C or SIGTERM: Tune saved its state (running trials as RUNNING) and returned, then stopped those
        # trials. The sweep is interrupted, not done: run_sweep ends its runs KILLED, resumable.
        raise KeyboardInterrupt
    if sweep.protocol:
        write_missing_records(sweep, results)
    summary = summarize(results)
    print(f"\nsweep {sweep.sweep_id} finished in {wall_seconds:.0f} s\n" + summary_text(summary, sweep.cfg.train),
          flush=True)
    client.log_metric(sweep.parent_run_id, "sweep_wall_seconds", wall_seconds)
    failed_trials = close_errored_runs(sweep, results)
    # A trial that crashed more than --max-failures times fails the sweep but leaves it resumable: --resume
    # retries exactly those trials from their last checkpoints. (Diverged trials are results, not failures.)
    status = "FAILED" if failed_trials else "FINISHED"
    client.set_tag(sweep.parent_run_id, "sweep_status", status.lower())
    client.set_terminated(sweep.parent_run_id, status=status)
    return {"sweep_id": sweep.sweep_id, "parent_run_id": sweep.parent_run_id, "experiment_id": sweep.experiment_id,
            "summary": summary, "wall_seconds": wall_seconds, "storage_path": sweep.path,
            "failed_trials": failed_trials, "cfg": sweep.cfg}


# --- the four steps -----------------------------------------------------------------------------------------
def run_sweep(cfg: SweepConfig) -> dict | None:
    """Run one sweep; None when --skip-existing left nothing to train."""
    sweep = open_sweep(cfg)
    if sweep is None:
        return None
    skipped = len(sweep.cfg.variants) * len(sweep.cfg.seed_values()) - len(sweep.pairs)
    print(f"sweep {sweep.sweep_id}: {len(sweep.cfg.variants)} variants x {len(sweep.cfg.seed_values())} seeds, "
          f"{sweep.cfg.train.epochs} epochs" + (f", {skipped} skipped (records in {cfg.results_dir})" if skipped else "")
          + f"; MLflow run {sweep.parent_run_id} in {sweep.cfg.tracking_uri}", flush=True)
    results = None
    try:
        tuner = build_tuner(sweep)
        started = time.perf_counter()
        with sigterm_as_ctrl_c():
            results = tuner.fit()
        return close_sweep(sweep, results, time.perf_counter() - started)
    except (KeyboardInterrupt, SystemExit):
        end_interrupted(sweep, trials_stopped=results is not None)
        raise


def end_interrupted(sweep: Sweep, trials_stopped: bool) -> None:
    """End the interrupted sweep's parent run and its open trial runs KILLED, resumable. A further Ctrl-C or
    SIGTERM meanwhile is ignored: it would leave some runs RUNNING forever, and the sweep is stopping anyway.
    Interrupted twice, fit() is cut short before Tune stopped the trials, which would then end their runs
    FAILED after these are marked: Ray stops them first (unless the caller runs Ray: a test, a notebook)."""
    with ignoring_interrupts():
        if not trials_stopped and sweep.owns_ray:
            import ray
            ray.shutdown()
        try:
            tracking.end_open_runs(sweep.cfg.tracking_uri, sweep.experiment_id, sweep.sweep_id, "KILLED")
        except Exception as e:  # the store is gone too: the interruption is what the user must hear about
            print(f"warning: sweep {sweep.sweep_id}'s runs may still show RUNNING in MLflow ({type(e).__name__})",
                  file=sys.stderr)
