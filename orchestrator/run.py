"""`python -m orchestrator.run`: the paper's variants × seeds as parallel Ray Tune trials, tracked in MLflow.

Everything that can be checked is checked on the driver before any trial starts (config, data, tracking store,
storage path, Ray cluster), so bad input costs one line and a non-zero exit, never a half-run sweep.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # keep Tune's classic live table, with our columns
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import data  # noqa: E402
from orchestrator import records, tracking  # noqa: E402
from orchestrator.config import Config, ConfigError, parse_config  # noqa: E402

TABLE_COLUMNS = ["variant", "seed", "status", "epoch", "val_accuracy", "best_val_accuracy",
                 "latency_ms_per_image", "latency_ms_batch1"]


class SweepError(RuntimeError):
    """The sweep cannot start; the message says how to fix it."""


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict:
    import mlflow
    import ray
    import torch
    import torchvision
    return {"torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
            "ray_version": ray.__version__, "mlflow_version": mlflow.__version__,
            "python_version": platform.python_version()}


# --- checks made before any trial starts ----------------------------------------------------------
def check_data(cfg: Config) -> str:
    """Validate the data and the data flags; return the data's fingerprint when records need it."""
    root = data.resolve_data_dir(cfg.data_dir or None)
    if cfg.download:
        data.download_cifar10(root)
    # Reading both splits validates sizes and labels, and fails here rather than in every trial.
    train_x, train_y = data.load_cifar10(root, "train")
    test_x, test_y = data.load_cifar10(root, "test")
    # data/ raises plain ValueError for these two; name the flag so the user knows what to change.
    try:
        data.parse_focus_classes(cfg.focus_classes)
    except ValueError as e:
        raise ConfigError(f"--focus-classes: {e}") from None
    if cfg.subset_per_class:
        try:
            data.stratified_subset(train_x, train_y, cfg.subset_per_class, seed=0)
        except ValueError as e:
            raise ConfigError(f"--subset-per-class: {e}: pass a smaller N, or 0 for all images") from None
    return data.fingerprint(train_x, train_y, test_x, test_y) if cfg.results_dir else ""


def trials_to_run(cfg: Config, data_fingerprint: str) -> list[dict]:
    """The (variant, seed) pairs of this sweep, less those --skip-existing finds records of. Refuses a
    --results-dir holding records of another protocol, before anything runs."""
    pairs = [{"variant": v, "seed": s} for v in cfg.variants for s in cfg.seed_values()]
    if not cfg.results_dir:
        return pairs
    have = records.load_records(cfg.results_dir)
    records.check_one_protocol(have, cfg.results_dir, records.protocol_of(cfg, data_fingerprint))
    if cfg.skip_existing:
        done = {(r["variant"], r["seed"]) for r in have}
        pairs = [p for p in pairs if (p["variant"], p["seed"]) not in done]
    return pairs


def check_storage(path: str) -> str:
    if "://" in path:  # s3://, gs://, NFS mounts via file:// are checked by Ray/pyarrow themselves
        return path
    p = Path(path).expanduser().resolve()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"x" * 65536)
        probe.unlink()
    except OSError as e:
        raise SweepError(f"storage path {p} is not writable ({e.strerror}): free space or pass another "
                         f"--storage-path") from None
    return str(p)


def check_address(address: str) -> None:
    if not address or address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r} is not host:port: pass the head node's address, e.g. 10.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as e:
        raise SweepError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}): start it with "
                         f"`ray start --head` / `ray up cluster.yaml`, or drop --address for a local Ray") from None


