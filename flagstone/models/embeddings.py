"""The one result type of every encode call: dense vectors, sparse lexical weights, multi-vectors.

Fields that were not asked for are ``None``; the type never changes with the flags. ``dense`` is a float32
NumPy array by default; ``Embedder.encode(..., precision=...)`` makes it int8/uint8 (quantised), and
``output="torch"`` makes it a CPU ``torch.Tensor`` of the same dtype and shape. Sparse weights and ColBERT vectors
are always NumPy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SparseWeights:
    """A batch of sparse lexical weights in CSR layout: row i holds ``token_ids[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray  # (n + 1,) int64
    token_ids: np.ndarray  # (nnz,) int32, sorted within a row
    weights: np.ndarray  # (nnz,) float32
    vocab_size: int

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, i: int) -> dict[int, float]:
        """The weights of text ``i`` as ``{token_id: weight}``."""
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return {int(t): float(w) for t, w in zip(self.token_ids[lo:hi], self.weights[lo:hi])}

    def to_dicts(self) -> list[dict[int, float]]:
        return [self.row(i) for i in range(len(self))]

    def to_scipy(self):  # -> scipy.sparse.csr_matrix
        from scipy.sparse import csr_matrix

        return csr_matrix(
            (self.weights, self.token_ids, self.indptr), shape=(len(self), self.vocab_size), dtype=np.float32
        )

    @classmethod
    def from_dicts(cls, rows: Sequence[dict[int, float]], vocab_size: int) -> SparseWeights:
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        ids: list[int] = []
        weights: list[float] = []
        for i, row in enumerate(rows):
            for token_id in sorted(row):
                ids.append(token_id)
                weights.append(row[token_id])
            indptr[i + 1] = len(ids)
        return cls(indptr, np.asarray(ids, dtype=np.int32), np.asarray(weights, dtype=np.float32), vocab_size)

    def take(self, indices: Sequence[int] | np.ndarray) -> SparseWeights:
        return SparseWeights.from_csr(self.to_scipy()[np.asarray(indices, dtype=np.int64)])

    @classmethod
    def from_csr(cls, matrix) -> SparseWeights:
        matrix = matrix.tocsr()
        matrix.sort_indices()
        return cls(
            matrix.indptr.astype(np.int64),
            matrix.indices.astype(np.int32),
            matrix.data.astype(np.float32),
            int(matrix.shape[1]),
        )

    @classmethod
    def concat(cls, parts: Sequence[SparseWeights]) -> SparseWeights:
        from scipy.sparse import vstack

        return cls.from_csr(vstack([p.to_scipy() for p in parts], format="csr"))


@dataclass(frozen=True)
class MultiVectors:
    """A ragged batch of token vectors: text i owns ``vectors[offsets[i]:offsets[i+1]]``."""

    offsets: np.ndarray  # (n + 1,) int64
    vectors: np.ndarray  # (total tokens, dim) float32

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.vectors[self.offsets[i] : self.offsets[i + 1]]

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_list(cls, arrays: Sequence[np.ndarray], dim: int) -> MultiVectors:
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(a) for a in arrays])
        vectors = np.concatenate(arrays, axis=0) if arrays else np.zeros((0, dim), dtype=np.float32)
        return cls(offsets, np.ascontiguousarray(vectors, dtype=np.float32))

    def take(self, indices: Sequence[int] | np.ndarray) -> MultiVectors:
        return MultiVectors.from_list([self[int(i)] for i in indices], self.dim)

    @classmethod
    def concat(cls, parts: Sequence[MultiVectors]) -> MultiVectors:
        offsets, base = [np.zeros(1, dtype=np.int64)], 0
        for p in parts:
            offsets.append(p.offsets[1:] - p.offsets[0] + base)
            base += int(p.offsets[-1] - p.offsets[0])
        vectors = [p.vectors[p.offsets[0] : p.offsets[-1]] for p in parts]
        return cls(np.concatenate(offsets), np.ascontiguousarray(np.concatenate(vectors, axis=0), dtype=np.float32))


@dataclass(frozen=True)
class Embeddings:
    """Encoder outputs for a batch of texts, in input order."""

    # (n, dim) float32 by default; int8/uint8 (n, dim) or (n, dim / 8) when quantised; a tensor for output="torch"
    dense: np.ndarray | torch.Tensor | None = None
    sparse: SparseWeights | None = None
    colbert: MultiVectors | None = None

    def __len__(self) -> int:
        for part in (self.dense, self.sparse, self.colbert):
            if part is not None:
                return len(part)
        return 0

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names of the outputs present, e.g. ``("dense", "sparse")``."""
        return tuple(name for name in ("dense", "sparse", "colbert") if getattr(self, name) is not None)

    def take(self, indices: Sequence[int] | np.ndarray) -> Embeddings:
        idx = np.asarray(indices, dtype=np.int64)
        return Embeddings(
            dense=None if self.dense is None else self.dense[idx],
            sparse=None if self.sparse is None else self.sparse.take(idx),
            colbert=None if self.colbert is None else self.colbert.take(idx),
        )

    @classmethod
    def concat(cls, parts: Sequence[Embeddings]) -> Embeddings:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls()
        first = parts[0]
        return cls(
            dense=None if first.dense is None else np.concatenate([p.dense for p in parts], axis=0),
            sparse=None if first.sparse is None else SparseWeights.concat([p.sparse for p in parts]),
            colbert=None if first.colbert is None else MultiVectors.concat([p.colbert for p in parts]),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for ``np.savez``; inverse of :meth:`from_arrays`."""
        arrays: dict[str, np.ndarray] = {}
        if self.dense is not None:
            arrays["dense"] = self.dense
        if self.sparse is not None:
            arrays["sparse_indptr"] = self.sparse.indptr
            arrays["sparse_token_ids"] = self.sparse.token_ids
            arrays["sparse_weights"] = self.sparse.weights
            arrays["sparse_vocab_size"] = np.asarray(self.sparse.vocab_size)
        if self.colbert is not None:
            arrays["colbert_offsets"] = self.colbert.offsets
            arrays["colbert_vectors"] = self.colbert.vectors
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> Embeddings:
        keys = set(arrays.keys()) if hasattr(arrays, "keys") else set(arrays)
        sparse = colbert = None
        if "sparse_indptr" in keys:
            sparse = SparseWeights(
                arrays["sparse_indptr"], arrays["sparse_token_ids"], arrays["sparse_weights"],
                int(arrays["sparse_vocab_size"]),
            )
        if "colbert_offsets" in keys:
            colbert = MultiVectors(arrays["colbert_offsets"], arrays["colbert_vectors"])
        return cls(dense=arrays["dense"] if "dense" in keys else None, sparse=sparse, colbert=colbert)
