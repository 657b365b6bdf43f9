"""The paired statistics against scipy.stats on fabricated numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bcd_lightning.stats import holm, paired_difference, t_cdf, t_quantile


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30])
def test_t_distribution_matches_scipy(df: int) -> None:
    for t in (-6.0, -2.3, -0.4, 0.0, 0.7, 1.9, 12.0):
        assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-9, abs=1e-13)
    for p in (0.025, 0.5, 0.9, 0.975, 0.999):
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8, abs=1e-10)


def test_paired_difference_matches_scipy_ttest_rel() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(60, 3, size=6)
    other = base + rng.normal(0.8, 0.5, size=6)
    ref = {s: float(v) for s, v in enumerate(base)}
    got = paired_difference({s: float(v) for s, v in enumerate(other)}, ref)
    test = stats.ttest_rel(other, base)
    diffs = other - base
    half = stats.t.ppf(0.975, 5) * diffs.std(ddof=1) / math.sqrt(6)
    assert got.n == 6
    assert got.mean == pytest.approx(diffs.mean(), rel=1e-12)
    assert got.std == pytest.approx(diffs.std(ddof=1), rel=1e-12)
    assert got.p == pytest.approx(test.pvalue, rel=1e-8)
    assert (got.low, got.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half), rel=1e-9)


def test_paired_difference_uses_common_seeds_only_and_degenerate_cases() -> None:
    a = {0: 1.0, 1: 2.0, 2: 4.0, 7: 100.0}
    b = {0: 0.5, 1: 1.0, 2: 2.5}
    got = paired_difference(a, b)
    test = stats.ttest_rel([1.0, 2.0, 4.0], [0.5, 1.0, 2.5])
    assert got.n == 3 and got.p == pytest.approx(test.pvalue, rel=1e-8)
    assert paired_difference({0: 1.0}, {0: 0.0}).n == 1
    assert math.isnan(paired_difference({0: 1.0}, {0: 0.0}).p)
    assert paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}).p == 0.0  # constant difference
    assert paired_difference({}, {1: 2.0}).n == 0


def test_holm_matches_the_step_down_definition() -> None:
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # Sorted: 0.005 (x4) 0.02, 0.01 (x3) 0.03, 0.03 (x2) 0.06, 0.04 (x1) 0.04 -> monotone 0.06.
    assert holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm(p)[4])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 capped at 1, then monotone


def test_holm_against_a_brute_force_rejection_rule() -> None:
    # Holm rejects H_(i) at alpha iff p_(j) <= alpha / (m - j + 1) for every j <= i (1-based ranks).
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = list(rng.uniform(0, 0.2, size=5))
        order = np.argsort(p)
        for alpha in (0.01, 0.05, 0.1):
            rejected = set()
            for rank, i in enumerate(order):
                if p[i] > alpha / (len(p) - rank):
                    break
                rejected.add(int(i))
            assert {i for i, q in enumerate(holm(p)) if q <= alpha} == rejected