def start_ray(cfg: Config) -> None:
    import ray
    from ray.exceptions import AuthenticationError
    check_address(cfg.address)
    try:
        if cfg.address:
            ray.init(address=cfg.address, ignore_reinit_error=True)
        elif not ray.is_initialized():  # a caller (a test, a notebook) may have started Ray already
            ray.init(include_dashboard=False)
    except (AuthenticationError, ConnectionError, RuntimeError, ValueError) as e:
        chain, cause = [], e  # Ray wraps the refusal: ConnectionError <- RuntimeError(text of AuthenticationError)
        while cause is not None:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        if any(isinstance(c, AuthenticationError) or "InvalidAuthToken" in str(c) for c in chain):
            # A cluster started with token auth (~/.ray/auth_token) refuses clients without its token, and Ray
            # sends the token to an explicit --address only when RAY_AUTH_MODE=token says so.
            where = f"the Ray cluster at {cfg.address or 'local'}"
            token = ("the head's token (`ray get-auth-token` there) in ~/.ray/auth_token, RAY_AUTH_TOKEN or "
                     "RAY_AUTH_TOKEN_PATH")
            if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                raise SweepError(f"{where} requires its auth token: set RAY_AUTH_MODE=token and put {token}") from None
            raise SweepError(f"{where} refused this token (or found none): put {token}") from None
        raise SweepError(f"cannot connect to Ray at {cfg.address or 'local'}: {str(e).splitlines()[0]}") from None
    cpus = ray.cluster_resources().get("CPU", 0)
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.cpus_per_trial > cpus:
        raise SweepError(f"--cpus-per-trial {cfg.cpus_per_trial} is more than the cluster's {cpus:g} CPUs: "
                         f"lower it or add nodes")
    if cfg.gpus_per_trial > 0 and cfg.gpus_per_trial > gpus:
        raise SweepError(f"--gpus-per-trial {cfg.gpus_per_trial:g} but the cluster has {gpus:g} GPUs: "
                         f"use --gpus-per-trial 0 or add GPU nodes")


# --- the sweep ------------------------------------------------------------------------------------
def new_sweep_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def check_resumable(cfg: Config, uri: str) -> None:
    """What --resume can refuse before opening the store, so a failed --resume leaves no new database behind."""
    # The id goes into an MLflow filter string: a quote there is an injection or a typo, never a sweep id.
    if cfg.sweep_id and not all(c.isalnum() or c in "-_." for c in cfg.sweep_id):
        raise SweepError(f"--sweep-id {cfg.sweep_id!r} is not a sweep id: pass the <id> of a parent run "
                         f"named sweep-<id> (e.g. 20250101-120000-abc123)")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise SweepError(f"no MLflow store at {uri[len('sqlite:///'):]}, so no sweep to resume: pass the "
                         f"--tracking-uri the sweep used, or start a new sweep without --resume")


def find_resumable(cfg: Config, experiment_id: str) -> tuple[str, str, Config, str]:
    """(sweep_id, parent_run_id, stored config, storage path) of the sweep to resume."""
    tags = {"kind": "sweep"}
    if cfg.sweep_id:
        tags["sweep_id"] = cfg.sweep_id
    runs = [r for r in tracking.find_runs(cfg.tracking_uri, experiment_id, **tags)
            if r.data.tags.get("sweep_status") != "finished"]
    if not runs:
        which = f"sweep {cfg.sweep_id!r}" if cfg.sweep_id else "an unfinished sweep"
        raise SweepError(f"found no {which} to resume in experiment {cfg.experiment_name!r} at "
                         f"{cfg.tracking_uri}: check --sweep-id/--tracking-uri, or start a new sweep without --resume")
    run = runs[0]
    stored = Config.from_dict(json.loads(run.data.tags["config_json"]))
    # Where to run may change between attempts; what to run may not.
    stored = Config.from_dict({**stored.to_dict(), "address": cfg.address, "resume": True, "report": cfg.report})
    return run.data.tags["sweep_id"], run.info.run_id, stored, run.data.tags["ray_storage_path"]


def trial_name(trial) -> str:
    return f"{trial.config['trial']['variant']}-seed{trial.config['trial']['seed']}"


