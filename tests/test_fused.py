"""Fused seeds (orchestrator.training.fused): K seeds trained as one stacked network keep everything an unfused trial has.

Step-level equivalence runs in float64. In float32 two unfused runs of one seed that differ only in rounding
(channels_last + fused Adam vs contiguous + for-loop Adam) already differ by a median 4e-3 (base) to 8e-3 (v6)
and up to 0.1-0.25 relative per tensor after 50 steps (Adam's normalised update turns rounding noise in
near-zero gradients into +-lr steps, and a conv bias before a BatchNorm has a zero true gradient), so a 1e-4
agreement can only be asked of the maths in float64, where fused and unfused seeds agree to ~1e-10. float32 is
checked on trained results.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import stack_module_state

import data
import models
from orchestrator.training.config import TrainConfig
from orchestrator.training.fused import FusedSeeds
from orchestrator.training.metrics import EPOCH_METRICS, FINAL_METRICS
from orchestrator.training.protocol import (DivergedError, build, load_trial_data, run_epochs, seed_everything,
                                            snapshot)
from orchestrator.training.stacked import stacked_loss, stacked_template
from orchestrator.training.train import train, train_seeds

CPU = torch.device("cpu")


def train_fused(cfg, variant, seeds, **kwargs):
    return train_seeds(cfg, variant, seeds, fused=True, **kwargs)


def vmap_forward(model: torch.nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
    """The K forwards through torch.func.vmap over functional_call (x [B, K, 3, H, W] -> [B, K, classes]): the
    reference the stacked template is tested against. Train mode updates `buffers` like the stacked network."""
    base = copy.deepcopy(model).to("meta").train(model.training)

    def one(p, b, xi):
        return torch.func.functional_call(base, (p, b), (xi,))
    return torch.func.vmap(one, in_dims=(0, 0, 1), out_dims=1)(params, buffers, x)
DETERMINISTIC = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


@pytest.fixture(scope="module")
def tiny(tiny_cifar):
    cfg = TrainConfig(data_dir=str(tiny_cifar), epochs=1, compile=False)  # the reference trains eagerly
    return cfg, load_trial_data(cfg)


def fused_steps(fused: FusedSeeds, epoch: int, n: int, dtype=torch.float64) -> None:
    for _, batch in zip(range(n), zip(*(s.train_set.batches(epoch) for s in fused.seeds))):
        y = torch.stack([yb for _, yb in batch], dim=1)
        x = torch.cat([xb for xb, _ in batch], dim=1).to(dtype).contiguous(memory_format=fused.memory_format)
        fused.train_step(x, y)


def unfused_steps(cfg, variant, seed, d, epoch, n, lr=None):
    """train.py's step, in float64, on the first n batches of the seed's epoch."""
    seed_everything(seed)
    trainer = build(cfg, variant, CPU)
    model, opt, memory_format = trainer.model, trainer.optimizer, trainer.memory_format
    model.double()
    if lr is not None:
        opt.param_groups[0]["lr"] = lr
    train_set = data.TrainSet(d.train_images, d.train_labels, augment=cfg.augment, batch_size=cfg.batch_size,
                              focus_classes=data.parse_focus_classes(cfg.focus_classes), seed=seed)
    for _, (x, y) in zip(range(n), train_set.batches(epoch)):
        loss = F.cross_entropy(model(x.double().contiguous(memory_format=memory_format)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def noise_driven(variant: str) -> set[str]:
    """Parameters that start at zero and have a zero true gradient: V5's depthwise BatchNorm bias (a per-channel
    shift that the pointwise conv and its BatchNorm cancel). Adam turns their rounding-noise gradients into +-lr
    steps, so they are random walks in every implementation, fused or not; they change no output."""
    seed_everything(0)
    model = models.create_model(variant).double()
    F.cross_entropy(model(torch.randn(4, 3, 32, 32, dtype=torch.float64)), torch.arange(4)).backward()
    return {n for n, p in model.named_parameters() if not p.detach().any() and p.grad.abs().max() < 1e-12}


def assert_seed_is(fused: FusedSeeds, variant: str, d, i: int, model, rtol=1e-4, steps=50) -> None:
    """Every parameter and buffer of stacked seed i against `model`: max|a-b| / max|b| <= rtol per tensor (a
    noise-driven one: within its Adam steps), and the same logits in eval mode."""
    free = noise_driven(variant)
    for name, want in model.state_dict().items():
        got = (fused.params[name] if name in fused.params else fused.buffers[name])[i]
        if name in free:
            assert (got - want).abs().max() <= 2 * fused.cfg.lr * steps, name
            continue
        err = ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()
        assert err <= rtol, f"seed index {i}, {name}: relative error {err:.2e}"
    x = data.normalize(d.val_images[:16]).double()
    mine = fused.seeds[i].model.double()
    fused.sync_model(i)
    with torch.no_grad():
        torch.testing.assert_close(mine.eval()(x), model.eval()(x), rtol=rtol, atol=1e-9)


# --- the stacked network --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", models.list_models())
def test_stacked_network_is_vmap_of_the_model(variant):
    """The explicit stacked template computes what torch.func.vmap over functional_call computes: logits,
    gradients and BatchNorm running stats of each seed."""
    k, b = 3, 4
    nets = []
    for seed in range(k):
        seed_everything(seed)
        nets.append(models.create_model(variant).double())
    params, buffers = stack_module_state(nets)
    buffers_vmap = {n: t.clone() for n, t in buffers.items()}
    x, y = torch.randn(b, k, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (b, k))
    losses, out = stacked_loss(stacked_template(nets[0], k), params, buffers, x.reshape(b, k * 3, 32, 32), y)
    out_vmap = vmap_forward(nets[0], params, buffers_vmap, x)
    torch.testing.assert_close(out, out_vmap, rtol=1e-9, atol=1e-9)
    for name in buffers:
        torch.testing.assert_close(buffers[name], buffers_vmap[name], rtol=1e-9, atol=1e-12)
    loss_vmap = F.cross_entropy(out_vmap.reshape(-1, 10), y.reshape(-1), reduction="none").view(b, k).mean(0)
    grads = torch.autograd.grad(losses.sum(), list(params.values()))
    grads_vmap = torch.autograd.grad(loss_vmap.sum(), list(params.values()))
    for name, g, g_vmap in zip(params, grads, grads_vmap):
        torch.testing.assert_close(g, g_vmap, rtol=1e-7, atol=1e-12, msg=name)


@pytest.mark.parametrize("variant", models.list_models())
def test_each_fused_seed_trains_like_its_unfused_trial(variant, tiny):
    """K=3, 50 steps (float64): each seed's weights and BN running stats equal a separately trained model of that
    seed (train.py's build and step on that seed's own batches) to 1e-4 relative per tensor."""
    cfg, d = tiny
    fused = FusedSeeds(cfg, variant, [0, 1, 2], d, CPU).to(torch.float64)
    fused_steps(fused, 1, 50)
    for i, seed in enumerate([0, 1, 2]):
        assert_seed_is(fused, variant, d, i, unfused_steps(cfg, variant, seed, d, 1, 50))


@pytest.mark.parametrize("fused_adam", [True, False])
def test_per_seed_learning_rate_in_the_step(fused_adam, tiny):
    """Seed 1 at a tenth of the lr (as its scheduler would set it): torch's fused Adam kernel per seed, or
    stacked_adam_ with the lr tensor (what a CUDA graph replays); seeds 0 and 2 keep theirs."""
    cfg, d = tiny
    cfg = TrainConfig(**{**cfg.to_dict(), "fused_adam": fused_adam})
    fused = FusedSeeds(cfg, "base", [0, 1, 2], d, CPU).to(torch.float64)
    fused.seeds[1].optimizer.param_groups[0]["lr"] = cfg.lr / 10
    fused.after_schedulers()
    assert fused.adam.lr_tensor.tolist() == [cfg.lr, cfg.lr / 10, cfg.lr]
    fused_steps(fused, 1, 50)
    for i, seed in enumerate([0, 1, 2]):
        assert_seed_is(fused, "base", d, i, unfused_steps(cfg, "base", seed, d, 1, 50, lr=cfg.lr / 10 if i == 1 else None))


def epoch0_state(cfg, variant, seed, *, plateau=False, poison=False):
    """A checkpoint "after epoch 0" (the fresh model of that seed) that train() and train_fused both resume from.
    plateau: its scheduler has seen no improvement for `patience` epochs, so its next epoch cuts the lr.
    poison: an inf in the last layer's weights, so the seed diverges in its first epoch."""
    seed_everything(seed)
    s = build(cfg, variant, CPU, seed)
    model, sched = s.model, s.scheduler
    if plateau:
        sched.best, sched.num_bad_epochs = 1.0, cfg.lr_patience
    if poison:
        with torch.no_grad():
            model.head[-1].weight[0, 0] = math.inf
    return snapshot(0, s, s.optimizer.state_dict())


