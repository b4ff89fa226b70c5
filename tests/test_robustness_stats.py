"""benchmarks.robustness.stats against closed forms and scipy (issue 12)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from benchmarks.robustness import stats


def test_t_quantiles_match_closed_forms():
    # df = 1 is the Cauchy distribution; df = 2 has F^-1(p) = (2p - 1) / sqrt(2 p (1 - p))
    for p in (0.6, 0.9, 0.975, 0.995, 0.01):
        assert stats.t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert stats.t_ppf(p, 2) == pytest.approx(
            (2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9
        )
    # df = 1 and 2 distribution functions in closed form
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_t_and_beta_match_scipy():
    sp = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    for df in (3, 4.5, 9, 29, 200):
        for p in (0.025, 0.5, 0.9, 0.975):
            assert stats.t_ppf(p, df) == pytest.approx(sp.t.ppf(p, df), rel=1e-8, abs=1e-10)
    for a, b, x in ((0.5, 4.0, 0.3), (5.0, 0.5, 0.9), (2.0, 3.0, 0.5), (30.0, 0.5, 0.99)):
        assert stats.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


def test_paired_t_matches_scipy_ttest_rel():
    sp = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    x = [rng.gauss(0.7, 0.1) for _ in range(10)]
    y = [v - rng.gauss(0.03, 0.05) for v in x]
    out = stats.paired_t(x, y)
    ref = sp.ttest_rel(x, y)
    diffs = [a - b for a, b in zip(x, y, strict=True)]
    lo, hi = sp.t.interval(0.95, 9, loc=statistics.fmean(diffs), scale=sp.sem(diffs))
    assert out["p"] == pytest.approx(ref.pvalue, rel=1e-8)
    assert (out["lo"], out["hi"]) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert out["n"] == 10 and out["wins"] + out["losses"] == 10


def test_paired_t_degenerate_cases():
    assert math.isnan(stats.paired_t([0.5], [0.4])["lo"])
    same = stats.paired_t([0.5, 0.6], [0.4, 0.5])
    assert same["lo"] == same["hi"] == pytest.approx(0.1) and same["p"] == 0.0
    assert stats.paired_t([0.5, 0.6], [0.5, 0.6])["p"] == 1.0


def test_mcnemar_exact_matches_the_binomial_test():
    sp = pytest.importorskip("scipy.stats")
    first = [True] * 30 + [False] * 12 + [True] * 50 + [False] * 8
    second = [False] * 30 + [True] * 12 + [True] * 50 + [False] * 8
    out = stats.mcnemar_exact(first, second)
    assert (out["b"], out["c"], out["n"]) == (30, 12, 100)
    assert out["p"] == pytest.approx(sp.binomtest(12, 42, 0.5).pvalue, rel=1e-10)
    assert stats.mcnemar_exact([True, False], [True, False])["p"] == 1.0


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_agreement():
    rng = random.Random(0)
    values = [rng.gauss(0.2, 0.1) for _ in range(40)]
    lo, hi = stats.bootstrap_mean_ci(values, n_boot=2000)
    assert lo < statistics.fmean(values) < hi
    # close to the normal-theory interval for 40 values
    half = 1.96 * statistics.stdev(values) / math.sqrt(40)
    assert hi - lo == pytest.approx(2 * half, rel=0.15)
    first = [i % 3 != 0 for i in range(300)]
    out = stats.paired_bootstrap_accuracy(first, first, n_boot=200)
    assert out["mean"] == out["lo"] == out["hi"] == 0.0


def test_verdict_needs_the_interval_on_the_claimed_side():
    assert stats.verdict(0.01, 0.2) == "reproduces"
    assert stats.verdict(-0.01, 0.2) == "not shown"
    assert stats.verdict(-0.2, -0.01) == "reversed"
    assert stats.verdict(-0.2, -0.01, direction=-1) == "reproduces"
    assert stats.verdict(math.nan, math.nan) == "not shown"


def test_holm_adjust_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    adjusted = stats.holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm_adjust([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    nan_kept = stats.holm_adjust([0.01, math.nan, 0.02])
    assert math.isnan(nan_kept[1]) and nan_kept[0] == pytest.approx(0.02)
    assert nan_kept[2] == pytest.approx(0.02)
    assert stats.holm_adjust([]) == []
    no_test = stats.holm_adjust([None, 0.02])  # None = no test, like NaN
    assert math.isnan(no_test[0]) and no_test[1] == pytest.approx(0.02)


def test_holm_adjust_equals_closed_testing_with_bonferroni_local_tests():
    """Holm = the closure of Bonferroni tests (Marcus, Peritz & Gabriel 1976): the adjusted p of
    hypothesis i is the largest Bonferroni p over every intersection that contains i."""
    import itertools

    rng = random.Random(3)
    for _ in range(200):
        m = rng.randint(1, 7)
        p = [rng.random() ** rng.choice((1, 3)) for _ in range(m)]
        closed = [
            max(
                min(1.0, len(subset) * min(p[j] for j in subset))
                for size in range(1, m + 1)
                for subset in itertools.combinations(range(m), size)
                if i in subset
            )
            for i in range(m)
        ]
        assert stats.holm_adjust(p) == pytest.approx(closed, abs=1e-12)
