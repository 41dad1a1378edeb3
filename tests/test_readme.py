"""The README stays true: every flag of every command it documents is named in it."""
from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class _Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(main, monkeypatch) -> argparse.ArgumentParser:
    """The parser a CLI's main() builds, taken at parse time, before the command does anything."""
    def capture(self, args=None, namespace=None):
        raise _Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as caught:
        main()
    return caught.value.parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags(sub)
        flags |= {f for f in action.option_strings if f.startswith("--") and f != "--help"}
    return flags


def _load_check_main():
    runpy.run_path(str(REPO / "scripts" / "load_check.py"))["main"]([])


def _mains():
    import bench
    import bench.gpu
    import bench.pipeline
    from orchestrator.analysis import report
    from orchestrator.sweep import driver, server
    return {"orchestrator.run": lambda: driver.main([]), "orchestrator.report": lambda: report.main([]),
            "bench": lambda: bench.main([]),
            "orchestrator.tracking": lambda: server.main(["serve"]), "bench.pipeline": lambda: bench.pipeline.main([]),
            "bench.gpu": lambda: bench.gpu.main([]),
            "scripts/load_check.py": _load_check_main}


@pytest.mark.parametrize("command", list(_mains()))
def test_every_flag_is_in_the_readme(command, monkeypatch):
    readme = (REPO / "README.md").read_text()
    flags = _flags(_parser_of(_mains()[command], monkeypatch))
    assert len(flags) >= 3, flags  # the parser really was found
    # An on/off flag's --no- form is covered by the README's note on them when its positive form is named.
    missing = sorted(f for f in flags if f not in readme and not (f.startswith("--no-") and "--" + f[5:] in readme))
    assert not missing, f"{command}: flags the README does not name: {missing}"


def test_the_readme_results_table_is_what_the_published_records_give():
    table = runpy.run_path(str(REPO / "scripts" / "results_table.py"))["results_table"](REPO / "results" / "paper-grid-unfused")
    assert table in (REPO / "README.md").read_text(), "update README's Results: python scripts/results_table.py"
