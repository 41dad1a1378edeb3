"""A finished search, read back from its MLflow candidate runs: the ranked table (Markdown and CSV), the top-K
or Pareto specs as TOML files, and the re-validation sweep that retrains them under the full protocol."""
from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

from models.spec import dump_toml, from_dict
from orchestrator.names import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ("rank", "candidate", "spec_hash", "params", "size_mb", "macs", "latency_ms_batch1", "heldout_accuracy",
           "epochs_run", "train_minutes", "status", "pareto", "shape")
CELL_FORMATS = {"heldout_accuracy": lambda v: f"{100 * v:.2f}", "size_mb": "{:.4f}".format, "params": "{:,}".format,
         "latency_ms_batch1": "{:.3f}".format, "macs": "{:,}".format, "pareto": lambda v: "yes" if v else "",
         "train_minutes": "{:.1f}".format}


def _status(run, epochs_run: int, epochs: int) -> str:
    if run.info.status == "FAILED":
        return "diverged" if run.data.tags.get("diverged") == "true" else "failed"
    if run.info.status != "FINISHED":
        return "killed" if run.info.status == "KILLED" else "unfinished"
    return "done" if epochs_run >= epochs and run.data.tags.get("stopped_early") != "true" else "stopped"


def candidate_hours(rows: list[dict]) -> float:
    return sum(r["train_minutes"] for r in rows) / 60


def cost_line(rows: list[dict], cpus_per_trial: int, gpus_per_trial: float = 0) -> str:
    """The search's cost in machine hours: the candidates' training time added up, times what each held."""
    hours = candidate_hours(rows)
    unit, held = ("GPU", gpus_per_trial) if gpus_per_trial else ("CPU", cpus_per_trial)
    return (f"{len(rows)} candidates; cost {hours * held:.1f} {unit}-hours ({hours:.1f} candidate-hours of {held:g} "
            f"{unit} each: every proxy epoch the candidates logged, added up)")


def candidate_rows(runs, epochs: int, epoch_seconds: dict[str, list[float]]) -> list[dict]:
    """One row per candidate run, from what it logged (the last epoch's held-out accuracy), and its training
    minutes from `epoch_seconds` (run id: every epoch_seconds it logged, an epoch trained again after a lost
    driver included: that was paid for too). Not the run's start to end: a resumed run spans the gap between."""
    rows = []
    for run in runs:
        m, tags = run.data.metrics, run.data.tags
        epochs_run = int(m.get("epochs_run", 0))
        rows.append({"candidate": run.info.run_name, "spec_hash": tags.get("spec_hash", ""),
                     "params": int(m["param_count"]) if "param_count" in m else None, "size_mb": m.get("size_mb"),
                     "macs": int(m["macs_per_image"]) if "macs_per_image" in m else None,
                     "latency_ms_batch1": m.get("latency_ms_batch1"), "heldout_accuracy": m.get("heldout_accuracy"),
                     "epochs_run": epochs_run, "train_minutes": sum(epoch_seconds.get(run.info.run_id, ())) / 60,
                     "status": _status(run, epochs_run, epochs), "pareto": False,
                     "shape": tags.get("shape", ""), "spec_json": tags.get("spec_json", ""),
                     "run_id": run.info.run_id})
    return rows


def _dominates(a: dict, b: dict, second: tuple[str, str]) -> bool:
    key, mode = second
    sign = 1 if mode == "min" else -1  # compare as "smaller is better"
    acc_a, acc_b, x_a, x_b = a["heldout_accuracy"], b["heldout_accuracy"], sign * a[key], sign * b[key]
    return acc_a >= acc_b and x_a <= x_b and (acc_a > acc_b or x_a < x_b)


def rank(rows: list[dict], objectives: list[tuple[str, str]]) -> list[dict]:
    """Candidates that ran the whole proxy first, by held-out accuracy; then those ASHA stopped (more epochs
    first: accuracies after different epochs are not comparable); then the rest. With a second objective, the
    non-dominated candidates among those through the whole proxy are flagged `pareto`."""
    done = [r for r in rows if r["status"] == "done" and r["heldout_accuracy"] is not None]
    if len(objectives) > 1:
        metric, mode = objectives[1]
        second = ({"macs_per_image": "macs"}.get(metric, metric), mode)  # the table's name of the metric
        for r in done:
            r["pareto"] = not any(_dominates(o, r, second) for o in done if o is not r)
    stopped = [r for r in rows if r["status"] == "stopped" and r["heldout_accuracy"] is not None]
    rest = [r for r in rows if r not in done and r not in stopped]
    ordered = (sorted(done, key=lambda r: -r["heldout_accuracy"])
               + sorted(stopped, key=lambda r: (-r["epochs_run"], -r["heldout_accuracy"])) + rest)
    for i, r in enumerate(ordered, start=1):
        r["rank"] = i
    return ordered


