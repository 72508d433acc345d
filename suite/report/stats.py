"""Mean, standard deviation and a 95% confidence interval over seeds.

The interval is Student's t: ``mean ± t(0.975, n-1) · s / √n`` with ``s`` the sample standard
deviation (``ddof=1``). With 2–5 seeds it is wide, and it should be: that is what a handful of
seeds can say. One seed has no spread and no interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# t(0.975, df) for df = 1..30 (two-sided 95%), from the standard tables.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom.

    Tabulated up to 30; above, the Cornish–Fisher expansion around the normal quantile
    (Abramowitz & Stegun 26.7.5), accurate to better than 1e-4 there.
    """
    if df < 1:
        raise ValueError("t quantile needs at least one degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = NormalDist().inv_cdf(0.975)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


@dataclass(frozen=True)
class Summary:
    """What the seeds of one method on one task say about one metric."""

    n: int
    mean: float
    std: float  # sample standard deviation; nan for n < 2
    ci_low: float  # 95% t interval; nan for n < 2
    ci_high: float


def summarise(values) -> Summary:
    """Summary of the finite values in ``values`` (missing and non-finite ones are left out)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = math.fsum(xs) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    # equal values have no spread (the mean of equal floats can differ from them in the last bit)
    std = 0.0 if min(xs) == max(xs) else math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)
