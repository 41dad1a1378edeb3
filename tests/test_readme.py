"""The README stays true: every flag of every command it documents is named in it, every command in its code
blocks (and in docs/) parses with that command's own parser, every `make` target and every file it names exists,
its layout lists every module, and its examples (a spec, a sweep config, the MLflow model, a published model on a
PNG) run."""
from __future__ import annotations

import argparse
import ast
import re
import runpy
import shlex
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))


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
    monkeypatch.undo()  # parse_args works again, for the caller to parse with
    return caught.value.parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags(sub)
        flags |= {f for f in action.option_strings if f.startswith("--") and f != "--help"}
    return flags


def _script_main(path: str):
    return lambda: runpy.run_path(str(REPO / path))["main"]([])


def _mains():
    """Every command the README documents, as it is run (`python -m X` or `python scripts/x.py`) -> its main()."""
    import bench
    import bench.gpu
    import bench.pipeline
    import bench.published
    from orchestrator.analysis import report
    from orchestrator.search import command as search
    from orchestrator import run
    from orchestrator.sweep import server
    return {"orchestrator.run": lambda: run.main([]), "orchestrator.report": lambda: report.main([]),
            "orchestrator.search": lambda: search.main([]),
            "orchestrator.tracking": lambda: server.main(["serve"]),
            "bench": lambda: bench.main([]), "bench.pipeline": lambda: bench.pipeline.main([]),
            "bench.gpu": lambda: bench.gpu.main([]), "bench.published": lambda: bench.published.main([]),
            "scripts/load_check.py": _script_main("scripts/load_check.py"),
            "scripts/results_table.py": _script_main("scripts/results_table.py")}


# Commands the README runs that have no argparse parser of their own: what their arguments may be.
NO_PARSER = {"models": lambda args: all(a.endswith((".toml", ".json")) for a in args),  # spec files, or none
             "pytest": lambda args: True,  # pytest's own
             "tests/test_bad_input.py": lambda args: not args}


@pytest.mark.parametrize("command", list(_mains()))
def test_every_flag_is_in_the_readme(command, monkeypatch):
    readme = README.read_text()
    flags = _flags(_parser_of(_mains()[command], monkeypatch))
    assert len(flags) >= 1, flags  # the parser really was found
    # An on/off flag's --no- form is covered by the README's note on them when its positive form is named.
    missing = sorted(f for f in flags if f not in readme and not (f.startswith("--no-") and "--" + f[5:] in readme))
    assert not missing, f"{command}: flags the README does not name: {missing}"


def test_the_readme_results_table_is_what_the_published_records_give():
    results_table = runpy.run_path(str(REPO / "scripts" / "results_table.py"))["results_table"]
    table = results_table(REPO / "results" / "paper-grid")
    assert table in README.read_text(), "update README's Results: python scripts/results_table.py"


def test_the_readme_fused_check_is_what_the_fused_and_unfused_records_give():
    fused_check_table = runpy.run_path(str(REPO / "scripts" / "results_table.py"))["fused_check_table"]
    table = fused_check_table(REPO / "results" / "paper-grid", REPO / "results" / "paper-grid-unfused")
    assert table.count("\n") >= 2, "no variant has fused seeds and an unfused seed 0 yet"
    assert table in README.read_text(), "update README's Results: python scripts/results_table.py --fused-check"


def test_the_readme_search_table_is_what_the_published_search_gives():
    """budget-60's table: its records and report beside the grid's, and `budget60` marking the spec it registers."""
    search_table = runpy.run_path(str(REPO / "scripts" / "results_table.py"))["search_table"]
    table = search_table(REPO / "results" / "budget-60", REPO / "results" / "proxy-check-default")
    assert "= `budget60`" in table, "models/specs/budget60.toml is not the spec budget-60 re-validated"
    assert table in README.read_text(), \
        "update README's published search: python scripts/results_table.py --search results/budget-60"


# --- the README's code blocks -------------------------------------------------------------------------
def _blocks(text: str, *languages: str) -> list[str]:
    """The bodies of the fenced code blocks in `text` whose info string is one of `languages`."""
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S) if m.group(1) in languages]


