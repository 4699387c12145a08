"""Exact late-interaction (ColBERT) search over per-token vectors."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flagstone.index.base import IdMap, SearchResult, stack_results, top_k
from flagstone.models.embeddings import MultiVectors
from flagstone.retrieval.scoring import colbert_scores


class MultiVectorIndex:
    """Scores every document by MaxSim; exact, meant as reference and as a re-scorer of candidates."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.id_map = IdMap()
        self._parts: list[MultiVectors] = []
        self._docs: MultiVectors | None = MultiVectors.from_list([], dim)

    def __len__(self) -> int:
        return len(self.id_map)

    @property
    def docs(self) -> MultiVectors:
        if self._docs is None:
            self._docs = MultiVectors.concat(self._parts)
            self._parts = [self._docs]
        return self._docs

    def add(self, ids: Sequence[str], vectors: MultiVectors) -> None:
        if vectors.dim != self.dim:
            raise ValueError(f"expected {self.dim}-d token vectors, got {vectors.dim}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} documents")
        self.id_map.extend(ids)
        self._parts = [self.docs, vectors]
        self._docs = None

    def search(self, queries: MultiVectors, k: int) -> SearchResult:
        parts = [top_k(colbert_scores(queries.take([i]), self.docs), k) for i in range(len(queries))]
        return stack_results(parts) if parts else top_k(np.zeros((0, len(self)), np.float32), k)

    def rescore(self, queries: MultiVectors, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        docs = self.docs
        return [colbert_scores(queries.take([i]), docs.take(p))[0] for i, p in enumerate(positions)]
