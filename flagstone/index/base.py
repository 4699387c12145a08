"""What every index returns, and the top-k selection they share."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SearchResult:
    """Top-k hits for a batch of queries: ``positions``/``scores`` are (queries, k) arrays, best first."""

    positions: np.ndarray  # int64 row numbers into the index
    scores: np.ndarray  # float32


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
    return SearchResult(positions, np.take_along_axis(part_scores, order, axis=1).astype(np.float32))


def stack_results(parts: Sequence[SearchResult]) -> SearchResult:
    """Concatenate the results of consecutive query blocks."""
    return SearchResult(np.concatenate([p.positions for p in parts]), np.concatenate([p.scores for p in parts]))


class IdMap:
    """Maps external string ids to row positions; refuses duplicates."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._pos: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, ids: Sequence[str]) -> None:
        new = [str(i) for i in ids]
        if len(set(new)) != len(new):
            raise ValueError("duplicate ids in one add() call")
        clash = [i for i in new if i in self._pos]
        if clash:
            raise ValueError(f"ids already in the index: {clash[:3]}")
        for i in new:
            self._pos[i] = len(self.ids)
            self.ids.append(i)

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        missing = [i for i in ids if i not in self._pos]
        if missing:
            raise KeyError(f"unknown ids: {missing[:3]}")
        return np.array([self._pos[i] for i in ids], dtype=np.int64)
