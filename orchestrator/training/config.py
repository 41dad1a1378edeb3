"""`TrainConfig`: exactly what one trial's training reads, with the paper's defaults: the protocol, the data, the
speed options and the latency settings. Each field is one CLI flag of `orchestrator.run` (orchestrator.sweep.config
builds them from the fields' metadata: section and help).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from data import MODES as AUGMENT_MODES

EXPORT_FORMATS = ("onnx", "none")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the problem and the fix."""


def option(default, section: str, help: str, choices=None):
    return field(default=default, metadata={"help": help, "section": section, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    # --- the paper's protocol --------------------------------------------------------------------
    epochs: int = option(10, "protocol", "training epochs")
    batch_size: int = option(4, "protocol", "training mini-batch size")
    lr: float = option(5e-4, "protocol", "Adam learning rate")
    beta1: float = option(0.9, "protocol", "Adam beta1")
    beta2: float = option(0.999, "protocol", "Adam beta2")
    eps: float = option(1e-8, "protocol", "Adam epsilon")
    weight_decay: float = option(1e-4, "protocol", "Adam weight decay (L2)")
    lr_factor: float = option(0.1, "protocol", "ReduceLROnPlateau factor (stepped on validation accuracy, mode max)")
    lr_patience: int = option(4, "protocol", "ReduceLROnPlateau patience in epochs")
    lr_threshold: float = option(1e-4, "protocol", "ReduceLROnPlateau threshold")
    # --- data ------------------------------------------------------------------------------------
    data_dir: str = option("", "data", "CIFAR-10 directory (binary or python layout, or the official .tar.gz); "
                                     "default $CIFAR10_DIR, else ~/.cache/resnet-revisited/cifar10")
    augment: str = option("focused", "data", choices=AUGMENT_MODES, help=(
        "augmentation mode: focused (paper: originals + one augmented copy of each focus-class image), none, "
        "all, or inplace (WARNING: augmenting focus classes in place makes augmentation a label cue; Base ends "
        "near 61%% instead of ~73%%)"))
    focus_classes: str = option("bird,cat,deer,dog", "data", "classes that get extra augmentation, names or indices "
                                                          "(the author's notebooks used 1,2,3,4)")
    subset_per_class: int = option(0, "data", "train on a stratified subset of N images per class (0 = all 5,000)")
    # --- speed (same maths, faster kernels) ------------------------------------------------------
    channels_last: bool = option(True, "speed", "train in channels_last memory format (faster convolutions on CPU)")
    fused_adam: bool = option(True, "speed", "use torch's fused Adam kernel instead of the for-loop one")
    compile: bool = option(True, "speed", "compile the whole training step (forward, loss, backward, Adam) into one "
                                        "torch.compile function; 10-60 s of compiling per variant, then cached on the node; "
                                        "--quick turns it off")
    flush_denormal: bool = option(True, "speed", "flush subnormal floats to zero on CPU (late-epoch V6 steps run 2x "
                                               "faster, inference 4x; the values flushed are below 1.2e-38)")
    cuda_graph: bool = option(True, "speed", "on CUDA, capture the whole training step (forward, loss, backward, Adam) "
                                           "once as a CUDA graph and replay it every step (orchestrator.training.cuda_graph); "
                                           "it takes the place of --compile there; no effect on CPU")
    # --- where a trial trains (shown with the cluster flags: it goes with --gpus-per-trial) --------------------
    device: str = option("auto", "cluster", choices=DEVICES, help=(
        "where each trial trains: auto = on CUDA when Ray gave the trial a GPU (--gpus-per-trial > 0), else on CPU; "
        "cuda = always on CUDA (needs --gpus-per-trial; refused when torch sees no CUDA device); cpu = always on CPU"))
    # --- measurement -----------------------------------------------------------------------------
    latency_batch1_calls: int = option(200, "measurement", "single-image calls timed for latency_ms_batch1 (median)")
    export: str = option("onnx", "measurement", choices=EXPORT_FORMATS, help=(
        "after training, export the model to ONNX (fp32, and int8 by ONNX Runtime's static quantization) and "
        "measure their bytes, validation accuracy and ONNX Runtime latency; none skips it"))
    export_calibration_images: int = option(256, "measurement", "training images, drawn with the trial's seed, that "
                                                              "calibrate the int8 quantization")

    def problems(self) -> list[str]:
        """What is wrong with these values, one line each (empty when nothing is)."""
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a finite number > 0 (got {self.lr})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "--beta1/--beta2 must be in [0, 1)"),
            (0 < self.lr_factor < 1, f"--lr-factor must be in (0, 1) (got {self.lr_factor})"),
            (self.lr_patience >= 0, f"--lr-patience must be >= 0 (got {self.lr_patience})"),
            (self.augment in AUGMENT_MODES,
             f"--augment must be one of {', '.join(AUGMENT_MODES)} (got {self.augment!r})"),
            (self.subset_per_class >= 0, f"--subset-per-class must be >= 0 (got {self.subset_per_class})"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)} (got {self.device!r})"),
            (self.latency_batch1_calls >= 1, "--latency-batch1-calls must be >= 1"),
            (self.export_calibration_images >= 1,
             f"--export-calibration-images must be >= 1 (got {self.export_calibration_images})"),
        ]
        return [message for ok, message in checks if not ok]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
