"""Paired comparisons of methods over seeds: mean difference, t-interval, paired t-test, Holm correction.

Pure Python (no SciPy at run time): the Student-t distribution comes from the regularised incomplete beta
function (Lentz's continued fraction), the quantile from bisection on it. ``tests/test_stats.py`` checks
every number against ``scipy.stats``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["PairedResult", "holm", "paired_difference", "t_cdf", "t_quantile"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz, as in Numerical Recipes)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T ≤ t)`` for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"t_cdf: df must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf` to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PairedResult:
    """Paired difference ``method − reference`` over the seeds both have."""

    n: int
    mean: float  # mean of the per-seed differences
    std: float  # their sample standard deviation (n − 1)
    low: float  # 95% (or ``level``) t-interval of the mean difference
    high: float
    p: float  # two-sided paired t-test p-value (nan with fewer than 2 pairs)


def paired_difference(
    method: Mapping[int, float], reference: Mapping[int, float], level: float = 0.95
) -> PairedResult:
    """Per-seed differences ``method[s] − reference[s]`` over the common seeds: mean, ``level`` t-interval
    ``mean ± t_{(1+level)/2, n−1} · sd/√n`` and the two-sided paired t-test (``t = mean / (sd/√n)``).

    Zero spread: the interval is the point and p is 1 (mean 0) or 0 (otherwise), as the t statistic is
    0 or infinite.
    """
    seeds = sorted(set(method) & set(reference))
    diffs = [float(method[s]) - float(reference[s]) for s in seeds]
    n = len(diffs)
    if n == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    mean = sum(diffs) / n
    if n == 1:
        return PairedResult(1, mean, math.nan, math.nan, math.nan, math.nan)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0.0:
        return PairedResult(n, mean, 0.0, mean, mean, 1.0 if mean == 0.0 else 0.0)
    half = t_quantile(0.5 + level / 2.0, n - 1) * se
    t = mean / se
    p = 2.0 * (1.0 - t_cdf(abs(t), n - 1))
    return PairedResult(n, mean, sd, mean - half, mean + half, min(1.0, max(0.0, p)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; nan stays nan and is not counted).

    Sorted ascending, ``p_(i)`` becomes ``max_{j ≤ i} min(1, (m − j + 1)·p_(j))``; a hypothesis is rejected
    at level α exactly when its adjusted value is ≤ α.
    """
    finite = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    finite.sort()
    m = len(finite)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
