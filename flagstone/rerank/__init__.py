"""Reranking a retriever's results: re-order ``Hits`` with a reranker model from
:mod:`flagstone.models.reranker`, optionally interpolating with the first stage's scores."""
from __future__ import annotations

from flagstone.rerank.cached import CachedReranker, ScoringTime
from flagstone.rerank.hits import interpolate_with_first_stage, rerank_hits

__all__ = ["CachedReranker", "ScoringTime", "interpolate_with_first_stage", "rerank_hits"]
