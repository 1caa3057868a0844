"""Statistics for results a CI gate can trust: intervals on rates and means, and paired tests
of a run against a baseline run on the same images.

Everything here is a thin layer over scipy.stats (Wilson and Clopper-Pearson intervals,
exact binomial tests, the bootstrap), seeded so that the same inputs give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: confidence level of every interval the harness reports
LEVEL = 0.95
#: resamples of every bootstrap
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str

    def __iter__(self):
        return iter((self.low, self.high))


NO_INTERVAL = Interval(math.nan, math.nan, "")


def rate_interval(k: int, n: int, level: float = LEVEL, method: str = "wilson") -> Interval:
    """The interval of a proportion of ``k`` in ``n`` (``wilson`` or ``clopper-pearson``)."""
    from scipy.stats import binomtest

    if n <= 0:
        return NO_INTERVAL
    kind = {"wilson": "wilson", "clopper-pearson": "exact"}[method]
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method=kind)
    return Interval(float(ci.low), float(ci.high), method)


def _rng(seed: int | Sequence[int]) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap_interval(values: np.ndarray, statistic: str = "mean", seed: int = 0,
                       level: float = LEVEL, resamples: int = RESAMPLES) -> Interval:
    """A percentile bootstrap interval of the mean (or median) of ``values``, seeded."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return NO_INTERVAL
    if len(values) == 1 or np.all(values == values[0]):
        return Interval(float(values[0]), float(values[0]), "bootstrap")
    fn = np.mean if statistic == "mean" else np.median
    res = bootstrap((values,), fn, n_resamples=resamples, confidence_level=level,
                    method="percentile", random_state=_rng(seed), vectorized=True)
    return Interval(float(res.confidence_interval.low), float(res.confidence_interval.high),
                    "bootstrap")


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of a run (``new``) with a baseline on the same ``n`` images.

    ``change``: new minus baseline (a rate or a mean); ``worse``: the change in the bad
    direction (positive = worse); ``p_value``: of the one-sided test that the new run is
    worse; ``significant``: p < alpha; ``detectable``: the smallest worsening the test could
    have found significant with these images (in the metric's units); ``detail`` says how."""

    n: int
    change: float
    worse: float
    p_value: float
    alpha: float
    detectable: float
    method: str
    detail: str

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def mcnemar(base: np.ndarray, new: np.ndarray, higher_is_better: bool,
            alpha: float = 0.05) -> PairedTest:
    """McNemar's exact test of two paired 0/1 outcomes (the exact binomial test on the
    discordant pairs), one-sided towards "the new run is worse"."""
    from scipy.stats import binomtest

    base = np.asarray(base, dtype=bool)
    new = np.asarray(new, dtype=bool)
    n = len(base)
    up = int(np.sum(~base & new))      # 0 -> 1
    down = int(np.sum(base & ~new))    # 1 -> 0
    bad, good = (down, up) if higher_is_better else (up, down)
    d = bad + good
    p = binomtest(bad, d, 0.5, alternative="greater").pvalue if d else 1.0
    change = (up - down) / n if n else 0.0
    worse = (bad - good) / n if n else 0.0
    detectable = _mcnemar_detectable(good, n, alpha)
    detail = (f"McNemar exact, {n} paired images: {bad} changed for the worse, {good} for the "
              f"better")
    return PairedTest(n, change, worse, float(p), alpha, detectable, "mcnemar", detail)


def _mcnemar_detectable(good: int, n: int, alpha: float) -> float:
    """The smallest net worsening (bad - good flips, over n) the exact test finds significant
    when ``good`` images changed for the better: the least ``bad`` with
    P(Binomial(bad + good, 1/2) >= bad) < alpha, found by bisection (the p-value falls as
    ``bad`` grows)."""
    from scipy.stats import binomtest

    def significant(bad: int) -> bool:
        return bad > 0 and binomtest(bad, bad + good, 0.5, alternative="greater").pvalue < alpha

    lo, hi = 0, n - good
    if hi <= 0 or not significant(hi):
        return math.inf
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if significant(mid):
            hi = mid
        else:
            lo = mid
    return (hi - good) / n


def paired_bootstrap(base: np.ndarray, new: np.ndarray, higher_is_better: bool,
                     alpha: float = 0.05, seed: int = 0,
                     resamples: int = RESAMPLES) -> PairedTest:
    """A paired bootstrap of the mean difference (new - base) over the images both runs have
    a value for; one-sided towards "the new run is worse"."""
    base = np.asarray(base, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    keep = np.isfinite(base) & np.isfinite(new)
    diff = new[keep] - base[keep]
    n = int(keep.sum())
    if n == 0:
        return PairedTest(0, math.nan, math.nan, 1.0, alpha, math.inf, "paired-bootstrap",
                          "no image has a value in both runs")
    sign = -1.0 if higher_is_better else 1.0
    worse_diff = sign * diff                     # positive = worse
    observed = float(worse_diff.mean())
    rng = _rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means = worse_diff[idx].mean(axis=1)
    # p: the share of resampled means at or below zero (no worsening), with the usual +1
    p = float((np.sum(means <= 0) + 1) / (resamples + 1))
    spread = float(np.std(means))
    from scipy.stats import norm

    detectable = float(norm.ppf(1 - alpha) * spread) if spread > 0 else 0.0
    detail = f"paired bootstrap of the mean difference over {n} images ({resamples} resamples)"
    return PairedTest(n, float(diff.mean()), observed, p, alpha, detectable,
                      "paired-bootstrap", detail)
