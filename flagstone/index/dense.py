"""The dense-vector index family's shared machinery on top of :class:`flagstone.index.base.Index`.

Subclasses decide which rows a query looks at (``_search``); the codec decides how rows are stored and scored.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flagstone.errors import MissingDependencyError, VectorError
from flagstone.index.base import (
    ON_DISK_ARRAYS,
    Index,
    SearchResult,
    best_of,
    pad_results,
    part_of,
    stack_results,
    top_k,
)
from flagstone.index.codecs import Codec, FlatCodec, make_codec

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


def exact_rerank(queries: np.ndarray, vectors: np.ndarray, candidates: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of each query's candidate rows (-1 = none) by exact inner product with float32 ``vectors``,
    reading only those rows; (rows, scores) padded with -1 / -inf, ties to the lower row."""
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    try:
        from flagstone.index._kernels import rerank
    except MissingDependencyError:  # NumPy, one query at a time (exact search does not need numba)
        rows_out = []
        for q, cands in zip(queries, candidates):
            cands = cands[cands >= 0]
            rows_out.append(best_of(cands, np.asarray(vectors[cands], np.float32) @ q, k))
        result = pad_results(rows_out, k, [0] * len(rows_out))
        return result.positions, result.scores
    return rerank(np.ascontiguousarray(queries, dtype=np.float32), np.asarray(vectors), candidates, k)


