"""Architectures as data: the eight variants as specs are the same networks as the hand-written builders (same
weights for a seed), and bad specs fail on one line naming the field."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import registry
from models.blocks import BottleneckResBlock, DepthwiseResBlock, FireResBlock, ResBlock
from models.spec import BLOCK_WIDTHS, BlockSpec, HeadSpec, NetSpec, SpecError, from_dict, to_dict
from models.variants import BlockNet, FCHead, GAPHead

NAMES = ["base", "v1", "v2", "v3", "v4", "v5", "v6", "alpha"]
REPO_ROOT = Path(__file__).resolve().parents[1]

# The hand-written builders the specs replaced, verbatim: the reference for "same networks, same weights".
OLD_BUILDERS = {
    "base": lambda: BlockNet([ResBlock(3, 10), ResBlock(10, 20)], pool_after=(1, 2), head=FCHead(20 * 8 * 8)),
    "v1": lambda: BlockNet([ResBlock(3, 5), *(ResBlock(5, 5) for _ in range(4)), ResBlock(5, 20)],
                           pool_after=(5, 6), head=FCHead(20 * 8 * 8)),
    "v2": lambda: BlockNet([ResBlock(3, 10), ResBlock(10, 20)], pool_after=(1, 2), head=FCHead(20 * 8 * 8),
                           dense_from={2: (0,)}),
    "v3": lambda: BlockNet([FireResBlock(3, 8, 10, 10), *(FireResBlock(20, 8, 10, 10) for _ in range(4))],
                           pool_after=(1, 2), head=FCHead(20 * 8 * 8)),
    "v4": lambda: BlockNet([BottleneckResBlock(3, 10, 20), *(BottleneckResBlock(20, 8, 20) for _ in range(4))],
                           pool_after=(1, 2), head=FCHead(20 * 8 * 8)),
    "v5": lambda: BlockNet([DepthwiseResBlock(3, 10), DepthwiseResBlock(10, 20),
                            *(DepthwiseResBlock(20, 20) for _ in range(6))], pool_after=(1, 2),
                           head=FCHead(20 * 8 * 8)),
    "v6": lambda: BlockNet([ResBlock(i, o) for i, o in zip([3, 10, 20, 30, 40, 50], [10, 20, 30, 40, 50, 50])],
                           pool_after=(1, 2), head=GAPHead(50)),
    "alpha": lambda: BlockNet([ResBlock(i, o) for i, o in zip([3, 10, 20, 30, 40, 40], [10, 20, 30, 40, 40, 50])],
                              pool_after=(1, 2), head=GAPHead(50),
                              dense_from={k: tuple(range(k - 1)) for k in range(2, 7)}),
}


# --- same networks, same initial weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1234])
def test_a_seed_gives_the_old_builders_weights_bit_for_bit(name, seed):
    torch.manual_seed(seed)
    old = OLD_BUILDERS[name]()
    rng_after_old = torch.get_rng_state()
    torch.manual_seed(seed)
    new = models.create_model(name)
    assert torch.equal(torch.get_rng_state(), rng_after_old)  # the same draws, none more, none fewer
    old_state, new_state = old.state_dict(), new.state_dict()
    assert list(new_state) == list(old_state)
    for key, tensor in old_state.items():
        assert new_state[key].dtype == tensor.dtype and torch.equal(new_state[key], tensor), key
    # module classes, by name: fused training stacks modules by their exact type
    assert [(n, type(m)) for n, m in new.named_modules()] == [(n, type(m)) for n, m in old.named_modules()]
    assert (new.pool_after, new.dense_from) == (old.pool_after, old.dense_from)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(new.eval()(x), old.eval()(x))


@pytest.mark.parametrize("name", NAMES)
def test_variants_are_registered_specs_that_build_the_model(name):
    spec = models.get_spec(name)
    assert isinstance(spec, NetSpec)
    torch.manual_seed(0)
    built = models.build(spec)
    torch.manual_seed(0)
    created = models.create_model(name)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), created.state_dict().values()))


def test_get_spec_and_register_spec(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))  # leave the real registry as it was
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    winner = NetSpec([BlockSpec("res", 12), BlockSpec("bottleneck", 24, mid=6)], (1,), HeadSpec("gap"), {2: [0]})
    models.register_spec("v6-wide", winner)
    assert models.get_spec("v6-wide") == winner and models.list_models()[-1] == "v6-wide"
    assert isinstance(models.create_model("v6-wide"), BlockNet)
    with pytest.raises(ValueError, match="registered twice"):
        models.register_spec("alpha", winner)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.get_spec("nope")

    @models.register_model
    def by_code():
        return models.build(winner)
    with pytest.raises(ValueError, match="built by code"):
        models.get_spec("by_code")
    with pytest.raises(TypeError, match="NetSpec"):
        models.register_spec("dict", to_dict(winner))
    with pytest.raises(TypeError, match="NetSpec"):
        models.build(to_dict(winner))


# --- the format -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_round_trips_through_dict_toml_and_json(name, tmp_path):
    spec = models.get_spec(name)
    assert from_dict(to_dict(spec)) == spec
    assert from_dict(json.loads(json.dumps(to_dict(spec)))) == spec
    models.dump_toml(spec, tmp_path / "s.toml")
    assert models.load_spec(tmp_path / "s.toml") == spec
    models.dump_json(spec, tmp_path / "s.json")
    assert models.load_spec(tmp_path / "s.json") == spec
    assert models.spec_hash(models.load_spec(tmp_path / "s.toml")) == models.spec_hash(spec)


def test_hash_is_16_hex_stable_and_distinct():
    hashes = {name: models.spec_hash(models.get_spec(name)) for name in NAMES}
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in hashes.values())
    assert len(set(hashes.values())) == len(NAMES)
    assert hashes["alpha"] == "15f5da0bf4a76307"  # pinned: records cite hashes, so the canonical form is frozen


def test_equal_specs_normalise_to_one_form():
    d = to_dict(models.get_spec("v2"))
    d["pool_after"] = [2, 1]
    d["dense_from"] = {2: [np.int64(0)], "1": []}  # int or string keys, numpy ints, empty lists dropped
    d["blocks"][0]["out"] = np.int32(10)
    assert from_dict(d) == models.get_spec("v2")
    assert models.spec_hash(from_dict(d)) == models.spec_hash(models.get_spec("v2"))


# --- bad specs: one line that names the field -------------------------------------------------------------------------
def _fire():
    return {"kind": "fire", "out": 20, "squeeze": 8, "expand1x1": 10, "expand3x3": 10}


def _set(path, value):
    """A change to Base's dict form: path like ("blocks", 0, "out"); value None deletes the key."""
    def change(d):
        *parents, last = path
        for p in parents:
            d = d[p]
        if value is None:
            del d[last]
        else:
            d[last] = value
    return change


