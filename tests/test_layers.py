"""The layout's rules, checked: each package has one job and imports only the layers below it.

- orchestrator/training runs without Ray, MLflow or Optuna, and knows nothing of the sweep, the search or the
  analysis above it (checked statically, lazy imports included, and by importing every module in a fresh process);
- orchestrator/sweep knows nothing of the search or the analysis above it (orchestrator.run adds the report);
- orchestrator/analysis imports no trainer (of orchestrator.training only its config and metric names);
- models/ and data/ import nothing of each other, of the orchestrator, of Ray or of MLflow;
- no module imports another module's _private names.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the file, at any depth (lazy imports inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def offending(folder: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {module}" for path in modules_under(folder)
            for module, _ in imports_of(path) if within(module, forbidden) and not within(module, allowed)]


@pytest.mark.parametrize("folder, forbidden, allowed", [
    ("orchestrator/training", ("ray", "mlflow", "optuna", "orchestrator.sweep", "orchestrator.search",
                               "orchestrator.analysis", "bench"), ()),
    ("orchestrator/sweep", ("orchestrator.search", "orchestrator.analysis", "orchestrator.run", "bench"), ()),
    ("orchestrator/analysis", ("orchestrator.training", "orchestrator.search", "ray", "bench"),
     ("orchestrator.training.config", "orchestrator.training.metrics")),
    ("models", ("data", "orchestrator", "ray", "mlflow", "optuna", "bench"), ()),
    ("data", ("models", "orchestrator", "ray", "mlflow", "optuna", "bench"), ()),
])
def test_each_layer_imports_only_what_lies_below_it(folder, forbidden, allowed):
    assert offending(folder, forbidden, allowed) == []


def test_training_imports_no_ray_or_mlflow_even_indirectly():
    names = [".".join(p.relative_to(REPO).with_suffix("").parts) for p in modules_under("orchestrator/training")]
    code = (f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n"
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_module_imports_another_modules_private_names():
    private = [f"{path.relative_to(REPO)}: from {module} import {name}"
               for folder in ("orchestrator", "models", "data", "bench", "scripts")
               for path in modules_under(folder) for module, names in imports_of(path)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert private == []
