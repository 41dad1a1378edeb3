"""The Ray Tune trainable of one candidate: check the budget, open its MLflow run, price and time it, train the
proxy, report the held-out accuracy of every epoch (ASHA's input, and Optuna's). Each epoch is logged to MLflow
before it is reported to Tune: ASHA may end the trial at a report. No checkpoints: a proxy candidate is minutes
long, and one interrupted before its last epoch trains again from its first (its run keeps the epochs logged)."""
from __future__ import annotations

import json
import socket

import ray
import torch
from mlflow import MlflowClient
from ray import tune

from models.budget import macs_per_image, param_count, size_mb
from models.spec import NetSpec, dump_toml, from_dict, spec_hash
from orchestrator.search import proxy
from orchestrator.search.space import describe
from orchestrator.search import tracking as search_tracking
from orchestrator.search.tracking import CandidateRun, spec_params
from orchestrator.training.latency import flush_denormal, latency_context

STATIC_METRICS = ("param_count", "size_mb", "macs_per_image", "latency_ms_per_image", "latency_ms_batch1")


class BudgetError(RuntimeError):
    """A candidate over the search's budget reached a trainable: it is refused before anything is built."""


def check_budget(spec: NetSpec, max_params: int, max_macs: int = 0, max_size_mb: float = 0.0) -> None:
    """Raise BudgetError unless spec is within max_params (and max_macs and max_size_mb, when capped). The space
    never samples such a candidate; this is the last line of defence, before any network is built."""
    params = param_count(spec)
    if params > max_params:
        raise BudgetError(f"candidate {spec_hash(spec)} has {params:,} parameters, over the budget of "
                          f"{max_params:,}: refused, never trained")
    if max_size_mb and size_mb(spec) > max_size_mb:
        raise BudgetError(f"candidate {spec_hash(spec)} has {size_mb(spec):.5f} MB, over --max-size-mb "
                          f"{max_size_mb}: refused, never trained")
    if max_macs and macs_per_image(spec) > max_macs:
        raise BudgetError(f"candidate {spec_hash(spec)} has {macs_per_image(spec):,} MACs per image, over "
                          f"--max-macs {max_macs:,}: refused, never trained")


def _replay(ctx: dict, finished, epochs: int) -> None:
    """A candidate of a spec this search finished already (Tune had not seen it finish before the driver died,
    or Optuna asked for the same shape again): report what that run logged instead of training it again."""
    static = {k: v for k, v in finished.data.metrics.items() if k in STATIC_METRICS}
    print(f"{tune.get_context().get_trial_name()}: spec {finished.data.tags['spec_hash']} was trained already as "
          f"{finished.info.run_name}: its results, not trained again", flush=True)
    history = MlflowClient(ctx["tracking_uri"]).get_metric_history(finished.info.run_id, "heldout_accuracy")
    for epoch, accuracy in sorted((m.step, m.value) for m in history):
        tune.report({"epoch": epoch, "progress": f"{epoch}/{epochs}", "heldout_accuracy": accuracy,
                     "replayed": 1, **static})


def _open_run(config: dict, spec: NetSpec) -> CandidateRun:
    ctx, candidate, context = config["search"], config["candidate"], tune.get_context()
    tags = {"spec_hash": spec_hash(spec), "shape": describe(spec), "spec_json": json.dumps(candidate["spec"]),
            "repairs": "; ".join(candidate.get("repairs", [])), "node": socket.gethostname(), **ctx["source_tags"],
            **({"variant": candidate["variant"]} if "variant" in candidate else {}),  # a proxy check's paper variant
            "trial_name": context.get_trial_name()}
    return CandidateRun(ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"], ctx["search_id"],
                        context.get_trial_id(), context.get_trial_name(), tags)


def run_candidate(config: dict) -> None:
    spec, ctx, p = from_dict(config["candidate"]["spec"]), config["search"], config["proxy"]
    # first: nothing over the budget is ever built
    check_budget(spec, ctx["max_params"], ctx["max_macs"], ctx.get("max_size_mb", 0.0))
    torch.set_num_threads(ctx["cpus_per_trial"])
    flushing = flush_denormal(True)
    device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
    epochs = p["epochs"]
    finished = search_tracking.finished_candidate(ctx["tracking_uri"], ctx["experiment_id"], ctx["search_id"],
                                                  spec_hash(spec))
    if finished is not None:
        _replay(ctx, finished, epochs)
        return
    run = _open_run(config, spec)
    trial_data = proxy.proxy_data(ctx["data_dir"], p["holdout_per_class"], p["per_class"])
    static = {"param_count": param_count(spec), "size_mb": size_mb(spec), "macs_per_image": macs_per_image(spec),
              **proxy.candidate_latency(spec, trial_data, device, p["latency_calls"])}
    run.set_tags({"device": str(device), "flush_denormal": str(flushing).lower(), **latency_context(device)})
    run.log_params({**spec_params(config["candidate"]["spec"]), **{f"proxy.{k}": v for k, v in p.items()},
                    "seed": ctx["seed"]})
    run.client.log_text(run.run_id, dump_toml(spec), "spec.toml")
    run.log_metrics(static, step=0)

    epochs_done = [0]

    def on_epoch_end(seed: int, epoch: int, metrics: dict, make_state) -> None:
        epochs_done[0] = epoch
        metrics = proxy.heldout_metrics(metrics)
        run.log_metrics(metrics, step=epoch)
        if epoch == epochs:  # before the report: the last report may be the trial's end
            run.finish("FINISHED", epochs_run=epoch)
        tune.report({"epoch": epoch, "progress": f"{epoch}/{epochs}", **metrics, **static})

    try:
        proxy.train_proxy(spec, p, ctx["data_dir"], ctx["seed"], trial_data, on_epoch_end, device)
    except proxy.DivergedError as e:
        # A result, not a crash (a retry diverges again): the worst accuracy, so TPE learns to avoid the shape.
        run.set_tags({"diverged": "true"})
        run.finish("FAILED", epochs_run=epochs_done[0], reason=str(e))
        tune.report({"epoch": 1, "progress": f"1/{epochs}", "heldout_accuracy": 0.0, "diverged": 1, **static})
    except Exception as e:  # not SystemExit: that is how Tune ends a trial ASHA stopped, at a report
        run.finish("FAILED", epochs_run=epochs_done[0], reason=f"{type(e).__name__}: {e}")
        raise