def test_per_seed_scheduler(tiny):
    """Seed 1's own ReduceLROnPlateau cuts its lr after epoch 1; seed 0's lr stays. Each lr history equals the
    unfused trial's from the same checkpoint."""
    cfg, d = tiny
    cfg = TrainConfig(**{**cfg.to_dict(), "epochs": 2})
    states = {0: epoch0_state(cfg, "base", 0), 1: epoch0_state(cfg, "base", 1, plateau=True)}
    fused = train_fused(cfg, "base", [0, 1], trial_data=d, states=states, measure=False)
    assert [h["lr"] for h in fused[0]["history"]] == [cfg.lr, cfg.lr]
    assert [h["lr"] for h in fused[1]["history"]] == [cfg.lr, cfg.lr * cfg.lr_factor]
    for seed in (0, 1):
        unfused = train(cfg, "base", seed, trial_data=d, state=states[seed], measure=False)
        assert [h["lr"] for h in fused[seed]["history"]] == [h["lr"] for h in unfused["history"]]
        for got, want in zip(fused[seed]["history"], unfused["history"]):
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=0.05)


def test_a_diverged_seed_stops_and_the_others_go_on(tiny):
    cfg, d = tiny
    cfg = TrainConfig(**{**cfg.to_dict(), "epochs": 2})
    states = {0: epoch0_state(cfg, "base", 0), 1: epoch0_state(cfg, "base", 1, poison=True)}
    with pytest.raises(DivergedError) as unfused_error:
        train(cfg, "base", 1, trial_data=d, state=states[1], measure=False)
    calls = []
    result = train_fused(cfg, "base", [0, 1], trial_data=d, states=states, measure=False,
                         on_epoch_end=lambda seed, epoch, m, make_state: calls.append((seed, epoch)))
    assert result[1]["diverged"] and result[1]["reason"] == str(unfused_error.value)
    assert result[1]["history"] == [] and result[1]["final"] is None
    assert calls == [(0, 1), (0, 2)]  # like the unfused trial, no epoch end for the epoch it diverged in
    # Seed 0 is untouched by its neighbour: the same as beside a healthy seed 1, and close to its unfused trial.
    healthy = train_fused(cfg, "base", [0, 1], trial_data=d, states={0: states[0], 1: epoch0_state(cfg, "base", 1)},
                          measure=False)
    assert not result[0]["diverged"] and result[0]["final"] is not None
    assert [[h[k] for k in DETERMINISTIC] for h in result[0]["history"]] == \
        [[h[k] for k in DETERMINISTIC] for h in healthy[0]["history"]]
    unfused = train(cfg, "base", 0, trial_data=d, state=states[0], measure=False)
    for got, want in zip(result[0]["history"], unfused["history"]):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=0.05)


