"""`SweepConfig`: a TrainConfig plus what to run (variants, seeds), where (Ray), where to log (MLflow), the report
and the records, with the paper's defaults. Every field of both is one CLI flag (`--field-name`) and one key of an
optional TOML file (`--config`; flags given on the command line win).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import models
from orchestrator.cli import ArgumentParser, HelpFormatter, Verbatim
from orchestrator.names import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, NAME_PATTERN
from orchestrator.training.config import ConfigError, TrainConfig, option

PAPER_VARIANTS = models.PAPER_VARIANTS  # the default: the paper's grid, not every spec file registered beside it
SECTIONS = ("what to run", "resume", "protocol", "data", "speed", "device", "measurement", "cluster", "tracking",
            "report")
# A field's help section where the CLI shows it elsewhere than its TrainConfig declares (that file is training's).
SECTION_OF = {"device": "device"}
# What --quick means, for each of these flags that is not given explicitly (2 epochs don't repay a compile).
QUICK = {"variants": ("base", "v6"), "seeds": 2, "epochs": 2, "subset_per_class": 500, "compile": False}
FUSE_CHOICES = ("auto", "on", "off")
__all__ = ["ConfigError", "SweepConfig", "TrainConfig", "parse_config", "build_parser"]


@dataclass(frozen=True)
class SweepConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    # --- what to run -----------------------------------------------------------------------------
    variants: tuple[str, ...] = option(PAPER_VARIANTS, "what to run",
                                     "comma-separated model variants (default: the paper's eight); any of "
                                     + ",".join(models.list_models()))
    seeds: int = option(5, "what to run", "number of seeds per variant: runs seeds 0..N-1")
    seed_list: tuple[int, ...] = option((), "what to run", "explicit comma-separated seeds (e.g. 3,7); overrides --seeds")
    spec: tuple[str, ...] = option((), "what to run", "architecture spec files (.toml or .json, see the README's "
                                                     "Models), comma-separated: each trains like a variant, named "
                                                     "after its file (my-net.toml: my-net); --variants then "
                                                     "defaults to none")
    quick: bool = option(False, "what to run", "first look in minutes: variants base,v6, 2 seeds, 2 epochs on a "
                                              "stratified 500-per-class subset, uncompiled; any of these flags given "
                                              "explicitly (or in --config) wins")
    download: bool = option(False, "data", "download CIFAR-10 (official MD5 checked) into the data directory if missing")
    # --- Ray -------------------------------------------------------------------------------------
    address: str = option("", "cluster", "address of an existing Ray cluster (host:port or 'auto'); default: a local Ray")
    cpus_per_trial: int = option(1, "cluster", "CPUs per trial (= torch threads)")
    gpus_per_trial: float = option(0.0, "cluster", "GPUs per trial (fractions allowed)")
    max_failures: int = option(2, "cluster", "restarts of a crashed trial from its last checkpoint")
    storage_path: str = option("ray_results", "cluster", "Ray Tune storage (local path, NFS path or s3:// / gs:// "
                                                       "URI); must be shared by all nodes of a multi-node cluster")
    resume: bool = option(False, "resume", "continue the latest (or --sweep-id) interrupted sweep without rerunning "
                                         "finished trials; what to run comes from the stored sweep")
    sweep_id: str = option("", "resume", "sweep id to resume, or Ray's folder name for it, sweep-<id> (default: the "
                                         "latest unfinished sweep of the experiment)")
    # --- MLflow ----------------------------------------------------------------------------------
    tracking_uri: str = option(DEFAULT_TRACKING_URI, "tracking", "MLflow tracking URI (sqlite:///path or http://host:port)")
    experiment_name: str = option(DEFAULT_EXPERIMENT, "tracking", "MLflow experiment name")
    # --- report and published records ------------------------------------------------------------
    report: bool = option(True, "report", "write the report (tables, figures) when the sweep ends")
    results_dir: str = option("", "report", "write one JSON record per finished trial here (<variant>-seed<k>.json); "
                                          "records of another protocol in it are refused")
    fuse_seeds: str = option("auto", "speed", choices=FUSE_CHOICES, help=(
        "train the seeds of a variant as one stacked network in one Ray trial (orchestrator.training.fused): the "
        "same numbers up to float rounding, one MLflow run per seed, fewer and faster steps. auto = fuse when the "
        "sweep has more (variant, seed) pairs than the cluster has trial slots; on/off force it (a bare "
        "--fuse-seeds is on, --no-fuse-seeds off)"))
    skip_existing: bool = option(False, "report", "with --results-dir: train only the (variant, seed) pairs that have "
                                                "no record of this protocol yet, each from its checkpoint there if any")

    def seed_values(self) -> tuple[int, ...]:
        return self.seed_list or tuple(range(self.seeds))

    def specs(self) -> dict[str, models.NetSpec]:
        """The --spec files' architectures by name (the file's stem). A bad file, a bad field in it or a name taken
        by another architecture is one ConfigError line."""
        specs = {}
        for path in self.spec:
            try:
                spec = models.load_spec(path)
            except models.SpecError as e:
                raise ConfigError(f"--spec {e}") from None
            name = Path(path).stem
            taken = name in specs or (name in models.list_models() and models.registered_spec(name) != spec)
            if taken or "-seed" in name or not name:
                raise ConfigError(f"--spec {path}: the name {name!r} is taken by another architecture (or holds "
                                  f"'-seed'): rename the file")
            if not NAME_PATTERN.fullmatch(name):
                raise ConfigError(f"--spec {path}: the name {name!r} is not letters, digits, '.', '_' or '-' (at "
                                  f"most 64, starting with a letter or digit): rename the file")
            specs[name] = spec
        return specs

    def validate(self) -> "SweepConfig":
        known = (*models.list_models(), *self.specs())
        bad = [v for v in self.variants if v not in known]
        if bad or not self.variants:
            raise ConfigError(f"unknown variant {','.join(bad) or '(none)'}: choose from "
                              f"{','.join(models.list_models())}, or pass an architecture with --spec FILE.toml")
        checks = [
            (self.seeds >= 1, f"--seeds must be >= 1 (got {self.seeds})"),
            (all(s >= 0 for s in self.seed_list), f"--seed-list takes non-negative integers (got {self.seed_list})"),
            (len(set(self.seed_list)) == len(self.seed_list), f"--seed-list has repeated seeds: {self.seed_list}"),
            *((False, message) for message in self.train.problems()),
            (self.cpus_per_trial >= 1, f"--cpus-per-trial must be >= 1 (got {self.cpus_per_trial})"),
            (self.gpus_per_trial >= 0, f"--gpus-per-trial must be >= 0 (got {self.gpus_per_trial})"),
            (self.train.device != "cuda" or self.gpus_per_trial > 0,
             "--device cuda needs a GPU for every trial: pass --gpus-per-trial, e.g. 0.125 (8 trials share a GPU)"),
            (self.max_failures >= 0, f"--max-failures must be >= 0 (got {self.max_failures})"),
            (self.fuse_seeds in FUSE_CHOICES,
             f"--fuse-seeds must be one of {', '.join(FUSE_CHOICES)} (got {self.fuse_seeds!r})"),
            (bool(self.experiment_name.strip()), "--experiment-name must not be empty"),
            (bool(self.storage_path.strip()), "--storage-path must not be empty"),
            (bool(self.results_dir) or not self.skip_existing,
             "--skip-existing needs --results-dir: pass the folder whose records to skip"),
        ]
        if problem := next((message for ok, message in checks if not ok), None):
            raise ConfigError(problem)
        return self

    # One flat namespace of field names, as the flags and config files spell them.
    def to_flags(self) -> dict:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "train"}, **self.train.to_dict()}

    @classmethod
    def from_flags(cls, values: dict) -> "SweepConfig":
        """A SweepConfig from flat field values (lists become tuples); unknown names are ignored."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if isinstance(values.get("fuse_seeds"), bool):  # the boolean flag of sweeps stored before auto existed
            values["fuse_seeds"] = "on" if values["fuse_seeds"] else "off"
        train = {k: v for k, v in values.items() if k in TRAIN_FIELDS}
        return cls(train=TrainConfig(**train), **{k: v for k, v in values.items() if k in SWEEP_FIELDS})

    def replace(self, **values) -> "SweepConfig":
        """A copy with some fields (of either config, by flag name) changed."""
        return SweepConfig.from_flags({**self.to_flags(), **values})


TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
SWEEP_FIELDS = {f.name: f for f in dataclasses.fields(SweepConfig) if f.name != "train"}
_HINTS = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(SweepConfig)}


# --- CLI: one flag per field ---------------------------------------------------------------------
def _typed(kind, many: bool = False):
    """argparse `type=` for int/float/str (with `many`: a comma-separated tuple of them) naming the type expected."""
    def parse(text: str):
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip()) if many else kind(text)
        except ValueError:
            expected = f"a comma-separated list of {kind.__name__}" if many else kind.__name__
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return parse


EPILOG = Verbatim("""examples:
  python -m orchestrator.run --quick                  # a first look in minutes: base and v6, 2 seeds, 2 epochs
  python -m orchestrator.run --quick --epochs 3 --variants base,v1,v6   # the same, with these flags instead
  python -m orchestrator.run --seeds 5 --results-dir results/paper-grid --skip-existing   # the paper's grid
  python -m orchestrator.run --resume                 # continue the latest interrupted sweep
  python -m orchestrator.run --address auto --tracking-uri http://10.0.0.1:5000 --storage-path s3://bucket/rr
""")


def _add_field(group, f: dataclasses.Field) -> None:
    flag, hint = "--" + f.name.replace("_", "-"), _HINTS[f.name]
    kw = {"default": f.default, "help": f.metadata["help"]}
    if hint is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif typing.get_origin(hint) is tuple:
        # A string default goes through `type` too, and shows in --help as the user would type it.
        group.add_argument(flag, type=_typed(typing.get_args(hint)[0], many=True), metavar="A,B,...",
                           **{**kw, "default": ",".join(map(str, f.default))})
    elif f.metadata.get("choices") == FUSE_CHOICES:
        # auto|on|off, and the on/off spelling of the boolean flag it replaced: --fuse-seeds, --no-fuse-seeds
        group.add_argument(flag, nargs="?", const="on", choices=FUSE_CHOICES, metavar="{auto,on,off}", **kw)
        group.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const="off",
                           default=argparse.SUPPRESS, help=f"same as {flag} off")  # --fuse-seeds' default holds
    else:
        group.add_argument(flag, type=_typed(hint), choices=f.metadata.get("choices"), **kw)


