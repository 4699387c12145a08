"""Pair scores on disk: a reranker wrapper that scores only the (query, passage) pairs it has not seen.

Scores live in an :class:`~flagstone.models.cache.EmbeddingCache` (same shards, same crash safety) as
one-column vectors, filed under the reranker's ``cache_key()``; a pair's key is the hash of the pair. A benchmark
killed half-way through reranking thus resumes where it stopped, and two pipelines that rerank overlapping
candidates with the same model score each pair once.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flagstone.models.cache import EmbeddingCache
from flagstone.models.embeddings import Embeddings
from flagstone.models.reranker import checked_scores, validate_pairs


class _PairsAsTexts:
    """What EmbeddingCache asks of an encoder, for pairs written as JSON texts (unambiguous, reversible)."""

    def __init__(self, reranker, show_progress: bool) -> None:
        self.reranker = reranker
        self.show_progress = show_progress
        self.pairs_scored = 0
        self.seconds_scoring = 0.0

    def cache_key(self, outputs: Sequence[str], is_query: bool) -> str:
        return f"rerank-{self.reranker.cache_key()}"

    def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = False, colbert: bool = False,
               is_query: bool = False, show_progress: bool | None = None) -> Embeddings:
        pairs = [tuple(json.loads(t)) for t in texts]
        started = time.perf_counter()
        scores = checked_scores(self.reranker, pairs).reshape(-1, 1)
        self.seconds_scoring += time.perf_counter() - started
        self.pairs_scored += len(pairs)
        return Embeddings(dense=scores)


@dataclass(frozen=True)
class ScoringTime:
    """What a stretch of reranking cost: ``pairs`` asked for, of them ``pairs_scored`` by the model (the rest came
    from the cache) in ``seconds_scoring``. Made by :meth:`CachedReranker.since`."""

    pairs: int
    pairs_scored: int
    seconds_scoring: float

    @property
    def from_cache(self) -> int:
        return self.pairs - self.pairs_scored

    def ms_per_query(self, queries: int) -> float | None:
        """Time per freshly scored pair times the pairs per query: what scoring them all would take; None when
        every pair came from the cache (nothing was timed)."""
        if not self.pairs_scored or queries < 1:
            return None
        return 1000 * self.seconds_scoring / self.pairs_scored * self.pairs / queries

    def to_dict(self) -> dict[str, float]:
        return {"pairs": self.pairs, "pairs_scored": self.pairs_scored,
                "seconds_scoring": round(self.seconds_scoring, 3), "from_cache": self.from_cache}


class CachedReranker:
    """``reranker`` with its scores read from and written to ``cache``.

    ``reranker`` must say what determines its scores through ``cache_key()`` (``CrossEncoderReranker`` does);
    do not wrap a model that is being trained: the key comes from the weight files, not the weights in memory.
    """

    def __init__(self, reranker, cache: EmbeddingCache, *, show_progress: bool = False) -> None:
        if not callable(getattr(reranker, "cache_key", None)):
            raise TypeError(f"{type(reranker).__name__} has no cache_key(): its scores cannot be cached")
        if not isinstance(cache, EmbeddingCache):
            raise TypeError(f"cache must be an EmbeddingCache, got {type(cache).__name__}")
        self.reranker = reranker
        self.cache = cache
        self._encoder = _PairsAsTexts(reranker, show_progress)
        self.pairs_requested = 0  # pairs asked for through score_pairs, cached or not

    def cache_key(self) -> str:
        return self.reranker.cache_key()

    @property
    def pairs_scored(self) -> int:
        """Pairs the wrapped reranker has scored (cache misses) since this object was made."""
        return self._encoder.pairs_scored

    @property
    def seconds_scoring(self) -> float:
        """Time the wrapped reranker spent on them: what a timing must divide, since hits cost nothing."""
        return self._encoder.seconds_scoring

    def mark(self) -> ScoringTime:
        """The counters now; ``since(mark)`` is then the cost of what was reranked in between."""
        return ScoringTime(self.pairs_requested, self.pairs_scored, self.seconds_scoring)

    def since(self, mark: ScoringTime) -> ScoringTime:
        return ScoringTime(self.pairs_requested - mark.pairs, self.pairs_scored - mark.pairs_scored,
                           self.seconds_scoring - mark.seconds_scoring)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        texts = [json.dumps(pair, ensure_ascii=False) for pair in validate_pairs(pairs)]
        self.pairs_requested += len(texts)
        if not texts:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.cache.encode(self._encoder, texts).dense, dtype=np.float32).reshape(-1)

    def __repr__(self) -> str:
        return f"CachedReranker({self.reranker!r}, cache={str(self.cache.root)!r})"
