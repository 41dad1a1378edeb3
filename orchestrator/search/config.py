"""`SearchConfig`: what `python -m orchestrator.search` runs (the space's budget, the proxy, the search, where to
run and log), one CLI flag per field; `validate` refuses bad input in one line before anything starts."""
from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import dataclass

from models import MAX_PARAMS, PAPER_VARIANTS, list_models
from orchestrator.cli import ArgumentParser, HelpFormatter, Verbatim
from orchestrator.names import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, NAME_PATTERN
from orchestrator.search.space import FLOOR_MACS, FLOOR_PARAMS, FLOOR_SIZE_MB
from orchestrator.training.config import ConfigError, option

# What each objective ranks by, and in which direction: accuracy first, always; a second one makes a Pareto front.
OBJECTIVES = {"accuracy": ("heldout_accuracy", "max"), "latency": ("latency_ms_batch1", "min"),
              "macs": ("macs_per_image", "min")}
OBJECTIVE_CHOICES = ("accuracy", "accuracy,latency", "accuracy,macs")
SECTIONS = ("search", "proxy", "proxy check", "cluster", "tracking", "output")


@dataclass(frozen=True)
class SearchConfig:
    # --- the search --------------------------------------------------------------------------------------
    name: str = option("", "search", "the search's name: its MLflow parent run, Tune folder and output folder "
                                     "(default: search-<date>-<time>; with --resume: the latest unfinished search)")
    candidates: int = option(60, "search", "candidates to sample and train (Ray Tune's num_samples)")
    objective: str = option("accuracy", "search", "accuracy (held-out, maximized), or accuracy,latency or "
                                                  "accuracy,macs: a second objective (batch-1 latency or MACs per "
                                                  "image, minimized) makes the result a Pareto front")
    max_params: int = option(MAX_PARAMS, "search", "parameter budget of every candidate (the paper's: Base's "
                                                   "136,380 + 2%%); widths are scaled to fill it")
    max_size_mb: float = option(0.0, "search", "optional cap on the state dict's size in MB (0: none). 0.53218 is "
                                               "Table 2's rule, Base's 0.52175 + 2%% rounded down, which --max-params "
                                               "alone does not hold: BatchNorm's running statistics add size, not "
                                               "parameters")
    max_macs: int = option(0, "search", "optional cap on MACs per image (0: none); a candidate over it pools "
                                        "earlier, then narrows. Bounds the proxy's cost per candidate")
    seed: int = option(0, "search", "seed of the Optuna TPE sampler and of every candidate's training")
    startup_candidates: int = option(10, "search", "candidates sampled at random before TPE models the results")
    top_k: int = option(3, "search", "best distinct candidates written as spec files (a Pareto front: all of it)")
    # --- the proxy protocol --------------------------------------------------------------------------------
    proxy_epochs: int = option(4, "proxy", "epochs each candidate trains (ASHA may stop it earlier)")
    proxy_per_class: int = option(2000, "proxy", "training images per class (stratified, from the training set "
                                                 "less the held-out slice; 0: all of it)")
    holdout_per_class: int = option(1000, "proxy", "held-out training images per class that rank the candidates "
                                                   "(fixed seed; the test set is never read)")
    proxy_batch_size: int = option(4, "proxy", "mini-batch size (the paper's: 4)")
    grace_epochs: int = option(2, "proxy", "ASHA: epochs every candidate gets before it can be stopped")
    reduction_factor: int = option(2, "proxy", "ASHA: keep the best 1/N of candidates at each rung")
    latency_calls: int = option(30, "proxy", "single-image calls timed for each candidate's batch-1 latency")
    # --- the proxy check ---------------------------------------------------------------------------------
    proxy_check: bool = option(False, "proxy check", "instead of a search: train the proxy on the paper's variants "
                                                     "and report its Spearman correlation with --results")
    results: str = option("results/paper-grid", "proxy check", "records of the full protocol (orchestrator.run "
                                                               "--results-dir) that the proxy check compares with")
    variants: tuple[str, ...] = option(PAPER_VARIANTS, "proxy check", "variants the proxy check trains")
    # --- where it runs -------------------------------------------------------------------------------------
    address: str = option("", "cluster", "address of an existing Ray cluster (host:port or 'auto'); default: a "
                                         "local Ray")
    cpus_per_trial: int = option(1, "cluster", "CPUs per candidate (= torch threads)")
    gpus_per_trial: float = option(0.0, "cluster", "GPUs per candidate (fractions allowed); 0: train on CPU")
    concurrent: int = option(0, "cluster", "candidates training at once (0: as many as the CPUs allow)")
    max_failures: int = option(1, "cluster", "restarts of a crashed candidate (from its first epoch)")
    storage_path: str = option("ray_results", "cluster", "Ray Tune storage; the search's state lives in "
                                                         "<storage>/search-<name>")
    resume: bool = option(False, "cluster", "continue --name (or the latest unfinished search) without re-running "
                                            "finished candidates")
    # --- MLflow --------------------------------------------------------------------------------------------
    tracking_uri: str = option(DEFAULT_TRACKING_URI, "tracking", "MLflow tracking URI (sqlite:///path or "
                                                                 "http://host:port)")
    experiment_name: str = option(DEFAULT_EXPERIMENT, "tracking", "MLflow experiment name")
    # --- data and output -----------------------------------------------------------------------------------
    data_dir: str = option("", "output", "CIFAR-10 directory (default $CIFAR10_DIR); only its training split is read")
    out_dir: str = option("searches", "output", "results table, spec files and re-validation commands go to "
                                                "<out-dir>/<name>/")
    revalidate_seeds: int = option(3, "output", "seeds of the printed re-validation sweep (the full protocol)")
    revalidate: bool = option(False, "output", "after the search, run the re-validation sweep of the top specs")

    def objectives(self) -> list[tuple[str, str]]:
        """(metric, mode) of each objective, accuracy first."""
        return [OBJECTIVES[o] for o in self.objective.split(",")]

    def replace(self, **values) -> "SearchConfig":
        return dataclasses.replace(self, **values)

    def to_flags(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_flags(cls, values: dict) -> "SearchConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})

    def validate(self) -> "SearchConfig":
        """Self; ConfigError with one line naming the flag and the fix at the first bad value."""
        checks = [
            (not self.name or NAME_PATTERN.fullmatch(self.name) is not None,
             f"--name {self.name!r}: use letters, digits, '.', '_' or '-' (at most 64), starting with a letter "
             f"or digit"),
            (self.candidates >= 1, f"--candidates must be >= 1 (got {self.candidates})"),
            (self.objective in OBJECTIVE_CHOICES,
             f"--objective {self.objective!r}: use {', '.join(OBJECTIVE_CHOICES[:-1])} or {OBJECTIVE_CHOICES[-1]}"),
            (self.max_params >= FLOOR_PARAMS,
             f"--max-params {self.max_params:,} is below the {FLOOR_PARAMS:,} parameters of the smallest candidate "
             f"(two 1-channel ResBlocks and a GAP head): give at least {FLOOR_PARAMS:,} (the paper's budget is "
             f"{MAX_PARAMS:,})"),
            (self.max_size_mb == 0 or self.max_size_mb >= FLOOR_SIZE_MB,
             f"--max-size-mb {self.max_size_mb} is below the {FLOOR_SIZE_MB:.4f} MB of the smallest candidate: "
             f"give at least that, or 0 for no cap (Table 2's rule, Base + 2%, is 0.53218)"),
            (self.max_macs == 0 or self.max_macs >= FLOOR_MACS,
             f"--max-macs {self.max_macs:,} is below the {FLOOR_MACS:,} MACs of the smallest candidate: "
             f"give at least that, or 0 for no cap"),
            (self.startup_candidates >= 1, f"--startup-candidates must be >= 1 (got {self.startup_candidates})"),
            (self.top_k >= 1, f"--top-k must be >= 1 (got {self.top_k})"),
            (self.proxy_epochs >= 1, f"--proxy-epochs must be >= 1 (got {self.proxy_epochs})"),
            (self.proxy_per_class >= 0, f"--proxy-per-class must be >= 0, 0 for all (got {self.proxy_per_class})"),
            (self.holdout_per_class >= 1, f"--holdout-per-class must be >= 1 (got {self.holdout_per_class})"),
            (self.proxy_batch_size >= 2, f"--proxy-batch-size must be >= 2: an FC head's BatchNorm1d cannot "
                                         f"train on one image (got {self.proxy_batch_size})"),
            (1 <= self.grace_epochs <= self.proxy_epochs,
             f"--grace-epochs must be 1..--proxy-epochs ({self.proxy_epochs}) (got {self.grace_epochs})"),
            (self.reduction_factor >= 2, f"--reduction-factor must be >= 2 (got {self.reduction_factor})"),
            (self.latency_calls >= 1, f"--latency-calls must be >= 1 (got {self.latency_calls})"),
            (all(v in list_models() for v in self.variants) and bool(self.variants),
             f"--variants {','.join(self.variants) or '(none)'}: choose from {','.join(list_models())}"),
            (self.cpus_per_trial >= 1, f"--cpus-per-trial must be >= 1 (got {self.cpus_per_trial})"),
            (self.gpus_per_trial >= 0, f"--gpus-per-trial must be >= 0 (got {self.gpus_per_trial})"),
            (self.concurrent >= 0, f"--concurrent must be >= 0, 0 for as many as fit (got {self.concurrent})"),
            (self.max_failures >= 0, f"--max-failures must be >= 0 (got {self.max_failures})"),
            (self.revalidate_seeds >= 1, f"--revalidate-seeds must be >= 1 (got {self.revalidate_seeds})"),
            (bool(self.experiment_name.strip()), "--experiment-name must not be empty"),
            (bool(self.storage_path.strip()), "--storage-path must not be empty"),
            (bool(self.out_dir.strip()), "--out-dir must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


_HINTS = typing.get_type_hints(SearchConfig)


def _typed(kind):
    def parse(text: str):
        try:
            return int(float(text)) if kind is int and re.fullmatch(r"\d+(\.0*)?[eE]\d+", text) else kind(text)
        except ValueError:  # argparse turns this into its one-line error
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
    return parse


EPILOG = Verbatim("""examples:
  python -m orchestrator.search --name first --candidates 60          # the search, the paper's budget
  python -m orchestrator.search --resume --name first                 # continue it after an interruption
  python -m orchestrator.search --objective accuracy,macs --candidates 100
  python -m orchestrator.search --proxy-check --results results/paper-grid   # is the proxy trustworthy?
""")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m orchestrator.search", epilog=EPILOG,
                            description="Architecture search under the paper's storage budget: Ray Tune + Optuna "
                                        "TPE + ASHA over a proxy protocol, every candidate an MLflow run.",
                            formatter_class=HelpFormatter)
    groups = {section: parser.add_argument_group(section) for section in SECTIONS}
    for f in dataclasses.fields(SearchConfig):
        flag, hint = "--" + f.name.replace("_", "-"), _HINTS[f.name]
        kw = {"default": f.default, "help": f.metadata["help"]}
        if hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is tuple:  # a string default goes through `type` too, and shows as typed
            kw.update(type=lambda text: tuple(v.strip() for v in text.split(",") if v.strip()), metavar="A,B,...",
                      default=",".join(f.default))
        else:
            kw.update(type=_typed(hint), choices=f.metadata["choices"])
        groups[f.metadata["section"]].add_argument(flag, **kw)
    return parser


def parse_config(argv=None) -> SearchConfig:
    """The command line as a validated SearchConfig (ConfigError: one line)."""
    return SearchConfig(**vars(build_parser().parse_args(argv))).validate()
