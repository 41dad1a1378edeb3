"""The proxy, checked (`python -m orchestrator.search --proxy-check`): train the proxy on the paper's variants,
exactly as the search trains a candidate (same trainable, same held-out slice, nested MLflow runs), and report
the Spearman correlation of their proxy accuracies with their full-protocol accuracies from published records.
A proxy whose ranking disagrees with the full protocol's (rho < 0.8) would steer the search wrong."""
from __future__ import annotations

import math
import time

from mlflow import MlflowClient

from models import MAX_PARAMS, get_spec
from models.spec import to_dict
from orchestrator.search import tracking as search_tracking
from orchestrator.search.driver import open_search
from orchestrator.search.config import ConfigError, SearchConfig
from orchestrator.search.results import write_csv
from orchestrator.sweep import records

TRUST_RHO = 0.8  # the bar: below it, the proxy's ranking is not the full protocol's


def full_protocol_accuracy(results_dir: str) -> tuple[dict[str, tuple[float, int]], dict]:
    """{variant: (mean final_val_accuracy, seeds)} of the records in results_dir, and their protocol. One protocol
    only (records.check_one_protocol); ConfigError when there are none."""
    have = records.load_records(results_dir)
    if not have:
        raise ConfigError(f"--results {results_dir}: no trial records (<variant>-seed<k>.json) there; point it at "
                          f"a folder written by `python -m orchestrator.run --results-dir` (e.g. results/paper-grid)")
    records.check_one_protocol(have, results_dir)
    by_variant: dict[str, list[float]] = {}
    for r in have:
        by_variant.setdefault(r["variant"], []).append(float(r["final"]["final_val_accuracy"]))
    return {v: (sum(a) / len(a), len(a)) for v, a in by_variant.items()}, have[0]["protocol"]


def ranks(values: dict[str, float]) -> dict[str, int]:
    """1 = the highest value."""
    return {v: i for i, v in enumerate(sorted(values, key=lambda v: -values[v]), start=1)}


def variant_name(trial) -> str:
    return trial.config["candidate"]["variant"]


def _train_variants(search, variants) -> dict[str, float]:
    """Each variant's held-out accuracy after the proxy, trained as the search trains a candidate."""
    from ray import tune
    from orchestrator.search.progress import SearchReporter
    from orchestrator.search.trainable import run_candidate
    cfg = search.cfg
    grid = [{"variant": v, "spec": to_dict(get_spec(v)), "repairs": []} for v in variants]
    tuner = tune.Tuner(
        tune.with_resources(run_candidate, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}),
        param_space={"search": search.context(), "proxy": search.proxy(), "candidate": tune.grid_search(grid)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.concurrent or None, reuse_actors=True,
                                    trial_name_creator=variant_name, trial_dirname_creator=variant_name),
        run_config=tune.RunConfig(name=f"search-{cfg.name}", storage_path=search.storage, verbose=1,
                                  progress_reporter=SearchReporter(len(variants), cfg.proxy_epochs)))
    return {r.config["candidate"]["variant"]: float(r.metrics["heldout_accuracy"]) for r in tuner.fit()
            if r.error is None and r.config and "heldout_accuracy" in (r.metrics or {})}


def correlation(proxy_accuracy: dict[str, float], full: dict[str, tuple[float, int]]) -> tuple[float, list[dict]]:
    """Spearman's rho between the proxy's and the full protocol's accuracies over the variants both have, and
    one row per variant."""
    from scipy.stats import spearmanr
    common = [v for v in proxy_accuracy if v in full]
    rho = float(spearmanr([proxy_accuracy[v] for v in common], [full[v][0] for v in common]).statistic)
    proxy_rank, full_rank = ranks({v: proxy_accuracy[v] for v in common}), ranks({v: full[v][0] for v in common})
    rows = [{"variant": v, "proxy_heldout_accuracy": proxy_accuracy[v], "proxy_rank": proxy_rank[v],
             "full_accuracy": full[v][0], "full_seeds": full[v][1], "full_rank": full_rank[v]}
            for v in sorted(common, key=lambda v: full_rank[v])]
    return rho, rows


