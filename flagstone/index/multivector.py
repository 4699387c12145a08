"""Late-interaction (ColBERT) search over per-token vectors: exact MaxSim, and re-scoring of candidates."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flagstone.errors import VectorError
from flagstone.index.base import Index, SearchResult, pad_to, part_of, register, stack_results, top_k
from flagstone.models.embeddings import MultiVectors
from flagstone.models.scoring import colbert_scores


@register
class MultiVectorIndex(Index):
    """Scores documents by MaxSim. ``search`` is exhaustive; ``search_candidates`` re-scores another
    index's candidates (the usual way to use it at scale)."""

    kind = "multivector"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self._parts: list[MultiVectors] = []
        self._docs: MultiVectors | None = MultiVectors.from_list([], dim)

    @property
    def docs(self) -> MultiVectors:
        if self._docs is None:
            self._docs = MultiVectors.concat(self._parts)
            self._parts = [self._docs]
        return self._docs

    def _items(self, items: Any) -> MultiVectors:
        vectors = part_of(items, "colbert", MultiVectors, "token vectors (MultiVectors)")
        if vectors.dim != self.dim:
            raise ValueError(f"expected {self.dim}-d token vectors, got {vectors.dim}")
        if len(vectors.vectors) and not np.isfinite(vectors.vectors).all():
            raise VectorError("token vectors contain NaN or infinity")
        return vectors

    def _append(self, rows: np.ndarray, vectors: MultiVectors) -> None:
        self._parts = [self.docs, vectors]
        self._docs = None

    def _permute(self, rows: np.ndarray) -> None:
        super()._permute(rows)
        self._docs = self.docs.take(rows)
        self._parts = [self._docs]

    def _search(self, queries: MultiVectors, k: int, mask: np.ndarray, allowed_fraction: float) -> SearchResult:
        parts = []
        for i in range(len(queries)):
            scores = colbert_scores(queries.take([i]), self.docs)
            scores[:, ~mask] = -np.inf
            block = top_k(scores, k)
            parts.append(SearchResult(block.positions, block.scores, np.array([int(mask.sum())], np.int64)))
        return pad_to(stack_results(parts), k) if parts else top_k(np.zeros((0, 0), np.float32), k)

    def _search_rows(self, queries: MultiVectors, k: int, rows: np.ndarray) -> SearchResult:
        docs = self.docs.take(rows)
        parts = []
        for i in range(len(queries)):
            block = top_k(colbert_scores(queries.take([i]), docs), k)
            hit = block.positions >= 0
            positions = np.where(hit, rows[np.where(hit, block.positions, 0)], -1)
            parts.append(SearchResult(positions, block.scores, np.array([len(rows)], np.int64)))
        return pad_to(stack_results(parts), k) if parts else top_k(np.zeros((0, 0), np.float32), k)

    def rescore(self, queries: Any, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        queries = self._queries(queries)
        docs = self.docs
        return [colbert_scores(queries.take([i]), docs.take(p))[0] for i, p in enumerate(positions)]

    def search_candidates(self, queries: MultiVectors, candidate_ids: Sequence[Sequence[str]],
                          k: int) -> list[list[tuple[str, float]]]:
        """Re-rank each query's candidates (ids from any first-stage index) by late interaction."""
        out = []
        for i, ids in enumerate(candidate_ids):
            rows = self.id_map.positions(list(ids))
            scores = self.rescore(queries.take([i]), [rows])[0]
            order = np.lexsort((rows, -scores))[:k]
            out.append(list(zip(self.id_map.ids_at(rows[order]), scores[order].tolist())))
        return out

    def _params(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tokens": int(self.docs.offsets[-1])}

    def bytes_per_document(self) -> float:
        docs = self.docs
        return (docs.vectors.nbytes + docs.offsets.nbytes) / max(len(self), 1)

    def _arrays(self) -> dict[str, np.ndarray]:
        docs = self.docs
        return {"offsets": docs.offsets, "vectors": docs.vectors}

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> MultiVectorIndex:
        return cls(params["dim"])

    def _restore(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._docs = MultiVectors(np.asarray(arrays["offsets"]), arrays["vectors"])
        self._parts = [self._docs]

