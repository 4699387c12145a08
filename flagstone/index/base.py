"""The one protocol every index kind answers, what it returns, and the top-k selection they share.

Every index (flat, IVF, HI², sparse inverted, multi-vector) has the same surface, as every faiss index does:
``add(ids, items)``, ``remove(ids)``, ``search(queries, k, *, allow=None) -> SearchResult``,
``save(folder)``, ``Kind.load(folder, mmap=...)``, ``len(index)`` and ``describe()``. ``items`` and
``queries`` are the kind's native type (a float32 array, :class:`SparseWeights` or :class:`MultiVectors`) or
an :class:`Embeddings` holding it; HI² reads the vectors and the term weights from one ``Embeddings``.

``allow`` (ids) restricts results to those documents inside the search, never by post-filtering: a narrow
list is scored exhaustively, a wide one makes approximate indexes probe further. Ids in ``allow`` that the
index does not hold are ignored (the same list can be sent to every shard of a corpus).

Missing results, wherever a query has fewer than ``k`` hits, are padded with position -1 and score -inf.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flagstone.errors import IdError
from flagstone.index.idmap import IdMap
from flagstone.models.embeddings import Embeddings


@dataclass(frozen=True)
class SearchResult:
    """Top-k hits for a batch of queries: ``positions``/``scores`` are (queries, k) arrays, best first.

    Where a query has fewer than k hits (deletions, filters, a small index) the row ends with position -1
    and score -inf. ``docs_evaluated`` counts, per query, the documents whose score was computed.
    """

    positions: np.ndarray  # int64 row numbers into the index
    scores: np.ndarray  # float32
    docs_evaluated: np.ndarray | None = None  # (queries,) int64


def top_k(scores: np.ndarray, k: int) -> SearchResult:
    """Best ``k`` columns of each row, highest score first; ties go to the lower position (stable)."""
    n = scores.shape[1]
    k = min(k, n)
    if k == 0:
        empty = np.zeros((scores.shape[0], 0))
        return SearchResult(empty.astype(np.int64), empty.astype(np.float32))
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        _lowest_positions_on_ties(scores, part)
    else:
        part = np.broadcast_to(np.arange(n), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    # sort by score descending, then by position ascending for determinism
    order = np.lexsort((part, -part_scores), axis=1)
    positions = np.take_along_axis(part, order, axis=1).astype(np.int64)
    best = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    positions[np.isneginf(best)] = -1  # masked out (deleted or filtered): not a hit
    return SearchResult(positions, best)


def _lowest_positions_on_ties(scores: np.ndarray, part: np.ndarray) -> None:
    """argpartition keeps an arbitrary subset of the documents tied at the k-th score; keep the lowest
    positions among them instead, in place, so results do not depend on how the rows were split (shards)."""
    k = part.shape[1]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    at_kth = scores == kth[:, None]
    kept_at_kth = (np.take_along_axis(scores, part, axis=1) == kth[:, None]).sum(axis=1)
    for row in np.flatnonzero((at_kth.sum(axis=1) > kept_at_kth) & np.isfinite(kth)):
        above = np.flatnonzero(scores[row] > kth[row])
        part[row] = np.concatenate([above, np.flatnonzero(at_kth[row])[: k - len(above)]])


def stack_results(parts: Sequence[SearchResult]) -> SearchResult:
    """Concatenate the results of consecutive query blocks."""
    counts = [p.docs_evaluated for p in parts]
    return SearchResult(np.concatenate([p.positions for p in parts]), np.concatenate([p.scores for p in parts]),
                        None if any(c is None for c in counts) else np.concatenate(counts))


def pad_results(rows: Sequence[tuple[np.ndarray, np.ndarray]], k: int, evaluated: Sequence[int]) -> SearchResult:
    """Pack per-query (positions, scores), each sorted best first, into (queries, k) arrays padded with -1/-inf."""
    positions = np.full((len(rows), k), -1, dtype=np.int64)
    scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for i, (pos, sc) in enumerate(rows):
        n = min(k, len(pos))
        positions[i, :n] = pos[:n]
        scores[i, :n] = sc[:n]
    return SearchResult(positions, scores, np.asarray(evaluated, dtype=np.int64))


def pad_to(result: SearchResult, k: int) -> SearchResult:
    """``result`` widened to ``k`` columns with -1 / -inf (an index with fewer than k rows)."""
    width = result.positions.shape[1]
    if width >= k:
        return result
    n = len(result.positions)
    return SearchResult(np.concatenate([result.positions, np.full((n, k - width), -1, np.int64)], axis=1),
                        np.concatenate([result.scores, np.full((n, k - width), -np.inf, np.float32)], axis=1),
                        result.docs_evaluated)


def best_of(candidates: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best candidates by score (ties: lower position first), best first."""
    if len(candidates) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        candidates, scores = candidates[keep], scores[keep]
    order = np.lexsort((candidates, -scores))
    return candidates[order], scores[order]