def test_a_diverged_seed_is_frozen(tiny):
    """After the epoch it diverged in, its weights, BN stats and Adam state no longer change."""
    cfg, d = tiny
    states = {0: epoch0_state(cfg, "base", 0), 1: epoch0_state(cfg, "base", 1, poison=True)}
    fused = FusedSeeds(cfg, "base", [0, 1], d, CPU, states=states)
    run_epochs(cfg, "base", fused, d)  # epochs=1: the epoch seed 1 diverges in
    assert fused.seeds[1].reason is not None and fused.active.tolist() == [True, False]
    assert fused.adam.lr_tensor.tolist() == [cfg.lr, 0.0]
    adam = fused.adam
    frozen = {n: t[1].clone() for group in (fused.params, adam.exp_avgs, adam.exp_avg_sqs) for n, t in group.items()}
    steps, seed0 = adam.steps.tolist(), fused.params["head.4.weight"][0].clone()
    fused.train_epoch(2)
    for group in (fused.params, adam.exp_avgs, adam.exp_avg_sqs):
        for name, t in group.items():
            torch.testing.assert_close(t[1], frozen[name], rtol=0, atol=0, equal_nan=True)
    assert adam.steps.tolist() == [steps[0] + 56, steps[1]]
    assert not torch.equal(fused.params["head.4.weight"][0], seed0)


