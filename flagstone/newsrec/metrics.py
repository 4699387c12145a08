"""The MIND leaderboard's metrics: per impression AUC, MRR, nDCG@5 and nDCG@10, averaged over impressions.

Definitions follow the MIND competition's scorer:
- AUC: the area under the ROC curve of the impression's scores against its click labels (ties count half);
- MRR: the reciprocal ranks of *all* clicked items summed, divided by the number of clicks;
- nDCG@k: DCG with gain 2^label - 1 and discount log2(rank + 1) over the top k, divided by the DCG of the
  ideal order.
Candidates are ranked by descending score; equal scores keep the impression's order (a stable sort).
An impression whose candidates are all clicked or all unclicked has no AUC; it is left out of every average
and counted in ``skipped``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flagstone.errors import DataError

METRICS = ("auc", "mrr", "ndcg@5", "ndcg@10")


def _ranked(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Labels in the order of descending score (stable: ties keep their impression order)."""
    return labels[np.argsort(-scores, kind="stable")]


def auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC as the Mann-Whitney statistic: the chance a clicked item outscores an unclicked one (ties 1/2)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs at least one clicked and one unclicked candidate")
    # average ranks over all scores handle ties exactly
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    rank_sum = ranks[y == 1].sum()
    return float((rank_sum - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


def mrr(labels: Sequence[int], scores: Sequence[float]) -> float:
    ranked = _ranked(np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64))
    return float(np.sum(ranked / np.arange(1, len(ranked) + 1)) / np.sum(ranked))


def _dcg(ranked: np.ndarray, k: int) -> float:
    top = ranked[:k]
    return float(np.sum((2.0 ** top - 1.0) / np.log2(np.arange(len(top)) + 2.0)))


def ndcg(labels: Sequence[int], scores: Sequence[float], k: int) -> float:
    y = np.asarray(labels, dtype=np.float64)
    ideal = _dcg(np.sort(y)[::-1], k)
    return _dcg(_ranked(y, np.asarray(scores, dtype=np.float64)), k) / ideal


def impression_metrics(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float]:
    """AUC, MRR, nDCG@5 and nDCG@10 of one impression (which needs a click and a non-click)."""
    return {"auc": auc(labels, scores), "mrr": mrr(labels, scores), "ndcg@5": ndcg(labels, scores, 5),
            "ndcg@10": ndcg(labels, scores, 10)}


@dataclass
class NewsRecMetrics:
    """Metrics averaged over the impressions that have both a click and a non-click."""

    auc: float
    mrr: float
    ndcg_5: float
    ndcg_10: float
    impressions: int  # averaged over
    skipped: int  # all clicked or none clicked: no AUC

    def as_dict(self) -> dict[str, float | int]:
        return {"auc": self.auc, "mrr": self.mrr, "ndcg@5": self.ndcg_5, "ndcg@10": self.ndcg_10,
                "impressions": self.impressions, "skipped": self.skipped}


def mean_metrics(labels: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]) -> NewsRecMetrics:
    """The leaderboard numbers over many impressions (``labels[i]`` and ``scores[i]`` belong to impression i)."""
    if len(labels) != len(scores):
        raise DataError(f"{len(labels)} label lists but {len(scores)} score lists")
    rows, skipped = [], 0
    for i, (y, s) in enumerate(zip(labels, scores)):
        if len(y) != len(s):
            raise DataError(f"impression #{i}: {len(y)} labels but {len(s)} scores")
        if not np.all(np.isfinite(np.asarray(s, dtype=np.float64))):
            raise DataError(f"impression #{i}: scores are not finite")
        clicks = int(np.sum(y))
        if clicks == 0 or clicks == len(y):
            skipped += 1
            continue
        rows.append(impression_metrics(y, s))
    if not rows:
        raise DataError("no impression has both a clicked and an unclicked candidate: nothing to score")
    mean = {m: float(np.mean([r[m] for r in rows])) for m in METRICS}
    return NewsRecMetrics(mean["auc"], mean["mrr"], mean["ndcg@5"], mean["ndcg@10"], len(rows), skipped)
