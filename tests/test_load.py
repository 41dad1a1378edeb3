"""Load: one sweep of many short trials through the real MLflow SQLite store leaves every run, metric and
artifact, counted exactly. CI runs 8 trials; `python scripts/load_check.py` runs the same check on 64."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("load_check", REPO / "scripts" / "load_check.py")
load_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load_check)


def test_many_short_trials_leave_every_run_metric_and_artifact(tmp_path, local_ray):
    result = load_check.run_load(tmp_path, ["base", "v6"], n_seeds=4, epochs=1)
    mismatches = [(what, expected, found) for what, expected, found in result["rows"] if expected != found]
    assert not mismatches, mismatches
    counted = dict((what, found) for what, _, found in result["rows"])
    assert counted["trial runs"] == 8 and counted["trial runs FINISHED"] == 8
