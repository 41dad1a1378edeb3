"""Architecture search under the paper's storage budget (`python -m orchestrator.search`).

    space.py     the space: shapes sampled define-by-run (Optuna), repaired, scaled to fill --max-params
    proxy.py     the proxy protocol: the paper's training on a subset, ranked on a held-out training slice
    trainable.py one candidate as a Ray Tune trial: budget check, MLflow run, proxy, per-epoch reports
    tracking.py  MLflow: the search's parent run and each candidate's nested run
    progress.py  the live table and search line (done, best, ETA); closing runs ASHA stopped
    driver.py    open or resume, the tuner (OptunaSearch + ASHA), fit, close
    results.py   the ranked table, the top-K or Pareto specs, the re-validation commands
    check.py     --proxy-check: the proxy's Spearman correlation with the full protocol
    config.py    SearchConfig: the flags
"""
