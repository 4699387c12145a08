"""Indexes: exact flat, IVF and HI² for dense vectors; an inverted index for sparse term weights; a
multi-vector index for ColBERT. All share add / search / remove / compact / save / load / len / describe."""
from __future__ import annotations

import os


def load(folder: str | os.PathLike[str], *, mmap: bool = False, verify: bool = True):
    """Open any saved index folder, whatever its kind."""
    from flagstone.index.dense import DenseIndex
    from flagstone.index.multivector import MultiVectorIndex
    from flagstone.index.sparse import SparseIndex
    from flagstone.index.storage import load_index

    kind = load_index(folder, mmap=True, verify=False)[0]
    opener = {"sparse": SparseIndex.load, "multivector": MultiVectorIndex.load}.get(kind, DenseIndex.load)
    return opener(folder, mmap=mmap, verify=verify)
