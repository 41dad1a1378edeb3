"""Two typed configurations with the paper's defaults.

`TrainConfig` holds exactly what one trial's training reads (orchestrator.train): the protocol, the data, the
speed options and the latency settings. `SweepConfig` holds a TrainConfig plus what to run (variants, seeds),
where (Ray), where to log (MLflow), the report and the records. Every field of both is one CLI flag
(`--field-name`) and one key of an optional TOML file (`--config`; flags given on the command line win).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field

from data import MODES as AUGMENT_MODES
from models import list_models
from orchestrator.cli import ArgumentParser
from orchestrator.names import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI

ALL_VARIANTS = tuple(list_models())
SECTIONS = ("what to run", "protocol", "data", "speed", "measurement", "cluster", "tracking", "report")
EXPORT_FORMATS = ("onnx", "none")
DEVICES = ("auto", "cpu", "cuda")
QUICK = {"epochs": 2, "subset_per_class": 500, "compile": False}  # what --quick means (2 epochs don't repay a compile)


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the problem and the fix."""


def _opt(default, section: str, help: str, choices=None):
    return field(default=default, metadata={"help": help, "section": section, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    # --- the paper's protocol --------------------------------------------------------------------
    epochs: int = _opt(10, "protocol", "training epochs")
    batch_size: int = _opt(4, "protocol", "training mini-batch size")
    lr: float = _opt(5e-4, "protocol", "Adam learning rate")
    beta1: float = _opt(0.9, "protocol", "Adam beta1")
    beta2: float = _opt(0.999, "protocol", "Adam beta2")
    eps: float = _opt(1e-8, "protocol", "Adam epsilon")
    weight_decay: float = _opt(1e-4, "protocol", "Adam weight decay (L2)")
    lr_factor: float = _opt(0.1, "protocol", "ReduceLROnPlateau factor (stepped on validation accuracy, mode max)")
    lr_patience: int = _opt(4, "protocol", "ReduceLROnPlateau patience in epochs")
    lr_threshold: float = _opt(1e-4, "protocol", "ReduceLROnPlateau threshold")
    # --- data ------------------------------------------------------------------------------------
    data_dir: str = _opt("", "data", "CIFAR-10 directory (binary or python layout, or the official .tar.gz); "
                                     "default $CIFAR10_DIR, else ~/.cache/resnet-revisited/cifar10")
    augment: str = _opt("focused", "data", choices=AUGMENT_MODES, help=(
        "augmentation mode: focused (paper: originals + one augmented copy of each focus-class image), none, "
        "all, or inplace (WARNING: augmenting focus classes in place makes augmentation a label cue; Base ends "
        "near 61%% instead of ~73%%)"))
    focus_classes: str = _opt("bird,cat,deer,dog", "data", "classes that get extra augmentation, names or indices "
                                                          "(the author's notebooks used 1,2,3,4)")
    subset_per_class: int = _opt(0, "data", "train on a stratified subset of N images per class (0 = all 5,000)")
    # --- speed (same maths, faster kernels) ------------------------------------------------------
    channels_last: bool = _opt(True, "speed", "train in channels_last memory format (faster convolutions on CPU)")
    fused_adam: bool = _opt(True, "speed", "use torch's fused Adam kernel instead of the for-loop one")
    compile: bool = _opt(True, "speed", "compile the whole training step (forward, loss, backward, Adam) into one "
                                        "torch.compile function; 10-60 s of compiling per variant, then cached on the node; "
                                        "--quick turns it off")
    flush_denormal: bool = _opt(True, "speed", "flush subnormal floats to zero on CPU (late-epoch V6 steps run 2x "
                                               "faster, inference 4x; the values flushed are below 1.2e-38)")
    cuda_graph: bool = _opt(True, "speed", "on CUDA, capture the whole training step (forward, loss, backward, Adam) "
                                           "once as a CUDA graph and replay it every step (orchestrator.cuda_graph); "
                                           "it takes the place of --compile there; no effect on CPU")
    # --- where a trial trains (shown with the cluster flags: it goes with --gpus-per-trial) --------------------
    device: str = _opt("auto", "cluster", choices=DEVICES, help=(
        "where each trial trains: auto = on CUDA when Ray gave the trial a GPU (--gpus-per-trial > 0), else on CPU; "
        "cuda = always on CUDA (needs --gpus-per-trial; refused when torch sees no CUDA device); cpu = always on CPU"))
    # --- measurement -----------------------------------------------------------------------------
    latency_batch1_calls: int = _opt(200, "measurement", "single-image calls timed for latency_ms_batch1 (median)")
    export: str = _opt("onnx", "measurement", choices=EXPORT_FORMATS, help=(
        "after training, export the model to ONNX (fp32, and int8 by ONNX Runtime's static quantization) and "
        "measure their bytes, validation accuracy and ONNX Runtime latency; none skips it"))
    export_calibration_images: int = _opt(256, "measurement", "training images, drawn with the trial's seed, that "
                                                              "calibrate the int8 quantization")

    def problems(self) -> list[str]:
        """What is wrong with these values, one line each (empty when nothing is)."""
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1 (got {self.epochs})"),
            (self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})"),
            (self.lr > 0 and math.isfinite(self.lr), f"--lr must be a finite number > 0 (got {self.lr})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "--beta1/--beta2 must be in [0, 1)"),
            (0 < self.lr_factor < 1, f"--lr-factor must be in (0, 1) (got {self.lr_factor})"),
            (self.lr_patience >= 0, f"--lr-patience must be >= 0 (got {self.lr_patience})"),
            (self.augment in AUGMENT_MODES,
             f"--augment must be one of {', '.join(AUGMENT_MODES)} (got {self.augment!r})"),
            (self.subset_per_class >= 0, f"--subset-per-class must be >= 0 (got {self.subset_per_class})"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)} (got {self.device!r})"),
            (self.latency_batch1_calls >= 1, "--latency-batch1-calls must be >= 1"),
            (self.export_calibration_images >= 1,
             f"--export-calibration-images must be >= 1 (got {self.export_calibration_images})"),
        ]
        return [message for ok, message in checks if not ok]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SweepConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    # --- what to run -----------------------------------------------------------------------------
    variants: tuple[str, ...] = _opt(ALL_VARIANTS, "what to run",
                                     "comma-separated model variants: " + ",".join(ALL_VARIANTS))
    seeds: int = _opt(5, "what to run", "number of seeds per variant: runs seeds 0..N-1")
    seed_list: tuple[int, ...] = _opt((), "what to run", "explicit comma-separated seeds (e.g. 3,7); overrides --seeds")
    quick: bool = _opt(False, "what to run", "first look in minutes: 2 epochs on a stratified 500-per-class subset")
    download: bool = _opt(False, "data", "download CIFAR-10 (official MD5 checked) into the data directory if missing")
    # --- Ray -------------------------------------------------------------------------------------
    address: str = _opt("", "cluster", "address of an existing Ray cluster (host:port or 'auto'); default: a local Ray")
    cpus_per_trial: int = _opt(1, "cluster", "CPUs per trial (= torch threads)")
    gpus_per_trial: float = _opt(0.0, "cluster", "GPUs per trial (fractions allowed)")
    max_failures: int = _opt(2, "cluster", "restarts of a crashed trial from its last checkpoint")
    storage_path: str = _opt("ray_results", "cluster", "Ray Tune storage (local path, NFS path or s3:// / gs:// "
                                                       "URI); must be shared by all nodes of a multi-node cluster")
    resume: bool = _opt(False, "cluster", "continue the latest (or --sweep-id) interrupted sweep without rerunning "
                                          "finished trials")
    sweep_id: str = _opt("", "cluster", "sweep id to resume (default: the latest unfinished sweep of the experiment)")
    # --- MLflow ----------------------------------------------------------------------------------
    tracking_uri: str = _opt(DEFAULT_TRACKING_URI, "tracking", "MLflow tracking URI (sqlite:///path or http://host:port)")
    experiment_name: str = _opt(DEFAULT_EXPERIMENT, "tracking", "MLflow experiment name")
    # --- report and published records ------------------------------------------------------------
    report: bool = _opt(True, "report", "write the report (tables, figures) when the sweep ends")
    results_dir: str = _opt("", "report", "write one JSON record per finished trial here (<variant>-seed<k>.json); "
                                          "records of another protocol in it are refused")
    fuse_seeds: bool = _opt(False, "speed", "train the seeds of a variant as one stacked network in one Ray trial "
                                            "(orchestrator.fused): the same numbers up to float rounding, one MLflow "
                                            "run per seed, fewer and faster steps")
    skip_existing: bool = _opt(False, "report", "with --results-dir: train only the (variant, seed) pairs that have "
                                                "no record of this protocol yet")

    def seed_values(self) -> tuple[int, ...]:
        return self.seed_list or tuple(range(self.seeds))

    def validate(self) -> "SweepConfig":
        bad = [v for v in self.variants if v not in ALL_VARIANTS]
        if bad or not self.variants:
            raise ConfigError(f"unknown variant {','.join(bad) or '(none)'}: choose from {','.join(ALL_VARIANTS)}")
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
            (bool(self.experiment_name.strip()), "--experiment-name must not be empty"),
            (bool(self.storage_path.strip()), "--storage-path must not be empty"),
            (bool(self.results_dir) or not self.skip_existing,
             "--skip-existing needs --results-dir: pass the folder whose records to skip"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    # One flat namespace of field names, as the flags and config files spell them.
    def to_flags(self) -> dict:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "train"}, **self.train.to_dict()}

    @classmethod
    def from_flags(cls, values: dict) -> "SweepConfig":
        """A SweepConfig from flat field values (lists become tuples); unknown names are ignored."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        train = {k: v for k, v in values.items() if k in TRAIN_FIELDS}
        return cls(train=TrainConfig(**train), **{k: v for k, v in values.items() if k in SWEEP_FIELDS})

    def replace(self, **values) -> "SweepConfig":
        """A copy with some fields (of either config, by flag name) changed."""
        return SweepConfig.from_flags({**self.to_flags(), **values})


TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
SWEEP_FIELDS = {f.name: f for f in dataclasses.fields(SweepConfig) if f.name != "train"}
_HINTS = {**typing.get_type_hints(TrainConfig), **typing.get_type_hints(SweepConfig)}


# --- CLI: one flag per field ---------------------------------------------------------------------
def _parse_tuple(item_type):
    def parse(text: str):
        try:
            return tuple(item_type(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {item_type.__name__}, got {text!r}")
    return parse


def _typed(kind):
    """argparse `type=` for int/float/str whose error names the type expected."""
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}")
    return parse


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default unless it is empty (an empty default means 'none', which the help text says)."""

    def _get_help_string(self, action):
        default = action.default
        if action.help and "%(default)" not in action.help and default not in ("", None, (), False, argparse.SUPPRESS):
            return action.help + " (default: %(default)s)"
        return action.help


