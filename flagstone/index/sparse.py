"""Exact search over sparse term weights (BM25 or a model's lexical weights) with a CSC inverted layout."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flagstone.index.base import IdMap, SearchResult, stack_results, top_k
from flagstone.models.embeddings import SparseWeights

_QUERY_BLOCK = 256


class SparseIndex:
    """Documents as rows of a sparse (docs x vocabulary) matrix; a query's score is a sparse dot product."""

    def __init__(self, vocab_size: int) -> None:
        from scipy.sparse import csr_matrix

        self.vocab_size = vocab_size
        self.id_map = IdMap()
        self._matrix = csr_matrix((0, vocab_size), dtype=np.float32)
        self._by_term = None  # (vocab x docs) CSR built lazily: each row is a posting list

    def __len__(self) -> int:
        return len(self.id_map)

    def add(self, ids: Sequence[str], weights: SparseWeights) -> None:
        from scipy.sparse import vstack

        if weights.vocab_size != self.vocab_size:
            raise ValueError(f"vocabulary size {weights.vocab_size} != index's {self.vocab_size}")
        if len(ids) != len(weights):
            raise ValueError(f"{len(ids)} ids for {len(weights)} rows")
        self.id_map.extend(ids)
        self._matrix = vstack([self._matrix, weights.to_scipy()], format="csr")
        self._by_term = None

    @property
    def postings(self):
        if self._by_term is None:
            self._by_term = self._matrix.T.tocsr()
        return self._by_term

    def search(self, queries: SparseWeights, k: int) -> SearchResult:
        q = queries.to_scipy()
        parts = []
        for s in range(0, q.shape[0], _QUERY_BLOCK):
            scores = np.asarray((q[s : s + _QUERY_BLOCK] @ self.postings).todense(), dtype=np.float32)
            parts.append(top_k(scores, k))
        return stack_results(parts) if parts else top_k(np.zeros((0, len(self)), np.float32), k)

    def rescore(self, queries: SparseWeights, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        q = queries.to_scipy()
        return [np.asarray((self._matrix[p] @ q[i].T).todense(), dtype=np.float32).ravel()
                for i, p in enumerate(positions)]
