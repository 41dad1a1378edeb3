"""Training: the paper's protocol for one seed or K fused seeds, latency and export. Imports no Ray or MLflow."""