# Arrays every load memory-maps, whatever ``mmap`` says, because a search reads few or none of their rows:
# refinement vectors (only the re-ranked rows, see DenseIndex's ``refine``), IVF's similarity of each row to
# its centroid (read by ``drift()`` only) and HI²'s per-document term lists (read only to rebuild the
# posting lists after an add or a removal). An add or compact copies them into memory until the next save.
ON_DISK_ARRAYS = ("refine_vectors", "assign_similarity", "term_rows", "term_ids", "term_weights")

# Kinds register themselves here when their module is imported. ``load`` finds a kind it has not seen yet
# through this table of module names, so no index module imports the modules that subclass it.
INDEX_KINDS: dict[str, type[Index]] = {}
_KIND_MODULES = {"flat": "flagstone.index.flat", "ivf": "flagstone.index.ivf", "hi2": "flagstone.index.hi2",
                 "sparse": "flagstone.index.sparse", "multivector": "flagstone.index.multivector"}


def register(cls: type[Index]) -> type[Index]:
    """Class decorator: make ``cls.kind`` loadable from saved folders."""
    INDEX_KINDS[cls.kind] = cls
    return cls


def index_class(kind: str) -> type[Index]:
    """The class that reads folders of ``kind`` (importing its module on first use)."""
    from flagstone.index.storage import IndexFormatError

    if kind not in INDEX_KINDS and kind in _KIND_MODULES:
        importlib.import_module(_KIND_MODULES[kind])
    if kind not in INDEX_KINDS:
        raise IndexFormatError(f"unknown index kind {kind!r}; kinds: {sorted(_KIND_MODULES)}")
    return INDEX_KINDS[kind]


def empty_result(n_queries: int, k: int) -> SearchResult:
    """``n_queries`` rows of padding: no hits."""
    return SearchResult(np.full((n_queries, k), -1, dtype=np.int64), np.full((n_queries, k), -np.inf, np.float32),
                        np.zeros(n_queries, dtype=np.int64))


