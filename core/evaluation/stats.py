"""Small statistics for benchmark summaries and A/B comparisons, with no dependency beyond the standard library.

- Summary interval: the Student t interval ``mean ± t(0.975, n-1) * s / sqrt(n)`` (s: sample standard deviation).
  It assumes case scores are roughly normal around their mean, which holds well for means of bounded cosines over
  tens of cases; with n < 2 there is no interval.
- Comparison: the paired t-test on per-case differences ``b - a`` (two-sided), with the t interval of the mean
  difference. Pairing by case removes the case-to-case spread, which dwarfs most setting effects.

The Student t distribution is computed from the regularized incomplete beta function (continued fraction, modified
Lentz method); quantiles by bisection. Accurate to about 1e-10, far below what a benchmark can resolve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Interval", "PairedTest", "mean_interval", "paired_t_test", "student_t_cdf", "student_t_ppf"]


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny, epsilon = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < epsilon:
            break
    return result


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(probability: float, df: float) -> float:
    """The t value with ``student_t_cdf(t, df) == probability``, for 0 < probability < 1."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    if probability < 0.5:
        return -student_t_ppf(1.0 - probability, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < probability:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with its 95% Student t interval (``low``/``high`` are ``None`` when n < 2)."""

    n: int
    mean: float | None
    std: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95_low": self.low, "ci95_high": self.high}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean, sample standard deviation and Student t interval of ``values`` (``None`` values are ignored)."""
    data = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(data)
    if n == 0:
        return Interval(0, None, None, None, None)
    mean = math.fsum(data) / n
    if n < 2:
        return Interval(1, mean, None, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (n - 1))
    half = student_t_ppf(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of ``b - a``: mean difference, its 95% interval, t statistic and two-sided p-value."""

    n: int
    mean_a: float | None
    mean_b: float | None
    delta: float | None
    low: float | None
    high: float | None
    t: float | None
    p: float | None

    def as_dict(self) -> dict:
        return {"n": self.n, "mean_a": self.mean_a, "mean_b": self.mean_b, "delta": self.delta,
                "ci95_low": self.low, "ci95_high": self.high, "t": self.t, "p": self.p}


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Paired t-test of equal means for matched samples ``a`` and ``b`` (pairs with a ``None`` are dropped)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal lengths, got {len(a)} and {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    n = len(pairs)
    if n == 0:
        return PairedTest(0, None, None, None, None, None, None, None)
    mean_a = math.fsum(x for x, _ in pairs) / n
    mean_b = math.fsum(y for _, y in pairs) / n
    interval = mean_interval([y - x for x, y in pairs])
    delta = interval.mean
    if n < 2:
        return PairedTest(n, mean_a, mean_b, delta, None, None, None, None)
    if interval.std == 0.0:
        # every pair differs by exactly the same amount: no noise, so any nonzero shift is certain
        t = 0.0 if delta == 0.0 else math.copysign(math.inf, delta)
        p = 1.0 if delta == 0.0 else 0.0
        return PairedTest(n, mean_a, mean_b, delta, delta, delta, t, p)
    t = delta / (interval.std / math.sqrt(n))
    p = 2.0 * (1.0 - student_t_cdf(abs(t), n - 1))
    return PairedTest(n, mean_a, mean_b, delta, interval.low, interval.high, t, min(1.0, max(0.0, p)))
