"""`python -m models`: print the zoo beside the paper's numbers; exit 1 if any of the paper's variants differs.

`python -m models SPEC.toml [SPEC.json ...]`: price each spec file from the spec alone (params, size, MACs, hash)
against the paper's budget; exit 0 when all fit, 1 when one is over the budget, 2 when one is not a valid spec.
"""
import argparse
import sys

from . import budget
from .spec import SpecError, load_spec, spec_hash
from .zoo import format_table, zoo_table


def zoo() -> int:
    table = zoo_table()
    print(format_table(table))
    print("size_mb = bytes of parameters and buffers / 2**20; "
          "size compared at the paper's precision (4 decimals, alpha 3)")
    paper = table[table.paper_params.notna()]  # a variant of our own has no paper row to differ from
    mismatched = paper.index[(paper.params_diff != 0) | (paper.size_mb_diff != 0)].tolist()
    if mismatched:
        print(f"error: {', '.join(mismatched)} differ from the paper's Table 2/5", file=sys.stderr)
        return 1
    return 0


def describe(path: str) -> int:
    try:
        spec = load_spec(path)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    params = budget.param_count(spec)
    size_change = budget.size_mb(spec) * 2**20 / budget.BASE_SIZE_BYTES - 1
    fits = params <= budget.MAX_PARAMS
    verdict = (f"fits, {budget.MAX_PARAMS - params:,} to spare" if fits
               else f"OVER by {params - budget.MAX_PARAMS:,}; models.fit_to_budget scales it to fit")
    print(f"{path}\n  hash            {spec_hash(spec)}\n  blocks          {len(spec.blocks)}\n"
          f"  params          {params:,} (budget {budget.MAX_PARAMS:,}: {verdict})\n"
          f"  size_mb         {budget.size_mb(spec):.4f} ({size_change:+.2%} against Base's; Table 2's rule is "
          f"within {budget.MARGIN_PCT}%)\n  macs_per_image  {budget.macs_per_image(spec):,}")
    return 0 if fits else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("specs", nargs="*", metavar="SPEC", help="spec files (.toml or .json) to price against the "
                                                               "paper's budget; none: print the zoo")
    paths = parser.parse_args(argv).specs
    return max(describe(p) for p in paths) if paths else zoo()


if __name__ == "__main__":
    sys.exit(main())
