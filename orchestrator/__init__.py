"""Runs the paper's study as Ray Tune trials tracked in MLflow: config, training loop, trainable, driver, report."""
