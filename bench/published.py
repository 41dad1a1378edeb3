"""Every published model timed on one machine, in one run, interleaved; or checked against its record.

    python -m bench.published --results results/paper-grid [--rounds 5] [--images 2000] [--out DIR]
    python -m bench.published --results results/paper-grid --check

Loads each record's weights (<variant>-seed<k>.pt beside its record, sha256 checked) and times every model
round-robin, one model later first each round: PyTorch (the paper's batch-4 ms per image, and a single image), then
ONNX Runtime fp32 and int8 as the trial's export made them. Each figure is the median over the rounds, so a load that
comes and goes touches every model alike. One thread, subnormals flushed, the node's latency lock held while timing.
Writes DIR/latency.csv and latency.md (orchestrator.analysis.latency_table), which the report uses in place of the
trials' own latencies.

--check evaluates each loaded model the way training did and compares it with the record's final validation
accuracy: equal on the CPU model (and torch) that trained it, within 0.05 points elsewhere.
"""
import datetime
import hashlib
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import pandas as pd
import torch

import data
import models
from orchestrator.analysis import latency_table
from orchestrator.cli import ArgumentParser
from bench.inputs import load
from bench.measure import interleaved
from bench.routes import TrainConfig, evaluate, export, latency, records, speed_in_effect

CPU = torch.device("cpu")
EVAL_BATCH = 500  # training's validation batch on CPU (train.eval_batch_size)
ELSEWHERE_TOLERANCE_PP = 0.05  # another CPU model rounds differently: a few of 10,000 predictions may flip


class PublishedError(ValueError):
    """A published folder that cannot be timed or checked; one line naming the fix."""


@dataclass
class Published:
    record: dict
    weights: Path
    model: torch.nn.Module
    memory_format: torch.memory_format  # the format training validated in

    @property
    def name(self) -> str:
        return f"{self.record['variant']}-seed{self.record['seed']}"


def eval_format(record: dict) -> torch.memory_format:
    """The memory format the trial validated in: channels_last when it trained so, except where the unfused
    trainer cannot (V2/Alpha on CPU; a fused trial validates each seed's own model the unfused way)."""
    cfg = TrainConfig(channels_last=bool(record.get("speed", {}).get("channels_last", True)))
    channels_last = speed_in_effect(cfg, record["variant"], CPU, flushing=True)["channels_last"]
    return torch.channels_last if channels_last else torch.contiguous_format