def selected(rows: list[dict], top_k: int, pareto: bool) -> list[dict]:
    """The candidates worth re-validating, one per distinct spec: the Pareto front, or the top K of the ranking
    among those through the whole proxy."""
    first = {}  # spec hash: its best-ranked candidate
    for r in rows:
        if r["status"] == "done" and (r["pareto"] or not pareto):
            first.setdefault(r["spec_hash"], r)
    return list(first.values()) if pareto else list(first.values())[:top_k]


def markdown_table(rows: list[dict]) -> str:
    header = [c if c != "heldout_accuracy" else "heldout_accuracy (%)" for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join("" if r.get(c) is None else CELL_FORMATS.get(c, str)(r[c]) for c in COLUMNS) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_table(rows: list[dict], out_dir: Path, cost: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(f"{cost}\n\n{markdown_table(rows)}")
    return out_dir / "results.md", write_csv(out_dir / "results.csv", rows, [*COLUMNS, "run_id"])


def write_specs(chosen: list[dict], out_dir: Path) -> list[Path]:
    """`<out>/specs/rank<r>-<spec hash>.toml` for each chosen candidate (the file stem names it in a sweep)."""
    folder = out_dir / "specs"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"rank{r['rank']}-{r['spec_hash']}.toml" for r in chosen]
    for r, path in zip(chosen, paths):
        dump_toml(from_dict(json.loads(r["spec_json"])), path)
    return paths


def longest_first(chosen: list[dict], spec_files: list[Path]) -> list[Path]:
    """The spec files by their candidates' proxy train minutes, longest first. Tune starts trials in order, so with
    fewer slots than specs the longest trial does not start last, on a late-freed slot, while the others idle."""
    return [path for _, path in sorted(zip(chosen, spec_files), key=lambda pair: -pair[0]["train_minutes"])]


def repo_relative(path: Path) -> Path:
    """`path` from the repository root, where the re-validation runs, when it lies inside it (the script then
    works in any clone); else absolute."""
    path = Path(path).resolve()
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def write_revalidation(spec_files: list[Path], seeds: int, search_name: str, out_dir: Path,
                       sweep_flags: tuple[str, ...] = ()) -> tuple[list, Path]:
    """The normal sweep that re-validates the specs under the full paper protocol with `seeds` seeds (the first
    time the test set is used), records into results/<search name>/; and <out_dir>/revalidate.sh, which runs it.
    `sweep_flags`: the search's own data and tracking flags, so the sweep reads the same data into the same store.
    One sweep for all specs, so their trials (fused seeds on a small machine) share every slot; a path with a comma
    cannot join --spec's list, so then one sweep per spec. --skip-existing: re-running the script after an
    interruption trains only the (spec, seed) pairs that have no record yet."""
    spec_files = [repo_relative(p) for p in spec_files]
    groups = [spec_files] if not any("," in str(p) for p in spec_files) else [[p] for p in spec_files]
    commands = [["python", "-m", "orchestrator.run", "--spec", ",".join(map(str, group)), "--seeds", str(seeds),
                 "--results-dir", f"results/{search_name}", "--skip-existing", *sweep_flags]
                for group in groups if group]
    path = out_dir / "revalidate.sh"
    path.write_text("#!/bin/sh\n# Re-validate the search's top specs under the full protocol (run from the "
                    "repository root).\nset -e\n" + "".join(shlex.join(c) + "\n" for c in commands))
    path.chmod(0o755)
    return commands, path


def revalidation_flags(data_dir: str, tracking_uri: str, experiment_name: str) -> tuple[str, ...]:
    """The search's flags its re-validation sweep must share, where they are not the defaults: without them the
    sweep would look for CIFAR-10 elsewhere, or log to another MLflow store than the search's."""
    flags = (("--data-dir", data_dir, ""), ("--tracking-uri", tracking_uri, DEFAULT_TRACKING_URI),
             ("--experiment-name", experiment_name, DEFAULT_EXPERIMENT))
    return tuple(part for flag, value, default in flags if value != default for part in (flag, value))


def revalidate(commands: list[list[str]]) -> int:
    """Run the re-validation sweep(s) one after the other; the first failure's exit code."""
    for command in commands:
        print(f"re-validating: {shlex.join(command)}", flush=True)
        code = subprocess.run([sys.executable, *command[1:]], cwd=REPO).returncode
        if code:
            return code
    return 0
