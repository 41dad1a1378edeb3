"""Print the README's Results tables: the published Table 5 (results/paper-grid/table5.csv, built from the trial
records by `python -m orchestrator.report --results results/paper-grid`) beside the paper's own numbers, and with
--fused-check the fused regrid's seeds beside the unfused records of the same variants, and with --search a published
search's re-validated specs beside Base, V6 and Alpha.

    python scripts/results_table.py [--results results/paper-grid]
    python scripts/results_table.py --fused-check [--results results/paper-grid] [--unfused results/paper-grid-unfused]
    python scripts/results_table.py --search results/budget-60 [--proxy-check results/proxy-check-default]

tests/test_readme.py checks that README.md holds exactly these tables, so the README cannot drift from the records.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from models import reference  # noqa: E402
from models.budget import macs_per_image  # noqa: E402
from orchestrator.analysis import tables as fmt  # noqa: E402
from orchestrator.cli import ArgumentParser  # noqa: E402
from orchestrator.sweep import records  # noqa: E402


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


def final_accuracies_pct(results_dir: Path) -> dict[str, dict[int, float]]:
    """{variant: {seed: final validation accuracy in %}} of the records in `results_dir`."""
    out: dict[str, dict[int, float]] = {}
    for r in records.load_records(results_dir):
        out.setdefault(r["variant"], {})[r["seed"]] = 100.0 * r["final"]["final_val_accuracy"]
    return out


def fused_check_table(fused_dir: Path, unfused_dir: Path) -> str:
    """Each variant with at least two fused seeds and an unfused seed 0: the unfused seed 0, the fused seeds, their
    mean and std, and the seed-0 difference."""
    fused, unfused = final_accuracies_pct(fused_dir), final_accuracies_pct(unfused_dir)
    paper = reference.load()
    rows = []
    for variant in paper.index:
        seeds = fused.get(variant, {})
        if len(seeds) < 2 or 0 not in seeds or 0 not in unfused.get(variant, {}):
            continue
        values = [seeds[k] for k in sorted(seeds)]
        rows.append({
            "Variant": paper.loc[variant, "paper_label"],
            "unfused seed 0": fmt.num(unfused[variant][0], 2),
            "fused, seeds 0, 1, …": " / ".join(fmt.num(v, 2) for v in values), "n": len(values),
            "fused mean ± std": fmt.pm(statistics.mean(values), statistics.stdev(values), 2),
            "unfused − fused, seed 0": f"{unfused[variant][0] - seeds[0]:+.2f}"})
    return fmt.to_markdown(pd.DataFrame(rows))


def search_table(results_dir: Path, proxy_check_dir: Path) -> str:
    """A re-validated search folder's models (its report, its results.csv, its records) against Base, V6 and Alpha:
    shape, parameters, size against Base, MACs, proxy accuracy (the paper's variants' from the proxy check),
    accuracy, and the difference from Alpha with Welch's p. A spec registered under a name is marked with it."""
    table5 = pd.read_csv(results_dir / "table5.csv", index_col="variant")
    table2 = pd.read_csv(results_dir / "table2.csv", index_col="variant")
    against = pd.read_csv(results_dir / "discoveries.csv").query("reference == 'alpha'").set_index("variant")
    search = pd.read_csv(results_dir / "results.csv", index_col="spec_hash")
    proxy = pd.read_csv(proxy_check_dir / "proxy_check.csv", index_col="variant")["proxy_heldout_accuracy"]
    hashes = {r["variant"]: r.get("spec_hash") for r in records.load_records(results_dir)}
    # Names given to these specs elsewhere (models/specs); the records' own names may be registered too, by whatever
    # loaded them in this process (bench.published does), and would otherwise shadow them.
    registered = {models.spec_hash(spec): n for n in models.list_models() if n not in models.PAPER_VARIANTS
                  and n not in hashes and (spec := models.registered_spec(n)) is not None}
    rows = []  # MACs counted from the spec, as the search counted its candidates'
    for variant, row in table5.iterrows():
        own = variant in against.index
        found = search.loc[hashes[variant]] if own else None
        name = f"{variant} = `{registered[hashes[variant]]}`" if hashes.get(variant) in registered else row["model"]
        rows.append({
            "Model": name, "Shape": found["shape"] if own else "the paper's", "Parameters": f"{int(row['params']):,}",
            "Size vs Base": f"{table2.loc[variant, 'size_change_pct']:+.2f}%",
            "MACs/image": f"{int(found['macs'] if own else macs_per_image(models.get_spec(variant))):,}",
            "Proxy (%)": fmt.num(100 * (found["heldout_accuracy"] if own else proxy.get(variant)), 2),
            "Accuracy (%)": f"{fmt.pm(row['val_accuracy_pct_mean'], row['val_accuracy_pct_std'], 2)} (n={row['n']})",
            "vs Alpha (pp)": f"{against.loc[variant, 'difference_pp']:+.2f}" if own else fmt.DASH,
            "Welch p": f"{against.loc[variant, 'p_value']:.3f}" if own else fmt.DASH})
    return fmt.to_markdown(pd.DataFrame(rows))


def main(argv=None) -> int:
    p = ArgumentParser(prog="python scripts/results_table.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(REPO / "results" / "paper-grid"),
                   help="the records' folder, with its report (default results/paper-grid)")
    p.add_argument("--fused-check", action="store_true",
                   help="print the fused records beside the unfused ones (seed 0) instead of Table 5")
    p.add_argument("--unfused", default=str(REPO / "results" / "paper-grid-unfused"),
                   help="the unfused records' folder, for --fused-check (default results/paper-grid-unfused)")
    p.add_argument("--search", default=None, help="a re-validated search's records folder, with its report and "
                   "results.csv: print its specs against Base, V6 and Alpha instead of Table 5")
    p.add_argument("--proxy-check", default=str(REPO / "results" / "proxy-check-default"),
                   help="the proxy check's folder, for the paper's variants' proxy accuracy with --search "
                   "(default results/proxy-check-default)")
    args = p.parse_args(argv)
    if args.search:
        print(search_table(Path(args.search), Path(args.proxy_check)))
    elif args.fused_check:
        print(fused_check_table(Path(args.results), Path(args.unfused)))
    else:
        print(results_table(Path(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
