"""Text tables for the report: cell formatting, GitHub Markdown and booktabs LaTeX (pandas' Styler)."""
import re

import pandas as pd

DASH = "—"


def num(x, digits: int) -> str:
    return DASH if x is None or pd.isna(x) else f"{x:,.{digits}f}"


def pm(mean, std, digits: int) -> str:
    return DASH if pd.isna(mean) else f"{mean:.{digits}f} ± {num(std, digits)}"


def signed(x, digits: int = 2) -> str:
    """A difference or a t statistic, with its sign."""
    return DASH if x is None or pd.isna(x) else f"{x:+.{digits}f}"


def p_value(x) -> str:
    return DASH if x is None or pd.isna(x) else f"{x:.3g}"


def interval(low, high, digits: int) -> str:
    return DASH if pd.isna(low) else f"[{num(low, digits)}, {num(high, digits)}]"


def yes_no(x) -> str:
    return DASH if x is None or pd.isna(x) else ("yes" if x else "no")


# Numbers, "mean ± std", intervals and dashes are right-aligned; everything else left.
_NUMERIC_CELL = re.compile(r"[-+−]?[\d.,]+(e[-+]\d+)?( ± ([\d.,]+|—))?|—|\[[-\d., ]+\]|\d+/\d+")


def _right_aligned(col: pd.Series) -> bool:
    cells = [str(c) for c in col if str(c)]
    return bool(cells) and all(_NUMERIC_CELL.fullmatch(c) for c in cells)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs tabulate, which we don't depend on)."""
    cells = [[str(c) for c in df.columns]] + [[str(v).replace("|", r"\|") for v in row] for row in df.values]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(df.columns))]  # GFM rule needs "---"
    right = [_right_aligned(df.iloc[:, i]) for i in range(df.shape[1])]  # by position: a heading may repeat

    def fmt(row):
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, right)) + " |"
    return "\n".join([fmt(cells[0]), rule, *map(fmt, cells[1:])])


# Special characters escaped, and the report's Unicode as math: plain pdflatex has no Unicode math.
_LATEX = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                        "—": "--", "−": "-", "Δ": r"$\Delta$", "α": r"$\alpha$", "≥": r"$\geq$"})


def _latex_cell(s) -> str:
    """A cell as plain pdflatex reads it (one pass, so no replacement is escaped again)."""
    return str(s).replace("⚠ ", "").translate(_LATEX)


def to_latex(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table (\\usepackage{booktabs}) by pandas' Styler; cells and headings pass through _latex_cell
    first, since plain pdflatex reads neither the report's Unicode nor unescaped special characters."""
    spec = "".join("r" if _right_aligned(df.iloc[:, i]) else "l" for i in range(df.shape[1]))
    cells = df.map(_latex_cell)
    cells.columns = [_latex_cell(c) for c in df.columns]
    return cells.style.hide(axis="index").to_latex(column_format=spec, hrules=True, position="ht",
                                                   position_float="centering", caption=_latex_cell(caption),
                                                   label=f"tab:{label}")


# -------------------------------------------------------------------------------- flags shared by the tables
NOT_COMPARABLE = "not comparable"


def yes_no_or_not_comparable(x) -> str:
    return x if x == NOT_COMPARABLE else yes_no(x)


def seeds_text(row) -> str:
    """"n/N seeds" of a summary row (study.summarize)."""
    return f"{row['n']}" + ("" if pd.isna(row["n_requested"]) else f"/{row['n_requested']}") + " seeds"


def incomplete_flag(row) -> str:
    """The flag every table gives a variant with fewer finished seeds than requested."""
    return f"⚠ incomplete ({seeds_text(row)})" if row["incomplete"] else ""
