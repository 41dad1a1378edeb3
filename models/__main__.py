"""`python -m models`: print the zoo beside the paper's numbers; exit 1 if any row differs."""
import sys

from .zoo import format_table, zoo_table


def main() -> int:
    table = zoo_table()
    print(format_table(table))
    print("size_mb = bytes of parameters and buffers / 2**20; "
          "size compared at the paper's precision (4 decimals, alpha 3)")
    mismatched = table.index[(table.params_diff != 0) | (table.size_mb_diff != 0)].tolist()
    if mismatched:
        print(f"error: {', '.join(mismatched)} differ from the paper's Table 2/5", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
