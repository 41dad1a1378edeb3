"""The MLflow tracking server of a sweep (`python -m orchestrator.tracking serve`): artifacts proxied through it,
bound to a private address, started detached and stopped again by the pid file it leaves."""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from orchestrator.cli import ArgumentParser
from orchestrator.names import DEFAULT_TRACKING_URI, sqlite_path
from orchestrator.sweep.tracking import TrackingError, resolve_tracking_uri


def check_bind_host(host: str) -> None:
    """Refuse every-interface and public addresses: the server has no authentication of its own."""
    try:
        addrs = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, ValueError):
        raise TrackingError(f"--host {host!r} is not an address: pass 127.0.0.1 or this machine's private IP") from None
    if any(a.is_unspecified or not (a.is_loopback or a.is_private) for a in addrs):
        raise TrackingError(f"--host {host} would expose the tracking server beyond this machine's private network "
                            f"(MLflow has no login by default): bind 127.0.0.1 or the private IP and tunnel with "
                            f"ssh -L, or put authentication in front of it and pass --allow-public")


def stop_recorded_server(pid_file: Path, timeout_s: float = 30.0) -> None:
    """Stop the server an earlier --detach started (e.g. before `ray up` restarts the head), if it still runs."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = psutil.Process(pid).cmdline()
    except (OSError, ValueError, psutil.Error):
        return
    if "mlflow" not in cmdline or "server" not in cmdline:
        return  # the pid was reused by something else: not ours to stop

    def group_alive() -> bool:  # zombies don't count: they hold no port
        for proc in psutil.process_iter(["status"]):
            with contextlib.suppress(OSError):  # gone meanwhile
                if os.getpgid(proc.pid) == pid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    return True
        return False

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)  # --detach made it a session leader: its workers share its group
        deadline = time.time() + timeout_s
        while group_alive():
            if time.time() > deadline:
                os.killpg(pid, signal.SIGKILL)
                break
            time.sleep(0.2)


def _detach(cmd: list[str], uri: str, run_dir: Path, timeout_s: float = 180.0) -> int:
    """Start the server in its own session, wait until it answers, record pid and URI in run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stop_recorded_server(run_dir / "server.pid")
    with open(run_dir / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    (run_dir / "server.pid").write_text(f"{proc.pid}\n")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = (run_dir / "server.log").read_text(errors="replace").strip().splitlines()[-1:]
            print(f"error: the tracking server exited ({proc.returncode}): {' '.join(tail)}; see "
                  f"{run_dir / 'server.log'}", file=sys.stderr)
            return 1
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                (run_dir / "tracking_uri").write_text(uri + "\n")
                print(f"MLflow tracking server at {uri} (pid {proc.pid}, log {run_dir / 'server.log'})", flush=True)
                return 0
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    print(f"error: the tracking server did not answer {uri}/health within {timeout_s:.0f} s; see "
          f"{run_dir / 'server.log'}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m orchestrator.tracking",
                       description="Start an MLflow tracking server for this project.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run `mlflow server` over this project's store (binds 127.0.0.1 by default)",
                       description="Run `mlflow server` over this project's store, proxying artifacts so workers "
                                   "need no shared disk. Binds 127.0.0.1 unless told otherwise; trials and the "
                                   "report reach it with --tracking-uri http://HOST:PORT.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on: loopback or a private IP "
                                                       "(others need --allow-public)")
    s.add_argument("--allow-public", action="store_true",
                   help="allow 0.0.0.0 or a public address (only behind authentication, e.g. MLflow's basic-auth app)")
    s.add_argument("--port", type=int, default=5000, help="TCP port to listen on")
    s.add_argument("--backend-store-uri", default=DEFAULT_TRACKING_URI,
                   help="where runs are stored: sqlite:///path or postgresql://user:pass@host/db")
    s.add_argument("--artifacts-destination", default="mlflow/artifacts",
                   help="where the server stores artifacts (local path or s3:// URI)")
    s.add_argument("--workers", type=int, default=1, help="server worker processes (one is enough for a sweep)")
    s.add_argument("--detach", action="store_true",
                   help="run in the background: stop the server an earlier --detach recorded in --run-dir, start "
                        "this one, wait until it answers, write server.pid, server.log and tracking_uri there")
    s.add_argument("--run-dir", default="mlflow", help="where --detach keeps server.pid, server.log, tracking_uri")
    args = p.parse_args(argv)
    try:
        if not args.allow_public:
            check_bind_host(args.host)
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    backend = args.backend_store_uri
    if sqlite_path(backend) is not None:
        backend = resolve_tracking_uri(backend)
        sqlite_path(backend).parent.mkdir(parents=True, exist_ok=True)
    dest = args.artifacts_destination
    if "://" not in dest:
        Path(dest).expanduser().mkdir(parents=True, exist_ok=True)
        dest = str(Path(dest).expanduser().resolve())
    # Artifacts proxied through the server (--serve-artifacts), so workers need no shared disk.
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", args.host, "--port", str(args.port),
           "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", dest,
           "--workers", str(args.workers)]
    if args.detach:
        host = f"[{args.host}]" if ":" in args.host else args.host
        return _detach(cmd, f"http://{host}:{args.port}", Path(args.run_dir).expanduser())
    print(" ".join(cmd), flush=True)
    os.execv(cmd[0], cmd)

