"""A timm-style registry: each architecture is registered once, by name, as a spec (models.register_spec) or as
a builder function (@register_model, for a network a spec can't describe)."""
from typing import Callable

from torch import nn

from .spec import NetSpec

_BUILDERS: dict[str, Callable[[], nn.Module]] = {}
_SPECS: dict[str, NetSpec] = {}


def add_model(name: str, builder: Callable[[], nn.Module], spec: NetSpec | None = None) -> None:
    """Register `builder` (and the spec it builds, if any) under `name`; registration order is list_models()'s."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name must be a non-empty string, got {name!r}")
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is registered twice; give it another name")
    _BUILDERS[name] = builder
    if spec is not None:
        _SPECS[name] = spec


def register_model(builder: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Decorator: register `builder` under its function name."""
    add_model(builder.__name__, builder)
    return builder


def list_models() -> list[str]:
    """Names of all registered models, in the paper's order."""
    return list(_BUILDERS)


def create_model(name: str) -> nn.Module:
    """A freshly initialised model by name; an unknown name raises ValueError listing the valid ones."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_BUILDERS)}")
    return _BUILDERS[name]()


def registered_spec(name: str) -> NetSpec | None:
    """The spec registered under `name`, or None (no such model, or one built by code)."""
    return _SPECS.get(name)


def get_spec(name: str) -> NetSpec:
    """The spec a model was registered with; ValueError for an unknown name or a model built by code."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_BUILDERS)}")
    if name not in _SPECS:
        raise ValueError(f"model {name!r} is built by code (@register_model), not declared as a spec")
    return _SPECS[name]
