"""What every index returns, and the top-k selection they share."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flagstone.errors import IdError


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
    else:
        part = np.broadcast_to(np.arange(n), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    # sort by score descending, then by position ascending for determinism
    order = np.lexsort((part, -part_scores), axis=1)
    positions = np.take_along_axis(part, order, axis=1).astype(np.int64)
    best = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    positions[np.isneginf(best)] = -1  # masked out (deleted or filtered): not a hit
    return SearchResult(positions, best)


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


def best_of(candidates: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best candidates by score (ties: lower position first), best first."""
    if len(candidates) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        candidates, scores = candidates[keep], scores[keep]
    order = np.lexsort((candidates, -scores))
    return candidates[order], scores[order]


class IdMap:
    """Maps external string ids to row positions; refuses duplicates. ``len`` counts live ids; a removed
    id keeps its row (``ids[row]`` becomes None) until the owner compacts."""

    def __init__(self) -> None:
        self.ids: list[str | None] = []
        self._pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._pos

    @property
    def rows(self) -> int:
        """Rows ever allocated, live or removed."""
        return len(self.ids)

    def live_mask(self) -> np.ndarray:
        return np.fromiter((i is not None for i in self.ids), dtype=bool, count=len(self.ids))

    def remove(self, ids: Sequence[str]) -> np.ndarray:
        """Forget ``ids``; returns their rows. Unknown ids raise KeyError naming them."""
        rows = self.positions(ids)
        for i, row in zip(ids, rows):
            del self._pos[i]
            self.ids[row] = None
        return rows

    def reorder(self, rows: np.ndarray) -> None:
        """Keep only ``rows``, in that order: new row n is old row ``rows[n]``."""
        self.ids = [self.ids[r] for r in rows]
        self._pos = {i: n for n, i in enumerate(self.ids) if i is not None}

    @classmethod
    def from_ids(cls, ids: Sequence[str]) -> IdMap:
        id_map = cls()
        id_map.extend(ids)
        return id_map

    def extend(self, ids: Sequence[str]) -> None:
        new = [str(i) for i in ids]
        if any(not i for i in new):
            raise IdError("ids must be non-empty strings")
        if len(set(new)) != len(new):
            repeated = sorted(i for i, n in Counter(new).items() if n > 1)
            raise IdError(f"duplicate ids in one add() call: {repeated[:3]}")
        clash = [i for i in new if i in self._pos]
        if clash:
            raise IdError(f"ids already in the index: {clash[:3]}")
        for i in new:
            self._pos[i] = len(self.ids)
            self.ids.append(i)

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise IdError(f"{len(missing)} unknown ids, e.g. {missing[:3]}")
        return np.array([self._pos[i] for i in ids], dtype=np.int64)


class IdIndex:
    """What every index shares: external ids, tombstones for removed rows, and the id views of results."""

    def __init__(self) -> None:
        self.id_map = IdMap()
        self._alive = np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.id_map)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.id_map

    @property
    def ids(self) -> list[str | None]:
        """Id of every row (None for removed rows until ``compact``)."""
        return self.id_map.ids

    def ids_of(self, positions: np.ndarray) -> list[list[str]]:
        """Result rows as ids (padding positions -1 dropped)."""
        return [[self.id_map.ids[p] for p in row if p >= 0] for row in positions]

    def _track_added(self, ids: Sequence[str]) -> None:
        self.id_map.extend(ids)
        self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])

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

    def _restore_ids(self, ids: np.ndarray) -> None:
        self.id_map = IdMap.from_ids([str(i) for i in ids])
        self._alive = np.ones(len(self.id_map), dtype=bool)
