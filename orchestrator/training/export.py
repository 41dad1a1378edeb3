"""The deployment view of a trained model: ONNX fp32 export, ONNX Runtime int8 static quantization, and the
size, accuracy and latency of both, timed like orchestrator.training.latency times PyTorch (one thread, node lock).

    metrics, paths = export_model(model, train_images=x, val_images=vx, val_labels=vy, seed=0, out_dir=d)
    metrics["int8_val_accuracy"], paths["int8"]          # d/model.int8.onnx

No Ray and no MLflow here: the caller logs what this returns.
"""
from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime import quantization as ortq

import data
import models
from orchestrator.training.latency import LATENCY_THREADS, node_lock
from orchestrator.training.metrics import EXPORT_METRICS  # what export_model returns

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
PARITY_IMAGES = 256
PARITY_MAX_ABS_DIFF = 1e-4  # fp32 kernels differ in summation order only: ~1e-7 is typical, 1e-4 means a bug
LATENCY_BATCH = 4  # the paper's per-image latency: batches of 4, total time / images
EVAL_BATCH = 500
CALIBRATION_BATCH = 32
# ONNX Runtime's per-image latency is timed on the first 2,000 validation images: the median of the repeats is as
# steady there as on all 10,000, and the whole export costs ~5x less time (accuracy still uses every image).
LATENCY_IMAGES = 2000

class ExportError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes."""


def deployable(model: torch.nn.Module) -> models.ImageClassifier:
    """A CPU, fp32, contiguous, eval-mode copy behind the training normalisation, with CIFAR-10's class names:
    uint8 images in, logits out (models.ImageClassifier). A copy: the trainer's model may sit on a GPU in
    channels_last, and exporting must not flip the caller's model out of train mode."""
    bare = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    return models.ImageClassifier(bare, data.CLASSES).eval()


