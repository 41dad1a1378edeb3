"""The model zoo: exact to the paper's Table 2/5, trainable, measurable, compile-friendly."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models
from models import reference

PAPER = reference.load()
NAMES = ["base", "v1", "v2", "v3", "v4", "v5", "v6", "alpha"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_the_paper_variants_in_order():
    assert list(models.PAPER_VARIANTS) == NAMES == PAPER.index.tolist()
    assert models.list_models()[:len(NAMES)] == NAMES  # then the spec files of models/specs, a search's winners


def test_unknown_name_raises_and_lists_valid_names():
    with pytest.raises(ValueError) as err:
        models.create_model("resnet50")
    assert "resnet50" in str(err.value)
    assert all(name in str(err.value) for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_params_and_size_match_paper(name):
    model = models.create_model(name)
    assert models.count_parameters(model) == PAPER.at[name, "params"]
    places = int(reference.size_mb_decimals()[name])
    assert places == (3 if name == "alpha" else 4)
    assert round(models.size_mb(model), places) == pytest.approx(PAPER.at[name, "size_mb"], abs=1e-9)


def test_dense_skip_topology():
    # V2: one projection (image -> block 2). Alpha: block k gets the image and blocks 1..k-2, so 1+2+3+4+5.
    def skip_sources(net):
        return [list(sources) for sources in net.dense_from]

    assert skip_sources(models.create_model("v2")) == [[], [0]]
    assert skip_sources(models.create_model("alpha")) == [[], [0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    strides = [skip[0].stride[0] for per_block in models.create_model("alpha").skips for skip in per_block]
    assert strides == [2, 4, 2, 4, 2, 1, 4, 2, 1, 1, 4, 2, 1, 1, 1]


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = models.create_model(name)
    model.eval()  # batch 1 is an inference shape: BatchNorm1d in the FC head can't train on one sample
    with torch.no_grad():
        for batch in (1, 4):
            assert model(torch.randn(batch, 3, 32, 32)).shape == (batch, 10)
    model.train()
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"


def test_macs_per_image_is_measured_and_ordered():
    macs = {name: models.macs_per_image(models.create_model(name)) for name in NAMES}
    assert all(isinstance(m, int) and m > 0 for m in macs.values())
    # Base by hand: convs at 32x32 and 16x16 plus the two linears (biases aren't MACs).
    base = (3 * 10 * 9 + 10 * 10 * 9 + 3 * 10) * 32 * 32 + (10 * 20 * 9 + 20 * 20 * 9 + 10 * 20) * 16 * 16 \
        + 1280 * 100 + 100 * 10
    assert macs["base"] == base
    assert macs["v1"] > macs["base"]  # V1 computes at 32x32 for five blocks
    assert macs["v2"] > macs["base"]  # plus one projection
    assert macs["v6"] > macs["base"] and macs["alpha"] > macs["base"]  # four more blocks at 8x8, up to 50 wide
    assert macs["v5"] < macs["base"]  # depthwise-separable convs are the cheap ones


def test_macs_per_image_restores_training_mode():
    model = models.create_model("base")
    models.macs_per_image(model)
    assert model.training
    model.eval()
    models.macs_per_image(model)
    assert not model.training


def test_state_dict_bytes_covers_the_tensors_and_round_trips():
    model = models.create_model("v6")
    assert models.state_dict_bytes(model) >= models.size_mb(model) * 2**20
    clone = models.create_model("v6")
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), clone.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_and_compiled_graph_match_eager(name):
    torch.manual_seed(0)
    model = models.create_model(name).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        channels_last = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(channels_last, expected, rtol=1e-4, atol=1e-5)
        # fullgraph=True fails on any graph break; aot_eager traces like inductor without compiling C++.
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-5)


def test_python_m_models_prints_zero_difference_on_every_row():
    result = subprocess.run([sys.executable, "-m", "models"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()}
    for name in NAMES:
        row = rows[name]
        assert int(row[1].replace(",", "")) == PAPER.at[name, "params"]
        assert int(row[-2]) == 0 and math.isclose(float(row[-1]), 0.0), row