def run_sweep(cfg: Config) -> dict:
    cfg = cfg.effective().validate()
    uri = tracking.resolve_tracking_uri(cfg.tracking_uri)
    cfg = Config.from_dict({**cfg.to_dict(), "tracking_uri": uri})
    # Cheap checks that write nothing come first, so bad input leaves no store, experiment or run behind.
    check_address(cfg.address)
    tracking.check_tracking(uri)
    if cfg.resume:
        check_resumable(cfg, uri)
        experiment_id = tracking.ensure_experiment(uri, cfg.experiment_name)
        sweep_id, parent_run_id, cfg, storage = find_resumable(cfg, experiment_id)
    else:
        sweep_id, parent_run_id, storage = new_sweep_id(), None, None
    data_fingerprint = check_data(cfg)
    pairs = trials_to_run(cfg, data_fingerprint)
    if not pairs:
        print(f"nothing to train: every (variant, seed) of this sweep has a record in {cfg.results_dir}", flush=True)
        return {"sweep_id": None, "summary": None, "failed_trials": [], "wall_seconds": 0.0}
    storage = check_storage(storage or cfg.storage_path)
    start_ray(cfg)
    if not cfg.resume:
        experiment_id = tracking.ensure_experiment(uri, cfg.experiment_name)

    from ray import tune
    from orchestrator.callbacks import RecordWriter
    from orchestrator.trainable import FAULT_ENV, run_trial

    seeds = list(cfg.seed_values())
    if parent_run_id is None:
        parent_run_id = tracking.start_sweep_run(uri, experiment_id, sweep_id, {
            "variants": ",".join(cfg.variants), "seeds": ",".join(map(str, seeds)), "git_commit": git_commit(),
            "command": shlex.join([sys.executable, "-m", "orchestrator.run", *sys.argv[1:]]),
            "host": socket.gethostname(), "ray_storage_path": storage, "config_json": json.dumps(cfg.to_dict()),
            **library_versions()})
        tracking.MlflowClient(uri).log_batch(parent_run_id, params=[
            tracking.Param(k, str(v)) for k, v in cfg.to_dict().items()])
    else:
        tracking.MlflowClient(uri).update_run(parent_run_id, status="RUNNING")
    skipped = len(cfg.variants) * len(seeds) - len(pairs)
    print(f"sweep {sweep_id}: {len(cfg.variants)} variants x {len(seeds)} seeds, {cfg.epochs} epochs"
          + (f", {skipped} skipped (records in {cfg.results_dir})" if skipped else "")
          + f"; MLflow run {parent_run_id} in {uri}", flush=True)

    sweep = {"sweep_id": sweep_id, "parent_run_id": parent_run_id, "experiment_id": experiment_id,
             "tracking_uri": uri, "fault": os.environ.get(FAULT_ENV, "")}
    trainable = tune.with_resources(run_trial, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    writer = RecordWriter(cfg.results_dir, cfg, sweep, records.protocol_of(cfg, data_fingerprint)) \
        if cfg.results_dir else None
    reporter = tune.CLIReporter(parameter_columns={"trial/variant": "variant", "trial/seed": "seed"},
                                metric_columns={"epoch": "epoch", "val_accuracy": "val_acc",
                                                "train_loss": "train_loss"},
                                max_report_frequency=30, sort_by_metric=False)
    path = str(Path(storage) / f"sweep-{sweep_id}") if "://" not in storage else f"{storage}/sweep-{sweep_id}"
    if cfg.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=None)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(pairs), "cfg": cfg.to_dict(), "sweep": sweep},
            tune_config=tune.TuneConfig(trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                                        reuse_actors=False),
            run_config=tune.RunConfig(name=f"sweep-{sweep_id}", storage_path=storage, progress_reporter=reporter,
                                      failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1,
                                      callbacks=[writer] if writer else None))
    started = time.perf_counter()
    results = tuner.fit()
    wall_seconds = time.perf_counter() - started
    if any(not r.error and not (r.metrics or {}).get("done") and not (r.metrics or {}).get("diverged")
           for r in results):
        # Ctrl-C: Tune saved its state (running trials as RUNNING) and returned, then stopped those trials. The
        # sweep is interrupted, not done: leave it resumable (never sweep_status=finished); main() says how.
        tracking.MlflowClient(uri).set_terminated(parent_run_id, status="KILLED")
        raise KeyboardInterrupt

    if writer:  # a trial that finished while an earlier driver died before writing its record
        for variant, seed in (variant_seed(r) for r in results if (r.metrics or {}).get("done")):
            if not (Path(cfg.results_dir) / records.record_name(variant, seed)).is_file():
                writer.write(variant, seed)
    summary = summarize(results)
    print(f"\nsweep {sweep_id} finished in {wall_seconds:.0f} s\n" + summary.to_string(index=False), flush=True)
    tracking.MlflowClient(uri).log_metric(parent_run_id, "sweep_wall_seconds", wall_seconds)
    failed_trials = close_errored_runs(uri, experiment_id, sweep_id, results)
    # A trial that crashed more than --max-failures times fails the sweep but leaves it resumable: --resume
    # retries exactly those trials from their last checkpoints. (Diverged trials are results, not failures.)
    tracking.finish_sweep_run(uri, parent_run_id, "FAILED" if failed_trials else "FINISHED")
    if cfg.report:
        from orchestrator.report import ReportError, build_report
        try:
            build_report(uri, cfg.experiment_name, sweep_id=sweep_id)
        except ReportError as e:  # e.g. every trial failed before it logged anything: the summary above says so
            print(f"no report: {e}", file=sys.stderr)
    return {"sweep_id": sweep_id, "parent_run_id": parent_run_id, "experiment_id": experiment_id,
            "summary": summary, "wall_seconds": wall_seconds, "storage_path": path, "failed_trials": failed_trials}