@pytest.mark.parametrize("variant", models.list_models())
def test_every_variant_trains_fused_with_the_default_kernels(variant, tiny):
    """float32, channels_last and fused Adam for every variant, V2/Alpha included: their strided 1x1 skip runs as a
    stride-1 conv of the subsampled image, not as the oneDNN kernel that corrupts the heap in channels_last."""
    cfg, d = tiny
    fused = FusedSeeds(cfg, variant, [0, 1], d, CPU)
    assert fused.memory_format == torch.channels_last
    assert fused.eval_format == build(cfg, variant, CPU).memory_format  # validation as the unfused trainer does it
    result = train_fused(cfg, variant, [0, 1], trial_data=d, measure=False)
    for seed in (0, 1):
        assert math.isfinite(result[seed]["history"][0]["train_loss"]) and not result[seed]["diverged"]
        assert set(result[seed]["history"][0]) == {"epoch", *EPOCH_METRICS}
        assert result[seed]["final"]["param_count"] == models.count_parameters(models.create_model(variant))


# --- checkpoints --------------------------------------------------------------------------------------------
def test_fused_run_resumes_exactly(tiny):
    cfg, d = tiny
    cfg = TrainConfig(**{**cfg.to_dict(), "epochs": 2})
    states = {}
    full = train_fused(cfg, "base", [0, 1], trial_data=d, measure=False,
                       on_epoch_end=lambda seed, epoch, m, make_state: states.setdefault((seed, epoch), make_state()))
    resumed = train_fused(cfg, "base", [0, 1], trial_data=d, measure=False,
                          states={seed: states[(seed, 1)] for seed in (0, 1)})
    for seed in (0, 1):
        assert set(full[seed]["history"][0]) == {"epoch", *EPOCH_METRICS}
        assert [[h[k] for k in DETERMINISTIC] for h in resumed[seed]["history"]] == \
            [[h[k] for k in DETERMINISTIC] for h in full[seed]["history"]]
        for name, t in full[seed]["model"].state_dict().items():
            assert torch.equal(resumed[seed]["model"].state_dict()[name], t), name
    assert set(full[0]["final"]) == set(FINAL_METRICS) - {"latency_ms_per_image", "latency_ms_batch1"}
    assert full[0]["final"]["param_count"] == 136_380


def optimizer_layout(state: dict) -> dict:
    return {i: {k: (v.shape, v.dtype, v.stride(), v.device) for k, v in s.items()}
            for i, s in state["optimizer"]["state"].items()}


