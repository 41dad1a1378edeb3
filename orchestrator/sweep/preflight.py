"""Checks the driver makes before any trial starts: config against the data, records, storage, the Ray cluster.

Each raises with one line naming the problem and the fix, so bad input never starts a half-run sweep.
"""
from __future__ import annotations

import math
import os
import socket
import uuid
from collections import Counter
from pathlib import Path

import data
from orchestrator.sweep import records
from orchestrator.sweep.config import ConfigError, SweepConfig
from orchestrator.cli import directory_problem
from orchestrator.names import sqlite_path


class SweepError(RuntimeError):
    """The sweep cannot start; the message says how to fix it."""


def check_data(cfg: SweepConfig) -> str:
    """Validate the data and the data flags; return the data's fingerprint when records need it."""
    train_cfg = cfg.train
    root = data.resolve_data_dir(train_cfg.data_dir or None)
    if cfg.download:
        data.download_cifar10(root)
    # Reading both splits validates sizes and labels, and fails here rather than in every trial.
    train_x, train_y = data.load_cifar10(root, "train")
    test_x, test_y = data.load_cifar10(root, "test")
    # data/ raises plain ValueError for these two; name the flag so the user knows what to change.
    try:
        data.parse_focus_classes(train_cfg.focus_classes)
    except ValueError as e:
        raise ConfigError(f"--focus-classes: {e}") from None
    if train_cfg.subset_per_class:
        try:
            data.stratified_subset(train_x, train_y, train_cfg.subset_per_class, seed=0)
        except ValueError as e:
            raise ConfigError(f"--subset-per-class: {e}: pass a smaller N, or 0 for all images") from None
    return data.fingerprint(train_x, train_y, test_x, test_y) if cfg.results_dir else ""


def trials_to_run(cfg: SweepConfig, data_fingerprint: str) -> list[dict]:
    """The (variant, seed) pairs of this sweep, less those --skip-existing finds records of. Refuses a
    --results-dir holding records of another protocol, or (with --skip-existing) a record of a spec variant
    whose file has changed since, before anything runs."""
    pairs = [{"variant": v, "seed": s} for v in cfg.variants for s in cfg.seed_values()]
    if not cfg.results_dir:
        return pairs
    have = records.load_records(cfg.results_dir)
    records.check_one_protocol(have, cfg.results_dir, records.protocol_of(cfg.train, data_fingerprint))
    if cfg.skip_existing:
        for r in have:  # records written before specs carry no hash, and are of the code's architecture
            trained = r.get("spec_hash", "-")
            if r["variant"] in cfg.variants and trained not in ("-", records.architecture_hash(r["variant"])):
                raise records.RecordError(
                    f"{Path(cfg.results_dir) / records.record_name(r['variant'], r['seed'])} is of another "
                    f"architecture than {r['variant']!r} now is: delete it to train that seed again, or give the "
                    f"changed spec another name")
        done = {(r["variant"], r["seed"]) for r in have}
        pairs = [p for p in pairs if (p["variant"], p["seed"]) not in done]
    return pairs


def checkpoints_to_resume(cfg: SweepConfig, pairs: list[dict], protocol: dict | None) -> dict[tuple[str, int], dict]:
    """With --skip-existing, the state each pair goes on from when --results-dir keeps its checkpoint
    (records.write_seed_checkpoint), by (variant, seed); one line on the console for each."""
    if not (cfg.skip_existing and protocol):
        return {}
    states, protocol_hash = {}, records.protocol_hash(protocol)
    for p in pairs:
        variant, seed = p["variant"], p["seed"]
        state = records.load_seed_checkpoint(cfg.results_dir, variant, seed, protocol_hash,
                                             records.architecture_hash(variant))
        if state is not None:
            states[(variant, seed)] = state
            print(f"resuming {variant}-seed{seed} after epoch {state['epoch']} from "
                  f"{records.seed_checkpoint_path(cfg.results_dir, variant, seed)}", flush=True)
    return states


