"""What the driver does while a search runs: the live table with a search line (candidates done, the best so far,
the ETA, computed by the sweep's eta_line), and closing the MLflow runs of candidates ASHA stopped."""
from __future__ import annotations

from types import SimpleNamespace

from ray import tune

from orchestrator.search import tracking
from orchestrator.sweep.callbacks import eta_line


def candidate_name(trial) -> str:
    """`cand-<Tune trial id>` (the id is stable across --resume) names the trial's folder and its MLflow run."""
    return f"cand-{trial.trial_id}"


def search_line(trials, candidates: int, epochs: int) -> str:
    """`search: 7/60 candidates done (3 stopped early by ASHA), 2 running; best so far 61.20% (cand-9fdc85c9); ETA
    2.1 h`. The ETA is the sweep's (remaining epochs x mean epoch time / candidates running), counting the
    candidates not sampled yet at their full proxy: an upper bound, as ASHA stops some early."""
    ended = {"TERMINATED", "ERROR"}
    unsampled = [SimpleNamespace(last_result={}, status="PENDING")] * (candidates - len(trials))
    views = [SimpleNamespace(config={"train": {"epochs": epochs}}, last_result=t.last_result,
                             status="TERMINATED" if t.status in ended else t.status) for t in [*trials, *unsampled]]
    eta = eta_line(views).rsplit("; ", 1)[-1]
    done = [t for t in trials if t.status in ended]
    stopped = sum(t.status == "TERMINATED" and not (t.last_result or {}).get("diverged")  # not crashed or diverged
                  and int((t.last_result or {}).get("epoch", 0) or 0) < epochs for t in done)
    full = [t for t in done if int((t.last_result or {}).get("epoch", 0) or 0) >= epochs
            and "heldout_accuracy" in (t.last_result or {})]
    best = max(full, key=lambda t: t.last_result["heldout_accuracy"], default=None)
    best_text = (f"best so far {best.last_result['heldout_accuracy']:.2%} ({candidate_name(best)})" if best
                 else "no candidate through the whole proxy yet")
    running = sum(t.status == "RUNNING" for t in trials)
    return (f"search: {len(done)}/{candidates} candidates done ({stopped} stopped early by ASHA), {running} "
            f"running; {best_text}; {eta}")


class SearchReporter(tune.CLIReporter):
    """Tune's live table (each candidate's depth and head, epoch k/N, elapsed time, held-out accuracy, size and
    MACs) with the search line below it."""

    def __init__(self, candidates: int, epochs: int):
        super().__init__(parameter_columns={"candidate/spec/head/kind": "head"},
                         metric_columns={"progress": "epoch", "time_total_s": "elapsed s",
                                         "heldout_accuracy": "heldout_acc", "param_count": "params",
                                         "macs_per_image": "MACs"},
                         max_report_frequency=30, sort_by_metric=False,
                         # explicit, as in the sweep's reporter: Tune's default reads a global verbosity
                         print_intermediate_tables=True)
        self.candidates, self.epochs = candidates, epochs

    def report(self, trials, done: bool, *sys_info: str):
        self._print(self._progress_str(trials, done, *sys_info) + "\n" + search_line(trials, self.candidates,
                                                                                       self.epochs))


class CandidateCloser(tune.Callback):
    """When ASHA stops a candidate, its process ends at a report and cannot close its own MLflow run: close it here,
    FINISHED with stopped_early=true and the epochs it ran. Plain data only, so a restored Tuner brings it back."""

    def __init__(self, context: dict, epochs: int):
        self.uri, self.experiment_id = context["tracking_uri"], context["experiment_id"]
        self.search_id, self.epochs = context["search_id"], epochs

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = int((trial.last_result or {}).get("epoch", 0) or 0)
        if epoch < self.epochs:  # ended before the last epoch without an error: ASHA stopped it
            tracking.close_stopped_candidate(self.uri, self.experiment_id, self.search_id, trial.trial_id, epoch)
