"""Late-interaction (ColBERT) search over per-token vectors: exact MaxSim, and re-scoring of candidates."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from flagstone.index.base import IdIndex, SearchResult, stack_results, top_k
from flagstone.index.storage import IndexFormatError, load_index, save_index
from flagstone.models.embeddings import MultiVectors
from flagstone.models.scoring import colbert_scores


class MultiVectorIndex(IdIndex):
    """Scores documents by MaxSim. ``search`` is exhaustive; ``search_candidates`` re-scores another
    index's candidates (the usual way to use it at scale). Same interface as the other indexes."""

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

    def add(self, ids: Sequence[str], vectors: MultiVectors) -> None:
        if vectors.dim != self.dim:
            raise ValueError(f"expected {self.dim}-d token vectors, got {vectors.dim}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} documents")
        if len(vectors.vectors) and not np.isfinite(vectors.vectors).all():
            from flagstone.errors import VectorError

            raise VectorError("token vectors contain NaN or infinity")
        self._track_added(ids)
        self._parts = [self.docs, vectors]
        self._docs = None

    def _permute(self, rows: np.ndarray) -> None:
        super()._permute(rows)
        self._docs = self.docs.take(rows)
        self._parts = [self._docs]

    def search(self, queries: MultiVectors, k: int) -> SearchResult:
        parts = []
        for i in range(len(queries)):
            scores = colbert_scores(queries.take([i]), self.docs)
            if not self._alive.all():
                scores[:, ~self._alive] = -np.inf
            parts.append(top_k(scores, k))
        return stack_results(parts) if parts else top_k(np.zeros((0, len(self)), np.float32), k)

    def rescore(self, queries: MultiVectors, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
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
            out.append([(self.id_map.ids[rows[j]], float(scores[j])) for j in order])
        return out

    def describe(self) -> dict[str, object]:
        docs = self.docs
        n = max(len(self), 1)
        return {"kind": self.kind, "documents": len(self), "rows": self.id_map.rows, "dim": self.dim,
                "tokens": int(docs.offsets[-1]), "bytes_per_document": (docs.vectors.nbytes + docs.offsets.nbytes) / n}

    def save(self, folder: str | os.PathLike[str]) -> None:
        self.compact()
        docs = self.docs
        save_index(folder, self.kind, {"dim": self.dim},
                   {"ids": np.asarray(self.id_map.ids, dtype=str), "offsets": docs.offsets, "vectors": docs.vectors})

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, mmap: bool = False, verify: bool = True) -> MultiVectorIndex:
        kind, params, arrays = load_index(folder, mmap=mmap, verify=verify)
        if kind != cls.kind:
            raise IndexFormatError(f"{folder} holds a {kind!r} index, not {cls.kind!r}")
        index = cls(params["dim"])
        index._restore_ids(arrays["ids"])
        index._docs = MultiVectors(np.asarray(arrays["offsets"]), arrays["vectors"])
        index._parts = [index._docs]
        return index