def check_output_dirs(cfg: SweepConfig) -> None:
    """--results-dir and a local --storage-path must be (or become) directories, the records' one writable: a
    file there would otherwise cost the whole sweep's records, found only when the first trial ends. Creates
    nothing. (check_storage then writes into the storage path, which finds a full or read-only disk too.)"""
    outputs = [("--results-dir", cfg.results_dir, True)] if cfg.results_dir else []
    if "://" not in cfg.storage_path:
        outputs.append(("--storage-path", cfg.storage_path, False))
    for flag, path, writable in outputs:
        if problem := directory_problem(path, writable):
            raise SweepError(f"{flag} {path} {problem}: pass a writable directory")


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


def check_device(cfg: SweepConfig) -> None:
    """--device cuda on a local Ray needs a CUDA device that this driver's torch sees: its trials run on this
    machine. With --address the trials run on the cluster's nodes, whose GPUs start_ray checks instead."""
    if cfg.train.device != "cuda" or cfg.address:
        return
    import torch
    if not torch.cuda.is_available():
        why = "a CPU-only build" if torch.version.cuda is None else "no NVIDIA GPU or driver visible"
        raise SweepError(f"--device cuda but torch sees no CUDA device (torch {torch.__version__}: {why}): run on "
                         f"a GPU machine with a CUDA build of torch, or pass --device auto (or cpu)")


def start_ray(cfg: SweepConfig) -> bool:
    """Start (or connect to) Ray and check the cluster's resources; whether this call did it, so that the
    driver leaves alone a Ray its caller (a test, a notebook) started."""
    import ray
    from ray.exceptions import AuthenticationError
    check_address(cfg.address)
    started = not ray.is_initialized()
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
    cpus, gpus = (ray.cluster_resources().get(kind, 0) for kind in ("CPU", "GPU"))
    if cfg.cpus_per_trial > cpus:
        raise SweepError(f"--cpus-per-trial {cfg.cpus_per_trial} is more than the cluster's {cpus:g} CPUs: "
                         f"lower it or add nodes")
    if cfg.gpus_per_trial > 0 and cfg.gpus_per_trial > gpus:
        fix = "add GPU nodes" if cfg.train.device == "cuda" else "use --gpus-per-trial 0 or add GPU nodes"
        raise SweepError(f"--gpus-per-trial {cfg.gpus_per_trial:g} but the cluster has {gpus:g} GPUs: {fix}")
    return started


def check_resumable(cfg: SweepConfig, uri: str) -> None:
    """What --resume can refuse before opening the store, so a failed --resume leaves no new database behind."""
    # The id goes into an MLflow filter string: a quote there is an injection or a typo, never a sweep id.
    if cfg.sweep_id and not all(c.isalnum() or c in "-_." for c in cfg.sweep_id):
        raise SweepError(f"--sweep-id {cfg.sweep_id!r} is not a sweep id: pass the <id> of a parent run "
                         f"named sweep-<id> (e.g. 20250101-120000-abc123)")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise SweepError(f"no MLflow store at {db}, so no sweep to resume: pass the --tracking-uri the sweep "
                         f"used, or start a new sweep without --resume")


def fuse_seeds_choice(pairs: list, resources: dict, cpus_per_trial: int, gpus_per_trial: float) -> tuple[bool, str]:
    """Whether `--fuse-seeds auto` fuses each variant's seeds into one trial, and why (for the console and the
    parent run): when the (variant, seed) `pairs` to train (dicts or tuples) outnumber the trials the cluster runs
    at once (`resources`: ray.cluster_resources()), as fused trials take fewer, faster steps; else one trial a pair."""
    cpus = resources.get("CPU", 0)
    slots, why = int(cpus // cpus_per_trial), f"{cpus:g} CPUs / {cpus_per_trial} per trial"
    if gpus_per_trial > 0:
        gpus = resources.get("GPU", 0)
        gpu_slots = math.floor(gpus / gpus_per_trial + 1e-9)  # 1 GPU / 0.1 is 10 slots, not 9.0 of float //
        if gpu_slots < slots:
            slots, why = gpu_slots, f"{gpus:g} GPUs / {gpus_per_trial:g} per trial"
    counts = f"{len(pairs)} (variant, seed) pairs, {slots} trial slots: {why}"
    if max(Counter(p["variant"] if isinstance(p, dict) else p[0] for p in pairs).values(), default=0) < 2:
        return False, f"{counts}; one seed per variant, nothing to fuse"
    return len(pairs) > slots, counts
