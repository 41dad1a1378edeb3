"""Trial records: one plain JSON file per finished (variant, seed), portable beyond the MLflow store.

    DIR/<variant>-seed<k>.json   {"schema_version", "variant", "seed", "protocol", "protocol_hash", "speed",
                                  "measurement", "environment", "history", "final", "mlflow", "weights"}
    DIR/<variant>-seed<k>.pt     the trained model's final state dict (`torch.load(path, weights_only=True)`)
    DIR/<variant>-seed<k>.checkpoint.pt   while the seed trains: its state after its latest epoch, so that
                                 `--skip-existing` on any machine goes on from there; removed once its record lands

`protocol` holds every setting that changes what a trial computes, plus a digest of the data, and
`protocol_hash` is the hash of exactly that: records of one hash are one experiment and may be averaged.
Speed options that keep the maths (fused seeds, compile, memory format, fused kernels, denormal flushing, CUDA
graph, device) are recorded apart, outside the hash, as they took effect in the trial. A record names no host and
no user. Files are written atomically: a crash leaves the old file or the new one, never half of one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tempfile
from pathlib import Path

from orchestrator.names import trial_name

SCHEMA_VERSION = 1
# Config fields that change what a trial computes (its protocol). `focus_classes` is stored as label indices.
PROTOCOL_FIELDS = ("epochs", "batch_size", "lr", "beta1", "beta2", "eps", "weight_decay", "lr_factor",
                   "lr_patience", "lr_threshold", "augment", "focus_classes", "subset_per_class")
# Config fields that change only how fast it is computed.
SPEED_FIELDS = ("channels_last", "fused_adam", "compile", "flush_denormal", "cuda_graph", "device")
MEASUREMENT_FIELDS = ("latency_batch1_calls", "export", "export_calibration_images")
REQUIRED_KEYS = ("variant", "seed", "protocol", "protocol_hash", "history", "final")


class RecordError(ValueError):
    """A record that cannot be used (corrupt, another schema, another protocol); one line naming the fix."""


def protocol_of(cfg, data_fingerprint: str) -> dict:
    """The protocol of `cfg` (its effective values, so --quick is 2 epochs) on data with this fingerprint."""
    from data import parse_focus_classes
    return {**{name: getattr(cfg, name) for name in PROTOCOL_FIELDS},
            "focus_classes": list(parse_focus_classes(cfg.focus_classes)), "data_fingerprint": data_fingerprint}


def paper_protocol() -> dict:
    from orchestrator.training.config import TrainConfig
    return protocol_of(TrainConfig(), "")


def differences_from_paper(protocol: dict) -> list[str]:
    """How a protocol differs from the paper's, one phrase per field ("epochs 2 (paper 10)"); empty when it is
    the paper's. The data's fingerprint is not compared: the paper's copy of CIFAR-10 is not at hand."""
    paper = paper_protocol()
    return [f"{name} {protocol.get(name)!r} (paper {paper[name]!r})" for name in PROTOCOL_FIELDS
            if protocol.get(name) != paper[name]]


def protocol_hash(protocol: dict) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


def record_name(variant: str, seed: int) -> str:
    return f"{trial_name(variant, seed)}.json"


def git_state() -> dict:
    """The commit of the code that ran and whether tracked files differed from it."""
    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                 cwd=Path(__file__).resolve().parent)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit or "unknown", "git_dirty": None if status is None else bool(status)}


