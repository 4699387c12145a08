"""Indexes: exact flat, IVF and HI² for dense vectors; an inverted index for sparse term weights (dot product or
BM25); a multi-vector index for ColBERT. All answer one protocol (see :mod:`flagstone.index.base`):
add / remove / search(queries, k, allow=...) / compact / save / load / len / describe."""
from __future__ import annotations

import os

from flagstone.index.base import Index


def load(folder: str | os.PathLike[str], *, mmap: bool = False, verify: bool = True) -> Index:
    """Open any saved index folder, whatever its kind."""
    return Index.load(folder, mmap=mmap, verify=verify)