def variant_seed(result) -> tuple[str, int]:
    if result.config:
        return result.config["trial"]["variant"], int(result.config["trial"]["seed"])
    # Failed before its first report, so Ray kept no config; its folder is named <variant>-seed<k>.
    variant, _, seed = Path(result.path).name.rpartition("-seed")
    return variant, int(seed)


def close_errored_runs(uri: str, experiment_id: str, sweep_id: str, results) -> list[str]:
    """Names of the trials Ray gave up on. A trial killed outright (OOM, SIGKILL, lost node) could not end its
    own MLflow run: mark it FAILED with Ray's error, so the UI doesn't show it running forever."""
    failed = []
    client = tracking.MlflowClient(uri)
    for r in results:
        if not r.error:
            continue
        variant, seed = variant_seed(r)
        failed.append(f"{variant}-seed{seed}")
        for run in tracking.find_runs(uri, experiment_id, kind="trial", sweep_id=sweep_id, variant=variant,
                                      seed=str(seed)):
            if run.info.status == "RUNNING":
                first_line = (str(r.error).strip().splitlines() or [""])[0]
                client.set_tag(run.info.run_id, "failure_reason", f"{type(r.error).__name__}: {first_line}"[:4000])
                client.set_terminated(run.info.run_id, status="FAILED")
    return sorted(failed)


def summarize(results):
    import pandas as pd
    rows = []
    for r in results:
        m = r.metrics or {}
        status = "error" if r.error else ("diverged" if m.get("diverged") else "done")
        variant, seed = variant_seed(r)
        rows.append({"variant": variant, "seed": seed, "status": status,
                     **{c: m.get(c) for c in TABLE_COLUMNS[3:]}})
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return df.sort_values(["variant", "seed"]).reset_index(drop=True)


def main(argv=None) -> int:
    try:
        cfg = parse_config(argv, description=__doc__.splitlines()[0])
        out = run_sweep(cfg)
    except (ConfigError, data.DataError, tracking.TrackingError, SweepError, records.RecordError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: continue with `python -m orchestrator.run --resume`", file=sys.stderr)
        return 130
    if out["sweep_id"] is None:  # nothing left to train
        return 0
    if out["failed_trials"]:
        n, total = len(out["failed_trials"]), len(out["summary"])
        resume = f"python -m orchestrator.run --resume --sweep-id {out['sweep_id']}"
        print(f"error: {n} of {total} trials failed after --max-failures {cfg.max_failures} restarts "
              f"({', '.join(out['failed_trials'])}): each run's failure_reason in MLflow and error.txt "
              f"under {out['storage_path']} say why; `{resume}` retries them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