def _write_atomically(path: Path, content: bytes) -> Path:
    """`content` into a temp file beside `path`, fsync, rename: a crash leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_record(results_dir: str | os.PathLike, record: dict) -> Path:
    text = json.dumps(record, indent=1, sort_keys=True, allow_nan=True) + "\n"
    return _write_atomically(Path(results_dir) / record_name(record["variant"], record["seed"]), text.encode())


def write_weights(results_dir: str | os.PathLike, variant: str, seed: int, source: str | os.PathLike) -> dict:
    """Copy a trial's state-dict file to results_dir/<variant>-seed<k>.pt atomically; return the record's
    "weights" entry (file name, bytes, sha256), written before the record so that no record lacks its weights."""
    content = Path(source).read_bytes()
    path = _write_atomically(Path(results_dir) / f"{trial_name(variant, seed)}.pt", content)
    return {"file": path.name, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}


def load_record(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RecordError(f"record {path} is not readable JSON ({str(e).splitlines()[0]}): delete it to "
                          f"train that trial again, or restore it from git") from None
    if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
        found = record.get("schema_version") if isinstance(record, dict) else type(record).__name__
        raise RecordError(f"record {path} has schema version {found!r}, this code reads {SCHEMA_VERSION}: "
                          f"rebuild it with this version's orchestrator.run or move it to another folder")
    if missing := [k for k in REQUIRED_KEYS if k not in record]:
        raise RecordError(f"record {path} lacks {', '.join(missing)}: it is incomplete; delete it to train "
                          f"that trial again")
    if protocol_hash(record["protocol"]) != record["protocol_hash"]:
        raise RecordError(f"record {path}: its protocol_hash does not match its protocol (edited by hand?): "
                          f"restore it from git, or delete it to train that trial again")
    if path.name != record_name(record["variant"], record["seed"]):
        raise RecordError(f"record {path} holds {record['variant']}-seed{record['seed']}: rename it "
                          f"{record_name(record['variant'], record['seed'])} or delete it")
    return record


def load_records(results_dir: str | os.PathLike) -> list[dict]:
    folder = Path(results_dir)
    return [load_record(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def check_one_protocol(records: list[dict], where: str, protocol: dict | None = None) -> None:
    """Refuse a folder whose records are of more than one protocol, or of another one than `protocol`."""
    reference = protocol if protocol is not None else (records[0]["protocol"] if records else None)
    for record in records:
        differs = sorted(k for k in {*reference, *record["protocol"]} if reference.get(k) != record["protocol"].get(k))
        if differs:
            name = record_name(record["variant"], record["seed"])
            against = "this sweep" if protocol is not None else record_name(records[0]["variant"], records[0]["seed"])
            raise RecordError(f"{where}/{name} was trained under another protocol than {against} (differs in "
                              f"{', '.join(differs)}): use another --results-dir for another protocol")


def record_from_run(client, run_id: str, cfg, protocol: dict, git: dict) -> dict:
    """The record of a finished trial, read back from its MLflow child run: the numbers it logged, exactly."""
    from orchestrator.training.metrics import EPOCH_METRICS, EXPORT_METRICS, FINAL_METRICS
    run = client.get_run(run_id)
    tags, metrics = run.data.tags, run.data.metrics
    by_epoch: dict[int, dict] = {}
    for key in EPOCH_METRICS:
        for m in client.get_metric_history(run_id, key):
            by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return {
        "schema_version": SCHEMA_VERSION, "variant": tags["variant"], "seed": int(tags["seed"]),
        "protocol": protocol, "protocol_hash": protocol_hash(protocol),
        # What took effect, as the trial tagged it; a run from before that tag has only what was asked for.
        "speed": json.loads(tags["speed_json"]) if "speed_json" in tags else
        {name: getattr(cfg, name) for name in SPEED_FIELDS},
        "measurement": {**{name: getattr(cfg, name) for name in MEASUREMENT_FIELDS},
                        "latency_threads": int(tags.get("latency_threads", 1))},
        "environment": {**git, "torch_version": tags.get("torch_version"),
                        "python_version": tags.get("python_version"), "device": tags.get("latency_device"),
                        "hardware": tags.get("latency_hardware"),
                        "denormals_flushed": tags.get("flush_denormal") == "true"},
        "history": [by_epoch[epoch] for epoch in sorted(by_epoch)],
        "final": {key: metrics[key] for key in (*FINAL_METRICS, *EXPORT_METRICS) if key in metrics},
        "mlflow": {"run_id": run_id, "experiment_id": run.info.experiment_id, "sweep_id": tags.get("sweep_id")},
        # The architecture trained, as data (models.from_dict reads it back), and its hash.
        **({"spec": json.loads(tags["spec_json"]), "spec_hash": tags["spec_hash"]} if "spec_json" in tags else {}),
    }


# --- checkpoints of unfinished seeds ---------------------------------------------------------------------------
# Ray's and MLflow's stores live on the machine that ran the sweep; the results folder is what travels (git, a
# copy). A seed's latest epoch is kept in it too, so a long trial can go on elsewhere, exactly where it stopped.
def seed_checkpoint_path(results_dir: str | os.PathLike, variant: str, seed: int) -> Path:
    return Path(results_dir) / f"{trial_name(variant, seed)}.checkpoint.pt"


def architecture_hash(variant: str) -> str | None:
    """The spec hash of the architecture registered as `variant` (None for one built by code)."""
    import models
    spec = models.registered_spec(variant)
    return models.spec_hash(spec) if spec is not None else None


def write_seed_checkpoint(results_dir: str | os.PathLike, variant: str, seed: int, state: dict, protocol: str,
                          spec: str | None) -> Path:
    """Seed `seed`'s checkpoint (a trial's `state` after an epoch) with the protocol and spec hashes it belongs to."""
    import torch
    buffer = io.BytesIO()
    torch.save({"variant": variant, "seed": seed, "protocol_hash": protocol, "spec_hash": spec, "state": state}, buffer)
    return _write_atomically(seed_checkpoint_path(results_dir, variant, seed), buffer.getvalue())


def load_seed_checkpoint(results_dir: str | os.PathLike, variant: str, seed: int, protocol: str,
                         spec: str | None) -> dict | None:
    """The state a seed resumes from, or None when it has no checkpoint; a checkpoint that is unreadable or of
    another protocol or architecture is one RecordError line."""
    import torch
    path = seed_checkpoint_path(results_dir, variant, seed)
    if not path.is_file():
        return None
    fix = f"delete it to train {trial_name(variant, seed)} from the start"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)  # data, never code
    except Exception as e:
        raise RecordError(f"checkpoint {path} is not readable ({type(e).__name__}): {fix}") from None
    if not isinstance(saved, dict) or "state" not in saved:
        raise RecordError(f"checkpoint {path} is not a seed checkpoint (it holds a {type(saved).__name__}): {fix}")
    if saved.get("protocol_hash") != protocol:
        raise RecordError(f"checkpoint {path} was trained under another protocol than this sweep: {fix}, or use "
                          f"another --results-dir")
    if saved.get("spec_hash") != spec:
        raise RecordError(f"checkpoint {path} is of another architecture than {variant!r} now is: {fix}")
    return saved["state"]


def remove_seed_checkpoint(results_dir: str | os.PathLike, variant: str, seed: int) -> None:
    seed_checkpoint_path(results_dir, variant, seed).unlink(missing_ok=True)
