"""Architectures as data: a BlockNet described by a small TOML/JSON-able spec, checked before anything is built.

    blocks = [                                   # in order; every width is a number of channels
      { kind = "res", out = 10 },
      { kind = "fire", out = 20, squeeze = 8, expand1x1 = 10, expand3x3 = 10 },
      { kind = "bottleneck", out = 20, mid = 8 },
      { kind = "depthwise", out = 20 },
    ]
    pool_after = [1, 2]                          # a 2x2 max pool after these blocks (numbered from 1)
    head = { kind = "fc", hidden = 100 }         # or { kind = "gap" }

    [dense_from]                                 # block = stages projected into it, as BlockNet takes them:
    2 = [0]                                      # stage 0 is the image, stage j what block j passed on

A fire block states its `out` like every other block, and it must equal expand1x1 + expand3x3 (checked), so a
reader never has to add widths up to know a block's output. The input is CIFAR-10's 3 x 32 x 32 image.

This module and models.budget use no torch: checking, hashing and pricing a candidate costs microseconds, so a
search can screen thousands a second; models.variants.build(spec) makes the network.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

IMAGE_CHANNELS = 3
IMAGE_SIDE_PX = 32
NUM_CLASSES = 10
MAX_POOLS = 5  # 32 -> 16 -> 8 -> 4 -> 2 -> 1: a sixth 2x2 pool would leave no pixel

BLOCK_WIDTHS = {  # the widths each block kind takes (blocks.py), `out` first
    "res": ("out",),
    "fire": ("out", "squeeze", "expand1x1", "expand3x3"),
    "bottleneck": ("out", "mid"),
    "depthwise": ("out",),
}
HEAD_WIDTHS = {"fc": ("hidden",), "gap": ()}
SPEC_FIELDS = ("blocks", "pool_after", "head", "dense_from")  # dense_from may be left out (no skips)


class SpecError(ValueError):
    """A spec that cannot describe a BlockNet. The message is one line: the field, what is wrong, the fix."""


def _fail(field: str, problem: str, fix: str) -> NoReturn:
    raise SpecError(f"{field}: {problem}; {fix}")


@dataclass(frozen=True)
class BlockSpec:
    """One block. Only the widths of its kind are set (BLOCK_WIDTHS); the others stay None."""
    kind: str
    out: int | None = None
    squeeze: int | None = None
    expand1x1: int | None = None
    expand3x3: int | None = None
    mid: int | None = None

    def widths(self) -> dict[str, int]:
        """The widths this kind takes, by name, `out` first."""
        return {name: getattr(self, name) for name in BLOCK_WIDTHS[self.kind]}


@dataclass(frozen=True)
class HeadSpec:
    """"fc": flatten -> Linear(hidden) -> BN -> ReLU -> Linear(10) (Table 1); "gap": global average pool ->
    Linear(10) (Table 3)."""
    kind: str
    hidden: int | None = None


@dataclass(frozen=True)
class NetSpec:
    """A whole BlockNet. Making one checks every field (SpecError) and normalises it: tuples throughout,
    pool_after sorted, dense_from as (block, stages) pairs sorted by block, without empty entries. The order
    of a block's stages is kept: it is the order BlockNet makes (and initialises) the projections in."""
    blocks: tuple[BlockSpec, ...]
    pool_after: tuple[int, ...]
    head: HeadSpec
    dense_from: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def __post_init__(self):
        blocks = _checked_blocks(self.blocks)
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "pool_after", _checked_pools(self.pool_after, len(blocks)))
        object.__setattr__(self, "head", _checked_head(self.head))
        object.__setattr__(self, "dense_from", _checked_dense(self.dense_from, len(blocks)))

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of stage 0 (the image) and of every block's output."""
        return (IMAGE_CHANNELS, *(b.out for b in self.blocks))

    @property
    def final_side_px(self) -> int:
        """Side of the feature map the head sees."""
        return IMAGE_SIDE_PX >> len(self.pool_after)


# --- checks: each returns the normalised value or raises SpecError naming the field -----------------------------
def _integer(field: str, value, what: str) -> int:
    # bool is an int to Python but never a width; numpy integers are welcome (a search may sample them)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(field, f"{what} must be an integer, got {value!r} ({type(value).__name__})",
              "write a whole number without quotes")
    return int(value)


def _width(field: str, value) -> int:
    if value is None:
        _fail(field, "missing", "give it a width in channels (an integer >= 1)")
    width = _integer(field, value, "a width")
    if width < 1:
        _fail(field, f"a width must be at least 1 channel, got {width}", "use an integer >= 1")
    return width


