"""The GPU path: --device (where a trial trains) and its refusals, which run anywhere."""
from __future__ import annotations

import pytest
import torch

from orchestrator.config import ConfigError, SweepConfig, TrainConfig, parse_config
from orchestrator.train import resolve_device

HAS_CUDA = torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="torch sees a CUDA device here, so --device cuda is valid")
CPU = torch.device("cpu")


# --- --device: the flag, the driver's refusal, a trial's choice (CPU) -----------------------------------------
def test_device_flag_defaults_to_auto_and_takes_three_values():
    assert TrainConfig().device == "auto"
    assert parse_config(["--device", "cpu"]).train.device == "cpu"
    assert TrainConfig(device="gpu").problems() == ["--device must be one of auto, cpu, cuda (got 'gpu')"]


def test_device_cuda_without_gpus_per_trial_is_refused():
    with pytest.raises(ConfigError, match=r"--device cuda needs a GPU for every trial: pass --gpus-per-trial"):
        SweepConfig.from_flags({"device": "cuda"}).validate()
    SweepConfig.from_flags({"device": "cuda", "gpus_per_trial": 0.125}).validate()


@needs_no_cuda
def test_device_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    from orchestrator import run as orun
    code = orun.main(["--device", "cuda", "--gpus-per-trial", "0.125", "--tracking-uri",
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
