"""Small-sample statistics for the report: Student t CDF / quantile, Welch's t-test, 95% t-interval.

Pure `math` on purpose: scipy is not a dependency, and these few functions are all the report needs.
The t CDF goes through the regularized incomplete beta function, evaluated with the Lentz continued
fraction (Numerical Recipes, 3rd ed., section 6.4).
"""
import math
from dataclasses import dataclass
from typing import Sequence


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b); converges fast for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float, one_minus_x: float | None = None) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1.

    Pass `one_minus_x` when it is known more precisely than 1 - x (x close to 1), as for the t CDF near 0.
    """
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got x={x}")
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, y) / b  # symmetry keeps the fraction convergent


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df > 0 degrees of freedom (df may be fractional, as in Welch)."""
    if df <= 0 or math.isnan(df) or math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t: the t with t_cdf(t, df) == q, found by bisection (monotone CDF)."""
    if not 0.0 < q < 1.0 or df <= 0 or math.isnan(df):
        return math.nan
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > q:
        lo *= 2.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def _mean_var(values: Sequence[float]) -> tuple[int, float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan  # sample variance (ddof=1)
    return n, mean, var


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided t-interval for the mean of `values`; (nan, nan) with fewer than 2 values."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return math.nan, math.nan
    n, mean, var = _mean_var(values)
    half = t_ppf(0.5 + level / 2.0, n - 1) * math.sqrt(var / n)
    return mean - half, mean + half


@dataclass(frozen=True)
class WelchResult:
    difference: float  # mean(a) - mean(b)
    t: float
    df: float
    p_value: float  # two-sided


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Welch's unequal-variance t-test of mean(a) == mean(b), two-sided.

    Needs at least 2 values per group; otherwise, or when both groups have zero variance (no spread to
    test against), t, df and p are nan. The difference is always reported when both groups are non-empty.
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        return WelchResult(math.nan, math.nan, math.nan, math.nan)
    na, mean_a, var_a = _mean_var(a)
    nb, mean_b, var_b = _mean_var(b)
    diff = mean_a - mean_b
    if na < 2 or nb < 2:
        return WelchResult(diff, math.nan, math.nan, math.nan)
    sa, sb = var_a / na, var_b / nb
    if sa + sb == 0.0:
        return WelchResult(diff, math.nan, math.nan, math.nan)
    t = diff / math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))  # Welch–Satterthwaite
    return WelchResult(diff, t, df, 2.0 * t_cdf(-abs(t), df))