def _sequence(field: str, value, what: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        _fail(field, f"must be a list of {what}, got {type(value).__name__}", f"write it as [..] of {what}")
    return tuple(value)


def _checked_block(k: int, block) -> BlockSpec:
    field = f"block {k}"
    if not isinstance(block, BlockSpec):
        _fail(field, f"must be a BlockSpec, got {type(block).__name__}", "make it with BlockSpec(kind, ...)")
    if not isinstance(block.kind, str) or block.kind not in BLOCK_WIDTHS:
        _fail(f"{field} kind", f"unknown block kind {block.kind!r}", f"use one of {', '.join(BLOCK_WIDTHS)}")
    takes = BLOCK_WIDTHS[block.kind]
    for name in ("out", "squeeze", "expand1x1", "expand3x3", "mid"):
        if name not in takes and getattr(block, name) is not None:
            _fail(f"{field} {name}", f"a {block.kind} block has no {name}",
                  f"drop it (a {block.kind} block takes {', '.join(takes)})")
    widths = {name: _width(f"{field} {name}", getattr(block, name)) for name in takes}
    if block.kind == "fire" and widths["out"] != widths["expand1x1"] + widths["expand3x3"]:
        _fail(f"{field} out", f"{widths['out']} is not expand1x1 + expand3x3 = "
              f"{widths['expand1x1']} + {widths['expand3x3']}", "make out the sum of the two expands")
    return BlockSpec(block.kind, **widths)


def _checked_blocks(blocks) -> tuple[BlockSpec, ...]:
    blocks = _sequence("blocks", blocks, "blocks")
    if not blocks:
        _fail("blocks", "empty", "give at least one block")
    return tuple(_checked_block(k, b) for k, b in enumerate(blocks, start=1))


def _checked_pools(pool_after, n: int) -> tuple[int, ...]:
    pools = [_integer("pool_after", p, "a block number") for p in _sequence("pool_after", pool_after,
                                                                           "block numbers")]
    for p in pools:
        if not 1 <= p <= n:
            _fail("pool_after", f"block {p} does not exist", f"name blocks 1..{n}")
    if len(set(pools)) < len(pools):
        _fail("pool_after", f"a block is named twice in {pools}", "name each pooled block once")
    if len(pools) > MAX_POOLS:
        _fail("pool_after", f"{len(pools)} pools shrink the {IMAGE_SIDE_PX}x{IMAGE_SIDE_PX} image below 1x1",
              f"pool after at most {MAX_POOLS} blocks")
    return tuple(sorted(pools))


def _checked_head(head) -> HeadSpec:
    if not isinstance(head, HeadSpec):
        _fail("head", f"must be a HeadSpec, got {type(head).__name__}", "make it with HeadSpec(kind, ...)")
    if not isinstance(head.kind, str) or head.kind not in HEAD_WIDTHS:
        _fail("head kind", f"unknown head kind {head.kind!r}", f"use one of {', '.join(HEAD_WIDTHS)}")
    if head.kind == "gap":
        if head.hidden is not None:
            _fail("head hidden", "a gap head has no hidden layer", "drop hidden, or use kind fc")
        return head
    return HeadSpec("fc", _width("head hidden", head.hidden))


def _block_number(key, n: int) -> int:
    if isinstance(key, str) and key.strip().isdigit():  # TOML and JSON keys are strings
        key = int(key)
    k = _integer(f"dense_from {key!r}", key, "a block number")
    if not 1 <= k <= n:
        _fail(f"dense_from block {k}", f"block {k} does not exist",
              {1: "a one-block net has no dense skips", 2: "name block 2"}.get(n, f"name blocks 2..{n}"))
    return k


def _checked_sources(k: int, sources) -> tuple[int, ...]:
    field = f"dense_from block {k}"
    stages = tuple(_integer(field, j, "a stage") for j in _sequence(field, sources, "stages"))
    usable = {1: "drop it: block 1 has no stage before its input", 2: "skip from stage 0 (the image)"}.get(
        k, f"skip from stages 0..{k - 2}")
    for j in stages:
        if j < 0 or j >= k:
            _fail(field, f"stage {j} is not before block {k}", usable)
        if j == k - 1:
            _fail(field, f"stage {j} is block {k}'s direct input, which it already gets", usable)
    if len(set(stages)) < len(stages):
        _fail(field, f"a stage is named twice in {list(stages)}", "name each stage once")
    return stages


def _checked_dense(dense_from, n: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    if isinstance(dense_from, Mapping):
        pairs = list(dense_from.items())
    else:
        pairs = _sequence("dense_from", dense_from, "(block, stages) pairs")
        if any(not isinstance(p, Sequence) or len(p) != 2 for p in pairs):
            _fail("dense_from", "must map block numbers to lists of stages", "write it as {block: [stages]}")
    checked = {}
    for key, sources in pairs:
        k = _block_number(key, n)
        if k in checked:
            _fail(f"dense_from block {k}", "named twice", "give each block one list of stages")
        checked[k] = _checked_sources(k, sources)
    return tuple((k, stages) for k, stages in sorted(checked.items()) if stages)


# --- dict / TOML / JSON -------------------------------------------------------------------------------------------
def _fields(field: str, d, allowed: Sequence[str], required: Sequence[str], example: str) -> Mapping:
    if not isinstance(d, Mapping):
        _fail(field, f"must be a table, got {type(d).__name__}", f"write it like {example}")
    for key in d:
        if key not in allowed:
            _fail(field, f"unknown field {key!r}", f"its fields are {', '.join(allowed)}")
    for key in required:
        if key not in d:
            _fail(field, f"missing field {key!r}", f"its fields are {', '.join(allowed)}")
    return d


def _block_from_dict(k: int, d) -> BlockSpec:
    example = '{kind = "res", out = 16}'
    if not isinstance(d, Mapping):
        _fail(f"block {k}", f"must be a table, got {type(d).__name__}", f"write it like {example}")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in BLOCK_WIDTHS:
        problem = "missing field 'kind'" if kind is None else f"unknown block kind {kind!r}"
        _fail(f"block {k} kind", problem, f"use one of {', '.join(BLOCK_WIDTHS)}")
    fields = ("kind", *BLOCK_WIDTHS[kind])
    return BlockSpec(**_fields(f"block {k} ({kind})", d, fields, fields, example))


def from_dict(d: Mapping) -> NetSpec:
    """The spec a parsed TOML/JSON document (or to_dict) describes; SpecError names the first bad field."""
    d = _fields("spec", d, SPEC_FIELDS, SPEC_FIELDS[:3], 'the example in models/spec.py')
    blocks = [_block_from_dict(k, b) for k, b in enumerate(_sequence("blocks", d["blocks"], "blocks"), start=1)]
    head = _fields("head", d["head"], ("kind", "hidden"), ("kind",), '{kind = "gap"}')
    dense_from = d.get("dense_from", {})
    if not isinstance(dense_from, Mapping):
        _fail("dense_from", f"must be a table, got {type(dense_from).__name__}", "write it as {block = [stages]}")
    return NetSpec(tuple(blocks), d["pool_after"], HeadSpec(**head), dense_from)


def to_dict(spec: NetSpec) -> dict:
    """Plain dicts, lists, strings and ints: what JSON and TOML hold. dense_from's keys are strings, as there."""
    head = {"kind": spec.head.kind, **({"hidden": spec.head.hidden} if spec.head.kind == "fc" else {})}
    return {"blocks": [{"kind": b.kind, **b.widths()} for b in spec.blocks],
            "pool_after": list(spec.pool_after),
            "head": head,
            "dense_from": {str(k): list(stages) for k, stages in spec.dense_from}}


def spec_hash(spec: NetSpec) -> str:
    """16 hex digits of the sha256 of the canonical JSON: equal specs, equal hashes, whatever file they came from."""
    canonical = json.dumps(to_dict(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def spec_params(spec: NetSpec) -> dict[str, str]:
    """The spec as a few flat, readable strings (MLflow params, table cells): its hash, the blocks
    (`res:10 fire:20/s8/e10+10 bottleneck:20/m10 depthwise:20`), the pools, the head and the dense skips."""
    def block(b: BlockSpec) -> str:
        extra = {"fire": f"/s{b.squeeze}/e{b.expand1x1}+{b.expand3x3}", "bottleneck": f"/m{b.mid}"}
        return f"{b.kind}:{b.out}{extra.get(b.kind, '')}"
    return {"spec_hash": spec_hash(spec), "spec_blocks": " ".join(block(b) for b in spec.blocks),
            "spec_pool_after": ",".join(map(str, spec.pool_after)),
            "spec_head": f"fc:{spec.head.hidden}" if spec.head.kind == "fc" else spec.head.kind,
            "spec_dense_from": " ".join(f"{k}<-{','.join(map(str, stages))}" for k, stages in spec.dense_from)}


def _inline(d: Mapping) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"  # ints, strs, int lists


def dump_toml(spec: NetSpec, path: str | Path | None = None) -> str:
    """The spec as TOML (one block a line); also written to `path` when given. Read back with load_spec."""
    d = to_dict(spec)
    lines = ["blocks = [", *(f"  {_inline(b)}," for b in d["blocks"]), "]",
             f"pool_after = {json.dumps(d['pool_after'])}", f"head = {_inline(d['head'])}"]
    if d["dense_from"]:
        lines += ["", "[dense_from]  # block = stages projected into it (0 is the image, j what block j passed on)",
                  *(f"{k} = {json.dumps(stages)}" for k, stages in d["dense_from"].items())]
    text = "\n".join(lines) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text


def dump_json(spec: NetSpec, path: str | Path | None = None) -> str:
    """The spec as JSON; also written to `path` when given."""
    text = json.dumps(to_dict(spec), indent=2) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text


def load_spec(path: str | Path) -> NetSpec:
    """A spec from a .toml or .json file. Any problem is one SpecError line that starts with the path."""
    path = Path(path)
    parse = {".toml": tomllib.loads, ".json": json.loads}.get(path.suffix)
    if parse is None:
        raise SpecError(f"{path}: unknown suffix {path.suffix!r}; name spec files .toml or .json")
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read it ({e.strerror}); pass the path of a spec file") from None
    try:
        return from_dict(parse(text))
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"{path}: not valid {path.suffix[1:].upper()} ({e}); fix the syntax") from None
