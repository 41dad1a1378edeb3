"""A timm-style registry: each architecture is declared once, by decorating its builder function."""
from typing import Callable

from torch import nn

_BUILDERS: dict[str, Callable[[], nn.Module]] = {}


def register_model(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Register `builder` under its function name; registration order is the order list_models() reports."""
    name = builder.__name__
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is registered twice; give the builder another name")
    _BUILDERS[name] = builder
    return builder


def list_models() -> list[str]:
    """Names of all registered models, in the paper's order."""
    return list(_BUILDERS)


def create_model(name: str) -> nn.Module:
    """A freshly initialised model by name; an unknown name raises ValueError listing the valid ones."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_BUILDERS)}")
    return _BUILDERS[name]()