def load_published(results_dir: str | Path) -> list[Published]:
    """Every record of the folder that has weights, its model loaded (CPU, eval mode, the validation format)."""
    try:
        found = records.load_records(results_dir)
    except records.RecordError as e:
        raise PublishedError(str(e)) from None
    out = []
    for record in (r for r in found if r.get("weights")):
        path = Path(results_dir) / record["weights"]["file"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != record["weights"]["sha256"]:
            raise PublishedError(f"{path} is missing or is not the file its record names (sha256 differs): "
                                 f"restore it from git, or retrain that trial")
        if "spec" in record:  # an architecture of a spec file or a search: the record holds it
            models.register_spec(record["variant"], models.from_dict(record["spec"]))
        model = models.create_model(record["variant"])
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        fmt = eval_format(record)
        out.append(Published(record, path, model.to(memory_format=fmt).eval(), fmt))
    if not out:
        raise PublishedError(f"no record with weights in {results_dir}: train with "
                             f"python -m orchestrator.run --results-dir {results_dir}")
    return out


def load_data(data_dir: str | None, protocol: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(training images as the trials had them, validation images, validation labels): the training subset of
    the protocol, since the int8 calibration draws from the images the trial trained on."""
    d = load(data.resolve_data_dir(data_dir or None), protocol.get("subset_per_class") or 0)
    return d.train_images, d.val_images, d.val_labels


# ---------------------------------------------------------------------------------------------- --check
def reproduced_accuracy(p: Published, val_x: torch.Tensor, val_y: torch.Tensor) -> float:
    """Validation accuracy as training computed it (train.evaluate), on one thread, subnormals flushed as recorded."""
    latency.flush_denormal(bool(p.record.get("speed", {}).get("flush_denormal", True)))
    with latency.torch_threads(latency.LATENCY_THREADS):
        return evaluate(p.model, val_x, val_y, CPU, p.memory_format, batch_size=EVAL_BATCH)[1]


def check_line(p: Published, accuracy: float) -> tuple[bool, str]:
    """Whether the accuracy is the record's (exactly where it trained, within 0.05 points elsewhere), and a line."""
    env = p.record.get("environment", {})
    same_machine = env.get("hardware") == latency.cpu_model() and env.get("torch_version") == torch.__version__
    recorded = p.record["final"]["final_val_accuracy"]
    difference_pp = 100.0 * (accuracy - recorded)
    ok = difference_pp == 0.0 if same_machine else abs(difference_pp) <= ELSEWHERE_TOLERANCE_PP
    rule = "exact (the machine that trained it)" if same_machine else f"within {ELSEWHERE_TOLERANCE_PP} points"
    return ok, (f"{'ok  ' if ok else 'FAIL'} {p.name}: {100 * accuracy:.2f}% vs recorded {100 * recorded:.2f}% "
                f"({difference_pp:+.2f} pp; {rule})")


# ---------------------------------------------------------------------------------------------- timing
def time_once(p: Published, sessions: dict, images, labels, batch1_calls: int) -> dict:
    """One round's figures for one model: PyTorch, then ONNX Runtime fp32 and int8, the same images."""
    measured = latency.measure_latency(p.model, images, labels, CPU, batch1_calls=batch1_calls,
                                       memory_format=p.memory_format)
    with latency.node_lock():
        for kind, session in sessions.items():
            batch1, per_image = export.ort_latency(session, images, batch1_calls=batch1_calls, repeats=1)
            measured[f"ort_latency_ms_batch1_{kind}"] = batch1
            measured[f"ort_latency_ms_per_image_{kind}"] = per_image
    return measured


def time_interleaved(published: list[Published], sessions: list[dict], images, labels, *, rounds: int,
                     batch1_calls: int, progress=print) -> pd.DataFrame:
    """Every model's LATENCY_COLUMNS, each the median over `rounds` round-robin visits."""
    samples = interleaved({i: lambda r, i=i: time_once(published[i], sessions[i], images, labels, batch1_calls)
                           for i in range(len(published))}, rounds, lambda r: progress(f"round {r + 1}/{rounds} done"))
    rows = [{"variant": p.record["variant"], "seed": p.record["seed"], "weights_sha256": p.record["weights"]["sha256"],
             **pd.DataFrame(s)[list(latency_table.LATENCY_COLUMNS)].median().to_dict()}
            for p, s in zip(published, samples.values())]
    return pd.DataFrame(rows)


def run_timing(published: list[Published], args, train_x, val_x, val_y) -> tuple[Path, Path]:
    flushed = latency.flush_denormal(True)
    load_before = os.getloadavg()[0]
    images, labels = val_x[:args.images], val_y[:args.images]
    with tempfile.TemporaryDirectory(prefix="published-onnx-") as tmp:
        sessions = []
        for p in published:  # fp32 and int8 exported, parity-checked and calibrated as the trial's export did
            model = export.deployable(p.model)
            fp32 = export.export_onnx(model, Path(tmp) / f"{p.name}.onnx", tuple(val_x.shape[1:]))
            export.check_parity(model, export.ort_session(fp32), val_x[:export.PARITY_IMAGES])
            int8 = export.quantize_int8(fp32, Path(tmp) / f"{p.name}.int8.onnx", export.calibration_set(
                train_x, p.record.get("measurement", {}).get("export_calibration_images", 256), p.record["seed"]))
            sessions.append({"fp32": export.ort_session(fp32), "int8": export.ort_session(int8)})
            print(f"exported {p.name}", flush=True)
        rows = time_interleaved(published, sessions, images, labels, rounds=args.rounds,
                                batch1_calls=args.batch1_calls, progress=lambda m: print(m, flush=True))
    # what the table's numbers depend on: the machine, the versions, when, and how they were taken
    metadata = {"machine": latency.cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__,
                "onnxruntime": ort.__version__, "python": platform.python_version(),
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "threads": latency.LATENCY_THREADS, "rounds": args.rounds, "images": len(images),
                "batch1_calls": args.batch1_calls, "denormals_flushed": flushed,
                "order": "round-robin over all models, first model rotated each round",
                "load_average_1min": f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"}
    return latency_table.write(args.out or args.results, metadata, rows)


# ---------------------------------------------------------------------------------------------- the command
def parse_args(argv=None):
    p = ArgumentParser(prog="python -m bench.published", description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, metavar="DIR", help="a folder of trial records with their weights")
    p.add_argument("--check", action="store_true",
                   help="instead of timing, check that each loaded model reproduces its record's validation accuracy")
    p.add_argument("--rounds", type=int, default=5, help="round-robin rounds; each figure is their median "
                                                         "(default %(default)s)")
    p.add_argument("--images", type=int, default=export.LATENCY_IMAGES,
                   help="validation images in each batch-4 pass (default %(default)s)")
    p.add_argument("--batch1-calls", type=int, default=200,
                   help="single-image calls per model and round (median; default %(default)s)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 directory (default $CIFAR10_DIR, else the cache)")
    p.add_argument("--out", default=None, metavar="DIR", help="where latency.csv/.md go (default: --results)")
    args = p.parse_args(argv)
    for name in ("rounds", "images", "batch1_calls"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        published = load_published(args.results)
        train_x, val_x, val_y = load_data(args.data_dir, published[0].record["protocol"])
    except (PublishedError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        results = [check_line(p, reproduced_accuracy(p, val_x, val_y)) for p in published]
        print("\n".join(line for _, line in results))
        return 0 if all(ok for ok, _ in results) else 1
    csv_path, md_path = run_timing(published, args, train_x, val_x, val_y)
    print(f"{len(published)} models timed; wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
