"""The paper's own numbers (Tables 2 and 5), read from the one data file beside this module.

Table 2 has no Alpha row; its params and size come from Table 5 (0.512 MB, given to 3 decimals there).
"""
from pathlib import Path

import pandas as pd

REFERENCE_CSV = Path(__file__).with_name("paper_reference.csv")


def load() -> pd.DataFrame:
    """One row per variant (base, v1..v6, alpha), in the paper's order, indexed by variant name."""
    return pd.read_csv(REFERENCE_CSV, index_col="variant")


def size_mb_decimals() -> pd.Series:
    """Decimal places the paper gives each size in (4 in Table 2; Alpha's 0.512 from Table 5 has 3),
    read from the file's text because a float forgets its trailing digits."""
    raw = pd.read_csv(REFERENCE_CSV, index_col="variant", dtype={"size_mb": str})["size_mb"]
    return raw.str.split(".").str[1].str.len()


def label(variant: str, paper: pd.DataFrame) -> str:
    """The paper's name for a variant ("Base", "V1", ...); a name the paper lacks stays as it is."""
    return paper.loc[variant, "paper_label"] if variant in paper.index else variant