EPILOG = """examples:
  python -m orchestrator.run --quick --variants base,v6 --seeds 2        # a first look in minutes
  python -m orchestrator.run --seeds 5 --results-dir results/paper-grid --skip-existing   # the paper's grid
  python -m orchestrator.run --address auto --tracking-uri http://10.0.0.1:5000 --storage-path s3://bucket/rr
"""


def _add_field(group, f: dataclasses.Field) -> None:
    flag, hint = "--" + f.name.replace("_", "-"), _HINTS[f.name]
    kw = {"default": f.default, "help": f.metadata["help"]}
    if hint is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif typing.get_origin(hint) is tuple:
        # A string default goes through `type` too, and shows in --help as the user would type it.
        group.add_argument(flag, type=_parse_tuple(typing.get_args(hint)[0]), metavar="A,B,...",
                           **{**kw, "default": ",".join(map(str, f.default))})
    else:
        group.add_argument(flag, type=_typed(hint), choices=f.metadata.get("choices"), **kw)


def build_parser(prog: str = "python -m orchestrator.run", description: str = "") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter, epilog=EPILOG)
    parser.add_argument("--config", default="", metavar="FILE.toml",
                        help="read field values from a TOML file (keys are these flags without the leading --: "
                             "epochs = 2, variants = [\"base\", \"v6\"]); flags given here override it")
    fields = [*SWEEP_FIELDS.values(), *TRAIN_FIELDS.values()]
    for section in SECTIONS:
        group = parser.add_argument_group(section)
        for f in (f for f in fields if f.metadata["section"] == section):
            _add_field(group, f)
    return parser


