"""Is one system better than another on the same queries? Paired significance tests over per-query scores.

IR papers compare two runs query by query: the two-sided paired t-test, or Fisher's randomization test
(swap the two systems' scores on a random subset of queries, count how often the mean difference is at
least the observed one), which assumes nothing about the distribution of the differences. Both are
computed by scipy; only the queries scored by both systems count, and a query missing from one side is an
error rather than silently dropped.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from flagstone.errors import DataError

Method = Literal["randomization", "t-test"]


@dataclass(frozen=True)
class PairedComparison:
    """``candidate`` against ``baseline`` on ``n`` queries: means, their difference and a two-sided p-value."""

    method: str
    n: int
    baseline_mean: float
    candidate_mean: float
    p_value: float

    @property
    def delta(self) -> float:
        return self.candidate_mean - self.baseline_mean

    def as_dict(self) -> dict[str, float | int | str]:
        return {"method": self.method, "queries": self.n, "base": self.baseline_mean, "best": self.candidate_mean,
                "delta": self.delta, "p_value": self.p_value}


def paired_test(baseline: Mapping[str, float], candidate: Mapping[str, float], *,
                queries: Sequence[str] | None = None, method: Method = "randomization",
                n_resamples: int = 10_000, seed: int = 0) -> PairedComparison:
    """Compare per-query scores of two systems (``{query id: score}``) on ``queries`` (default: all of
    ``baseline``'s). ``randomization`` is Fisher's paired randomization test with ``n_resamples`` random sign
    flips (exact when 2^n is smaller), ``t-test`` the paired t-test; both two-sided."""
    from scipy import stats

    ids = list(baseline) if queries is None else list(queries)
    if not ids:
        raise DataError("a paired test needs at least one query")
    missing = [q for q in ids if q not in baseline or q not in candidate]
    if missing:
        raise DataError(f"{len(missing)} queries are scored by only one system (first: {missing[0]!r})")
    a = np.array([baseline[q] for q in ids], dtype=np.float64)
    b = np.array([candidate[q] for q in ids], dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("per-query scores must be finite")
    if np.array_equal(a, b):  # no difference at all: nothing to test (scipy would warn and return nan)
        return PairedComparison(method, len(ids), float(a.mean()), float(b.mean()), 1.0)
    if len(ids) == 1 and method == "randomization":  # exact: both sign flips give the same |difference|
        return PairedComparison(method, 1, float(a.mean()), float(b.mean()), 1.0)
    if method == "t-test":
        p_value = float(stats.ttest_rel(b, a).pvalue)
    elif method == "randomization":
        result = stats.permutation_test((b, a), _mean_difference, permutation_type="samples", vectorized=True,
                                        n_resamples=n_resamples, alternative="two-sided",
                                        random_state=np.random.default_rng(seed))
        p_value = float(result.pvalue)
    else:
        raise ValueError(f"method must be 'randomization' or 't-test', got {method!r}")
    return PairedComparison(method, len(ids), float(a.mean()), float(b.mean()), p_value)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    return np.mean(x - y, axis=axis)
