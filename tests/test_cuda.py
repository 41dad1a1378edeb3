"""The GPU path: --device, the CUDA-graph training step (orchestrator.training.cuda_graph), the benchmark's GPU parts
and the device check script.

Tests marked `cuda` need a CUDA device and skip without one (`pytest -m cuda` runs just them, as
scripts/device_check.sh does on a GPU machine). The others run anywhere: the refusals, the pieces of the graph
step that are plain tensor code (snapshot/restore, the capturable optimizer, checkpoints), the benchmark on CPU.
"""
from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import torch

import data
import models
from orchestrator.training import cuda_graph
from orchestrator.training.config import TrainConfig
from orchestrator.sweep.config import ConfigError, SweepConfig, parse_config
from orchestrator.training.adam import float32_lr
from orchestrator.training.device import resolve_device
from orchestrator.training.fused import FusedSeeds
from orchestrator.training.protocol import (Seed, TrialData, build, eval_batch_size, load_trial_data, seed_everything,
                                            snapshot)
from orchestrator.training import single
from orchestrator.training.single import SingleSeed, forward_backward_step, make_step
from orchestrator.training.train import train

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device: torch.cuda.is_available() is False")
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="torch sees a CUDA device here, so --device cuda is valid")
CPU = torch.device("cpu")


def fresh_trainer(variant: str = "base", device=CPU, **cfg) -> Seed:
    seed_everything(0)
    return build(TrainConfig(compile=False, **cfg), variant, torch.device(device))


def synthetic_trial_data() -> TrialData:
    x, y = data.synthetic_cifar10(20, seed=0)
    return TrialData(x, y, x[:40], y[:40])