def build_parser(prog: str = "python -m orchestrator.run", description: str = "") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, epilog=EPILOG)
    parser.add_argument("--config", default="", metavar="FILE.toml",
                        help="read field values from a TOML file (keys are these flags without the leading --: "
                             "epochs = 2, variants = [\"base\", \"v6\"]); flags given here override it")
    fields = [*SWEEP_FIELDS.values(), *TRAIN_FIELDS.values()]
    for section in SECTIONS:
        group = parser.add_argument_group(section)
        for f in (f for f in fields if SECTION_OF.get(f.name, f.metadata["section"]) == section):
            _add_field(group, f)
    return parser


# What a TOML value of each field type must be, as a wrong one's error says it, with an example.
TOML_KINDS = {bool: ("true or false", "true"), int: ("an integer", "2"), float: ("a number", "0.0005"),
              str: ("a quoted string", '"..."')}


def _is_toml(value, kind) -> bool:
    """isinstance as a field of that type takes a TOML value: true is no number, and 2 is a float too."""
    return isinstance(value, (int, float) if kind is float else kind) and (kind is bool or not isinstance(value, bool))


def _from_toml(path: str, key: str, value, hint):
    """A TOML value as the field's type: the same values the flag takes (lists may also be comma strings)."""
    item = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None
    if item is None and _is_toml(value, hint):
        return float(value) if hint is float else value
    if item is not None and isinstance(value, list) and all(_is_toml(x, item) for x in value):
        return tuple(value)
    if item is not None and isinstance(value, str):
        with contextlib.suppress(argparse.ArgumentTypeError):
            return _typed(item, many=True)(value)
    kind, example = TOML_KINDS[hint] if item is None else (f"a list of {item.__name__}", '["base", "v6"]')
    raise ConfigError(f"config file {path}: {key} must be {kind} (got {value!r}): fix that line, e.g. "
                      f"{key} = {example}")


def load_config_file(path: str) -> dict:
    """Field values from a TOML file whose keys are the flags' names (`epochs = 2`, `seed-list = [3, 7]`)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: pass the path of a TOML file to --config") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror}): pass a readable TOML file") from None
    except ValueError as e:  # TOMLDecodeError, or bytes that are not UTF-8
        raise ConfigError(f"config file {path} is not valid TOML ({str(e).splitlines()[0]}): write one "
                          f"`key = value` per line, e.g. epochs = 2") from None
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in _HINTS or name == "train":
            raise ConfigError(f"config file {path}: unknown key {key!r}: keys are the flag names of "
                              f"`python -m orchestrator.run --help` without the leading -- (e.g. epochs, seed-list)")
        if name == "fuse_seeds" and isinstance(value, bool):  # as the boolean flag it replaced: on/off
            value = "on" if value else "off"
        values[name] = _from_toml(path, key, value, _HINTS[name])
    return values


def given_flags(argv, **parser_kw) -> set[str]:
    """The fields the command line sets explicitly (argparse's defaults can't tell `--epochs 10` from none)."""
    parser = build_parser(**parser_kw)
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # a flag not given then leaves no attribute at all
    return set(vars(parser.parse_args(argv))) - {"config"}


def parse_config(argv=None, **parser_kw) -> SweepConfig:
    """The command line (and its --config file) as a validated SweepConfig, with --quick applied once, here."""
    parser = build_parser(**parser_kw)
    args = parser.parse_args(argv)
    from_file = load_config_file(args.config) if args.config else {}
    if from_file:
        parser.set_defaults(**from_file)  # file values become defaults: flags given still win
        args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "config"}
    given = set(from_file) | given_flags(argv, **parser_kw)
    if values.get("quick"):  # QUICK's values for the flags not given explicitly: the command line and --config win
        values.update({k: v for k, v in QUICK.items() if k not in given})
    if values.get("spec"):  # spec files train as variants named after them: beside the --variants given, or alone
        variants = values["variants"] if "variants" in given else ()
        values["variants"] = tuple(dict.fromkeys((*variants, *(Path(path).stem for path in values["spec"]))))
    return SweepConfig.from_flags(values).validate()
