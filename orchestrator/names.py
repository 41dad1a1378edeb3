"""The project's naming conventions and defaults, each written once."""
from __future__ import annotations

import re
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
DEFAULT_EXPERIMENT = "resnet-revisited"
SQLITE_PREFIX = "sqlite:///"
# A search's or a spec file's name: it goes into paths, MLflow filter strings and shell lines, so nothing to quote.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def trial_name(variant: str, seed: int) -> str:
    """`<variant>-seed<k>`: the Ray trial, its folder, its MLflow run and its record are all named so."""
    return f"{variant}-seed{seed}"


def parse_trial_name(name: str) -> tuple[str, int]:
    """The (variant, seed) of a trial name; ValueError if it is not one."""
    variant, sep, seed = name.rpartition("-seed")
    if not (variant and sep and seed.isdigit()):
        raise ValueError(f"{name!r} is not a trial name of the form <variant>-seed<k>")
    return variant, int(seed)


def fused_trial_name(variant: str, seeds) -> str:
    """`<variant>-seeds<a>-<b>-...`: the Ray trial (and folder) of a fused trial; each seed's run is trial_name's."""
    return f"{variant}-seeds" + "-".join(str(s) for s in seeds)


def parse_ray_trial_name(name: str) -> list[tuple[str, int]]:
    """The (variant, seed) pairs a Ray trial's name stands for: one, or every seed of a fused trial."""
    variant, sep, seeds = name.rpartition("-seeds")
    if variant and sep and seeds and all(s.isdigit() for s in seeds.split("-")):
        return [(variant, int(s)) for s in seeds.split("-")]
    return [parse_trial_name(name)]


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// tracking URI; None for any other URI."""
    return Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None
