"""The search space: shapes of the paper's building blocks, sampled define-by-run with Optuna's trial API. A shape
(depth, each block's kind, relative width and ratios, its 2x2 pool and dense skips, the head) becomes a NetSpec
(`spec_of`); `fit` repairs what cannot be within the budget and scales every width by the one factor that fills it
(models.fit_to_budget). Pricing is arithmetic: nothing here trains, builds a network or imports torch."""
from __future__ import annotations

import dataclasses

from models.budget import fit_to_budget, macs_per_image, param_count, scale_widths, size_mb
from models.spec import MAX_POOLS, BlockSpec, HeadSpec, NetSpec, SpecError, to_dict

KINDS = ("res", "fire", "bottleneck", "depthwise")
DEPTHS = (2, 8)  # the paper's variants have 2 (Base) to 8 (V5) blocks
RELATIVE_WIDTHS = (0.25, 1.0)  # log-uniform; only ratios between blocks matter, fit() sets the scale
WIDTH_RESOLUTION = 256  # channels of relative width 1 before scaling: fine enough that rounding keeps the ratios
SQUEEZE_RATIOS = (0.125, 0.5)  # fire: squeeze channels / out (V3: 8 / 20)
EXPAND3X3_SHARES = (0.25, 0.75)  # fire: expand3x3 / out (V3: 10 / 20)
MID_RATIOS = (0.25, 1.0)  # bottleneck: mid / out (V4: 8 / 20)
HIDDEN_WIDTHS = (32, 256)  # FC head's hidden layer (the paper: 100); log-uniform; kept as sampled by fit()
# An FC head flattens the final map: on a 16x16 or 32x32 map its first Linear alone takes most of the budget, so
# it gets at least the two pools every FC variant of the paper has. More than 4 pools would leave a 1x1 map.
MIN_FC_POOLS, MAX_SEARCH_POOLS = 2, 4
# The smallest net the repairs fall back to: --max-params, --max-size-mb and --max-macs must at least hold it.
FLOOR_SPEC = NetSpec((BlockSpec("res", 1), BlockSpec("res", 1)), pool_after=(1, 2), head=HeadSpec("gap"))
FLOOR_PARAMS, FLOOR_SIZE_MB, FLOOR_MACS = param_count(FLOOR_SPEC), size_mb(FLOOR_SPEC), macs_per_image(FLOOR_SPEC)


def sample_shape(trial) -> dict:
    """One shape, asked of an Optuna trial (define-by-run: a block's parameters exist only when the depth has
    that block, a kind's ratios only when the block has that kind). Plain values only."""
    depth = trial.suggest_int("depth", *DEPTHS)
    blocks = []
    for k in range(1, depth + 1):
        kind = trial.suggest_categorical(f"b{k}_kind", KINDS)
        block = {"kind": kind, "width": trial.suggest_float(f"b{k}_width", *RELATIVE_WIDTHS, log=True)}
        if kind == "fire":
            block["squeeze"] = trial.suggest_float(f"b{k}_squeeze", *SQUEEZE_RATIOS)
            block["expand3x3"] = trial.suggest_float(f"b{k}_expand3x3", *EXPAND3X3_SHARES)
        elif kind == "bottleneck":
            block["mid"] = trial.suggest_float(f"b{k}_mid", *MID_RATIOS)
        block["pool"] = trial.suggest_categorical(f"b{k}_pool", (False, True))
        # stage j (0 = the image) can skip into block k when it is not already k's direct input (j < k - 1)
        block["skips"] = [j for j in range(k - 1) if trial.suggest_categorical(f"b{k}_skip{j}", (False, True))]
        blocks.append(block)
    head = trial.suggest_categorical("head", ("fc", "gap"))
    hidden = trial.suggest_int("hidden", *HIDDEN_WIDTHS, log=True) if head == "fc" else None
    return {"blocks": blocks, "head": head, "hidden": hidden}


def _block(b: dict) -> BlockSpec:
    out = max(1, round(WIDTH_RESOLUTION * b["width"]))
    if b["kind"] == "fire":
        e3 = min(out - 1, max(1, round(out * b["expand3x3"])))  # both expands at least one channel
        return BlockSpec("fire", out, squeeze=max(1, round(out * b["squeeze"])), expand1x1=out - e3, expand3x3=e3)
    if b["kind"] == "bottleneck":
        return BlockSpec("bottleneck", out, mid=max(1, round(out * b["mid"])))
    return BlockSpec(b["kind"], out)


def _pools(shape: dict) -> tuple[list[int], list[str]]:
    """The pooled blocks, repaired: at most MAX_SEARCH_POOLS (the earliest kept), and an FC head's minimum
    (added after the last unpooled blocks, as the paper's FC variants pool before their head)."""
    pools = [k for k, b in enumerate(shape["blocks"], start=1) if b["pool"]]
    repairs = [f"kept the first {MAX_SEARCH_POOLS} pools"] if len(pools) > MAX_SEARCH_POOLS else []
    pools = pools[:MAX_SEARCH_POOLS]
    if shape["head"] == "fc" and len(pools) < MIN_FC_POOLS:
        pools += [k for k in range(len(shape["blocks"]), 0, -1) if k not in pools][:MIN_FC_POOLS - len(pools)]
        repairs.append(f"pooled the last blocks: an FC head gets {MIN_FC_POOLS} pools")
    return sorted(pools), repairs


