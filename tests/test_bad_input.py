"""Hostile and bad input, tried for real: every row of BAD_INPUTS is refused before any trial starts, with exit 2
and one line saying what is wrong and how to fix it; data files are never unpickled as objects; checkpoints load
weights-only; the tracking server binds loopback unless told otherwise.

README's bad-input table mirrors BAD_INPUTS: `python tests/test_bad_input.py` prints it.
"""
from __future__ import annotations

import http.server
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]


class RunsCommand:
    """Unpickling this runs a shell command: what a hostile data file or checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- hostile files, built under the test's tmp folder ----------------------------------------------
def _copy_tiny(tiny: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in tiny.rglob("*.bin"):
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def truncated_batch(tmp: Path, tiny: Path) -> None:
    d = _copy_tiny(tiny, tmp / "data")
    raw = (d / "data_batch_1.bin").read_bytes()
    (d / "data_batch_1.bin").write_bytes(raw[:-100])


def label_out_of_range(tmp: Path, tiny: Path) -> None:
    d = _copy_tiny(tiny, tmp / "data")
    raw = bytearray((d / "test_batch.bin").read_bytes())
    raw[0] = 200  # the first record's label byte
    (d / "test_batch.bin").write_bytes(bytes(raw))


def pickle_runs_command(tmp: Path, tiny: Path) -> None:
    d = tmp / "data" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (d / name).write_bytes(pickle.dumps({"data": RunsCommand(tmp / "pwned"), "labels": [0]}))


def pickle_not_cifar(tmp: Path, tiny: Path) -> None:
    d = tmp / "data" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (d / name).write_text("this is not a pickle\n")


def _archive(tmp: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> None:
    d = tmp / "data"
    d.mkdir(parents=True)
    with tarfile.open(d / "cifar-10-binary.tar.gz", "w:gz") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-bin/readme.html")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)


def archive_path_escape(tmp: Path, tiny: Path) -> None:
    _archive(tmp, tarfile.TarInfo("cifar-10-batches-bin/../../escaped.txt"))


def archive_symlink(tmp: Path, tiny: Path) -> None:
    link = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _archive(tmp, link)


def empty_store(tmp: Path, tiny: Path) -> None:
    from orchestrator.sweep import tracking
    tracking.ensure_experiment(f"sqlite:///{tmp}/mlflow.db", "resnet-revisited")


def text_file_as_store(tmp: Path, tiny: Path) -> None:
    (tmp / "notes.db").write_text("my notes, not an MLflow database\n")


def hostile_checkpoint(tmp: Path, tiny: Path) -> None:
    import torch
    (tmp / "records").mkdir()
    torch.save({"state": RunsCommand(tmp / "pwned")}, tmp / "records" / "base-seed0.checkpoint.pt")


def checkpoint_of_another_protocol(tmp: Path, tiny: Path) -> None:
    import torch
    (tmp / "records").mkdir()
    torch.save({"variant": "base", "seed": 0, "protocol_hash": "0123456789abcdef", "spec_hash": None, "state": {}},
               tmp / "records" / "base-seed0.checkpoint.pt")


def checkpoint_of_a_tensor(tmp: Path, tiny: Path) -> None:
    import torch
    (tmp / "records").mkdir()
    torch.save(torch.zeros(3), tmp / "records" / "base-seed0.checkpoint.pt")  # loads, but is no seed's state


def toml_file(text: str):
    def make(tmp: Path, tiny: Path) -> None:
        (tmp / "sweep.toml").write_text(text)
    return make


@dataclass(frozen=True)
class BadInput:
    kind: str                 # README column: what sort of input
    shown: str                # README column: the input as a user would give it
    args: tuple[str, ...]     # what the test passes ({tmp}, {closed_port}, {http_port} filled in)
    expected: str             # the (start of the) line the user gets, asserted verbatim
    make: Callable[[Path, Path], None] | None = None  # builds hostile files under {tmp}
    skip_if: Callable[[], str] | None = None  # a reason to skip the row on this machine ("" = run it)


def cuda_present() -> str:
    """The no-CUDA row cannot be tried where torch sees a GPU: there the sweep would start."""
    import torch
    return "torch sees a CUDA device here: --device cuda is valid" if torch.cuda.is_available() else ""


BAD_INPUTS = [
    # CLI values
    BadInput("CLI value", "`--variants base,resnet50`", ("--variants", "base,resnet50"),
             "error: unknown variant resnet50: choose from base,v1,v2,v3,v4,v5,v6,alpha,budget60"),
    BadInput("CLI value", "`--variants ''`", ("--variants", ""), "error: unknown variant (none)"),
    BadInput("CLI value", "`--seeds -1`", ("--seeds", "-1"), "error: --seeds must be >= 1 (got -1)"),
    BadInput("CLI value", "`--seed-list 1,1`", ("--seed-list", "1,1"), "error: --seed-list has repeated seeds"),
    BadInput("CLI value", "`--seed-list 1,x`", ("--seed-list", "1,x"),
             "error: argument --seed-list: expected a comma-separated list of int, got '1,x'"),
    BadInput("CLI value", "`--epochs 1.5`", ("--epochs", "1.5"),
             "error: argument --epochs: expected int, got '1.5'"),
    BadInput("CLI value", "`--lr nan`", ("--lr", "nan"), "error: --lr must be a finite number > 0 (got nan)"),
    BadInput("CLI value", "`--beta1 1`", ("--beta1", "1"), "error: --beta1/--beta2 must be in [0, 1)"),
    BadInput("CLI value", "`--augment flip`", ("--augment", "flip"),
             "error: argument --augment: invalid choice: 'flip'"),
    BadInput("CLI value", "`--focus-classes bird,unicorn`", ("--focus-classes", "bird,unicorn"),
             "error: --focus-classes: unknown focus class 'unicorn'; use names or indices 0-9"),
    BadInput("CLI value", "`--subset-per-class 100000` (more than the data has)", ("--subset-per-class", "100000"),
             "error: --subset-per-class: subset of 100000 per class: class 0 (airplane) has only 16 images"),
    BadInput("CLI value", "`--gpus-per-trial 64`", ("--gpus-per-trial", "64"),
             "error: --gpus-per-trial 64 but the cluster has"),
    BadInput("CLI value", "`--device cuda --gpus-per-trial 0`", ("--device", "cuda", "--gpus-per-trial", "0"),
             "error: --device cuda needs a GPU for every trial: pass --gpus-per-trial, e.g. 0.125 (8 trials share a GPU)"),
    BadInput("CLI value", "`--device cuda --gpus-per-trial 0.125` where torch sees no CUDA device",
             ("--device", "cuda", "--gpus-per-trial", "0.125"), "error: --device cuda but torch sees no CUDA device",
             skip_if=cuda_present),
    BadInput("CLI value", "`--resume --sweep-id \"x' or '1'='1\"` (filter injection)",
             ("--resume", "--sweep-id", "x' or '1'='1"), "error: --sweep-id \"x' or '1'='1\" is not a sweep id"),
    BadInput("CLI value", "`--resume` with a `--tracking-uri` store that does not exist", ("--resume",),
             "error: no MLflow store at {tmp}/mlflow.db, so no sweep to resume"),
    BadInput("CLI value", "`--resume --sweep-id 20250101-000000-abcdef` (no such sweep in the store)",
             ("--resume", "--sweep-id", "20250101-000000-abcdef"), "error: found no sweep '20250101-000000-abcdef'",
             empty_store),
    BadInput("CLI value", "`--bogus-flag 3`", ("--bogus-flag", "3"),
             "error: unrecognized arguments: --bogus-flag 3"),
    # config files
    BadInput("config file", "`--config sweep.toml` that does not exist", ("--config", "{tmp}/sweep.toml"),
             "error: config file {tmp}/sweep.toml not found: pass the path of a TOML file to --config"),
    BadInput("config file", "`sweep.toml` with `epoch = 3` (a misspelt key)", ("--config", "{tmp}/sweep.toml"),
             "error: config file {tmp}/sweep.toml: unknown key 'epoch'", toml_file("epoch = 3\n")),
    BadInput("config file", "`sweep.toml` with `epochs = \"3\"` (a string)", ("--config", "{tmp}/sweep.toml"),
             "error: config file {tmp}/sweep.toml: epochs must be an integer (got '3')", toml_file('epochs = "3"\n')),
    BadInput("config file", "`sweep.toml` that is not TOML (`epochs: 3`)", ("--config", "{tmp}/sweep.toml"),
             "error: config file {tmp}/sweep.toml is not valid TOML", toml_file("epochs: 3\n")),
    BadInput("config file", "`sweep.toml` with `variants = [\"base\", \"resnet50\"]`", ("--config", "{tmp}/sweep.toml"),
             "error: unknown variant resnet50", toml_file('variants = ["base", "resnet50"]\n')),
    # data files
    BadInput("data file", "`--data-dir` that does not exist", ("--data-dir", "{tmp}/nowhere"),
             "error: no CIFAR-10 found (looked for {tmp}/nowhere/data_batch_1.bin"),
    BadInput("data file", "`data_batch_1.bin` cut short by 100 bytes", ("--data-dir", "{tmp}/data"),
             "is not a multiple of 3,073", truncated_batch),
    BadInput("data file", "a test record with label 200", ("--data-dir", "{tmp}/data"),
             "image 0 has label 200, expected 0-9; the file is corrupt", label_out_of_range),
    BadInput("data file", "python-layout batches whose pickle calls `os.system` when loaded",
             ("--data-dir", "{tmp}/data"), "not a valid CIFAR-10 pickle (UnpicklingError", pickle_runs_command),
    BadInput("data file", "python-layout batches that are not pickles at all", ("--data-dir", "{tmp}/data"),
             "not a valid CIFAR-10 pickle", pickle_not_cifar),
    BadInput("data file", "`cifar-10-binary.tar.gz` with a member `../../escaped.txt`", ("--data-dir", "{tmp}/data"),
             "points outside", archive_path_escape),
    BadInput("data file", "`cifar-10-binary.tar.gz` with a symlink member to `/etc/passwd`",
             ("--data-dir", "{tmp}/data"), "is a link or special file; refusing", archive_symlink),
    # tracking URIs
    BadInput("tracking URI", "`--tracking-uri mlflow.db` (a path, not a URI)", ("--tracking-uri", "mlflow.db"),
             "error: tracking URI 'mlflow.db' is not a URI: use sqlite:///path/to/mlflow.db or http://host:port"),
    BadInput("tracking URI", "`--tracking-uri ftp://host/mlflow`", ("--tracking-uri", "ftp://host/mlflow"),
             "error: unsupported tracking URI 'ftp://host/mlflow'"),
    BadInput("tracking URI", "`--tracking-uri http://127.0.0.1:<closed port>`",
             ("--tracking-uri", "http://127.0.0.1:{closed_port}"),
             "error: cannot reach the MLflow tracking server at http://127.0.0.1:{closed_port} ([Errno 111] "
             "Connection refused)"),
    BadInput("tracking URI", "`--tracking-uri http://127.0.0.1:<a web server that is not MLflow>`",
             ("--tracking-uri", "http://127.0.0.1:{http_port}"),
             "error: cannot reach the MLflow tracking server at http://127.0.0.1:{http_port} (Not Found)"),
    BadInput("tracking URI", "`--tracking-uri sqlite:///notes.db` where notes.db is a text file",
             ("--tracking-uri", "sqlite:///{tmp}/notes.db"),
             "error: cannot use the MLflow store sqlite:///{tmp}/notes.db: (sqlite3.DatabaseError) file is not a "
             "database", text_file_as_store),
    BadInput("tracking URI", "`--tracking-uri sqlite:////proc/nope/mlflow.db` (cannot be created)",
             ("--tracking-uri", "sqlite:////proc/nope/mlflow.db"),
             "error: cannot create the tracking store directory /proc/nope"),
    # cluster addresses
    BadInput("cluster address", "`--address nonsense`", ("--address", "nonsense"),
             "error: --address 'nonsense' is not host:port"),
    BadInput("cluster address", "`--address 127.0.0.1:<closed port>`", ("--address", "127.0.0.1:{closed_port}"),
             "error: cannot reach the Ray cluster at 127.0.0.1:{closed_port}"),
    BadInput("cluster address", "`--address no-such-host.invalid:6379`", ("--address", "no-such-host.invalid:6379"),
             "error: cannot reach the Ray cluster at no-such-host.invalid:6379"),
    # results folders: a seed's checkpoint it would go on from
    BadInput("results folder", "`--results-dir records --skip-existing` where `base-seed0.checkpoint.pt` holds a "
             "pickled object", ("--results-dir", "{tmp}/records", "--skip-existing"),
             "error: checkpoint {tmp}/records/base-seed0.checkpoint.pt is not readable (UnpicklingError): delete it "
             "to train base-seed0 from the start", hostile_checkpoint),
    BadInput("results folder", "`--results-dir records --skip-existing` where `base-seed0.checkpoint.pt` is of "
             "another protocol", ("--results-dir", "{tmp}/records", "--skip-existing"),
             "error: checkpoint {tmp}/records/base-seed0.checkpoint.pt was trained under another protocol than this "
             "sweep: delete it to train base-seed0 from the start, or use another --results-dir",
             checkpoint_of_another_protocol),
    BadInput("results folder", "`--results-dir records --skip-existing` where `base-seed0.checkpoint.pt` holds a "
             "tensor", ("--results-dir", "{tmp}/records", "--skip-existing"),
             "error: checkpoint {tmp}/records/base-seed0.checkpoint.pt is not a seed checkpoint (it holds a Tensor): "
             "delete it to train base-seed0 from the start", checkpoint_of_a_tensor),
    # storage
    BadInput("storage path", "`--storage-path /dev/null/ray_results`", ("--storage-path", "/dev/null/ray_results"),
             "error: --storage-path /dev/null/ray_results cannot be created: /dev/null is not a directory"),
]


def readme_table() -> str:
    rows = ["| # | Kind | Input | What you get (exit 2, before any trial starts) |", "|---|---|---|---|"]
    for i, b in enumerate(BAD_INPUTS, 1):
        got = b.expected.replace("{closed_port}", "<port>").replace("{http_port}", "<port>").replace("{tmp}/", "")
        got = got if got.startswith("error: ") else f"error: <file>: ...{got}..."
        got = f"`{got}`"
        rows.append(f"| {i} | {b.kind} | {b.shown} | {got.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


# --- the test per row --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ports():
    """A closed port, and a plain web server that answers 404 to everything (a wrong --tracking-uri)."""
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    yield {"closed_port": closed, "http_port": server.server_address[1]}
    server.shutdown()


def test_the_table_has_at_least_15_rows_of_every_kind():
    kinds = {b.kind for b in BAD_INPUTS}
    assert len(BAD_INPUTS) >= 15
    assert {"CLI value", "config file", "data file", "tracking URI", "cluster address"} <= kinds


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[f"{i + 1}-{b.args[-1][:30]}" for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_refused_before_any_trial(bad, tiny_cifar, tmp_path, ports, capsys, local_ray):
    from mlflow import MlflowClient

    import orchestrator.run as orchestrator_run
    if bad.skip_if and (reason := bad.skip_if()):
        pytest.skip(reason)
    fill = {"tmp": str(tmp_path), **ports}
    if bad.make:
        bad.make(tmp_path, tiny_cifar)
        capsys.readouterr()  # what building the hostile files printed is not the CLI's answer
    base = ["--data-dir", str(tiny_cifar), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage-path", str(tmp_path / "ray"), "--epochs", "1", "--no-report"]
    try:
        code = orchestrator_run.main(base + [a.format(**fill) for a in bad.args])
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and bad.expected.format(**fill) in lines[0], err
    # Nothing ran: no Tune experiment, no sweep run in the store.
    assert not list((tmp_path / "ray").glob("sweep-*"))
    db = tmp_path / "mlflow.db"
    if db.exists():
        client = MlflowClient(f"sqlite:///{db}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.kind = 'sweep'")
    assert not (tmp_path / "pwned").exists(), "a data file ran code"
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_readme_table_mirrors_the_list():
    readme = (REPO / "README.md").read_text()
    if "| Kind | Input |" not in readme:
        pytest.skip("README has no bad-input table yet (print it with `python tests/test_bad_input.py`)")
    for b in BAD_INPUTS:
        assert b.shown in readme, f"README's bad-input table lacks {b.shown}"


# --- checkpoints are data, never code ---------------------------------------------------------------
def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    import torch
    from ray import tune

    from orchestrator.sweep.trainable import STATE_FILE, load_checkpoint
    good, evil = tmp_path / "good", tmp_path / "evil"
    good.mkdir()
    evil.mkdir()
    torch.save({"epoch": 1, "model": {"w": torch.ones(2)}, "history": [{"epoch": 1, "val_accuracy": 0.5}]},
               good / STATE_FILE)
    torch.save({"epoch": 1, "model": {"w": torch.ones(2)}, "hook": RunsCommand(tmp_path / "pwned")},
               evil / STATE_FILE)
    assert load_checkpoint(tune.Checkpoint.from_directory(str(good)))["epoch"] == 1  # a real one still loads
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(tune.Checkpoint.from_directory(str(evil)))
    assert not (tmp_path / "pwned").exists()


# --- the tracking server the project starts -----------------------------------------------------------
def _other_addresses() -> list[str]:
    import psutil
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def test_tracking_server_binds_loopback_by_default(tmp_path):
    import psutil
    from conftest import free_port
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.tracking", "serve", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
                             "--artifacts-destination", str(tmp_path / "artifacts")],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"))
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                assert time.time() < deadline, "server did not start"
                time.sleep(0.5)
        listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN
                     and c.laddr.port == port]
        assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
        for ip in _other_addresses():  # not reachable on this machine's other interfaces
            with pytest.raises(OSError):
                socket.create_connection((ip, port), timeout=2).close()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)


def test_tracking_server_refuses_a_public_bind_without_auth(capsys):
    from orchestrator.sweep import server
    assert server.main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--host 0.0.0.0 would expose the tracking server" in err


if __name__ == "__main__":
    print(readme_table())