def _from_toml(path: str, key: str, value, hint):
    """A TOML value as the field's type: the same values the flag takes (lists may also be comma strings)."""
    def wrong(kind: str):
        return ConfigError(f"config file {path}: {key} must be {kind} (got {value!r}): fix that line, e.g. "
                           f"{key} = {_toml_example(hint)}")
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, str):
            try:
                return _parse_tuple(item)(value)
            except argparse.ArgumentTypeError:
                raise wrong(f"a list of {item.__name__}") from None
        if isinstance(value, list) and all(isinstance(x, item) and not isinstance(x, bool) for x in value):
            return tuple(value)
        raise wrong(f"a list of {item.__name__}")
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise wrong({bool: "true or false", int: "an integer", float: "a number", str: "a quoted string"}[hint])
    return value


def _toml_example(hint) -> str:
    return {bool: "true", int: "2", float: "0.0005", str: '"..."'}.get(hint, '["base", "v6"]')


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
        values[name] = _from_toml(path, key, value, _HINTS[name])
    return values


def with_quick(values: dict) -> dict:
    """--quick is shorthand for 2 epochs on a 500-per-class subset, uncompiled (a subset given explicitly is kept)."""
    if not values.get("quick"):
        return values
    return {**values, **QUICK, "subset_per_class": values.get("subset_per_class") or QUICK["subset_per_class"]}


def parse_config(argv=None, **parser_kw) -> SweepConfig:
    """The command line (and its --config file) as a validated SweepConfig, with --quick applied once, here."""
    parser = build_parser(**parser_kw)
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**load_config_file(args.config))  # file values become defaults: flags given still win
        args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "config"}
    return SweepConfig.from_flags(with_quick(values)).validate()
