"""The architecture search (orchestrator.search) for real: Optuna samples the space, Ray Tune runs the candidates
with ASHA, MLflow holds every candidate as a nested run; tiny data, no mocks."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from scipy.stats import spearmanr

import data
import models
from models.budget import MAX_SIZE_MB, macs_per_image, size_mb
from models.spec import from_dict, load_spec, spec_hash, to_dict
from orchestrator.search import command, driver, proxy, space
from orchestrator.search.config import SearchConfig
from orchestrator.names import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI
from orchestrator.search.results import REPO, longest_first, rank, revalidation_flags, write_revalidation
from orchestrator.search.trainable import BudgetError, run_candidate
from orchestrator.sweep import records

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
TINY_BUDGET = 20_000  # small nets train in a second on tiny data; the budget logic is the same at any size
TINY_SIZE_CAP_MB = 0.0765  # 20,054 float32s: below what 20,000 parameters and their BN statistics take, so it binds


@pytest.fixture(scope="module")
def no_test_set(tiny_cifar, tmp_path_factory) -> Path:
    """tiny_cifar whose test batch is garbage of the right size: any read of it fails (labels of 255), so a
    search that finishes on this folder never read the test set."""
    root = tmp_path_factory.mktemp("no-test-set")
    for f in Path(tiny_cifar).iterdir():
        shutil.copy(f, root / f.name)
    test = root / "test_batch.bin"
    test.write_bytes(b"\xff" * test.stat().st_size)
    with pytest.raises(data.DataError):
        data.load_cifar10(root, "test")
    return root


def search_args(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage-path", str(tmp_path / "ray"), "--out-dir", str(tmp_path / "searches"),
            "--max-params", str(TINY_BUDGET), "--proxy-epochs", "2", "--grace-epochs", "1",
            "--proxy-per-class", "12", "--holdout-per-class", "4", "--latency-calls", "5",
            "--startup-candidates", "3", *extra]


def runs_of(uri: str, kind: str) -> list:
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, f"tags.kind = '{kind}'") if ids else []


# --- the held-out slice ----------------------------------------------------------------------------------------
def test_stratified_split_is_disjoint_stratified_and_deterministic():
    labels = torch.arange(10).repeat(30)  # 30 per class; each image holds its own index, so sets can be compared
    images = torch.arange(300).view(300, 1, 1, 1).expand(300, 3, 2, 2).to(torch.int64)
    tx, ty, hx, hy = data.stratified_split(images, labels, holdout_per_class=7, seed=0)
    train_ids, held_ids = set(tx[:, 0, 0, 0].tolist()), set(hx[:, 0, 0, 0].tolist())
    assert not train_ids & held_ids and len(train_ids | held_ids) == 300
    assert torch.bincount(hy, minlength=10).tolist() == [7] * 10
    assert torch.bincount(ty, minlength=10).tolist() == [23] * 10
    assert torch.equal(labels[hx[:, 0, 0, 0]], hy)  # labels travel with their images
    again = data.stratified_split(images, labels, 7, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((tx, ty, hx, hy), again))
    assert not torch.equal(data.stratified_split(images, labels, 7, seed=1)[2], hx)
    with pytest.raises(ValueError, match="hold out fewer"):
        data.stratified_split(images, labels, 30, seed=0)


def test_proxy_data_holds_out_a_disjoint_slice_of_the_training_split_only(no_test_set):
    d = proxy.proxy_data(str(no_test_set), 4, 10)  # the test batch is garbage: reading it would raise
    assert torch.bincount(d.val_labels, minlength=10).tolist() == [4] * 10
    assert torch.bincount(d.train_labels, minlength=10).tolist() == [10] * 10
    train_x, _ = data.load_cifar10(no_test_set, "train")
    rows = {bytes(x.numpy().tobytes()) for x in train_x}
    trained, held = ({bytes(x.numpy().tobytes()) for x in xs} for xs in (d.train_images, d.val_images))
    assert held <= rows and trained <= rows and not trained & held


# --- the space ---------------------------------------------------------------------------------------------------
def test_every_sampled_candidate_is_valid_within_the_budget_and_fills_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=50, multivariate=True, group=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    uses, kinds, heads, skips, depths = [], set(), set(), 0, set()
    for _ in range(200):
        trial = study.ask()
        candidate = space.define_space(trial, models.MAX_PARAMS)["candidate"]
        spec = from_dict(candidate["spec"])  # a valid spec, or this raises
        assert models.param_count(spec) <= models.MAX_PARAMS
        uses.append(space.budget_use(spec, models.MAX_PARAMS))
        kinds |= {b.kind for b in spec.blocks}
        heads.add(spec.head.kind)
        skips += bool(spec.dense_from)
        depths.add(len(spec.blocks))
        study.tell(trial, sum(b.out for b in spec.blocks) / 1000)  # any value: TPE models it after 50
    assert min(uses) >= 0.9 and statistics.median(uses) >= 0.98, (min(uses), statistics.median(uses))
    assert kinds == set(space.KINDS) and heads == {"fc", "gap"} and skips > 20 and depths == set(range(2, 9))


def test_a_macs_cap_repairs_every_candidate_under_it():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    cap = 5_000_000
    for _ in range(100):
        trial = study.ask()
        spec = from_dict(space.define_space(trial, models.MAX_PARAMS, cap)["candidate"]["spec"])
        assert models.param_count(spec) <= models.MAX_PARAMS and macs_per_image(spec) <= cap
        study.tell(trial, 0.0)


def test_a_size_cap_holds_table_2s_rule_that_the_parameter_budget_alone_does_not():
    # BatchNorm's running statistics count in size but not in parameters, so a BN-rich candidate can fill
    # --max-params and still be more than 2% over Base's 0.5218 MB; --max-size-mb repairs it under that too.
    def sizes(max_size_mb):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
        specs = []
        for _ in range(100):
            trial = study.ask()
            candidate = space.define_space(trial, models.MAX_PARAMS, 0, max_size_mb)["candidate"]
            specs.append(from_dict(candidate["spec"]))
            study.tell(trial, 0.0)
        assert all(models.param_count(s) <= models.MAX_PARAMS for s in specs)
        return [size_mb(s) for s in specs]

    assert max(sizes(0.0)) > MAX_SIZE_MB  # the params budget alone lets some through
    capped = sizes(MAX_SIZE_MB)
    assert max(capped) <= MAX_SIZE_MB and statistics.median(capped) >= 0.98 * MAX_SIZE_MB  # under it, and filling it


def test_a_candidate_over_the_budget_is_refused_before_anything_is_built(tmp_path):
    over = to_dict(models.get_spec("v6"))  # 136,960 parameters
    db = tmp_path / "mlflow.db"
    config = {"candidate": {"spec": over}, "proxy": {"epochs": 1},
              "search": {"max_params": TINY_BUDGET, "max_macs": 0, "max_size_mb": 0.0,
                         "tracking_uri": f"sqlite:///{db}"}}
    with pytest.raises(BudgetError, match="136,960 parameters, over the budget of 20,000"):
        run_candidate(config)
    assert not db.exists()  # refused before the run, the data or the network
    config["search"] |= {"max_params": models.MAX_PARAMS, "max_size_mb": 0.52}
    with pytest.raises(BudgetError, match=r"0.52679 MB, over --max-size-mb 0.52: refused"):
        run_candidate(config)
    assert not db.exists()


def test_ranking_puts_full_proxy_candidates_first_and_flags_the_pareto_front():
    def row(name, acc, macs, status="done", epochs=2):
        return {"candidate": name, "heldout_accuracy": acc, "macs": macs, "status": status, "epochs_run": epochs,
                "spec_hash": name, "pareto": False}
    rows = [row("a", 0.6, 10), row("b", 0.7, 30), row("c", 0.65, 40), row("d", 0.9, 1, "stopped", 1),
            row("e", 0.5, 5)]
    ranked = rank(rows, [("heldout_accuracy", "max"), ("macs_per_image", "min")])
    assert [r["candidate"] for r in ranked] == ["b", "c", "a", "e", "d"]
    assert {r["candidate"] for r in ranked if r["pareto"]} == {"a", "b", "e"}  # c: b is better on both


def test_revalidation_starts_the_spec_whose_proxy_took_longest_first():
    chosen = [{"rank": r, "train_minutes": m} for r, m in [(1, 11.4), (2, 22.5), (3, 11.3)]]
    files = [Path(f"rank{r['rank']}.toml") for r in chosen]
    assert longest_first(chosen, files) == [Path("rank2.toml"), Path("rank1.toml"), Path("rank3.toml")]


def test_the_revalidation_script_names_specs_from_the_repository_root_where_it_runs(tmp_path):
    inside, outside = REPO / "searches" / "s" / "specs" / "rank1-a.toml", tmp_path / "rank2-b.toml"
    [command], script = write_revalidation([inside, outside], 3, "s", tmp_path)
    assert command[command.index("--spec") + 1] == f"searches/s/specs/rank1-a.toml,{outside}"
    assert script.read_text().splitlines()[-1] == shlex.join(command)


def test_the_revalidation_sweep_shares_the_searchs_data_and_store_where_they_are_not_the_defaults():
    assert revalidation_flags("", DEFAULT_TRACKING_URI, DEFAULT_EXPERIMENT) == ()
    assert revalidation_flags("/data/c10", "sqlite:///x.db", "mine") == (
        "--data-dir", "/data/c10", "--tracking-uri", "sqlite:///x.db", "--experiment-name", "mine")


# --- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--max-params", "10"], "--max-params 10 is below the 92 parameters of the smallest candidate"),
    (["--max-size-mb", "0.0001"], "--max-size-mb 0.0001 is below the 0.0004 MB of the smallest candidate"),
    (["--objective", "accuracy,speed"], "--objective 'accuracy,speed': use accuracy, accuracy,latency or"),
    (["--proxy-per-class", "5000"], "--proxy-per-class: subset of 5000 per class"),
    (["--holdout-per-class", "16"], "--holdout-per-class: holding out 16 per class"),
    (["--resume", "--name", "nope"], "no MLflow store at"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_trial(flags, message, tiny_cifar, tmp_path, capsys):
    assert command.main(search_args(tmp_path, tiny_cifar) + flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


# --- the progress line ------------------------------------------------------------------------------------------
def test_the_progress_line_counts_candidates_asha_stopped_the_best_so_far_and_an_eta():
    from types import SimpleNamespace
    from orchestrator.search.progress import search_line

    def candidate(trial_id: str, status: str, epoch: int, accuracy: float):
        return SimpleNamespace(trial_id=trial_id, status=status,
                               last_result={"epoch": epoch, "epoch_seconds": 60.0, "heldout_accuracy": accuracy})
    trials = [candidate("a", "TERMINATED", 2, 0.61), candidate("b", "TERMINATED", 1, 0.70),
              candidate("c", "RUNNING", 1, 0.40)]
    # 10 proxy epochs for 5 candidates; 5 counted done (ended ones whole): 5 x 60 s / 1 running.
    assert search_line(trials, candidates=5, epochs=2) == ("search: 2/5 candidates done (1 stopped early by ASHA), "
                                                           "1 running; best so far 61.00% (cand-a); ETA 5 min")


def test_the_progress_line_counts_as_stopped_by_asha_neither_crashed_nor_diverged_candidates():
    from types import SimpleNamespace
    from orchestrator.search.progress import search_line

    def candidate(trial_id: str, status: str, **result):
        return SimpleNamespace(trial_id=trial_id, status=status, last_result={"epoch_seconds": 60.0, **result})
    trials = [candidate("a", "TERMINATED", epoch=1, heldout_accuracy=0.5),  # stopped by ASHA
              candidate("b", "TERMINATED", epoch=1, heldout_accuracy=0.0, diverged=1),
              candidate("c", "ERROR", epoch=1, heldout_accuracy=0.3)]
    assert search_line(trials, candidates=3, epochs=2).startswith("search: 3/3 candidates done (1 stopped early")


# --- a real search -------------------------------------------------------------------------------------------
def test_short_search_trains_only_candidates_within_budget_each_a_nested_mlflow_run(no_test_set, tmp_path,
                                                                                     local_ray, capsys):
    """6 candidates one at a time (so ASHA's decisions repeat on a machine), 2 epochs, on data whose test batch
    is garbage: the search ran, so it never read the test set."""
    assert command.main(search_args(tmp_path, no_test_set, "--name", "s1", "--candidates", "6",
                                   "--concurrent", "1", "--top-k", "2", "--revalidate-seeds", "2")) == 0
    uri, client = f"sqlite:///{tmp_path}/mlflow.db", MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    [parent] = runs_of(uri, "search")
    assert parent.data.tags["search_status"] == "finished" and parent.info.status == "FINISHED"
    candidates = runs_of(uri, "candidate")
    assert len(candidates) == 6
    stopped = 0
    for run in candidates:
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert metrics["param_count"] <= TINY_BUDGET
        spec = from_dict(json.loads(tags["spec_json"]))
        assert models.param_count(spec) == metrics["param_count"] and spec_hash(spec) == tags["spec_hash"]
        spec_file = client.download_artifacts(run.info.run_id, "spec.toml", str(tmp_path))
        assert spec_hash(load_spec(spec_file)) == tags["spec_hash"]
        assert int(params["spec.depth"]) == len(spec.blocks) and params["proxy.epochs"] == "2"
        assert {"macs_per_image", "size_mb", "latency_ms_batch1", "latency_ms_per_image"} <= set(metrics)
        epochs = [m.step for m in client.get_metric_history(run.info.run_id, "heldout_accuracy")]
        assert epochs == list(range(1, int(metrics["epochs_run"]) + 1))  # each epoch once
        assert (tags["stopped_early"] == "true") == (metrics["epochs_run"] < 2)
        stopped += tags["stopped_early"] == "true"
    # ASHA (grace 1 epoch, reduction 2) stops a candidate whose first epoch is below the median of those before
    # it: with 6 candidates in sequence, at least one is.
    assert stopped >= 1
    out = tmp_path / "searches" / "s1"
    table = (out / "results.md").read_text()
    assert all(run.info.run_name in table for run in candidates) and (out / "results.csv").is_file()
    specs = sorted((out / "specs").glob("rank*.toml"))
    assert len(specs) == 2 and all(models.param_count(load_spec(p)) <= TINY_BUDGET for p in specs)
    # The cost is the candidates' logged epoch times added up: in the table per candidate, and in total.
    minutes = [sum(m.value for m in client.get_metric_history(r.info.run_id, "epoch_seconds")) / 60
               for r in candidates]
    # One sweep re-validates both specs, so their trials share the machine's slots; the longer proxy starts first.
    spec_minutes = {r.data.tags["spec_hash"]: m for r, m in zip(candidates, minutes)}
    first, second = sorted(specs, key=lambda p: -spec_minutes[p.stem.split("-", 1)[1]])
    script = (out / "revalidate.sh").read_text()
    # It reads the search's data into the search's MLflow store (flags the search was given), not the defaults.
    assert (f"python -m orchestrator.run --spec {first},{second} --seeds 2 --results-dir results/s1 --skip-existing "
            f"--data-dir {no_test_set.resolve()} --tracking-uri {uri}\n") in script
    assert all(m > 0 for m in minutes)
    assert table.startswith(f"6 candidates; cost {sum(minutes) / 60:.1f} CPU-hours") and "train_minutes" in table
    assert abs(parent.data.metrics["candidate_hours"] - sum(minutes) / 60) < 1e-9
    # A finished search is not searched again: --resume says so and names the re-validation script.
    assert command.main(search_args(tmp_path, no_test_set, "--name", "s1", "--resume")) == 2
    assert f"re-validate its top specs with `sh {out}/revalidate.sh`" in capsys.readouterr().err


def test_a_second_objective_makes_the_written_specs_the_pareto_front(tiny_cifar, tmp_path, local_ray):
    """Also: a size cap that binds (--max-size-mb) reaches every candidate the searcher samples."""
    assert command.main(search_args(tmp_path, tiny_cifar, "--name", "mo", "--candidates", "4", "--proxy-epochs",
                                   "1", "--objective", "accuracy,macs", "--max-size-mb", str(TINY_SIZE_CAP_MB))) == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    [parent] = runs_of(uri, "search")
    assert parent.data.tags["objective"] == "accuracy,macs"
    assert all(r.data.metrics["size_mb"] <= TINY_SIZE_CAP_MB and r.info.status == "FINISHED"
               for r in runs_of(uri, "candidate"))
    points = {r.data.tags["spec_hash"]: (r.data.metrics["heldout_accuracy"], r.data.metrics["macs_per_image"])
              for r in runs_of(uri, "candidate")}
    front = {h for h, (acc, macs) in points.items()
             if not any(a >= acc and m <= macs and (a, m) != (acc, macs) for a, m in points.values())}
    written = {p.stem.split("-", 1)[1] for p in (tmp_path / "searches" / "mo" / "specs").glob("*.toml")}
    assert written == front and front


@pytest.mark.slow  # two drivers, each starting its own Ray: ~80 s on a busy 2-core box
@pytest.mark.parametrize("tune_state", ["kept", "cut short"])
def test_a_killed_search_resumes_without_rerunning_finished_candidates(tune_state, tiny_cifar, tmp_path):
    """SIGKILL the driver (and its local Ray) once a candidate has finished; --resume then trains only what
    was not finished: a finished run is never touched again, and no spec is trained twice. When Tune's saved
    state is cut short (the kill hit it being written), --resume refuses in one line and changes nothing."""
    args = [sys.executable, "-m", "orchestrator.search", *search_args(tmp_path, tiny_cifar, "--name", "k1",
                                                                      "--candidates", "4", "--concurrent", "1")]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    driver_proc = subprocess.Popen(args, cwd=REPO, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)

    def finished():
        try:
            return {r.data.tags["trial_id"]: r.info.end_time for r in runs_of(uri, "candidate")
                    if r.info.status == "FINISHED"}
        except Exception:  # the store is being created
            return {}
    try:
        deadline = time.time() + 300
        while len(finished()) < 1 and time.time() < deadline and driver_proc.poll() is None:
            time.sleep(1)
    finally:
        os.killpg(driver_proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver_proc.wait()
    time.sleep(3)  # Ray's workers outlive the driver by a moment
    before = {r.data.tags["trial_id"]: (r.info.end_time, r.data.tags["spec_hash"]) for r in runs_of(uri, "candidate")
              if r.info.status == "FINISHED"}
    assert 1 <= len(before) < 4, before
    if tune_state == "cut short":
        state_file = max((tmp_path / "ray" / "search-k1").glob("experiment_state-*.json"))
        state_file.write_bytes(state_file.read_bytes()[:1000])
    resumed = subprocess.run(args + ["--resume"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    if tune_state == "cut short":
        assert resumed.returncode == 2 and resumed.stderr.strip().splitlines() == [
            f"error: Tune's saved state of search 'k1' ({state_file}) is cut short, so --resume cannot continue it: "
            f"start it again with another --name (its candidates stay in MLflow)"], resumed.stderr[-3000:]
        assert {r.data.tags["trial_id"]: (r.info.end_time, r.data.tags["spec_hash"]) for r in runs_of(uri, "candidate")
                if r.info.status == "FINISHED"} == before
        return
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = runs_of(uri, "candidate")
    after = {r.data.tags["trial_id"]: (r.info.end_time, r.data.tags["spec_hash"]) for r in runs}
    assert all(after[t] == was for t, was in before.items()), "a finished candidate's run changed"
    trained = [r.data.tags["spec_hash"] for r in runs if r.info.status == "FINISHED"]
    assert len(trained) == len(set(trained)), "a candidate was trained twice"
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)  # KILLED: started after Tune's last snapshot
    [parent] = runs_of(uri, "search")
    assert parent.info.status == "FINISHED" and parent.data.metrics["candidates_trained"] == len(runs)
    assert (tmp_path / "searches" / "k1" / "results.md").is_file()


# --- the proxy check -----------------------------------------------------------------------------------------
def write_records(folder: Path, accuracies: dict[str, list[float]]) -> None:
    """Records as orchestrator.run writes them (the fields the check reads), one per (variant, seed)."""
    protocol = records.paper_protocol()
    for variant, values in accuracies.items():
        for seed, accuracy in enumerate(values):
            records.write_record(folder, {
                "schema_version": records.SCHEMA_VERSION, "variant": variant, "seed": seed, "protocol": protocol,
                "protocol_hash": records.protocol_hash(protocol), "history": [],
                "final": {"final_val_accuracy": accuracy}})


def test_proxy_check_reports_the_spearman_correlation_with_the_records(tiny_cifar, tmp_path, local_ray, capsys):
    write_records(tmp_path / "grid", {"base": [0.70, 0.71], "v5": [0.66], "v6": [0.77], "alpha": [0.78]})
    code = command.main(search_args(tmp_path, tiny_cifar, "--proxy-check", "--name", "pc", "--results",
                                   str(tmp_path / "grid"), "--variants", "base,v5,v6"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    [parent] = runs_of(uri, "proxy-check")
    proxy_accuracy = {r.data.tags["variant"]: r.data.metrics["heldout_accuracy"] for r in runs_of(uri, "candidate")
                      if r.data.tags["mlflow.parentRunId"] == parent.info.run_id}
    assert sorted(proxy_accuracy) == ["base", "v5", "v6"]
    full = {"base": 0.705, "v5": 0.66, "v6": 0.77}
    rho = spearmanr([proxy_accuracy[v] for v in full], list(full.values())).statistic
    assert parent.data.metrics["spearman_rho"] == pytest.approx(rho)
    assert code == (0 if rho >= 0.8 else 1)
    out = capsys.readouterr().out
    assert f"Spearman rho = {rho:.3f} over 3 variants" in out
    assert (tmp_path / "searches" / "pc" / "proxy_check.md").read_text() in out
