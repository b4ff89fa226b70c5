"""Statistics of the robustness experiments: paired intervals, p-values and verdicts (pure Python).

Seed-level claims (one number per seed and method, paired by seed):

* :func:`paired_t` — differences ``d_s = x_s - y_s``; mean ``d̄``, sample sd ``s`` (ddof 1),
  standard error ``s / sqrt(n)``, the 95 % Student-t interval ``d̄ ± t_{0.975, n-1} s / sqrt(n)``
  and the two-sided paired t-test p-value ``2 (1 - F_{n-1}(|d̄| / se))`` (Student 1908).
  The t distribution function is ``F_ν(t) = 1 - I_{ν/(ν+t²)}(ν/2, 1/2) / 2`` for ``t ≥ 0`` with
  ``I`` the regularised incomplete beta function, evaluated by its continued fraction
  (modified Lentz); quantiles by bisection.
* :func:`bootstrap_mean_ci` — percentile bootstrap interval of a mean (Efron & Tibshirani 1993).

Item-level claims (two methods scored on the same benchmark items):

* :func:`mcnemar_exact` — exact two-sided McNemar test on the discordant pairs ``b`` (only the
  first right) and ``c`` (only the second right): ``p = min(1, 2 P(X ≤ min(b, c)))`` with
  ``X ~ Binomial(b + c, 1/2)`` (McNemar 1947).
* :func:`paired_bootstrap_accuracy` — percentile bootstrap interval of the accuracy difference,
  resampling items (the same indices for both methods).

:func:`verdict`: "reproduces" when the interval lies on the claimed side of zero, "reversed"
when it lies on the other side, otherwise "not shown".

Many claims at once: :func:`holm_adjust` — Holm's step-down adjusted p-values (Holm 1979):
with the ``m`` finite p-values sorted ``p_(1) ≤ … ≤ p_(m)``,
``p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) p_(j))``. Rejecting where ``p̃ < α`` controls the
family-wise error rate at ``α`` under any dependence between the tests.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

LEVEL = 0.95


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0``, ``0 ≤ x ≤ 1``."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Distribution function of Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    # tail = I_x(df/2, 1/2) / 2 with x = df / (df + t²); for small |t| through the complement
    # 1 - I_y(1/2, df/2), y = t² / (df + t²), so that t is not lost in 1 - x
    y = t * t / (df + t * t)
    tail = (
        0.5 * (1.0 - betainc(0.5, df / 2.0, y))
        if y < 0.5
        else 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    )
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t (bisection on :func:`t_cdf` to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def paired_t(x: Sequence[float], y: Sequence[float] | None = None, level: float = LEVEL) -> dict:
    """Paired comparison of ``x`` against ``y`` (or one sample ``x`` of differences when ``y`` is
    ``None``): ``n``, ``mean`` (of ``x - y``), ``sd``, ``lo``/``hi`` (t interval), ``p``
    (two-sided paired t-test), ``wins`` (differences > 0). With n < 2 the interval and p are NaN;
    with zero spread the interval is the point and p is 0 (or 1 when the mean is 0)."""
    diffs = (
        [float(a) for a in x]
        if y is None
        else [float(a) - float(b) for a, b in zip(x, y, strict=True)]
    )
    n = len(diffs)
    out = {
        "n": n,
        "mean": statistics.fmean(diffs) if diffs else math.nan,
        "wins": sum(d > 0 for d in diffs),
        "losses": sum(d < 0 for d in diffs),
    }
    if n < 2:
        return {**out, "sd": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan}
    sd = statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    if se == 0:
        return {
            **out,
            "sd": 0.0,
            "lo": out["mean"],
            "hi": out["mean"],
            "p": 1.0 if out["mean"] == 0 else 0.0,
        }
    half = t_ppf(0.5 + level / 2.0, n - 1) * se
    p = 2.0 * (1.0 - t_cdf(abs(out["mean"]) / se, n - 1))
    return {**out, "sd": sd, "lo": out["mean"] - half, "hi": out["mean"] + half, "p": min(1.0, p)}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of sorted values, ``q`` in [0, 1]."""
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def bootstrap_mean_ci(
    values: Sequence[float],
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement;
    numpy ``default_rng(seed)``, ``n_boot`` resamples, linear-interpolation percentiles)."""
    import numpy as np

    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 1000):
        stop = min(start + 1000, n_boot)
        means[start:stop] = x[rng.integers(0, x.size, size=(stop - start, x.size))].mean(axis=1)
    means.sort()
    return _percentile(means.tolist(), (1 - level) / 2), _percentile(
        means.tolist(), (1 + level) / 2
    )


def paired_bootstrap_mean(
    x: Sequence[float],
    y: Sequence[float],
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """Item-level paired comparison: mean of ``x_i - y_i`` with the percentile bootstrap
    interval over items (both resampled with the same indices)."""
    d = [float(a) - float(b) for a, b in zip(x, y, strict=True)]
    if not d:
        return {"n": 0, "mean": math.nan, "lo": math.nan, "hi": math.nan}
    lo, hi = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed, level=level)
    return {"n": len(d), "mean": statistics.fmean(d), "lo": lo, "hi": hi}


def binomial_cdf(k: int, n: int, p: float = 0.5) -> float:
    """``P(X ≤ k)`` for ``X ~ Binomial(n, p)`` (exact sum)."""
    if k < 0:
        return 0.0
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n) + 1)))


def mcnemar_exact(first_correct: Sequence[bool], second_correct: Sequence[bool]) -> dict:
    """Exact McNemar test of two methods on the same items: ``b`` = items only the first gets
    right, ``c`` = only the second; ``p = min(1, 2 P(X ≤ min(b, c)))``, ``X ~ Bin(b + c, 1/2)``."""
    pairs = list(zip(first_correct, second_correct, strict=True))
    b = sum(bool(f) and not bool(s) for f, s in pairs)
    c = sum(bool(s) and not bool(f) for f, s in pairs)
    p = 1.0 if b + c == 0 else min(1.0, 2.0 * binomial_cdf(min(b, c), b + c))
    return {"n": len(pairs), "b": b, "c": c, "p": p}


def paired_bootstrap_accuracy(
    first_correct: Sequence[bool],
    second_correct: Sequence[bool],
    n_boot: int = 5_000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """Accuracy difference (first − second) on the same items, with the percentile bootstrap
    interval over items (both methods resampled with the same indices)."""
    return paired_bootstrap_mean(
        [float(bool(f)) for f in first_correct],
        [float(bool(s)) for s in second_correct],
        n_boot=n_boot,
        seed=seed,
        level=level,
    )


def verdict(lo: float, hi: float, direction: int = 1) -> str:
    """ "reproduces" when the interval ``[lo, hi]`` excludes zero on the claimed side
    (``direction`` +1: above zero, −1: below), "reversed" when it excludes zero on the other
    side, "not shown" otherwise (also for NaN bounds)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    if math.isnan(lo) or math.isnan(hi):
        return "not shown"
    lo, hi = (lo, hi) if direction == 1 else (-hi, -lo)
    if lo > 0:
        return "reproduces"
    if hi < 0:
        return "reversed"
    return "not shown"


def holm_adjust(p_values: Sequence[float | None]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sort the ``m`` finite p-values
    ascending, ``p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) p_(j))`` (Holm 1979). ``None`` or NaN
    entries (no test) come back NaN and do not count towards ``m``."""
    finite = sorted(
        (float(p), i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)
    )
    m = len(finite)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