class Index:
    """What every index kind shares: external ids, tombstones for removed rows, allow-lists, persistence.

    Subclasses provide ``_items`` / ``_queries`` (accept the kind's input), ``_append`` (store new rows),
    ``_search`` (top k among rows where ``mask`` is true), ``_search_rows`` (exact top k among given rows),
    ``rescore``, ``_params`` / ``_arrays`` / ``_restore`` (persistence) and ``bytes_per_document``.
    """

    kind = "index"

    def __init__(self) -> None:
        self.id_map = IdMap()
        self._alive = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.id_map)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.id_map

    @property
    def ids(self) -> list[str | None]:
        """Id of every row (None for removed rows until ``compact``), as a new list (one string per row: for
        a few rows, ``id_map.ids_at`` or ``ids_of``)."""
        return self.id_map.ids

    def ids_of(self, positions: np.ndarray) -> list[list[str]]:
        """Result rows as ids (padding positions -1 dropped)."""
        positions = np.asarray(positions)
        hit = positions >= 0
        found = self.id_map.ids_at(positions[hit])  # row by row, in order: one call for every query
        ends = np.cumsum(hit.sum(axis=1)).tolist()
        return [found[a:b] for a, b in zip([0] + ends[:-1], ends)]

    # -- writing -------------------------------------------------------------------------------
    def add(self, ids: Sequence[str], items: Any) -> None:
        """Store ``items`` (one per id) under ``ids``; ids already present raise :class:`IdError`."""
        ids = [str(i) for i in ids]
        items = self._items(items)
        if len(ids) != _count(items):
            raise ValueError(f"{len(ids)} ids for {_count(items)} items")
        if not ids:
            return
        first_row = self.id_map.rows
        self.id_map.extend(ids)  # refuses duplicates before anything is stored
        self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
        try:
            self._append(np.arange(first_row, first_row + len(ids)), items)
        except BaseException:  # leave the index as it was
            self.id_map.truncate(first_row)
            self._alive = self._alive[:first_row]
            raise

    def remove(self, ids: Sequence[str]) -> None:
        """Remove documents; they stop matching at once, their space is freed by ``compact``."""
        self._alive[self.id_map.remove(ids)] = False

    def compact(self) -> None:
        """Rewrite storage without removed rows."""
        if self.id_map.rows != len(self.id_map):
            self._permute(np.flatnonzero(self._alive))

    def _permute(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` of storage, in that order; subclasses move their own arrays too."""
        self.id_map.reorder(rows)
        self._alive = self._alive[rows]

    # -- searching -----------------------------------------------------------------------------
    def search(self, queries: Any, k: int, *, allow: Sequence[str] | None = None) -> SearchResult:
        """Top ``k`` rows per query, best first; ``allow`` restricts the results to those ids."""
        if k < 1:
            raise ValueError("k must be at least 1")
        queries = self._queries(queries)
        n_queries = _count(queries)
        width = self._candidates_for(k)
        if allow is None:
            if len(self) == 0:
                return empty_result(n_queries, k)
            return self._finish(queries, k, self._search(queries, width, self._alive, 1.0))
        rows = self.id_map.known_rows(allow)
        if len(rows) == 0:
            return empty_result(n_queries, k)
        if len(rows) <= self.expected_candidates():  # a narrow list: scoring all of it is cheaper
            return self._finish(queries, k, self._search_rows(queries, width, rows))
        mask = np.zeros_like(self._alive)
        mask[rows] = True
        return self._finish(queries, k, self._search(queries, width, mask, len(rows) / max(len(self), 1)))

    def _candidates_for(self, k: int) -> int:
        """Hook: how many candidates the first pass keeps for a top-``k`` answer (more when re-ranked)."""
        return k

    def _finish(self, queries: Any, k: int, result: SearchResult) -> SearchResult:
        """Hook: turn the first pass's candidates into the top ``k`` (re-ranking indexes score them again)."""
        return result

    def expected_candidates(self) -> float:
        """Rows a query scores on average; an allow-list at most this long is scored exhaustively."""
        return float(self.id_map.rows)

    def _search(self, queries: Any, k: int, mask: np.ndarray, allowed_fraction: float) -> SearchResult:
        """Top ``k`` among rows where ``mask`` is true; approximate kinds probe about 1/fraction more."""
        return self._search_rows(queries, k, np.flatnonzero(mask))

    def _search_rows(self, queries: Any, k: int, rows: np.ndarray) -> SearchResult:
        raise NotImplementedError

    def rescore(self, queries: Any, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of given rows, one array per query (for hybrid fusion)."""
        raise NotImplementedError

    def _items(self, items: Any) -> Any:
        raise NotImplementedError

    def _queries(self, queries: Any) -> Any:
        return self._items(queries)

    def _append(self, rows: np.ndarray, items: Any) -> None:
        raise NotImplementedError

    # -- description and persistence -------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {}

    def bytes_per_document(self) -> float:
        return 0.0

    def describe(self) -> dict[str, Any]:
        """Kind, settings, size and memory per document."""
        return {"kind": self.kind, "documents": len(self), "rows": self.id_map.rows, **self._params(),
                "bytes_per_document": self.bytes_per_document()}

    def _arrays(self) -> dict[str, np.ndarray]:
        return {}

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write a new version of the index to ``folder`` (compacting first); crash-safe, see storage."""
        from flagstone.index.storage import save_index

        self.compact()
        save_index(folder, self.kind, self._params(), {**self.id_map.arrays(), **self._arrays()})

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, mmap: bool = False, verify: bool = True) -> Index:
        """Open a saved index of this class (or of any kind, called on a base class); ``mmap=True`` leaves the
        arrays on disk, for indexes larger than memory."""
        from flagstone.index.storage import CorruptIndexError, IndexFormatError, load_index

        # refinement vectors stay on disk whatever ``mmap`` says: only the few re-ranked rows are ever read
        kind, params, arrays = load_index(folder, mmap=mmap, verify=verify, always_mmap=ON_DISK_ARRAYS)
        target = index_class(kind)
        if not issubclass(target, cls):
            raise IndexFormatError(f"{folder} holds a {kind!r} index, not {cls.kind!r}")
        try:
            index = target._from_params(params)
            if "ids" in arrays:  # folders written before the compact layout: one unicode array
                index.id_map = IdMap.from_ids([str(i) for i in arrays["ids"]])
            else:
                index.id_map = IdMap.from_arrays(arrays)
            index._alive = np.ones(len(index.id_map), dtype=bool)
            index._restore(params, arrays)
        except (KeyError, TypeError, ValueError, IndexError, IdError) as exc:
            # the files passed their checks, so the manifest's settings or array list were edited or damaged
            raise CorruptIndexError(f"{folder}: the manifest does not fit a {kind} index "
                                    f"({exc.__class__.__name__}: {exc})") from None
        return index

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> Index:
        raise NotImplementedError

    def _restore(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Hook: take back the arrays ``_arrays`` wrote."""


def _count(items: Any) -> int:
    if isinstance(items, tuple):  # (vectors, terms) of HI²
        return len(items[0])
    return len(items)


def part_of(items: Any, name: str, native: type | tuple[type, ...], what: str) -> Any:
    """The ``name`` part of an :class:`Embeddings` (or ``items`` itself when it is already ``native``)."""
    if isinstance(items, Embeddings):
        value = getattr(items, name)
        if value is None:
            raise ValueError(f"this index needs {what}: the Embeddings passed have no {name!r} part")
        return value
    if isinstance(items, native):
        return items
    raise TypeError(f"this index takes {what} (or Embeddings holding them), got {type(items).__name__}")
