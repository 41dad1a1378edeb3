"""The names of what every trial reports, hence what it logs to MLflow and what its record holds. A module of
names only, so that records and the report can use them without importing a trainer."""

# Per epoch (MLflow step = epoch).
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_seconds",
                 "train_images_per_second")
# Once, at the end (step 0); the latencies only when measured.
FINAL_METRICS = ("param_count", "size_mb", "state_dict_bytes", "macs_per_image", "final_val_accuracy",
                 "best_val_accuracy", "compile_seconds", "latency_ms_per_image", "latency_ms_batch1")
# The deployment view (orchestrator.training.export), when exported; sizes in bytes, accuracies as fractions.
EXPORT_METRICS = ("onnx_bytes", "int8_bytes", "onnx_val_accuracy", "int8_val_accuracy",
                  "ort_latency_ms_batch1_fp32", "ort_latency_ms_per_image_fp32",
                  "ort_latency_ms_batch1_int8", "ort_latency_ms_per_image_int8",
                  "onnx_parity_max_abs_diff", "export_seconds")
