"""Late-interaction (ColBERT) search over per-token vectors: exact MaxSim, and re-scoring of candidates."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from flagstone.index.base import IdMap, SearchResult, stack_results, top_k
from flagstone.index.storage import IndexFormatError, load_index, save_index
from flagstone.models.embeddings import MultiVectors
from flagstone.retrieval.scoring import colbert_scores


class MultiVectorIndex:
    """Scores documents by MaxSim. ``search`` is exhaustive; ``search_candidates`` re-scores another
    index's candidates (the usual way to use it at scale). Same interface as the other indexes."""

    kind = "multivector"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.id_map = IdMap()
        self._parts: list[MultiVectors] = []
        self._docs: MultiVectors | None = MultiVectors.from_list([], dim)
        self._alive = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.id_map)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.id_map

    @property
    def ids(self) -> list[str | None]:
        return self.id_map.ids

    def ids_of(self, positions: np.ndarray) -> list[list[str]]:
        return [[self.id_map.ids[p] for p in row if p >= 0] for row in positions]

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
        self.id_map.extend(ids)
        self._parts = [self.docs, vectors]
        self._docs = None
        self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])

    def remove(self, ids: Sequence[str]) -> None:
        self._alive[self.id_map.remove(ids)] = False

    def compact(self) -> None:
        if self.id_map.rows != len(self.id_map):
            keep = np.flatnonzero(self._alive)
            self.id_map.reorder(keep)
            self._docs = self.docs.take(keep)
            self._parts = [self._docs]
            self._alive = np.ones(len(keep), dtype=bool)

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
        index.id_map = IdMap.from_ids([str(i) for i in arrays["ids"]])
        index._docs = MultiVectors(np.asarray(arrays["offsets"]), arrays["vectors"])
        index._parts = [index._docs]
        index._alive = np.ones(len(index.id_map), dtype=bool)
        return index