def _shell_lines(text: str) -> list[str]:
    """Every line of every shell block, continuation lines joined, comments dropped."""
    return [_uncommented(line) for body in _blocks(text, "bash", "sh")
            for line in body.replace("\\\n", " ").splitlines()]


def _uncommented(line: str) -> str:
    """A shell line without its comment: a # outside quotes that starts a word (a URL's /#/ is no comment)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


PLACEHOLDER = re.compile(r"<[^<>\n]+>")  # <id>, <head private IP>: a value the reader fills in


def _commands(line: str) -> list[tuple[str, list[str]]]:
    """(command, arguments) of each `python -m <module> ...` and `python <file>.py ...` in a shell line, including
    those inside a quoted argument (`ray exec cluster.yaml '... && python -m orchestrator.run ...'`)."""
    lexer = shlex.shlex(PLACEHOLDER.sub("X", line), posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    tokens = list(lexer)
    found = []
    for i, token in enumerate(tokens):
        if re.search(r"(^|\s)python3?\s", token) and " " in token:  # a command line quoted as one argument
            found += _commands(token)
        elif token in ("python", "python3") or token.endswith("/python"):
            command, rest = (tokens[i + 2], tokens[i + 3:]) if tokens[i + 1:i + 2] == ["-m"] else \
                (tokens[i + 1], tokens[i + 2:])
            args = []
            for arg in rest:
                if set(arg) <= set(";&|<>()"):  # the next command of the line
                    break
                args.append(arg)
            found.append((command, args))
    return found


def _documented_commands(*docs: Path) -> list[tuple[str, list[str]]]:
    return [c for doc in docs or (README, *DOCS) for line in _shell_lines(doc.read_text()) for c in _commands(line)]


def test_the_readme_runs_commands_and_every_block_says_its_language():
    for doc in (README, *DOCS):
        openings = re.findall(r"^```(\w*)$", doc.read_text(), re.M)[::2]  # fences alternate: open, close
        assert all(openings), f"{doc.name}: a code block without a language (bash, python, toml or text)"
    commands = {c for c, _ in _documented_commands(README)}
    assert {"orchestrator.run", "orchestrator.report", "orchestrator.search", "bench.published"} <= commands, commands


@pytest.mark.parametrize("command,args", _documented_commands(), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_every_command_in_the_readme_parses(command, args, monkeypatch, capsys):
    if command in NO_PARSER:
        assert NO_PARSER[command](args), f"README: python -m {command} {' '.join(args)}"
        return
    assert command in _mains(), f"the README runs {command}: add it to _mains() so that its flags are checked"
    parser = _parser_of(_mains()[command], monkeypatch)
    try:
        parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"README: {command} {' '.join(args)}: {capsys.readouterr().err.strip()}")


def _makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z_][\w.-]*)\s*:(?!=)", text, re.M))


def test_every_make_target_in_the_readme_exists():
    text = README.read_text()
    code = "\n".join(_blocks(text, "bash", "sh") + re.findall(r"`([^`\n]+)`", text))
    targets = set(re.findall(r"(?:^|[\s;&|(])make[ \t]+([A-Za-z_][\w-]*)(?!\S*=)", code, re.M))
    assert {"install", "quick", "run", "ui", "test"} <= targets, targets
    unknown = targets - _makefile_targets()
    assert not unknown, f"README names make targets the Makefile lacks: {unknown}"


NAMED_PATH = re.compile(r"(?<![\w/.~-])((?:results|docs|scripts)/[^\s`'\"()\[\]|,;:]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _being_filled(path: str) -> bool:
    """A path inside a results folder that has no report yet: a grid still being trained (its report comes last)."""
    parts = Path(path).parts
    return len(parts) >= 2 and parts[0] == "results" and not (REPO / parts[0] / parts[1] / "report.md").exists()


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_file_the_readme_and_docs_name_exists(doc):
    text = doc.read_text()
    named = {m.rstrip(".") for m in NAMED_PATH.findall(text)}
    named = {p for p in named if not re.search(r"[<>*{}]", p) and not _being_filled(p)}
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
    links = {t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")}
    missing = sorted(t for t in links if t and not _being_filled(t) and not (doc.parent / t).exists())
    assert not missing, f"{doc.name} links to files that do not exist: {missing}"


# --- the layout ---------------------------------------------------------------------------------------
def _layout() -> set[str]:
    """Every path the README's Layout block names, its folders' names prefixed (indentation: 2 spaces a level)."""
    text = README.read_text()
    block = _blocks(text[text.index("\n## Layout"):], "text")[0]
    paths, folders = set(), []
    for line in block.splitlines():
        level = (len(line) - len(line.lstrip())) // 2
        names = re.split(r"\s{2,}", line.strip())[0]
        del folders[level:]
        for name in names.split(", "):
            paths.add("/".join([*folders, name]).rstrip("/"))
        if names.endswith("/"):
            folders.append(names.rstrip("/"))
    return paths


def test_the_layout_names_every_module_and_nothing_else():
    layout = _layout()
    absent = sorted(p for p in layout if not (REPO / p).exists())
    assert not absent, f"the README's layout names paths that do not exist: {absent}"
    modules = {str(p.relative_to(REPO)) for package in ("orchestrator", "models", "data")
               for p in (REPO / package).rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    modules |= {str(p.relative_to(REPO)) for p in (REPO / "scripts").iterdir() if p.is_file()}
    assert not sorted(modules - layout), f"the README's layout lacks {sorted(modules - layout)}"
    # bench/: the layout names its commands; bench/__init__.py lists the rest
    listed = (REPO / "bench" / "__init__.py").read_text()
    unlisted = [p.name for p in (REPO / "bench").glob("*.py") if p.name not in ("__init__.py", "__main__.py")
                and f"bench/{p.name}" not in layout and p.stem not in listed]
    assert not unlisted, f"bench modules named neither in the README's layout nor in bench/__init__.py: {unlisted}"


# --- the examples -------------------------------------------------------------------------------------
def _block_with(language: str, marker: str) -> str:
    found = [b for b in _blocks(README.read_text(), language) if marker in b]
    assert len(found) == 1, f"README: expected one {language} block with {marker!r}, found {len(found)}"
    return found[0]


def test_the_spec_example_is_a_spec_within_the_budget(tmp_path):
    import models
    path = tmp_path / "my-net.toml"
    path.write_text(_block_with("toml", "blocks = ["))
    assert models.param_count(models.load_spec(path)) <= models.MAX_PARAMS


def test_the_sweep_config_example_is_a_valid_config_file(tmp_path):
    from orchestrator.sweep.config import load_config_file
    path = tmp_path / "sweep.toml"
    path.write_text(_block_with("toml", "seed-list"))
    assert load_config_file(str(path)), tomllib.loads(path.read_text())


def _substituted(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, f"the README's example no longer holds {old!r}: update this test with it"
        code = code.replace(old, new)
    return code


def test_the_png_example_classifies_a_png_with_a_published_weight_file(tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image

    import data
    import models
    torch.manual_seed(0)
    weights, png = tmp_path / "v6-seed0.pt", tmp_path / "cat.png"
    torch.save(models.create_model("v6").state_dict(), weights)  # a published file's format: a plain state dict
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # any size: the example resizes
    Image.fromarray(pixels).save(png)
    code = _substituted(_block_with("python", "models.classifier("),
                        {"results/paper-grid/v6-seed0.pt": str(weights), '"cat.png"': repr(str(png))})
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() in data.CLASSES


def test_the_mlflow_example_predicts_uint8_images_with_a_logged_model(tmp_path, monkeypatch, capsys):
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    import data
    import models
    from orchestrator.sweep.seed_run import log_model
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("readme", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment_id).info.run_id
    log_model(run_id, experiment_id, models.create_model("base").eval())
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (120, 3, 32, 32), dtype=torch.uint8, generator=generator)
    monkeypatch.setattr(data, "load_cifar10", lambda root, split: (images, torch.zeros(120, dtype=torch.int64)))
    code = _substituted(_block_with("python", "mlflow_model"),
                        {"sqlite:///mlflow/mlflow.db": uri, "<run_id>": run_id})
    exec(compile(code, "README.md", "exec"), {})
    printed = ast.literal_eval(capsys.readouterr().out.strip())  # the predicted class names of five images
    assert len(printed) == 5 and set(printed) <= set(data.CLASSES), printed
