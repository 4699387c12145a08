"""Exact inner-product search over dense vectors."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flagstone.index.base import IdMap, SearchResult, stack_results, top_k
from flagstone.retrieval.scoring import dense_scores

_QUERY_BLOCK = 256  # queries scored per matmul: bounds the (queries x docs) score block in memory


class FlatIndex:
    """Brute-force inner product; the exact reference every approximate index is measured against."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.id_map = IdMap()
        self._blocks: list[np.ndarray] = []
        self._vectors: np.ndarray | None = np.zeros((0, dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.id_map)

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = np.concatenate(self._blocks, axis=0)
            self._blocks = [self._vectors]
        return self._vectors

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        self.id_map.extend(ids)
        self._blocks = [self.vectors, vectors]
        self._vectors = None

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        parts = [top_k(dense_scores(queries[s : s + _QUERY_BLOCK], self.vectors), k)
                 for s in range(0, len(queries), _QUERY_BLOCK)]
        return stack_results(parts)

    def rescore(self, queries: np.ndarray, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of given candidate rows, one array per query."""
        return [self.vectors[p] @ q for q, p in zip(np.asarray(queries, np.float32), positions)]
