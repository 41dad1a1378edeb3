"""The sweep's command line as a user meets it (issue 21): --quick yields to the flags given, output folders are
checked before any trial, `report` answers a dead or wrong tracking URI in one line within seconds, --help keeps
its examples and shows defaults, a sweep's last lines say where its report went, in percent, with the protocol's
caveat, and no system-metrics chatter; and `--fuse-seeds auto` (issue 19), decided on the cluster Ray is up on.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from orchestrator.analysis import report
import orchestrator.run as orchestrator_run
from orchestrator.sweep import driver as orun
from orchestrator.sweep.callbacks import eta_line
from orchestrator.sweep.config import EPILOG, PAPER_VARIANTS, ConfigError, build_parser, parse_config

REPO = Path(__file__).resolve().parents[1]


def sweep_flags(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path",
            str(tmp_path / "ray"), "--variants", "base", "--seeds", "1", "--epochs", "1", "--no-report",
            "--no-compile", "--export", "none", "--latency-batch1-calls", "5", *extra]


# --- --quick -------------------------------------------------------------------------------------------
def test_quick_fills_in_only_the_flags_not_given(tmp_path):
    bare = parse_config(["--quick"])
    assert (bare.variants, bare.seed_values(), bare.train.epochs, bare.train.subset_per_class, bare.train.compile) \
        == (("base", "v6"), (0, 1), 2, 500, False), "a bare --quick is 4 short trials"
    given = parse_config(["--quick", "--epochs", "3", "--compile", "--variants", "alpha", "--seeds", "3",
                          "--subset-per-class", "0"])
    assert (given.variants, given.seed_values(), given.train.epochs, given.train.subset_per_class,
            given.train.compile) == (("alpha",), (0, 1, 2), 3, 0, True)
    # A value given equal to the default is given too: --epochs 10 means 10 epochs.
    assert parse_config(["--quick", "--epochs", "10"]).train.epochs == 10
    # A config file's values are given as well; --quick fills in the rest.
    path = tmp_path / "sweep.toml"
    path.write_text("epochs = 4\ncompile = true\nquick = true\n")
    from_file = parse_config(["--config", str(path)])
    assert (from_file.train.epochs, from_file.train.compile, from_file.variants, from_file.train.subset_per_class) \
        == (4, True, ("base", "v6"), 500)


def test_quick_with_epochs_0_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--epochs must be >= 1 \(got 0\)"):
        parse_config(["--quick", "--epochs", "0"])  # before: --quick replaced the 0 and trained 2 epochs
    assert orchestrator_run.main(["--quick", "--epochs", "0", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    assert capsys.readouterr().err == "error: --epochs must be >= 1 (got 0)\n"
    assert not list(tmp_path.iterdir()), "nothing may be created"


# --- output folders ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, problem", [
    ("--results-dir", "{file}", "is not a directory"),
    ("--results-dir", "{file}/records", "cannot be created: {file} is not a directory"),
    ("--storage-path", "{file}", "is not a directory"),
    ("--storage-path", "{file}/ray", "cannot be created: {file} is not a directory"),
])
def test_an_output_folder_that_cannot_be_one_is_refused_before_any_trial(flag, value, problem, tiny_cifar, tmp_path,
                                                                       capsys, local_ray):
    """Before: --results-dir naming a file trained the whole sweep, then lost every record, with exit 0."""
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    value = value.format(file=file)
    assert orchestrator_run.main(sweep_flags(tmp_path, tiny_cifar, flag, value)) == 2
    err = capsys.readouterr().err
    assert err == f"error: {flag} {value} {problem.format(file=file)}: pass a writable directory\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and file.read_text() == "mine\n", \
        "nothing may be created (no store, no Ray storage, no records)"


def test_report_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    from test_records import write_study
    results, file = tmp_path / "records", tmp_path / "report.txt"
    write_study(results)
    file.write_text("mine\n")
    before = sorted(p.name for p in results.iterdir())
    assert report.main(["--results", str(results), "--out", str(file)]) == 2
    assert capsys.readouterr().err == f"error: --out {file} is not a directory: pass a writable directory\n"
    assert file.read_text() == "mine\n" and sorted(p.name for p in results.iterdir()) == before


# --- report against a tracking URI that cannot answer --------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri, extra, expected", [
    ("http://127.0.0.1:{port}", [], "error: cannot reach the MLflow tracking server at http://127.0.0.1:{port} "
                                    "([Errno 111] Connection refused)"),
    ("http://127.0.0.1:{port}", ["--list"], "error: cannot reach the MLflow tracking server at "
                                            "http://127.0.0.1:{port}"),
    ("mlflow.db", [], "error: tracking URI 'mlflow.db' is not a URI: use sqlite:///path/to/mlflow.db or "
                      "http://host:port"),
])
def test_report_answers_a_dead_server_or_a_bare_path_in_one_line_within_seconds(uri, extra, expected, tmp_path,
                                                                                monkeypatch, capsys):
    """Before: ~4 minutes of MLflow's retries, then a 108-line traceback; a bare path gave a 41-line one."""
    monkeypatch.chdir(tmp_path)
    port = closed_port()
    started = time.monotonic()
    code = report.main(["--tracking-uri", uri.format(port=port), *extra])
    elapsed_s = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(expected.format(port=port)), err
    assert elapsed_s < 30, f"took {elapsed_s:.0f} s"
    assert not list(tmp_path.iterdir()), "a report creates no store"