def export_onnx(model: models.ImageClassifier, path: Path, image_shape: tuple[int, ...]) -> Path:
    """fp32 ONNX of a `deployable` model: uint8 images [batch, 3, H, W] in (a dynamic batch dimension), logits out,
    weights inside the one file, debug metadata stripped, the class names and the input it wants as metadata.

    The dynamo exporter (torch.export) with optimize=True also folds every BatchNorm into its Conv/Gemm."""
    example = torch.zeros(2, *image_shape, dtype=torch.uint8)  # not 1: torch.export specializes a size-1 dim
    program = torch.onnx.export(model, (example,), None, dynamo=True, optimize=True, verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch")},),
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    proto = program.model_proto
    for node in proto.graph.node:
        # Stack traces and FX text per node: a few % of the file, and this machine's paths in a deployable.
        del node.metadata_props[:]
    onnx.helper.set_model_props(proto, {"classes": json.dumps(model.classes),
                                        "input": "uint8 RGB images [N, 3, 32, 32], pixels 0-255, unnormalised"})
    onnx.save_model(proto, path)
    return path


def ort_session(path: Path) -> ort.InferenceSession:
    """ONNX Runtime on one intra-op and one inter-op thread, sequential, subnormals flushed: the same
    conditions for every trial, as orchestrator.training.latency sets for PyTorch."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = LATENCY_THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(session: ort.InferenceSession, images: torch.Tensor, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Logits [N,10] for uint8 images [N,3,H,W], as they are: the model normalises them itself."""
    return np.concatenate([session.run(None, {INPUT_NAME: images[i:i + batch_size].numpy()})[0]
                           for i in range(0, len(images), batch_size)])


def ort_accuracy(session: ort.InferenceSession, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((ort_logits(session, images).argmax(1) == labels.numpy()).mean())


@torch.no_grad()
def check_parity(model: torch.nn.Module, session: ort.InferenceSession, images: torch.Tensor) -> float:
    """Max |logit difference| between PyTorch and the fp32 ONNX model; ExportError above PARITY_MAX_ABS_DIFF."""
    expected = model(images).numpy()
    diff = float(np.abs(ort_logits(session, images) - expected).max())
    if not diff <= PARITY_MAX_ABS_DIFF:  # also catches NaN
        raise ExportError(f"ONNX export differs from the PyTorch model: max |logit difference| {diff:.3g} on "
                          f"{len(images)} validation images exceeds {PARITY_MAX_ABS_DIFF:g}")
    return diff


def calibration_set(train_images: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` training images (all of them if fewer) drawn by the trial's seed: the same seed, the same set."""
    if count < 1:
        raise ValueError(f"calibration needs at least 1 image, got {count}")
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
    return train_images[order[:count]]


class CalibrationReader(ortq.CalibrationDataReader):
    """Feeds uint8 calibration images to ONNX Runtime's calibrator, CALIBRATION_BATCH at a time."""

    def __init__(self, images: torch.Tensor):
        self._batches = iter([images[i:i + CALIBRATION_BATCH].numpy()
                              for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(onnx_path: Path, int8_path: Path, calibration: torch.Tensor) -> Path:
    """Static int8 in QDQ format: per-channel int8 weights, uint8 activations with MinMax ranges.

    uint8 activations, not int8: on x86 ORT runs u8 x s8 kernels, and an int8 activation that feeds two
    convs (a block's input into its first conv and its projection shortcut) it cannot convert, so it leaves
    both convs in float (4 of base's 6).
    Pre-processing (shape inference, ORT's graph optimizations) keeps BatchNorm folded even if the exporter
    did not fold it, and is what ORT's quantizer expects."""
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        ortq.quant_pre_process(str(onnx_path), str(prepared))
        ortq.quantize_static(str(prepared), str(int8_path), CalibrationReader(calibration),
                             quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                             activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8,
                             calibrate_method=ortq.CalibrationMethod.MinMax)
    return int8_path


def _median_call_ms(run: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ort_latency(session: ort.InferenceSession, images: torch.Tensor, *, batch1_calls: int, repeats: int,
                warmup_calls: int = 20) -> tuple[float, float]:
    """(batch1_ms, per_image_ms), each the median of `repeats` after warm-up. per-image: forward + argmax on
    batches of 4 over `images`, total time / images; batch1: median of `batch1_calls` single-image calls.
    The caller holds the node lock."""
    batches = [images[i:i + LATENCY_BATCH].numpy() for i in range(0, len(images), LATENCY_BATCH)]
    single = batches[0][:1]

    def run(x: np.ndarray):
        return session.run(None, {INPUT_NAME: x})[0].argmax(1)

    for _ in range(warmup_calls):  # both shapes: ORT plans memory per input shape on first sight
        run(single)
        run(batches[0])
    batch1_ms, per_image_ms = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in batches:
            run(x)
        per_image_ms.append((time.perf_counter() - t0) * 1e3 / len(images))
        batch1_ms.append(_median_call_ms(lambda: run(single), batch1_calls))
    return statistics.median(batch1_ms), statistics.median(per_image_ms)


def _check_inputs(train_images, val_images, val_labels, latency_images) -> None:
    for name, images in (("train_images", train_images), ("val_images", val_images)):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
            raise ValueError(f"{name} must be non-empty uint8 [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
    if val_labels.shape != (len(val_images),):
        raise ValueError(f"val_labels must be [N] with N={len(val_images)}, got {tuple(val_labels.shape)}")
    if latency_images is not None and latency_images < 1:
        raise ValueError(f"latency_images must be None (all) or >= 1, got {latency_images}")


def export_model(model: torch.nn.Module, *, train_images: torch.Tensor, val_images: torch.Tensor,
                 val_labels: torch.Tensor, seed: int, out_dir: str | Path, calibration_images: int = 256,
                 batch1_calls: int = 200, repeats: int = 3,
                 latency_images: int | None = LATENCY_IMAGES) -> tuple[dict, dict[str, Path]]:
    """Export `model` to out_dir/model.onnx (fp32) and out_dir/model.int8.onnx; return (metrics, paths).

    Images are uint8 [N,3,H,W] as data.load_cifar10 gives them. Accuracies use all of val_images; the
    per-image latencies the first `latency_images` of them (None: all). metrics has the EXPORT_METRICS keys;
    paths is {"onnx": ..., "int8": ...}. Raises ExportError when the fp32 export fails the parity check."""
    t0 = time.perf_counter()
    _check_inputs(train_images, val_images, val_labels, latency_images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = deployable(model)
    paths = {"onnx": export_onnx(model, out_dir / ONNX_FILE, tuple(val_images.shape[1:]))}
    fp32 = ort_session(paths["onnx"])
    parity = check_parity(model, fp32, val_images[:PARITY_IMAGES])
    paths["int8"] = quantize_int8(paths["onnx"], out_dir / INT8_FILE,
                                  calibration_set(train_images, calibration_images, seed))
    int8 = ort_session(paths["int8"])
    metrics = {"onnx_bytes": paths["onnx"].stat().st_size, "int8_bytes": paths["int8"].stat().st_size,
               "onnx_val_accuracy": ort_accuracy(fp32, val_images, val_labels),
               "int8_val_accuracy": ort_accuracy(int8, val_images, val_labels),
               "onnx_parity_max_abs_diff": parity}
    timed = val_images[:latency_images]
    with node_lock():
        for kind, session in (("fp32", fp32), ("int8", int8)):
            batch1, per_image = ort_latency(session, timed, batch1_calls=batch1_calls, repeats=repeats)
            metrics[f"ort_latency_ms_batch1_{kind}"] = batch1
            metrics[f"ort_latency_ms_per_image_{kind}"] = per_image
    metrics["export_seconds"] = time.perf_counter() - t0
    return {k: metrics[k] for k in EXPORT_METRICS}, paths
