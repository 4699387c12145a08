"""Indexes: exact flat, IVF and HI² for dense vectors; an inverted index for sparse term weights (dot product or
BM25); a multi-vector index for ColBERT. All answer one protocol (see :mod:`flagstone.index.base`):
add / remove / search(queries, k, allow=...) / compact / save / load / len / describe."""
from __future__ import annotations

import os
from pathlib import Path

from flagstone.index.base import Index


def load(folder: str | os.PathLike[str], *, mmap: bool = False, verify: bool = True) -> Index:
    """Open any saved index folder, whatever its kind. ``verify`` checks every array's SHA-256 (also with
    ``mmap=True``); a damaged folder raises :class:`flagstone.errors.IndexFormatError` or its subclass
    :class:`flagstone.errors.CorruptIndexError`, naming the file."""
    return Index.load(folder, mmap=mmap, verify=verify)


def verify(folder: str | os.PathLike[str]) -> list[Path]:
    """Check a saved index folder as a load does (checksums of every array, headers, manifest, settings) without
    reading the arrays into memory; returns the files checked, or raises as :func:`load`."""
    from flagstone.index.storage import index_files

    Index.load(folder, mmap=True, verify=True)
    return index_files(folder)