def assert_same_structure(a: dict, b: dict) -> None:
    """Two checkpoints with the same structure: keys, tensor shapes/dtypes/layouts, param groups, RNG state."""
    assert a.keys() == b.keys() == {"epoch", "model", "optimizer", "scheduler", "rng", "history"}
    assert {k: (v.shape, v.dtype, v.stride()) for k, v in a["model"].items()} == \
        {k: (v.shape, v.dtype, v.stride()) for k, v in b["model"].items()}
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert optimizer_layout(a) == optimizer_layout(b)
    assert a["scheduler"].keys() == b["scheduler"].keys()
    assert a["rng"]["python"] == b["rng"]["python"] and a["rng"]["numpy_pos"] == b["rng"]["numpy_pos"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and torch.equal(a["rng"]["numpy"], b["rng"]["numpy"])


def test_unfused_and_fused_checkpoints_are_interchangeable(tiny):
    cfg, d = tiny
    cfg = TrainConfig(**{**cfg.to_dict(), "epochs": 2})
    unfused_states, fused_states, unfused = {}, {}, {}
    for seed in (0, 1):
        unfused[seed] = train(cfg, "base", seed, trial_data=d, measure=False,
                              on_epoch_end=lambda _, epoch, m, make_state, seed=seed:
                              unfused_states.setdefault((seed, epoch), make_state()))
    resumed = train_fused(cfg, "base", [0, 1], trial_data=d, measure=False,
                          states={seed: unfused_states[(seed, 1)] for seed in (0, 1)},
                          on_epoch_end=lambda seed, epoch, m, make_state:
                          fused_states.setdefault((seed, epoch), make_state()))
    for seed in (0, 1):
        assert resumed[seed]["history"][0] == unfused[seed]["history"][0]  # carried over from the checkpoint
        assert resumed[seed]["history"][1]["train_loss"] == pytest.approx(unfused[seed]["history"][1]["train_loss"],
                                                                          rel=0.05)
        assert_same_structure(fused_states[(seed, 2)], unfused_states[(seed, 2)])
    # And back: an unfused trial resumes from a fused checkpoint.
    fused = {}
    train_fused(cfg, "base", [0, 1], trial_data=d, measure=False,
                on_epoch_end=lambda seed, epoch, m, make_state: fused.setdefault((seed, epoch), make_state()))
    assert_same_structure(fused[(1, 1)], unfused_states[(1, 1)])
    back = train(cfg, "base", 1, trial_data=d, state=fused[(1, 1)], measure=False)
    assert back["history"][0] == fused[(1, 1)]["history"][0]
    assert back["history"][1]["train_loss"] == pytest.approx(unfused[1]["history"][1]["train_loss"], rel=0.05)


def test_a_one_image_remainder_batch_is_skipped(tiny):
    """160 images (augment none) in batches of 3 leave 1: skipped like train.py does (BatchNorm1d can't train on it)."""
    cfg, d = tiny
    cfg = TrainConfig(**{**cfg.to_dict(), "augment": "none", "batch_size": 3})
    fused = train_fused(cfg, "base", [0, 1], trial_data=d, measure=False)
    for seed in (0, 1):
        correct = fused[seed]["history"][0]["train_accuracy"] * 159
        assert correct == pytest.approx(round(correct), abs=1e-9)
        unfused = train(cfg, "base", seed, trial_data=d, measure=False)
        assert fused[seed]["history"][0]["train_loss"] == pytest.approx(unfused["history"][0]["train_loss"], rel=0.05)


def test_states_must_cover_every_seed_at_one_epoch(tiny):
    cfg, d = tiny
    with pytest.raises(ValueError, match="one checkpoint per seed"):
        FusedSeeds(cfg, "base", [0, 1], d, CPU, states={0: epoch0_state(cfg, "base", 0)})
    later = {**epoch0_state(cfg, "base", 1), "epoch": 1}
    with pytest.raises(ValueError, match="same epoch"):
        FusedSeeds(cfg, "base", [0, 1], d, CPU, states={0: epoch0_state(cfg, "base", 0), 1: later})
    with pytest.raises(ValueError, match="distinct seeds"):
        FusedSeeds(cfg, "base", [0, 0], d, CPU)


# --- real data and compile ------------------------------------------------------------------------------------
@pytest.mark.real_data
@pytest.mark.slow
def test_fused_seeds_match_unfused_trials_on_real_cifar(real_cifar):
    """One epoch on 500 images per class, float32, the real kernels: each fused seed's validation accuracy near
    its unfused trial's. Not within 0.3 points: rounding alone moves one seed's accuracy more than that. Measured
    (seeds 0-3, accuracies near 46%): the unfused trainer against itself in the contiguous format differs by
    0.2, 0.05, 0.65, 1.05 points, with the for-loop Adam by 0.7, 0.02, 0.2, 0.3; fused (K=4) by 0.2, 1.4, 0.7,
    1.8. The spread of one seed over these four roundings reaches 2.2 points, hence the 2-point bound."""
    cfg = TrainConfig(data_dir=str(real_cifar), epochs=1, subset_per_class=500, compile=False)
    d = load_trial_data(cfg)
    fused = train_fused(cfg, "base", [0, 1], trial_data=d, measure=False)
    for seed in (0, 1):
        unfused = train(cfg, "base", seed, trial_data=d, measure=False)
        got, want = fused[seed]["history"][0]["val_accuracy"], unfused["history"][0]["val_accuracy"]
        assert abs(got - want) <= 0.02, (seed, got, want)
        assert got > 0.3


@pytest.mark.parametrize("variant", ["base", "v6"])
def test_the_graph_step_maths_equals_the_eager_kernels_and_reads_its_lr_tensor(variant, tiny):
    """What a CUDA graph of fused seeds replays, checked on CPU up to the capture: StackedAdam made capturable
    (tensor lrs and steps, no Python floats) gives the eager per-seed kernels' result (float64, a whole epoch in
    batches of 3, the last short batch included), and a rate changed by a scheduler reaches the lr tensor that a
    replay would read."""
    cfg, d = tiny
    cfg = TrainConfig(**{**cfg.to_dict(), "batch_size": 3})  # 224 images: 74 batches of 3, then one of 2
    eager = FusedSeeds(cfg, variant, [0, 1], d, CPU).to(torch.float64)
    graphable = FusedSeeds(cfg, variant, [0, 1], d, CPU).to(torch.float64)
    graphable.adam.make_capturable()
    for fused in (eager, graphable):
        fused_steps(fused, 1, 10**6)
    for i in (0, 1):
        for name in graphable.params:
            torch.testing.assert_close(graphable.params[name][i], eager.params[name][i], rtol=1e-6, atol=1e-9)
    lr_tensor = graphable.adam.lr_tensor
    graphable.seeds[1].optimizer.param_groups[0]["lr"] = cfg.lr / 10
    graphable.after_schedulers()
    assert graphable.adam.lr_tensor is lr_tensor and lr_tensor.tolist() == [cfg.lr, cfg.lr / 10]


def test_a_fused_graph_is_refused_off_cuda_and_its_state_covers_what_a_step_changes(tiny):
    """On CPU `graphed_step` refuses before changing anything; the state a capture snapshots (every stacked
    parameter, buffer and Adam tensor) is everything a step changes, so `restore` undoes warm-up steps exactly."""
    from orchestrator.training import cuda_graph
    cfg, d = tiny
    fused = FusedSeeds(cfg, "base", [0, 1], d, CPU)
    with pytest.raises(ValueError, match="needs a trainer on a CUDA device"):
        fused.graphed_step(4)
    assert not fused.adam.captured
    state = {**{f"param.{n}": p for n, p in fused.params.items()}, **{f"buffer.{n}": b for n, b in fused.buffers.items()},
             **{f"adam.{n}": t for n, t in fused.adam.tensors().items()}}
    saved = cuda_graph.snapshot(state)
    fused_steps(fused, 1, 3, dtype=torch.float32)
    assert any(not torch.equal(t, saved[n]) for n, t in state.items())
    cuda_graph.restore(state, saved)
    assert all(torch.equal(t, saved[n]) for n, t in state.items())
