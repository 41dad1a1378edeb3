"""The fast path keeps the maths: subnormal floats flushed in training, evaluation and latency."""
import torch

from orchestrator.config import TrainConfig
from orchestrator.latency import measure_latency
from orchestrator.train import load_trial_data, train

SUBNORMAL = 1e-39  # below float32's smallest normal, 1.18e-38


def flushing_now() -> bool:
    """True when this thread flushes subnormals (DAZ: a subnormal input reads as zero)."""
    return (torch.tensor([SUBNORMAL]) * 1.0).item() == 0.0


def test_training_flushes_subnormals_unless_told_not_to(tiny_cifar):
    seen = {}
    for flush in (True, False):
        cfg = TrainConfig(data_dir=str(tiny_cifar), epochs=1, flush_denormal=flush)
        train(cfg, "base", 0, measure=False, on_epoch_end=lambda epoch, m, s, flush=flush:
              seen.__setitem__(flush, flushing_now()))
    assert seen == {True: True, False: False}


class Probe(torch.nn.Module):
    """A 10-class 'model' that notes, at every call, whether subnormals were being flushed."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(flushing_now())
        return torch.zeros(len(x), 10)


def test_latency_is_measured_with_subnormals_flushed(tiny_cifar):
    d = load_trial_data(TrainConfig(data_dir=str(tiny_cifar)))
    torch.set_flush_denormal(False)
    probe = Probe()
    measure_latency(probe, d.val_images, d.val_labels, torch.device("cpu"), batch1_calls=3, warmup_calls=1)
    assert probe.calls and all(probe.calls)
    probe = Probe()
    measure_latency(probe, d.val_images, d.val_labels, torch.device("cpu"), batch1_calls=3, warmup_calls=1,
                    flush_denormals=False)
    assert probe.calls and not any(probe.calls)
    torch.set_flush_denormal(True)