def spec_of(shape: dict) -> tuple[NetSpec, list[str]]:
    """The (unscaled) spec of a sampled shape and the repairs it needed, one phrase each. Always a valid NetSpec:
    the sampler draws only valid skips, and the pools are repaired here."""
    assert MAX_SEARCH_POOLS <= MAX_POOLS
    pools, repairs = _pools(shape)
    head = HeadSpec("fc", shape["hidden"]) if shape["head"] == "fc" else HeadSpec("gap")
    dense = {k: tuple(b["skips"]) for k, b in enumerate(shape["blocks"], start=1) if b["skips"]}
    return NetSpec(tuple(_block(b) for b in shape["blocks"]), tuple(pools), head, dense), repairs


def _smaller(spec: NetSpec) -> tuple[NetSpec, str]:
    """One step down the repair ladder for a spec that cannot fit even at width 1 (only a --max-params far below
    the paper's budget gets here): drop the dense skips, then an FC head for GAP, then the last block, and
    finally the floor net."""
    if spec.dense_from:
        return dataclasses.replace(spec, dense_from=()), "dropped the dense skips to fit"
    if spec.head.kind == "fc":
        return dataclasses.replace(spec, head=HeadSpec("gap")), "swapped the FC head for GAP to fit"
    if len(spec.blocks) > 2:
        blocks = spec.blocks[:-1]
        return (NetSpec(blocks, tuple(p for p in spec.pool_after if p <= len(blocks)), spec.head),
                "dropped the last block to fit")
    return FLOOR_SPEC, "fell back to the two-block floor net to fit"


def _fit_params(spec: NetSpec, max_params: int, max_size_mb: float) -> tuple[NetSpec, list[str]]:
    repairs = []
    while True:
        try:
            return fit_to_budget(spec, max_params, max_size_mb), repairs
        except SpecError:
            if spec == FLOOR_SPEC:
                raise
            spec, repair = _smaller(spec)
            repairs.append(repair)


def _narrowed(spec: NetSpec, max_macs: int) -> NetSpec:
    """spec with its widths scaled down by the largest factor (< 1) whose MACs fit max_macs (bisection: MACs
    only grow with the factor)."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs_per_image(scale_widths(spec, mid)) <= max_macs else (lo, mid)
    return scale_widths(spec, lo)


def fit(spec: NetSpec, max_params: int, max_macs: int = 0, max_size_mb: float = 0.0) -> tuple[NetSpec, list[str]]:
    """The spec with every width scaled by the largest common factor that fits max_params (and max_size_mb,
    when given: 0 is no cap), after the repairs
    it needed to fit at all; SpecError only when even FLOOR_SPEC does not fit (config.validate refuses that
    budget before the search starts). With max_macs (0: no cap), a candidate over it first pools earlier (its
    earliest unpooled block, refitted to the budget each time: the budget stays filled), then, at the pool limit,
    is narrowed until it fits: the only case where a candidate leaves part of the parameter budget unused."""
    spec, repairs = _fit_params(spec, max_params, max_size_mb)
    while (max_macs and macs_per_image(spec) > max_macs
           and len(spec.pool_after) < min(MAX_SEARCH_POOLS, len(spec.blocks))):  # a block left to pool
        k = min(set(range(1, len(spec.blocks) + 1)) - set(spec.pool_after))
        spec, more = _fit_params(dataclasses.replace(spec, pool_after=(*spec.pool_after, k)), max_params,
                                 max_size_mb)
        repairs += [f"pooled after block {k} for --max-macs", *more]
    if max_macs and macs_per_image(spec) > max_macs:
        spec = _narrowed(spec, max_macs)
        repairs.append("narrowed for --max-macs")
        if macs_per_image(spec) > max_macs:  # over even at width 1 (a cap far below the paper's nets)
            spec = FLOOR_SPEC
            repairs.append("fell back to the two-block floor net for --max-macs")
    return spec, repairs


def define_space(trial, max_params: int, max_macs: int = 0, max_size_mb: float = 0.0) -> dict:
    """OptunaSearch's define-by-run space: sample a shape, then return, as the trial's constants, the candidate:
    its fitted spec (plain dicts: Tune's config) and its repairs. Microseconds of arithmetic, no training."""
    spec, repairs = spec_of(sample_shape(trial))
    spec, more = fit(spec, max_params, max_macs, max_size_mb)
    return {"candidate": {"spec": to_dict(spec), "repairs": repairs + more}}


def budget_use(spec: NetSpec, max_params: int) -> float:
    return param_count(spec) / max_params


def describe(spec: NetSpec) -> str:
    """A one-line shape for tables: `res10 P, fire20+s, res40 P -> gap` (P: a pool after; +s: dense skips in)."""
    skips = dict(spec.dense_from)
    parts = [f"{b.kind}{b.out}" + ("+s" if k in skips else "") + (" P" if k in spec.pool_after else "")
             for k, b in enumerate(spec.blocks, start=1)]
    head = f"fc{spec.head.hidden}" if spec.head.kind == "fc" else "gap"
    return ", ".join(parts) + f" -> {head}"
