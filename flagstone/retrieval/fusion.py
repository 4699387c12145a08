"""Combining several signals' scores for the same candidates: weighted sum and reciprocal-rank fusion."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from flagstone.models.scoring import normalize_scores


def weighted_sum(signal_scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
                 normalize: str = "minmax") -> np.ndarray:
    """Sum of weight x (normalised) score over signals, for one query's candidates."""
    total = None
    for name, w in weights.items():
        part = w * normalize_scores(signal_scores[name], normalize)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("weighted_sum needs at least one weighted signal")
    return total


def reciprocal_rank_fusion(signal_scores: Mapping[str, np.ndarray], weights: Mapping[str, float],
                           k: int = 60) -> np.ndarray:
    """Sum of weight / (k + rank) over signals, ranks computed within the candidate set (1 = best)."""
    total = None
    for name, w in weights.items():
        s = np.asarray(signal_scores[name], dtype=np.float64)
        ranks = np.empty(len(s), dtype=np.float64)
        ranks[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)
        part = w / (k + ranks)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("reciprocal_rank_fusion needs at least one weighted signal")
    return total
