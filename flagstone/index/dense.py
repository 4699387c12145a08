"""The dense-vector index family's shared machinery on top of :class:`flagstone.index.base.Index`.

Subclasses decide which rows a query looks at (``_search``); the codec decides how rows are stored and scored.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flagstone.errors import MissingDependencyError, VectorError
from flagstone.index.base import (
    Index,
    SearchResult,
    best_of,
    pad_results,
    part_of,
    stack_results,
    top_k,
)
from flagstone.index.codecs import Codec, make_codec

_QUERY_BLOCK = 256  # queries per matmul in exhaustive search: bounds the (queries x rows) block


def _fast_top_k(scores: np.ndarray, k: int) -> SearchResult:
    """top_k through the compiled heap when numba is installed (several times faster for small k); the
    same results from NumPy without it, so exact search does not need the index extra."""
    try:
        from flagstone.index._kernels import top_k_rows
    except MissingDependencyError:
        return top_k(scores, k)
    if k >= scores.shape[1]:
        return top_k(scores, k)
    rows, best = top_k_rows(np.ascontiguousarray(scores, dtype=np.float32), k)
    return SearchResult(rows, best)


def check_vectors(vectors: np.ndarray, dim: int, what: str = "vectors") -> np.ndarray:
    """float32 (n, dim) array, or VectorError naming the problem."""
    array = np.asarray(vectors)
    if array.ndim == 1 and what == "queries":
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise VectorError(f"expected {what} of shape (n, {dim}), got {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise VectorError(f"{what} row {bad} contains NaN or infinity")
    return array


class DenseIndex(Index):
    """Base class; use :class:`FlatIndex`, :class:`IVFIndex` or :class:`HI2Index`."""

    kind = "dense"

    def __init__(self, dim: int, *, codec: str = "flat", pq_m: int | None = None, opq: bool = False) -> None:
        if dim < 1:
            raise ValueError("dim must be positive")
        super().__init__()
        self.dim = dim
        self.codec: Codec = make_codec(codec, dim, pq_m=pq_m, opq=opq)

    # -- writing -------------------------------------------------------------------------------
    def _items(self, items: Any) -> np.ndarray:
        return check_vectors(part_of(items, "dense", np.ndarray, "dense vectors"), self.dim)

    def _queries(self, queries: Any) -> np.ndarray:
        return check_vectors(part_of(queries, "dense", np.ndarray, "dense query vectors"), self.dim, "queries")

    def _append(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if not self.trained:
            self.train(vectors)
        self.codec.append(vectors)
        self._added(rows, vectors)

    @property
    def trained(self) -> bool:
        return self.codec.trained

    def train(self, vectors: np.ndarray) -> None:
        """Learn codec (and, in subclasses, cluster) parameters; called by the first ``add``."""
        self.codec.train(check_vectors(vectors, self.dim))

    def _permute(self, rows: np.ndarray) -> None:
        super()._permute(rows)
        self.codec.keep(rows)
        self._kept(rows)

    def _added(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Hook: new rows were appended."""

    def _kept(self, keep: np.ndarray) -> None:
        """Hook: storage now holds the old rows ``keep``, in that order."""

    # -- searching -----------------------------------------------------------------------------
    def _search_rows(self, queries: np.ndarray, k: int, rows: np.ndarray) -> SearchResult:
        return self._exhaustive(queries, k, rows)

    def _search_candidates(self, queries: np.ndarray, k: int, mask: np.ndarray,
                           candidates: Sequence[np.ndarray]) -> SearchResult:
        rows_out, evaluated = [], []
        for q, rows in zip(queries, candidates):
            rows = rows[mask[rows]]
            scores = self.codec.scores(q[None, :], rows)[0] if len(rows) else np.zeros(0, np.float32)
            rows_out.append(best_of(rows, scores, k))
            evaluated.append(len(rows))
        return pad_results(rows_out, k, evaluated)

    def _exhaustive(self, queries: np.ndarray, k: int, rows: np.ndarray | None) -> SearchResult:
        """Score every live row (or only ``rows``) for every query, a block of queries per matmul."""
        parts = []
        for s in range(0, len(queries), _QUERY_BLOCK):
            block = queries[s : s + _QUERY_BLOCK]
            if rows is None:  # all rows, in place: no gather of the stored vectors
                scores = self.codec.scores(block)
                if not self._alive.all():
                    scores[:, ~self._alive] = -np.inf
                result = _fast_top_k(scores, k)
                evaluated = int(self._alive.sum())
            else:
                result = top_k(self.codec.scores(block, rows), k)
                hit = result.positions >= 0
                result = SearchResult(np.where(hit, rows[np.where(hit, result.positions, 0)], -1), result.scores)
                evaluated = len(rows)
            parts.append(SearchResult(result.positions, result.scores, np.full(len(block), evaluated, np.int64)))
        out = stack_results(parts)
        if out.positions.shape[1] < k:  # fewer rows than k: pad to the promised width
            return pad_results([(p[p >= 0], s[p >= 0]) for p, s in zip(out.positions, out.scores)], k,
                               out.docs_evaluated)
        return out

    def rescore(self, queries: Any, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codec scores of given rows, one array per query (for hybrid fusion)."""
        queries = self._queries(queries)
        return [self.codec.scores(q[None, :], p)[0] for q, p in zip(queries, positions)]

    # -- description and persistence -------------------------------------------------------------
    def params(self) -> dict[str, object]:
        return self._params()

    def _params(self) -> dict[str, Any]:
        return {"dim": self.dim, **self.codec.params()}

    def bytes_per_document(self) -> float:
        return float(self.codec.bytes_per_vector)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {**self.codec.state(), **self._state()}

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def _from_params(cls, params: dict) -> DenseIndex:
        return cls(params["dim"], codec=params["codec"], pq_m=params.get("pq_m"), opq=params.get("opq", False))

    def _restore(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.codec.load_state(arrays)
        self._load_state(params, arrays)

    def _load_state(self, params: dict, arrays: dict[str, np.ndarray]) -> None:
        """Hook: restore subclass state."""
