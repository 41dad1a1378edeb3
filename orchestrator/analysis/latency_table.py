"""The one-pass latency table: every published model timed on one machine, in one run, interleaved
(`python -m bench.published`), used by the report in place of the records' own latencies, which each trial
measured on whatever machine ran it, under whatever load it had.

    DIR/latency.csv   "# key: value" lines (the machine, versions, date, threads, rounds, ...), then one row per
                      model: variant, seed, weights_sha256 and the LATENCY_COLUMNS (medians over the rounds)
    DIR/latency.md    the same as a Markdown table under its metadata

The columns carry the records' metric names, so a study swaps its trials' values for the table's one for one.
"""
import io
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestrator.analysis import tables as fmt

CSV_NAME, MD_NAME = "latency.csv", "latency.md"
# PyTorch (the paper's batch-4 definition: ms per image; and a single image: ms per call), then ONNX Runtime
LATENCY_COLUMNS = ("latency_ms_per_image", "latency_ms_batch1", "ort_latency_ms_per_image_fp32",
                   "ort_latency_ms_batch1_fp32", "ort_latency_ms_per_image_int8", "ort_latency_ms_batch1_int8")
KEY_COLUMNS = ("variant", "seed", "weights_sha256")
# What the metadata must name: without them the table's numbers cannot be placed.
REQUIRED_METADATA = ("machine", "torch", "onnxruntime", "date", "threads", "rounds")
_HEADINGS = {"latency_ms_per_image": "PyTorch ms/image, batch 4", "latency_ms_batch1": "PyTorch ms, batch 1",
             "ort_latency_ms_per_image_fp32": "ORT fp32 ms/image, batch 4",
             "ort_latency_ms_batch1_fp32": "ORT fp32 ms, batch 1",
             "ort_latency_ms_per_image_int8": "ORT int8 ms/image, batch 4",
             "ort_latency_ms_batch1_int8": "ORT int8 ms, batch 1"}


class LatencyTableError(ValueError):
    """A latency table that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class LatencyTable:
    metadata: dict[str, str]   # REQUIRED_METADATA and any more, as written
    rows: pd.DataFrame         # KEY_COLUMNS + LATENCY_COLUMNS, one row per model

    def describe(self) -> str:
        """One sentence naming where and how the table was measured, for report.md."""
        m = self.metadata
        return (f"one pass by `python -m bench.published` on **{m['machine']}**, {m['date']}: "
                f"{len(self.rows)} models interleaved, median of {m['rounds']} rounds, {m['threads']} thread(s), "
                f"denormals flushed; torch {m['torch']}, onnxruntime {m['onnxruntime']}")


def write(folder: str | Path, metadata: dict, rows: pd.DataFrame) -> tuple[Path, Path]:
    """DIR/latency.csv (metadata lines, then the rows) and DIR/latency.md; returns both paths."""
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"latency table metadata lacks {', '.join(missing)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows[[*KEY_COLUMNS, *LATENCY_COLUMNS]].sort_values(["variant", "seed"])
    header = "".join(f"# {key}: {' '.join(str(value).split())}\n" for key, value in metadata.items())
    csv_path, md_path = folder / CSV_NAME, folder / MD_NAME
    csv_path.write_text(header + rows.to_csv(index=False, float_format="%.10g"))
    shown = pd.DataFrame({"Model": [f"{v}-seed{s}" for v, s in zip(rows.variant, rows.seed)],
                          **{_HEADINGS[c]: rows[c].map(lambda x: fmt.num(x, 3)) for c in LATENCY_COLUMNS}})
    facts = "\n".join(f"- {key}: {value}" for key, value in metadata.items())
    md_path.write_text(f"**Inference latency, one machine, one pass (median over rounds)**\n\n{facts}\n\n"
                       f"{fmt.to_markdown(shown)}\n")
    return csv_path, md_path


def read(folder: str | Path) -> LatencyTable | None:
    """DIR/latency.csv, or None when the folder has none."""
    path = Path(folder) / CSV_NAME
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    metadata = dict(line[2:].split(": ", 1) for line in lines if line.startswith("# ") and ": " in line)
    body = [line for line in lines if not line.startswith("#")]
    try:
        rows = pd.read_csv(io.StringIO("\n".join(body)), dtype={"variant": str, "weights_sha256": str})
    except (ValueError, pd.errors.ParserError) as e:
        raise LatencyTableError(f"{path} is not a readable CSV ({str(e).splitlines()[0]}): rebuild it with "
                                f"python -m bench.published --results {folder}") from None
    lacking = [k for k in REQUIRED_METADATA if k not in metadata] + \
        [c for c in (*KEY_COLUMNS, *LATENCY_COLUMNS) if c not in rows.columns]
    if lacking:
        raise LatencyTableError(f"{path} lacks {', '.join(lacking)}: rebuild it with "
                                f"python -m bench.published --results {folder}")
    return LatencyTable(metadata, rows)


def apply(trials: pd.DataFrame, table: LatencyTable, weights_sha256: dict) -> tuple[pd.DataFrame, list[str]]:
    """The trials with the table's latencies and machine in place of theirs, and the names (variant-seed<k>) of
    those it lacks or timed with other weights (`weights_sha256`: (variant, seed) -> the record's sha256): these
    get no latency at all, so figures from two sources are never mixed."""
    by_model = {(r.variant, int(r.seed)): r for r in table.rows.itertuples()}
    trials, missing = trials.copy(), []
    for i, trial in trials.iterrows():
        row = by_model.get((trial["variant"], int(trial["seed"])))
        current = row is not None and row.weights_sha256 == weights_sha256.get((trial["variant"], int(trial["seed"])))
        if not current:
            missing.append(f"{trial['variant']}-seed{int(trial['seed'])}")
        for column in LATENCY_COLUMNS:
            trials.at[i, column] = getattr(row, column) if current else math.nan
        trials.at[i, "latency_hardware"] = table.metadata["machine"] if current else ""
    return trials, missing
