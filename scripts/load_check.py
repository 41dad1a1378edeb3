"""Load check: one sweep of many short trials through a real MLflow SQLite store, then count everything.

    python scripts/load_check.py                      # 2 variants x 32 seeds = 64 trials, 1 epoch, tiny data
    python scripts/load_check.py --variants base,v6 --seeds 4 --keep /tmp/load

Every trial must leave exactly one FINISHED child run with each per-epoch metric once per epoch, every final
metric, its params and both model artifacts; no trial may have needed a restart (Ray writes error.txt for
each failed attempt, e.g. SQLite's "database is locked"). Prints expected vs found and exits 1 on any
difference. tests/test_load.py runs the same check on a smaller sweep in CI.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from orchestrator.cli import ArgumentParser  # noqa: E402  (one-line errors, like every CLI here)
from orchestrator.sweep.tracking import all_pages  # noqa: E402
from orchestrator.training.metrics import EPOCH_METRICS, FINAL_METRICS  # noqa: E402  (the names every trial logs)

ARTIFACTS = ["model/state_dict.pt", "the MLflow model's MLmodel (under the run, or its READY logged model)"]


def tiny_dataset(root: Path) -> Path:
    import data
    train_x, train_y = data.synthetic_cifar10(16, seed=0)
    test_x, test_y = data.synthetic_cifar10(4, seed=1)
    data.write_cifar10_binary(root, train_x, train_y, test_x, test_y)
    return root


def count(uri: str, parent_run_id: str, variants: list[str], seeds: list[int], epochs: int,
          storage_path: str) -> list[tuple[str, int, int]]:
    """(what, expected, found) for everything one sweep must have left in the store."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    children = all_pages(client.search_runs, [parent.info.experiment_id],
                         f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000)
    logged_models: dict[str, list] = {}  # MLflow 3's log_model makes a LoggedModel linked to its source run
    for m in all_pages(client.search_logged_models, [parent.info.experiment_id], max_results=100):
        logged_models.setdefault(m.source_run_id, []).append(m)
    expected_names = {f"{v}-seed{s}" for v in variants for s in seeds}
    n = len(expected_names)
    names = [r.info.run_name for r in children]
    metric_points = final_metrics = params_ok = artifacts = 0
    for r in children:
        for key in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            metric_points += len(steps) if sorted(steps) == list(range(1, epochs + 1)) else 0
        final_metrics += sum(key in r.data.metrics for key in FINAL_METRICS)
        params_ok += {"variant", "seed", "lr", "epochs", "batch_size"} <= set(r.data.params)
        # The run's own artifact store, listed directly (the client's runs:/ listing also looks up logged
        # models through the default tracking URI, i.e. ./mlflow.db).
        repo = get_artifact_repository(r.info.artifact_uri)
        artifacts += "model/state_dict.pt" in {a.path for a in repo.list_artifacts("model")}
        artifacts += ("mlflow_model/MLmodel" in {a.path for a in repo.list_artifacts("mlflow_model")} or
                      any(m.status == "READY" and "MLmodel" in
                          {a.path for a in client.list_logged_model_artifacts(m.model_id)}
                          for m in logged_models.get(r.info.run_id, [])))
    sweeps = client.search_runs([parent.info.experiment_id], f"tags.sweep_id = '{parent.data.tags['sweep_id']}' "
                                f"and tags.kind = 'sweep'")
    attempts_failed = list(Path(storage_path).glob("*/error.txt"))
    locked = sum("database is locked" in p.read_text(errors="replace") for p in attempts_failed)
    return [
        ("sweep parent runs (FINISHED)", 1, sum(s.info.status == "FINISHED" for s in sweeps)),
        ("trial runs", n, len(children)),
        ("distinct trial names matching the grid", n, len(set(names) & expected_names)),
        ("trial runs FINISHED", n, sum(r.info.status == "FINISHED" for r in children)),
        (f"per-epoch metric points ({len(EPOCH_METRICS)} metrics x {epochs} epochs, each step once)",
         n * len(EPOCH_METRICS) * epochs, metric_points),
        (f"final metrics ({len(FINAL_METRICS)} per run)", n * len(FINAL_METRICS), final_metrics),
        ("runs with their params", n, params_ok),
        (f"model artifacts ({len(ARTIFACTS)} per run)", n * len(ARTIFACTS), artifacts),
        ("trial attempts that failed (error.txt)", 0, len(attempts_failed)),
        ("... of them 'database is locked'", 0, locked),
    ]


def run_load(workdir: Path, variants: list[str], n_seeds: int, epochs: int = 1) -> dict:
    from orchestrator.sweep import driver as orun
    from orchestrator.training.config import TrainConfig
    # compile and export off: one-epoch trials on a tiny dataset would spend most of their time on them
    from orchestrator.sweep.config import SweepConfig
    # compile and export off: one-epoch trials on a tiny dataset would spend most of their time on them
    train = TrainConfig(epochs=epochs, data_dir=str(tiny_dataset(workdir / "tiny-cifar")), latency_batch1_calls=20,
                        compile=False, export="none")
    cfg = SweepConfig(train=train, variants=tuple(variants), seeds=n_seeds,
                      tracking_uri=f"sqlite:///{workdir}/mlflow/mlflow.db", storage_path=str(workdir / "ray_results"),
                      report=False, max_failures=2)
    started = time.perf_counter()
    out = orun.run_sweep(cfg)
    wall_s = time.perf_counter() - started
    rows = count(cfg.tracking_uri, out["parent_run_id"], variants, list(range(n_seeds)), epochs, out["storage_path"])
    return {"rows": rows, "wall_s": wall_s, "sweep_wall_s": out["wall_seconds"], "sweep_id": out["sweep_id"]}


def main(argv=None) -> int:
    p = ArgumentParser(prog="python scripts/load_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="base,v6", help="comma-separated variants (default %(default)s)")
    p.add_argument("--seeds", type=int, default=32, help="seeds per variant (default %(default)s)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one)")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory(prefix="load-check-") as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_load(workdir, variants, args.seeds, args.epochs)
    trials = len(variants) * args.seeds
    print(f"\nload check: {trials} trials ({','.join(variants)} x {args.seeds} seeds, {args.epochs} epoch), "
          f"sweep {result['sweep_id']}: {result['sweep_wall_s']:.0f} s in Tune, {result['wall_s']:.0f} s in all")
    width = max(len(r[0]) for r in result["rows"])
    print(f"{'what':<{width}}  expected     found")
    for what, expected, found in result["rows"]:
        print(f"{what:<{width}}  {expected:>8}  {found:>8}{'' if expected == found else '   <-- MISMATCH'}")
    ok = all(e == f for _, e, f in result["rows"])
    print("OK: every run, metric and artifact present, counts as expected" if ok else "FAILED: counts differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
