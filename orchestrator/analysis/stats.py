"""Small-sample statistics for the report, on scipy.stats: 95% t-interval, Welch's t-test, Spearman's rho.

scipy does the distributions; this module adds only the report's rules for the cases scipy answers with a warning
and nan (or a nan interval): too few values, no spread. Those cases are decided here, before scipy is called.
"""
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps


def _floats(values: Sequence[float]) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=float)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided t-interval for the mean of `values`; (nan, nan) with fewer than 2 values. Values without spread
    (a deterministic quantity such as a size) give a zero-width interval at the mean: `t.ppf` times the standard
    error rather than `t.interval`, which returns nan for a zero scale."""
    x = _floats(values)
    if x.size < 2:
        return math.nan, math.nan
    mean = float(x.mean())
    half = float(sps.t.ppf(0.5 + level / 2.0, x.size - 1)) * math.sqrt(float(x.var(ddof=1)) / x.size)
    return mean - half, mean + half


@dataclass(frozen=True)
class WelchResult:
    difference: float  # mean(a) - mean(b)
    t: float
    df: float  # Welch–Satterthwaite, fractional
    p_value: float  # two-sided


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Welch's unequal-variance t-test of mean(a) == mean(b), two-sided (scipy's ttest_ind, equal_var=False).
    Below 2 values in a group, or when both groups have zero variance (no spread to test against), t, df and p
    are nan; the difference is reported whenever both groups are non-empty."""
    a, b = _floats(a), _floats(b)
    difference = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    if a.size < 2 or b.size < 2 or a.var(ddof=1) / a.size + b.var(ddof=1) / b.size == 0.0:
        return WelchResult(difference, math.nan, math.nan, math.nan)
    result = sps.ttest_ind(a, b, equal_var=False)
    return WelchResult(difference, float(result.statistic), float(result.df), float(result.pvalue))


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of paired values (scipy's spearmanr: tied values get their average rank);
    nan with fewer than 3 pairs (two points always correlate perfectly) or when one side is constant."""
    x, y = _floats(x), _floats(y)
    if x.size != y.size:
        raise ValueError(f"spearman_rho needs paired values, got {x.size} and {y.size}")
    if x.size < 3 or np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return math.nan
    return float(sps.spearmanr(x, y).statistic)


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: comparing them with α is Holm's procedure at level
    α. nan (a comparison that could not be tested) stays nan and is not counted: the family is the tests actually
    made. (scipy has no Holm; this equals statsmodels' multipletests(method="holm").)"""
    p = _floats(p_values)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    adjusted = np.full(p.size, math.nan)
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, (order.size - np.arange(order.size)) * p[order]))
    return adjusted.tolist()