# --- --help --------------------------------------------------------------------------------------------------
def help_sections(text: str) -> dict[str, str]:
    """--help's text per section (a line with no indent ending in ':' starts one)."""
    sections, name = {}, ""
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name = line[:-1]
        sections[name] = sections.get(name, "") + line + "\n"
    return sections


def help_entries(text: str) -> dict[str, str]:
    """--help's text per flag, on one line: `--flag ... help text (default: x)`."""
    entries, flag = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line.strip()
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


def test_help_keeps_the_examples_lines_shows_every_default_and_groups_device_and_resume():
    parser = build_parser()
    text = parser.format_help()
    lines = text.splitlines()
    for example in EPILOG.strip().splitlines():
        assert example in lines, f"example reflowed: {example!r}"
    entries = help_entries(text)
    for action in parser._actions:
        if action.default is None or action.default in ("", (), "==SUPPRESS=="):
            continue  # no default, or an empty one: the help text says what that means
        default = ",".join(map(str, action.default)) if isinstance(action.default, tuple) else action.default
        assert f"(default: {default})" in entries[action.option_strings[0]], action.option_strings[0]
    sections = help_sections(text)
    assert "--device" in sections.get("device", "") + sections.get("speed", "")
    for flag in ("--resume", "--sweep-id"):
        assert flag in sections.get("resume", "") + sections.get("what to run", ""), flag
    assert "--device" not in sections["cluster"] and "--resume" not in sections["cluster"]


# --- the ETA line -------------------------------------------------------------------------------------------
def trial(status: str, epoch: int, epochs: int = 2, epoch_seconds: float = 30.0, resumes_after_epoch: int = 0):
    """What eta_line reads of a Tune trial: its config, status and last result (plain data)."""
    spec = {"variant": "base", "seed": 0, **({"resumes_after_epoch": resumes_after_epoch} if resumes_after_epoch else {})}
    return SimpleNamespace(config={"train": {"epochs": epochs}, "trial": spec}, status=status,
                           last_result={"epoch": epoch, "epoch_seconds": epoch_seconds} if epoch else {})


def test_eta_never_says_0_min_while_trials_still_run():
    # Both trials trained every epoch and are measuring and exporting: not done, and no ETA to give.
    assert eta_line([trial("RUNNING", 2), trial("RUNNING", 2)]) == \
        "sweep: 0/2 trials finished, 2 running; 4 of 4 epochs done; finishing (measuring, exporting)"
    assert eta_line([trial("RUNNING", 1, epoch_seconds=20)]).endswith("; ETA < 1 min")  # one 20 s epoch left
    assert eta_line([trial("TERMINATED", 2), trial("TERMINATED", 2)]).endswith("4 of 4 epochs done; ETA 0 min")


def test_eta_counts_the_epochs_a_trial_resumes_after_before_it_starts():
    # Two trials run epoch 4 of 10 after checkpoints of epoch 3; a third waits, also after epoch 3: 19 epochs left.
    waiting = trial("PENDING", 0, epochs=10, resumes_after_epoch=3)
    running = [trial("RUNNING", 4, epochs=10, epoch_seconds=1800, resumes_after_epoch=3) for _ in range(2)]
    assert eta_line([*running, waiting]) == \
        "sweep: 0/3 trials finished, 2 running; 11 of 30 epochs done; ETA 4.8 h"  # 19 x 30 min / 2