BAD = [  # (change to Base's dict, how the message starts)
    (_set(("blocks", 1, "kind"), "conv"), "block 2 kind: unknown block kind 'conv'; use one of res, fire"),
    (_set(("blocks", 0, "kind"), None), "block 1 kind: missing field 'kind'"),
    (_set(("blocks", 0, "out"), 0), "block 1 out: a width must be at least 1 channel, got 0"),
    (_set(("blocks", 0, "out"), -3), "block 1 out: a width must be at least 1 channel, got -3"),
    (_set(("blocks", 0, "out"), 2.5), "block 1 out: a width must be an integer, got 2.5 (float)"),
    (_set(("blocks", 0, "out"), "10"), "block 1 out: a width must be an integer, got '10' (str)"),
    (_set(("blocks", 0, "out"), True), "block 1 out: a width must be an integer, got True (bool)"),
    (_set(("blocks", 1), {**_fire(), "out": 30}), "block 2 out: 30 is not expand1x1 + expand3x3 = 10 + 10"),
    (_set(("blocks", 1), {**_fire(), "squeeze": 0}), "block 2 squeeze: a width must be at least 1"),
    (_set(("blocks", 1), {k: v for k, v in _fire().items() if k != "squeeze"}),
     "block 2 (fire): missing field 'squeeze'"),
    (_set(("blocks", 0, "mid"), 4), "block 1 (res): unknown field 'mid'; its fields are kind, out"),
    (_set(("blocks", 0), 10), "block 1: must be a table, got int"),
    (_set(("blocks",), []), "blocks: empty; give at least one block"),
    (_set(("blocks",), "res"), "blocks: must be a list of blocks, got str"),
    (_set(("pool_after",), [1, 3]), "pool_after: block 3 does not exist; name blocks 1..2"),
    (_set(("pool_after",), [0]), "pool_after: block 0 does not exist"),
    (_set(("pool_after",), [1, 1]), "pool_after: a block is named twice"),
    (_set(("pool_after",), ["1"]), "pool_after: a block number must be an integer, got '1' (str)"),
    (lambda d: d.update(blocks=[{"kind": "res", "out": 4}] * 6, pool_after=[1, 2, 3, 4, 5, 6]),
     "pool_after: 6 pools shrink the 32x32 image below 1x1; pool after at most 5 blocks"),
    (_set(("dense_from",), {"2": [2]}), "dense_from block 2: stage 2 is not before block 2"),
    (_set(("dense_from",), {"2": [1]}), "dense_from block 2: stage 1 is block 2's direct input"),
    (_set(("dense_from",), {"1": [0]}), "dense_from block 1: stage 0 is block 1's direct input"),
    (_set(("dense_from",), {"2": [-1]}), "dense_from block 2: stage -1 is not before block 2"),
    (_set(("dense_from",), {"3": [0]}), "dense_from block 3: block 3 does not exist; name blocks 2..2"),
    (_set(("dense_from",), {"b": [0]}), "dense_from 'b': a block number must be an integer"),
    (_set(("dense_from",), [[2, [0]]]), "dense_from: must be a table, got list"),
    (_set(("head", "kind"), "mlp"), "head kind: unknown head kind 'mlp'; use one of fc, gap"),
    (_set(("head", "hidden"), 0), "head hidden: a width must be at least 1 channel, got 0"),
    (_set(("head", "hidden"), None), "head hidden: missing; give it a width"),
    (_set(("head",), {"kind": "gap", "hidden": 100}), "head hidden: a gap head has no hidden layer"),
    (_set(("head", "dropout"), 0.5), "head: unknown field 'dropout'; its fields are kind, hidden"),
    (_set(("head",), None), "spec: missing field 'head'"),
    (_set(("pools",), [1]), "spec: unknown field 'pools'; its fields are blocks, pool_after, head, dense_from"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m.split(":")[0] + f" #{i}" for i, (_, m) in enumerate(BAD)])
