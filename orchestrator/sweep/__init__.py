"""The sweep: configs, the Ray Tune driver and trial, MLflow runs and the tracking server, trial records."""
