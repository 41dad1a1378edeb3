"""The fast path keeps the maths: subnormal floats flushed in training, evaluation and latency."""
import torch

from orchestrator.training.config import TrainConfig
from orchestrator.training.latency import measure_latency
from orchestrator.training.protocol import load_trial_data
from orchestrator.training.train import train

SUBNORMAL = 1e-39  # below float32's smallest normal, 1.18e-38


def flushing_now() -> bool:
    """True when this thread flushes subnormals (DAZ: a subnormal input reads as zero)."""
    return (torch.tensor([SUBNORMAL]) * 1.0).item() == 0.0


def test_training_flushes_subnormals_unless_told_not_to(tiny_cifar):
    seen = {}
    for flush in (True, False):
        cfg = TrainConfig(data_dir=str(tiny_cifar), epochs=1, flush_denormal=flush, compile=False)
        train(cfg, "base", 0, measure=False, on_epoch_end=lambda seed, epoch, m, s, flush=flush:
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


def test_whole_step_compile_trains_like_eager_and_changes_lr_without_recompiling(tiny_cifar):
    """The compiled step (forward, loss, backward, Adam in one torch.compile) computes what the eager one does,
    up to float rounding; ReduceLROnPlateau changes its tensor learning rate in place, with no new graph."""
    import torch._dynamo
    d = load_trial_data(TrainConfig(data_dir=str(tiny_cifar)))
    runs, graphs_after_epoch = {}, {}

    def count_graphs(seed, epoch, metrics, make_state):
        graphs_after_epoch[epoch] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for compiled in (False, True):
        cfg = TrainConfig(data_dir=str(tiny_cifar), epochs=3, compile=compiled, lr_patience=0, lr_threshold=10.0)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        runs[compiled] = train(cfg, "base", 0, trial_data=d, measure=False, on_epoch_end=count_graphs)
    eager, compiled = runs[False], runs[True]
    # lr_threshold=10 makes every epoch after the first "no better": epoch 3 trains at a tenth of the rate.
    assert [h["lr"] for h in compiled["history"]] == [h["lr"] for h in eager["history"]] == [5e-4, 5e-4, 5e-5]
    assert graphs_after_epoch[1] > 0 and graphs_after_epoch[3] == graphs_after_epoch[1], \
        f"the learning-rate change recompiled the step: {graphs_after_epoch}"
    for e, c in zip(eager["history"], compiled["history"]):
        assert abs(e["train_loss"] - c["train_loss"]) < 0.02 * e["train_loss"], (e, c)
        assert abs(e["val_accuracy"] - c["val_accuracy"]) <= 0.05
    assert compiled["final"]["compile_seconds"] > 0 and eager["final"]["compile_seconds"] == 0


def test_an_eager_checkpoint_resumes_compiled_and_the_other_way(tiny_cifar):
    d = load_trial_data(TrainConfig(data_dir=str(tiny_cifar)))
    for first, then in ((False, True), (True, False)):
        states = {}
        train(TrainConfig(data_dir=str(tiny_cifar), epochs=1, compile=first), "base", 0, trial_data=d,
              measure=False, on_epoch_end=lambda seed, epoch, m, make_state: states.setdefault(epoch, make_state()))
        resumed = train(TrainConfig(data_dir=str(tiny_cifar), epochs=2, compile=then), "base", 0, trial_data=d,
                        measure=False, state=states[1])
        assert [h["epoch"] for h in resumed["history"]] == [1, 2]
        assert isinstance(resumed["history"][1]["lr"], float) and resumed["history"][1]["lr"] == 5e-4
