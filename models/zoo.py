"""The zoo table: every registered variant measured from code, the paper's beside its Table 2 / Table 5 numbers."""
import pandas as pd

from . import reference
from .measure import count_parameters, macs_per_image, size_mb
from .registry import create_model, list_models


def _measured(name: str) -> dict:
    model = create_model(name)
    return {"variant": name, "params": count_parameters(model), "size_mb": size_mb(model),
            "macs_per_image": macs_per_image(model)}


def zoo_table() -> pd.DataFrame:
    """One row per registered variant: measured params, size and MACs; for the paper's eight also the paper's params
    and size and the differences (size compared at the precision the paper gives it). A variant the paper does not
    have (a search's winner, a spec file in models/specs) has NaN there."""
    paper, decimals = reference.load(), reference.size_mb_decimals()
    rows = []
    for name in list_models():
        row = _measured(name)
        if name in paper.index:
            places = int(decimals[name])
            row |= {"paper_params": int(paper.at[name, "params"]), "paper_size_mb": float(paper.at[name, "size_mb"]),
                    "params_diff": row["params"] - int(paper.at[name, "params"]),
                    # + 0.0 turns a -0.0 into 0.0
                    "size_mb_diff": round(round(row["size_mb"], places) - paper.at[name, "size_mb"], places) + 0.0,
                    "size_mb_decimals": places}
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def format_table(table: pd.DataFrame) -> str:
    width = max(8, *(len(name) + 1 for name in table.index))
    header = (f"{'variant':<{width}}{'params':>9}{'size_mb':>9}{'macs_per_image':>16}"
              f"{'paper_params':>14}{'paper_size_mb':>15}{'params_diff':>13}{'size_mb_diff':>14}")
    lines = [header]
    for name, r in table.iterrows():
        ours = f"{name:<{width}}{int(r.params):>9,}{r.size_mb:>9.4f}{int(r.macs_per_image):>16,}"
        if pd.isna(r.paper_params):  # not one of the paper's variants
            lines.append(ours + "".join(f"{'—':>{w}}" for w in (14, 15, 13, 14)))
            continue
        d = int(r.size_mb_decimals)
        lines.append(ours + f"{int(r.paper_params):>14,}{r.paper_size_mb:>15.{d}f}{int(r.params_diff):>+13,}"
                            f"{r.size_mb_diff:>+14.{d}f}")
    return "\n".join(lines)