def _report(cfg: SearchConfig, rho: float, rows: list[dict], protocol: dict) -> str:
    lines = [f"**Proxy check {cfg.name}**: proxy = {cfg.proxy_epochs} epochs on {cfg.proxy_per_class or 'all'} "
             f"images per class (batch {cfg.proxy_batch_size}), ranked on {cfg.holdout_per_class} held-out training "
             f"images per class; full protocol = the records in {cfg.results} ({protocol.get('epochs')} epochs, "
             f"subset {protocol.get('subset_per_class') or 'none'}), test accuracy averaged over seeds.", "",
             "| variant | proxy held-out acc (%) | proxy rank | full acc (%) | seeds | full rank |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {100 * r['proxy_heldout_accuracy']:.2f} | {r['proxy_rank']} | "
              f"{100 * r['full_accuracy']:.2f} | {r['full_seeds']} | {r['full_rank']} |" for r in rows]
    verdict = ("trust it" if rho >= TRUST_RHO else "do not trust it yet: lengthen the proxy (--proxy-epochs, "
               "--proxy-per-class) and check again")
    lines += ["", f"Spearman rho = {rho:.3f} over {len(rows)} variants (bar: {TRUST_RHO}): {verdict}."]
    return "\n".join(lines) + "\n"


def run_proxy_check(cfg: SearchConfig) -> int:
    """The check; exit code 0 when rho >= TRUST_RHO, 1 below it (2 for bad input, raised)."""
    if cfg.resume:
        raise ConfigError("--resume does not apply to --proxy-check: run the check again (it is one command)")
    full, protocol = full_protocol_accuracy(cfg.results)
    missing = [v for v in cfg.variants if v not in full]
    if len(cfg.variants) - len(missing) < 3:
        raise ConfigError(f"--results {cfg.results} has records of {', '.join(sorted(full)) or 'no variant'}; a "
                          f"correlation needs at least 3 of --variants {','.join(cfg.variants)}")
    # The paper's variants are the paper's budget, whatever --max-params a search would use.
    cfg = cfg.replace(name=cfg.name or time.strftime("proxy-check-%Y%m%d-%H%M%S"), max_params=MAX_PARAMS,
                      max_size_mb=0.0, max_macs=0)
    search = open_search(cfg, kind="proxy-check")
    cfg = search.cfg
    started = time.perf_counter()
    proxy_accuracy = _train_variants(search, [v for v in cfg.variants if v in full])
    if len(proxy_accuracy) < 3:
        search_tracking.finish_search_run(cfg.tracking_uri, search.parent_run_id, "FAILED")
        print(f"error: only {len(proxy_accuracy)} variants finished the proxy; see their MLflow runs", flush=True)
        return 1
    rho, rows = correlation(proxy_accuracy, full)
    text = _report(cfg, rho, rows, protocol)
    search.out_dir.mkdir(parents=True, exist_ok=True)
    (search.out_dir / "proxy_check.md").write_text(text)
    write_csv(search.out_dir / "proxy_check.csv", rows, list(rows[0]))
    client = MlflowClient(cfg.tracking_uri)
    if math.isfinite(rho):  # NaN when either side ranks every variant equal
        client.log_metric(search.parent_run_id, "spearman_rho", rho)
    client.log_metric(search.parent_run_id, "check_wall_seconds", time.perf_counter() - started)
    for name in ("proxy_check.md", "proxy_check.csv"):
        client.log_artifact(search.parent_run_id, str(search.out_dir / name), artifact_path="proxy_check")
    search_tracking.finish_search_run(cfg.tracking_uri, search.parent_run_id)
    print("\n" + text + (f"(missing full-protocol records: {', '.join(missing)})\n" if missing else ""), flush=True)
    return 0 if rho >= TRUST_RHO else 1