class DenseIndex(Index):
    """Base class; use :class:`FlatIndex`, :class:`IVFIndex` or :class:`HI2Index`."""

    kind = "dense"

    def __init__(self, dim: int, *, codec: str = "flat", pq_m: int | None = None, opq: bool = False,
                 refine: int | None = None) -> None:
        if dim < 1:
            raise ValueError("dim must be positive")
        if refine is not None and refine < 1:
            raise ValueError("refine must be at least 1 (candidates re-ranked = k x refine)")
        if refine is not None and codec == "flat":
            raise ValueError("refine re-ranks compressed codes (fp16, pq); the flat codec is already exact")
        super().__init__()
        self.dim = dim
        self.codec: Codec = make_codec(codec, dim, pq_m=pq_m, opq=opq)
        # refinement (as faiss's IndexRefine): the codec picks k x refine candidates, their exact float32
        # vectors re-rank them. Those vectors are saved with the index and memory-mapped by every load (an
        # add or compact copies them into memory until the next save). ``docs_evaluated`` counts the
        # documents the codec scored; the k x refine re-ranked ones are among them.
        self.refine = refine
        self.refine_store: FlatCodec | None = FlatCodec(dim) if refine else None

    # -- writing -------------------------------------------------------------------------------
    def _items(self, items: Any) -> np.ndarray:
        return check_vectors(part_of(items, "dense", np.ndarray, "dense vectors"), self.dim)

    def _queries(self, queries: Any) -> np.ndarray:
        return check_vectors(part_of(queries, "dense", np.ndarray, "dense query vectors"), self.dim, "queries")

    def _append(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if not self.trained:
            self.train(vectors)
        self.codec.append(vectors)
        if self.refine_store is not None:
            self.refine_store.append(vectors)
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
        if self.refine_store is not None:
            self.refine_store.keep(rows)
        self._kept(rows)

    def _added(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Hook: new rows were appended."""

    def _kept(self, keep: np.ndarray) -> None:
        """Hook: storage now holds the old rows ``keep``, in that order."""

    # -- searching -----------------------------------------------------------------------------
    def _candidates_for(self, k: int) -> int:
        return k * self.refine if self.refine_store is not None else k

    def _finish(self, queries: Any, k: int, result: SearchResult) -> SearchResult:
        """With refinement, re-rank the codec's candidates by exact inner product and keep the best ``k``."""
        if self.refine_store is None:
            return result
        vectors = queries[0] if isinstance(queries, tuple) else queries  # HI² passes (vectors, terms)
        rows, scores = exact_rerank(vectors, self.refine_store.codes, result.positions, k)
        return SearchResult(rows, scores, result.docs_evaluated)

    def exact_top(self, vectors: np.ndarray, k: int) -> np.ndarray:
        """(queries, k) rows of the exact top ``k`` among live rows: float32 refinement vectors when kept,
        else the codec's own scores (exact for flat, the compressed ranking for fp16 / PQ)."""
        store = self.refine_store if self.refine_store is not None else self.codec
        parts = []
        for s in range(0, len(vectors), _QUERY_BLOCK):
            scores = store.scores(vectors[s : s + _QUERY_BLOCK])
            scores[:, ~self._alive] = -np.inf
            parts.append(_fast_top_k(scores, k).positions)
        return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)

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
        """Scores of given rows, one array per query (for hybrid fusion): exact with refinement, else the
        codec's."""
        return self._row_scores(self._queries(queries), positions)

    def _row_scores(self, vectors: np.ndarray, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.refine_store is not None:
            return [self.refine_store.scores(q[None, :], np.asarray(p, dtype=np.int64))[0]
                    for q, p in zip(vectors, positions)]
        return [self.codec.scores(q[None, :], p)[0] for q, p in zip(vectors, positions)]

    # -- description and persistence -------------------------------------------------------------
    def params(self) -> dict[str, object]:
        return self._params()

    def _params(self) -> dict[str, Any]:
        return {"dim": self.dim, **self.codec.params(), "refine": self.refine}

    def memory_parts(self) -> dict[str, np.ndarray]:
        """The arrays a search reads, by role; ``describe()`` turns them into bytes per document, in RAM or
        memory-mapped from disk."""
        parts = {"codes": self.codec.codes}
        tables = [np.asarray(a).ravel() for name, a in self.codec.state().items() if name != "codes"]
        if tables:  # PQ codebooks and rotation: a fixed cost, shared by all documents
            parts["codebooks"] = np.concatenate([t.view(np.uint8) for t in tables])
        if self.refine_store is not None:
            parts["refine_vectors"] = self.refine_store.codes
        # the ids: UTF-8 bytes, offsets and the hash table that finds them (see flagstone.index.idmap)
        return {**parts, **self.id_map.arrays()}

    def memory(self) -> dict[str, Any]:
        """Bytes per live document of every array, and the totals kept in RAM and on disk. Refinement vectors
        count as on disk (every load memory-maps them; a search reads only the re-ranked rows), everything
        else as in RAM, as after a load without ``mmap`` (with ``mmap=True`` all of it stays on disk)."""
        n = max(len(self), 1)
        ram, disk, parts = 0, 0, {}
        for name, array in self.memory_parts().items():
            size = int(np.asarray(array).nbytes)
            on_disk = name in ON_DISK_ARRAYS
            parts[name] = {"bytes_per_document": round(size / n, 2), "where": "disk" if on_disk else "ram"}
            disk += size if on_disk else 0
            ram += 0 if on_disk else size
        return {"bytes_per_document": ram / n, "bytes_per_document_on_disk": disk / n, "parts": parts}

    def bytes_per_document(self) -> float:
        """Bytes per document of the arrays kept in RAM (see ``memory()``)."""
        return float(self.memory()["bytes_per_document"])

    def describe(self) -> dict[str, Any]:
        memory = self.memory()
        return {**super().describe(), "bytes_per_document_on_disk": memory["bytes_per_document_on_disk"],
                "memory": memory["parts"]}

    def _arrays(self) -> dict[str, np.ndarray]:
        refine = {} if self.refine_store is None else {"refine_vectors": self.refine_store.codes}
        return {**self.codec.state(), **refine, **self._state()}

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def _from_params(cls, params: dict) -> DenseIndex:
        return cls(params["dim"], codec=params["codec"], pq_m=params.get("pq_m"), opq=params.get("opq", False),
                   refine=params.get("refine"))

    def _restore(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.codec.load_state(arrays)
        if self.refine_store is not None:
            self.refine_store.load_state({"codes": arrays["refine_vectors"]})
            if len(self.refine_store.codes) != len(self.codec.codes):
                raise ValueError(f"{len(self.refine_store.codes)} refinement vectors for {len(self.codec.codes)} rows")
        self._load_state(params, arrays)

    def _load_state(self, params: dict, arrays: dict[str, np.ndarray]) -> None:
        """Hook: restore subclass state."""
