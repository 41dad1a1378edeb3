"""Architecture search under the paper's storage budget (`python -m orchestrator.search`): Optuna's TPE samples the
space, Ray Tune trains each candidate on a short proxy with ASHA, and MLflow keeps every candidate as a nested run."""
