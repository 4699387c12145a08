"""Exact search over sparse term weights (BM25 or a model's lexical weights) with an inverted layout."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from flagstone.index.base import IdIndex, SearchResult, stack_results, top_k
from flagstone.index.storage import IndexFormatError, load_index, save_index
from flagstone.models.embeddings import SparseWeights

_QUERY_BLOCK = 256


class SparseIndex(IdIndex):
    """Documents as rows of a sparse (docs x vocabulary) matrix; a query's score is a sparse dot product.

    Same interface as the dense indexes: add, search, remove, compact, save, load, len, describe.
    """

    kind = "sparse"

    def __init__(self, vocab_size: int) -> None:
        from scipy.sparse import csr_matrix

        super().__init__()
        self.vocab_size = vocab_size
        self._matrix = csr_matrix((0, vocab_size), dtype=np.float32)
        self._by_term = None  # (vocab x docs) CSR built lazily: each row is a posting list

    def add(self, ids: Sequence[str], weights: SparseWeights) -> None:
        from scipy.sparse import vstack

        if weights.vocab_size != self.vocab_size:
            raise ValueError(f"vocabulary size {weights.vocab_size} != index's {self.vocab_size}")
        if len(ids) != len(weights):
            raise ValueError(f"{len(ids)} ids for {len(weights)} rows")
        if len(weights.weights) and not np.isfinite(weights.weights).all():
            from flagstone.errors import VectorError

            raise VectorError("term weights contain NaN or infinity")
        self._track_added(ids)
        self._matrix = vstack([self._matrix, weights.to_scipy()], format="csr")
        self._by_term = None

    def _permute(self, rows: np.ndarray) -> None:
        super()._permute(rows)
        self._matrix = self._matrix[rows]
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
            if not self._alive.all():
                scores[:, ~self._alive] = -np.inf
            parts.append(top_k(scores, k))
        return stack_results(parts) if parts else top_k(np.zeros((0, len(self)), np.float32), k)

    def rescore(self, queries: SparseWeights, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        q = queries.to_scipy()
        return [np.asarray((self._matrix[p] @ q[i].T).todense(), dtype=np.float32).ravel()
                for i, p in enumerate(positions)]

    def describe(self) -> dict[str, object]:
        n = max(len(self), 1)
        m = self._matrix
        return {"kind": self.kind, "documents": len(self), "rows": self.id_map.rows, "vocab_size": self.vocab_size,
                "postings": int(m.nnz), "bytes_per_document": (m.data.nbytes + m.indices.nbytes + m.indptr.nbytes) / n}

    def save(self, folder: str | os.PathLike[str]) -> None:
        self.compact()
        m = self._matrix
        save_index(folder, self.kind, {"vocab_size": self.vocab_size},
                   {"ids": np.asarray(self.id_map.ids, dtype=str), "indptr": m.indptr, "indices": m.indices,
                    "data": m.data})

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, mmap: bool = False, verify: bool = True) -> SparseIndex:
        from scipy.sparse import csr_matrix

        kind, params, arrays = load_index(folder, mmap=mmap, verify=verify)
        if kind != cls.kind:
            raise IndexFormatError(f"{folder} holds a {kind!r} index, not {cls.kind!r}")
        index = cls(params["vocab_size"])
        index._restore_ids(arrays["ids"])
        index._matrix = csr_matrix((np.asarray(arrays["data"]), np.asarray(arrays["indices"]),
                                    np.asarray(arrays["indptr"])), shape=(len(index.id_map), params["vocab_size"]))
        return index