def batches(n: int, device=CPU, batch_size: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first n batches of epoch 1 of a small synthetic training set, as the trainer gets them."""
    x, y = data.synthetic_cifar10(20, seed=seed)  # 200 images: 280 samples with the focused copies
    it = data.TrainSet(x, y, batch_size=batch_size, seed=seed, device=device).batches(1)
    return [next(it) for _ in range(n)]


def train_mode_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits with batch statistics, on a copy (the running stats of `model` stay as they are). In train mode a
    bias right before a BatchNorm cancels out: those biases get gradients of pure rounding noise, which Adam
    scales up to full-size steps, so they differ between any two runs that round differently and are not
    compared; the outputs they cannot change are."""
    probe = copy.deepcopy(model).train()
    with torch.no_grad():
        return probe(x.contiguous(memory_format=torch.channels_last))


# --- --device: the flag, the driver's refusal, a trial's choice (CPU) -----------------------------------------
def test_device_flag_defaults_to_auto_and_takes_three_values():
    assert TrainConfig().device == "auto" and TrainConfig().cuda_graph is True
    assert parse_config(["--device", "cpu"]).train.device == "cpu"
    assert parse_config(["--no-cuda-graph"]).train.cuda_graph is False
    assert TrainConfig(device="gpu").problems() == ["--device must be one of auto, cpu, cuda (got 'gpu')"]


def test_device_cuda_without_gpus_per_trial_is_refused():
    with pytest.raises(ConfigError, match=r"--device cuda needs a GPU for every trial: pass --gpus-per-trial"):
        SweepConfig.from_flags({"device": "cuda"}).validate()
    SweepConfig.from_flags({"device": "cuda", "gpus_per_trial": 0.125}).validate()


@needs_no_cuda
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    import orchestrator.run as orchestrator_run
    code = orchestrator_run.main(["--device", "cuda", "--gpus-per-trial", "0.125", "--tracking-uri",
                      f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "ray")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: --device cuda but torch sees no CUDA device (torch ") and "--device auto" in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists(), "nothing may be written"


def test_a_trial_picks_its_device_from_the_flag_and_ray():
    assert resolve_device("cpu", gpu_assigned=True) == CPU
    assert resolve_device("auto", gpu_assigned=False) == CPU  # Ray gave no GPU: CPU even on a GPU machine
    assert resolve_device("auto", gpu_assigned=True).type == ("cuda" if HAS_CUDA else "cpu")
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="--device cuda but torch .* sees no CUDA device"):
            resolve_device("cuda")


def test_evaluation_batch_depends_on_the_device():
    assert eval_batch_size(CPU) == 500 and eval_batch_size(torch.device("cuda")) == 2000


# --- the graph step's CPU-testable parts ------------------------------------------------------------------------
def test_graphed_step_refuses_a_cpu_trainer_and_leaves_it_untouched():
    trainer = fresh_trainer()
    with pytest.raises(ValueError, match=r"a CUDA graph needs a trainer on a CUDA device, got one on cpu"):
        single.graphed_step(trainer, 4)
    group = trainer.optimizer.param_groups[0]
    assert group["capturable"] is False and group["lr"] == 5e-4


def test_on_cpu_the_trainers_use_the_plain_step_whatever_cuda_graph_says():
    cfg, d = TrainConfig(compile=False, cuda_graph=True), synthetic_trial_data()
    for trainer in (SingleSeed(cfg, "base", 0, d, CPU), FusedSeeds(cfg, "base", [0, 1], d, CPU)):
        assert trainer.graphed is False and not isinstance(trainer.step, cuda_graph.CapturedStep)


def _state_of(trainer: Seed) -> list[torch.Tensor]:
    opt = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return [t.detach().clone() for t in (*trainer.model.parameters(), *trainer.model.buffers(), *opt)]


@pytest.mark.parametrize("steps_before", [0, 2], ids=["fresh-adam", "adam-with-state"])
def test_restore_undoes_the_warm_up_in_place(steps_before):
    """The capture's warm-up trains; `restore` must leave exactly what a trainer that never warmed up has, in
    the same tensors (the graph keeps their addresses), so the next step is the eager run's next step."""
    b = batches(steps_before + 4)
    warmed, reference = fresh_trainer(), fresh_trainer()
    for t in (warmed, reference):
        step = make_step(t, compiled=False)
        for x, y in b[:steps_before]:
            step(x.contiguous(memory_format=t.memory_format), y)
    addresses = [p.data_ptr() for p in warmed.model.parameters()]
    saved = cuda_graph.snapshot(single.seed_tensors(warmed))
    for x, y in b[steps_before:steps_before + 3]:  # the warm-up: three real steps
        warmed.optimizer.zero_grad(set_to_none=True)
        forward_backward_step(warmed.model, warmed.optimizer, x.contiguous(memory_format=warmed.memory_format), y)
    cuda_graph.restore(single.seed_tensors(warmed), saved)
    assert [p.data_ptr() for p in warmed.model.parameters()] == addresses
    if steps_before:
        for a, b_ in zip(_state_of(warmed), _state_of(reference), strict=True):
            assert torch.equal(a, b_)
    x, y = b[-1]
    for t in (warmed, reference):
        t.optimizer.zero_grad(set_to_none=True)
        forward_backward_step(t.model, t.optimizer, x.contiguous(memory_format=t.memory_format), y)
    for a, b_ in zip(_state_of(warmed), _state_of(reference), strict=True):
        assert torch.equal(a, b_)


def test_capturable_adam_keeps_the_exact_rate_and_sees_the_schedulers_change():
    trainer = fresh_trainer(lr_patience=0, lr_threshold=10.0)  # every epoch after the first is "no better"
    lrs = trainer.optimizer.make_capturable()
    group, lr, twin = lrs[0]
    assert group["capturable"] is True and group["lr"] is lr and lr.dtype == torch.float64 and trainer.lr() == 5e-4
    trainer.scheduler.step(0.5)
    trainer.scheduler.step(0.5)  # reduces: in place, in the tensor a captured graph reads
    assert group["lr"] is lr and trainer.lr() == pytest.approx(5e-5, rel=1e-12)
    with float32_lr(lrs):
        assert group["lr"] is twin and twin.dtype == torch.float32 and float(twin) == pytest.approx(5e-5, rel=1e-7)
    assert group["lr"] is lr


def test_a_graph_trainers_checkpoint_resumes_on_cpu():
    """A CUDA-graph trial's checkpoint holds capturable=True and a tensor lr; a trainer resuming it elsewhere keeps
    its own kind (here: a plain CPU one, whose Adam would refuse capturable on CPU)."""
    graphed_like = fresh_trainer()
    step = make_step(graphed_like, compiled=False)
    for x, y in batches(2):
        step(x.contiguous(memory_format=graphed_like.memory_format), y)
    graphed_like.optimizer.make_capturable()
    state = snapshot(1, graphed_like, graphed_like.optimizer.state_dict())
    assert state["optimizer"]["param_groups"][0]["capturable"] is True
    resumed = fresh_trainer()
    resumed.optimizer.load_seed_state(state["optimizer"])
    group = resumed.optimizer.param_groups[0]
    assert group["capturable"] is False and group["lr"] == 5e-4 and isinstance(group["lr"], float)
    step = make_step(resumed, compiled=False)
    x, y = batches(3)[-1]
    loss, _ = step(x.contiguous(memory_format=resumed.memory_format), y)
    assert torch.isfinite(loss)


# --- the device check script and the GPU benchmark, on CPU --------------------------------------------------------
def test_device_check_script_is_valid_bash():
    script = REPO / "scripts" / "device_check.sh"
    assert script.is_file()
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_gpu_bench_dry_run_lists_the_plan(tmp_path, capsys):
    from bench import gpu  # the alias: python -m bench with the GPU parts
    assert gpu.main(["--dry-run", "--device", "cpu", "--variants", "base,v6", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "base,v6" in out and "routes: plain, eager, compiled, fused" in out  # compiled: CPU's default step
    assert "parts: steps,epoch,concurrency,projection " in out


def test_gpu_bench_refuses_bad_arguments(capsys):
    from bench import gpu
    assert gpu.main(["--variants", "resnet50", "--dry-run"]) == 2
    assert gpu.main(["--steps", "0", "--dry-run"]) == 2
    assert gpu.main(["--parts", "steps,nonsense", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("bench: ") for line in err), err


def test_gpu_bench_runs_on_cpu_part_by_part(tiny_cifar, tmp_path, capsys):
    """Every GPU part's code path, on CPU and tiny, one part per run as scripts/device_check.sh runs them: the
    runs merge into one result; the graph route says why it is not timed (no CUDA); the projection is made."""
    import bench
    args = ["--quick", "--device", "cpu", "--steps", "3", "--rounds", "1", "--variants", "base", "--per-class", "10",
            "--epoch-per-class", "10", "--val-images", "100", "--k-list", "1", "--concurrency-seconds", "1",
            "--data-dir", str(tiny_cifar), "--out-dir", str(tmp_path)]
    for part in ("steps", "epoch", "concurrency", "projection"):
        assert bench.main(args + ["--parts", part]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "bench-parts.json").read_text())
    base = result["steps"]["variants"]["base"]
    assert base["eager_ms_per_step"] > 0 and base["plain_ms_per_step"] > 0 and base["fused_ms_per_step"] > 0
    assert "graph_ms_per_step" not in base and "no CUDA graphs" in base["not_timed"]["graph"]
    assert result["epoch"]["epoch_seconds"] > 0 and result["epoch"]["train_images"] == 140
    assert result["concurrency"]["k"]["1"]["model_steps_per_second"] > 0
    proj = result["projection"]
    assert proj["pairs"] == 40 and proj["sharing"][0]["k"] == 1 and proj["trainer_wall_seconds"] > 0
    md = (tmp_path / "bench-parts.md").read_text()
    for heading in ("## 7. ms per model-step", "## One full-protocol epoch", "## K processes training base",
                    "## 5. Projected wall time"):
        assert heading in md and heading in out
    assert "| base" in md and "compiled: quick run: not compiled" in md


# --- on a GPU ------------------------------------------------------------------------------------------------------
@pytest.fixture
def deterministic_cudnn():
    """Same kernels in both runs, so the only differences left are the ones the comparison is about."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


def run_steps(trainer: Seed, step, sequence) -> list[float]:
    losses = []
    for x, y in sequence:
        loss, _ = step(x.contiguous(memory_format=trainer.memory_format), y)
        losses.append(loss.clone())  # the graph's loss is a static output: the next step overwrites it
    return [float(v) for v in losses]


@cuda
@needs_cuda
@pytest.mark.parametrize("variant", models.list_models())
def test_graphed_training_matches_eager_cuda_training(variant, deterministic_cudnn):
    """50 graphed steps make the eager CUDA trainer's 50 steps: the same losses and the same model outputs."""
    dev = torch.device("cuda")
    sequence = batches(50, dev)
    eager, graphed = fresh_trainer(variant, dev), fresh_trainer(variant, dev)
    eager_losses = run_steps(eager, make_step(eager, compiled=False), sequence)
    graphed_losses = run_steps(graphed, single.graphed_step(graphed, 4), sequence)
    torch.testing.assert_close(torch.tensor(graphed_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-5)
    probe = torch.cat([x for x, _ in batches(16, dev, seed=1)])  # 64 images neither run trained on
    torch.testing.assert_close(train_mode_logits(graphed.model, probe), train_mode_logits(eager.model, probe),
                               rtol=1e-4, atol=1e-4)


@cuda
@needs_cuda
def test_replayed_graph_honours_the_schedulers_lr_change(deterministic_cudnn):
    dev = torch.device("cuda")
    sequence = batches(30, dev)
    runs = {}
    for kind in ("eager", "graphed"):
        trainer = fresh_trainer("base", dev, lr_patience=0, lr_threshold=10.0)
        step = make_step(trainer, compiled=False) if kind == "eager" else single.graphed_step(trainer, 4)
        run_steps(trainer, step, sequence[:10])
        trainer.scheduler.step(0.5)
        trainer.scheduler.step(0.5)  # lr 5e-4 -> 5e-5, in place
        assert trainer.lr() == pytest.approx(5e-5, rel=1e-12)
        run_steps(trainer, step, sequence[10:20])
        runs[kind] = (trainer, step)
    probe = torch.cat([x for x, _ in batches(16, dev, seed=1)])
    torch.testing.assert_close(train_mode_logits(runs["graphed"][0].model, probe),
                               train_mode_logits(runs["eager"][0].model, probe), rtol=1e-4, atol=1e-4)
    trainer, step = runs["graphed"]
    trainer.optimizer.param_groups[0]["lr"].fill_(0.0)  # lr 0: a replay must leave every parameter as it is
    before = [p.detach().clone() for p in trainer.model.parameters()]
    run_steps(trainer, step, sequence[20:25])
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


@cuda
@needs_cuda
def test_a_short_batch_runs_eager_on_the_same_model_optimizer_and_grads(deterministic_cudnn):
    dev = torch.device("cuda")
    full = batches(8, dev)
    sequence = full[:4] + [(full[4][0][:3], full[4][1][:3])] + full[5:]  # a 3-image batch in the middle
    eager, graphed = fresh_trainer("base", dev), fresh_trainer("base", dev)
    eager_losses = run_steps(eager, make_step(eager, compiled=False), sequence[:4])
    step = single.graphed_step(graphed, 4)
    graphed_losses = run_steps(graphed, step, sequence[:4])
    grads = [p.grad.data_ptr() for p in graphed.model.parameters()]
    eager_losses += run_steps(eager, make_step(eager, compiled=False), sequence[4:])
    graphed_losses += run_steps(graphed, step, sequence[4:])
    assert step.eager_steps == 1
    assert [p.grad.data_ptr() for p in graphed.model.parameters()] == grads, "the fallback replaced the graph's grads"
    torch.testing.assert_close(torch.tensor(graphed_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-5)
    probe = torch.cat([x for x, _ in batches(16, dev, seed=1)])
    torch.testing.assert_close(train_mode_logits(graphed.model, probe), train_mode_logits(eager.model, probe),
                               rtol=1e-4, atol=1e-4)


@cuda
@needs_cuda
def test_train_on_cuda_with_and_without_the_graph(tiny_cifar, deterministic_cudnn):
    """train() end to end on CUDA: the graph is the default there, reports its capture as compile_seconds,
    logs the exact lr, and trains what the eager step trains; its checkpoint resumes on CPU."""
    d = load_trial_data(TrainConfig(data_dir=str(tiny_cifar)))
    runs, states = {}, {}
    for graph in (True, False):
        cfg = TrainConfig(data_dir=str(tiny_cifar), epochs=2, compile=False, cuda_graph=graph)
        runs[graph] = train(cfg, "base", 0, trial_data=d, device=torch.device("cuda"), measure=False,
                            on_epoch_end=lambda _, e, m, make_state, g=graph: states.setdefault((g, e), make_state()))
    graphed, eager = runs[True], runs[False]
    assert graphed["final"]["compile_seconds"] > 0 and eager["final"]["compile_seconds"] == 0
    assert [h["lr"] for h in graphed["history"]] == [5e-4, 5e-4]
    for g, e in zip(graphed["history"], eager["history"]):
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-3)
        assert abs(g["val_accuracy"] - e["val_accuracy"]) <= 0.05
    resumed = train(TrainConfig(data_dir=str(tiny_cifar), epochs=2, compile=False), "base", 0, trial_data=d,
                    device=CPU, state=states[(True, 1)], measure=False)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2] and resumed["history"][1]["lr"] == 5e-4


@cuda
@needs_cuda
@pytest.mark.parametrize("variant", ["base", "v3", "alpha"])
def test_fused_seeds_graphed_match_fused_seeds_eager_on_cuda(variant, tiny_cifar, deterministic_cudnn):
    """K = 3 fused seeds captured as one CUDA graph make the eager fused steps (the same StackedAdam maths, made
    capturable in both): the same per-seed losses over 40 steps, and the same weights."""
    cfg = TrainConfig(data_dir=str(tiny_cifar), compile=False, cuda_graph=False)
    d, dev = load_trial_data(cfg), torch.device("cuda")
    eager, graphed = FusedSeeds(cfg, variant, [0, 1, 2], d, dev), FusedSeeds(cfg, variant, [0, 1, 2], d, dev)
    eager.adam.make_capturable()
    graphed.step = graphed.graphed_step(cfg.batch_size)
    losses = {}
    for name, fused in (("eager", eager), ("graphed", graphed)):
        batches_ = zip(*(s.train_set.batches(1) for s in fused.seeds))
        out = []
        for _, batch in zip(range(40), batches_):
            y = torch.stack([yb for _, yb in batch], dim=1)
            x = torch.cat([xb for xb, _ in batch], dim=1).contiguous(memory_format=fused.memory_format)
            out.append(fused.step(x, y)[0].clone())
        losses[name] = torch.stack(out)
    torch.testing.assert_close(losses["graphed"], losses["eager"], rtol=1e-4, atol=1e-5)
    for name in eager.params:
        torch.testing.assert_close(graphed.params[name], eager.params[name], rtol=1e-3, atol=1e-4)


@cuda
@needs_cuda
def test_a_fused_trial_on_cuda_is_graphed_and_resumes_on_cpu(tiny_cifar, deterministic_cudnn):
    """train_seeds(fused=True) on CUDA captures the stacked step (its capture is compile_seconds) and trains like
    the ungraphed fused run; a seed's checkpoint resumes an unfused CPU trial."""
    from orchestrator.training.train import train_seeds
    d = load_trial_data(TrainConfig(data_dir=str(tiny_cifar)))
    runs, states = {}, {}
    for graph in (True, False):
        cfg = TrainConfig(data_dir=str(tiny_cifar), epochs=2, compile=False, cuda_graph=graph)
        runs[graph] = train_seeds(cfg, "base", [0, 1], fused=True, trial_data=d, device=torch.device("cuda"),
                                  measure=False, on_epoch_end=lambda s, e, m, make_state, g=graph:
                                  states.setdefault((g, s, e), make_state()))
    for seed in (0, 1):
        graphed, eager = runs[True][seed], runs[False][seed]
        assert graphed["final"]["compile_seconds"] > 0 and eager["final"]["compile_seconds"] == 0
        for g, e in zip(graphed["history"], eager["history"]):
            assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-2)
    resumed = train(TrainConfig(data_dir=str(tiny_cifar), epochs=2, compile=False), "base", 1, trial_data=d,
                    device=CPU, state=states[(True, 1, 1)], measure=False)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
