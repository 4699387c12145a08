"""Combining several signals' scores for the same candidates: weighted sum and reciprocal-rank fusion."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from flagstone.models.finite import require_finite
from flagstone.models.scoring import normalize_scores

SIGNALS = ("dense", "sparse", "colbert", "bm25")


def check_weights(weights: Mapping[str, float], known: Sequence[str] = SIGNALS) -> None:
    """Raise ValueError unless ``weights`` name known signals with finite, non-negative weights, not all zero.

    A negative weight would rank a signal's worst documents first, and all-zero weights fuse nothing.
    """
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ValueError(f"unknown signals in weights: {', '.join(unknown)} (known: {', '.join(known)})")
    bad = [f"{name}={w}" for name, w in weights.items() if not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(f"weights must be finite and not negative, got {', '.join(bad)}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError("weights are all zero: give at least one signal a weight above 0")


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
        s = require_finite(np.asarray(signal_scores[name], dtype=np.float64), f"{name} scores to fuse")
        ranks = np.empty(len(s), dtype=np.float64)
        ranks[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)
        part = w / (k + ranks)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("reciprocal_rank_fusion needs at least one weighted signal")
    return total
