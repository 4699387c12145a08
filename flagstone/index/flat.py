"""Exact inner-product search: every live document is scored. The reference approximate indexes are
measured against."""
from __future__ import annotations

import numpy as np

from flagstone.index.base import SearchResult, register
from flagstone.index.dense import DenseIndex


@register
class FlatIndex(DenseIndex):
    """Brute force over all vectors (float32 by default, or ``codec="fp16"`` / ``"pq"``)."""

    kind = "flat"

    @property
    def vectors(self) -> np.ndarray:
        """The stored float32 vectors, row by row (flat codec only)."""
        return self.codec.vectors(np.arange(self.id_map.rows))

    def _search(self, queries: np.ndarray, k: int, mask: np.ndarray, allowed_fraction: float) -> SearchResult:
        return self._exhaustive(queries, k, None if mask is self._alive else np.flatnonzero(mask))
