"""The zoo table: every variant measured from code, beside the paper's Table 2 / Table 5 numbers."""
import pandas as pd

from . import reference
from .measure import count_parameters, macs_per_image, size_mb
from .registry import create_model, list_models


def zoo_table() -> pd.DataFrame:
    """One row per variant: measured params, size and MACs, the paper's params and size, and the differences
    (size compared at the precision the paper gives it)."""
    paper, decimals = reference.load(), reference.size_mb_decimals()
    rows = []
    for name in list_models():
        model = create_model(name)
        ours_mb, places = size_mb(model), int(decimals[name])
        rows.append({
            "variant": name,
            "params": count_parameters(model),
            "size_mb": ours_mb,
            "macs_per_image": macs_per_image(model),
            "paper_params": int(paper.at[name, "params"]),
            "paper_size_mb": float(paper.at[name, "size_mb"]),
            "params_diff": count_parameters(model) - int(paper.at[name, "params"]),
            # + 0.0 turns a -0.0 into 0.0
            "size_mb_diff": round(round(ours_mb, places) - paper.at[name, "size_mb"], places) + 0.0,
            "size_mb_decimals": places,
        })
    return pd.DataFrame(rows).set_index("variant")


def format_table(table: pd.DataFrame) -> str:
    header = (f"{'variant':<8}{'params':>9}{'size_mb':>9}{'macs_per_image':>16}"
              f"{'paper_params':>14}{'paper_size_mb':>15}{'params_diff':>13}{'size_mb_diff':>14}")
    lines = [header]
    for name, r in table.iterrows():
        d = int(r.size_mb_decimals)
        lines.append(f"{name:<8}{int(r.params):>9,}{r.size_mb:>9.4f}{int(r.macs_per_image):>16,}"
                     f"{int(r.paper_params):>14,}{r.paper_size_mb:>15.{d}f}{int(r.params_diff):>+13,}"
                     f"{r.size_mb_diff:>+14.{d}f}")
    return "\n".join(lines)