def test_a_bad_spec_fails_on_one_line_naming_the_field(change, message):
    d = to_dict(models.get_spec("base"))
    change(d)
    with pytest.raises(SpecError) as err:
        from_dict(d)
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text and "; " in text  # one line: the problem, then the fix


def test_dataclass_specs_are_checked_on_construction():
    with pytest.raises(SpecError, match="^block 2 mid: a res block has no mid; drop it"):
        NetSpec([BlockSpec("res", 10), BlockSpec("res", 20, mid=5)], (1, 2), HeadSpec("gap"))
    with pytest.raises(SpecError, match="^head: must be a HeadSpec, got dict"):
        NetSpec([BlockSpec("res", 10)], (), {"kind": "gap"})
    with pytest.raises(SpecError, match="^dense_from block 2: stage 3 is not before block 2"):
        NetSpec([BlockSpec("res", 10)] * 3, (), HeadSpec("gap"), dense_from=[(2, (3,))])


def test_load_spec_names_the_file(tmp_path):
    (tmp_path / "bad.toml").write_text("blocks = [\n  { kind = \"res\", out = 0 },\n]\npool_after = []\n"
                                       "head = { kind = \"gap\" }\n")
    (tmp_path / "broken.toml").write_text("blocks = [ { kind = \"res\" ")
    (tmp_path / "spec.yaml").write_text("")
    for name, message in [("bad.toml", "block 1 out: a width must be at least 1"),
                          ("broken.toml", "not valid TOML"), ("spec.yaml", "unknown suffix '.yaml'")]:
        with pytest.raises(SpecError) as err:
            models.load_spec(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: ") and message in str(err.value)
        assert "\n" not in str(err.value)
