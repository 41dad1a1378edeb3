"""Print the README's Results table: the published Table 5 (results/paper-grid/table5.csv, built from the trial
records by `python -m orchestrator.report --results results/paper-grid`) beside the paper's own numbers.

    python scripts/results_table.py [--results results/paper-grid]

tests/test_readme.py checks that README.md holds exactly this table, so the README cannot drift from the records.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import reference  # noqa: E402
from orchestrator.analysis import tables as fmt  # noqa: E402
from orchestrator.cli import ArgumentParser  # noqa: E402


def results_table(results_dir: Path) -> str:
    ours = pd.read_csv(results_dir / "table5.csv", index_col="variant")
    paper = reference.load()
    rows = []
    for variant in paper.index:
        row = ours.loc[variant] if variant in ours.index else None
        have = row is not None and row["n"] > 0
        rows.append({
            "Model": paper.loc[variant, "paper_label"],
            "Val. accuracy (%), ours": fmt.pm(row["val_accuracy_pct_mean"], row["val_accuracy_pct_std"], 2)
            if have else "not yet", "n": int(row["n"]) if have else 0,
            "Val. accuracy (%), paper": fmt.num(paper.loc[variant, "val_accuracy_pct"], 2),
            "ms/image (batch 4), ours": fmt.pm(row["latency_ms_per_image_mean"], row["latency_ms_per_image_std"], 3)
            if have else fmt.DASH,
            "ms/image, paper": fmt.num(paper.loc[variant, "latency_ms_per_image"], 3),
            "Size (MB)": fmt.num(paper.loc[variant, "size_mb"], 4)})
    return fmt.to_markdown(pd.DataFrame(rows))


def main(argv=None) -> int:
    p = ArgumentParser(prog="python scripts/results_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(REPO / "results" / "paper-grid"),
                   help="the records' folder, with its report (default results/paper-grid)")
    args = p.parse_args(argv)
    print(results_table(Path(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