# --- a quiet console -----------------------------------------------------------------------------------------
def test_the_console_has_no_system_metrics_chatter_and_the_runs_keep_the_metrics(tiny_cifar, tmp_path):
    """Before: MLflow's monitor said it started and stopped, at INFO, for every run, some lines after the summary.
    A real driver, so that everything its trials forward to the console is there; the monitor samples every
    second here (its default is 10 s, longer than these trials)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    out = subprocess.run([sys.executable, "-m", "orchestrator.run",
                          *sweep_flags(tmp_path, tiny_cifar, "--epochs", "3", "--fuse-seeds", "off")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    console = out.stdout + out.stderr
    assert "system metrics" not in console.lower(), \
        [line for line in console.splitlines() if "system metrics" in line.lower()]
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("resnet-revisited").experiment_id], "tags.kind = 'trial'")
    assert any(key.startswith("system/cpu") for key in run.data.metrics), sorted(run.data.metrics)


# --- --fuse-seeds auto ----------------------------------------------------------------------------------------
PAPER_GRID = [(v, s) for v in PAPER_VARIANTS for s in range(5)]  # 40 (variant, seed) pairs


@pytest.mark.parametrize("resources, cpus_per_trial, gpus_per_trial, fuse, why", [
    ({"CPU": 2.0}, 1, 0, True, "40 (variant, seed) pairs, 2 trial slots: 2 CPUs / 1 per trial"),
    ({"CPU": 64.0}, 1, 0, False, "40 (variant, seed) pairs, 64 trial slots: 64 CPUs / 1 per trial"),
    ({"CPU": 64.0}, 2, 0, True, "40 (variant, seed) pairs, 32 trial slots: 64 CPUs / 2 per trial"),
    ({"CPU": 64.0, "GPU": 4.0}, 1, 0.125, True, "40 (variant, seed) pairs, 32 trial slots: 4 GPUs / 0.125 per trial"),
    ({"CPU": 64.0, "GPU": 8.0}, 1, 0.125, False, "40 (variant, seed) pairs, 64 trial slots: 64 CPUs / 1 per trial"),
    ({"CPU": 64.0, "GPU": 4.0}, 1, 0.1, False, "40 (variant, seed) pairs, 40 trial slots: 4 GPUs / 0.1 per trial"),
])
def test_fuse_seeds_auto_on_a_simulated_cluster(resources, cpus_per_trial, gpus_per_trial, fuse, why):
    from orchestrator.sweep.preflight import fuse_seeds_choice
    assert fuse_seeds_choice(PAPER_GRID, resources, cpus_per_trial, gpus_per_trial) == (fuse, why)


def test_fuse_seeds_auto_never_fuses_one_seed_per_variant():
    from orchestrator.sweep.preflight import fuse_seeds_choice
    pairs = [(v, 0) for v in PAPER_VARIANTS]
    assert fuse_seeds_choice(pairs, {"CPU": 2.0}, 1, 0) == \
        (False, "8 (variant, seed) pairs, 2 trial slots: 2 CPUs / 1 per trial; one seed per variant, nothing to fuse")


@pytest.fixture(scope="module")
def reported_sweep(tiny_cifar, tmp_path_factory, local_ray):
    """A real sweep of base x 3 seeds on a 2-CPU local Ray, with --fuse-seeds auto and a report (in its own
    folder), and what it printed."""
    from orchestrator.sweep.config import SweepConfig
    tmp = tmp_path_factory.mktemp("fused-sweep")
    cfg = SweepConfig.from_flags(dict(variants=("base",), seeds=3, epochs=1, data_dir=str(tiny_cifar), compile=False,
                                      export="none", tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                                      storage_path=str(tmp / "ray"), latency_batch1_calls=5, report=True))
    console, cwd = io.StringIO(), os.getcwd()
    os.chdir(tmp)  # the report goes to ./reports/<sweep id>/
    try:
        with contextlib.redirect_stdout(console):
            out = orchestrator_run.sweep_and_report(cfg)
    finally:
        os.chdir(cwd)
    return SimpleNamespace(out=out, console=console.getvalue(), tmp=tmp, uri=cfg.tracking_uri)


def test_fuse_seeds_auto_fuses_more_pairs_than_a_2_cpu_ray_has_slots(reported_sweep):
    line = "fuse seeds: on (auto: 3 (variant, seed) pairs, 2 trial slots: 2 CPUs / 1 per trial)"
    assert line in reported_sweep.console.splitlines()
    parent = MlflowClient(reported_sweep.uri).get_run(reported_sweep.out["parent_run_id"])
    assert parent.data.tags["fuse_seeds"] == "on"
    assert parent.data.tags["fuse_seeds_reason"] == line[len("fuse seeds: on ("):-1]
    assert json.loads(parent.data.tags["config_json"])["fuse_seeds"] == "on"  # what --resume reads back
    assert [p.name for p in Path(reported_sweep.out["storage_path"]).glob("base-seeds*")] == ["base-seeds0-1-2"]


def test_a_sweep_ends_with_percent_its_protocol_caveat_and_where_its_report_went(reported_sweep):
    console, sweep_id = reported_sweep.console, reported_sweep.out["sweep_id"]
    assert f"report written to reports/{sweep_id}/report.md (also logged to the sweep's parent run under report/)" \
        in console.splitlines()
    assert (reported_sweep.tmp / "reports" / sweep_id / "report.md").is_file()
    assert "⚠ not the paper's protocol: epochs 1 (paper 10). Accuracies are not comparable with the paper's." \
        in console.splitlines()
    table = console.split(f"sweep {sweep_id} finished in", 1)[1].splitlines()[1:5]
    assert table[0].split()[:6] == ["variant", "seed", "status", "epoch", "val_accuracy_pct", "best_val_accuracy_pct"]
    runs = {int(r.data.tags["seed"]): r for r in MlflowClient(reported_sweep.uri).search_runs(
        [reported_sweep.out["experiment_id"]], "tags.kind = 'trial'")}
    for row in table[1:]:
        variant, seed, status, epoch, accuracy = row.split()[:5]
        assert accuracy == f"{100 * runs[int(seed)].data.metrics['val_accuracy']:.2f}", row  # percent, not 0.xx


def test_fuse_seeds_auto_keeps_one_trial_per_pair_that_fits_and_resume_keeps_the_choice(tiny_cifar, tmp_path,
                                                                                       local_ray, capsys):
    from orchestrator.sweep.config import SweepConfig
    cfg = SweepConfig.from_flags(dict(variants=("base",), seeds=2, epochs=1, data_dir=str(tiny_cifar),
                                      tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                      storage_path=str(tmp_path / "ray"), report=False))
    sweep = orun.open_sweep(cfg)  # Ray up, the choice made, the parent run started; no trial yet
    assert "fuse seeds: off (auto: 2 (variant, seed) pairs, 2 trial slots: 2 CPUs / 1 per trial)" in \
        capsys.readouterr().out.splitlines()
    assert sweep.cfg.fuse_seeds == "off" and orun.trial_specs(sweep) == [{"variant": "base", "seed": 0},
                                                                          {"variant": "base", "seed": 1}]
    # Resumed, the sweep trains as it started, whatever the command line says now.
    resumed = orun.open_sweep(cfg.replace(resume=True, sweep_id=sweep.sweep_id, fuse_seeds="on"))
    assert "fuse seeds: off (as the sweep being resumed started)" in capsys.readouterr().out.splitlines()
    assert resumed.sweep_id == sweep.sweep_id and resumed.cfg.fuse_seeds == "off"


def test_trials_with_the_most_epochs_left_start_first_and_fused_seeds_group_by_the_epoch_they_resume_after():
    """Tune starts trials in order: a spec resuming after epoch 4 must not make a fresh one start last, alone."""
    from orchestrator.sweep.config import SweepConfig
    pairs = [{"variant": v, "seed": s} for v in ("a", "b", "c") for s in (0, 1)]
    resumed = {("a", 0): {"epoch": 4}, ("a", 1): {"epoch": 4}, ("b", 0): {"epoch": 2}}

    def specs(fuse_seeds: str) -> list[dict]:
        cfg = SweepConfig.from_flags(dict(variants=("base",), fuse_seeds=fuse_seeds))
        return orun.trial_specs(orun.Sweep(cfg, "id", "0", "run", "ray_results", pairs, None, {},
                                           start_states=resumed))
    assert specs("on") == [{"variant": "b", "seeds": [1]}, {"variant": "c", "seeds": [0, 1]},
                           {"variant": "b", "seeds": [0], "resumes_after_epoch": 2},
                           {"variant": "a", "seeds": [0, 1], "resumes_after_epoch": 4}]
    assert specs("off") == [{"variant": "b", "seed": 1}, {"variant": "c", "seed": 0}, {"variant": "c", "seed": 1},
                            {"variant": "b", "seed": 0, "resumes_after_epoch": 2},
                            {"variant": "a", "seed": 0, "resumes_after_epoch": 4},
                            {"variant": "a", "seed": 1, "resumes_after_epoch": 4}]
