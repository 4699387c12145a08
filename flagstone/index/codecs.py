"""How an index stores document vectors and scores candidates: float32, float16, or product quantisation."""
from __future__ import annotations

import numpy as np

from flagstone.errors import require_extra
from flagstone.models.scoring import SCORE_BLOCK, blocked_inner_products  # noqa: F401 (SCORE_BLOCK: re-exported)

CODECS = ("flat", "fp16", "pq")


def require_faiss():
    require_extra("index", ("faiss",), "this index needs")
    import faiss

    return faiss


class Codec:
    """Stores codes for rows and scores a query against any subset of rows by inner product."""

    name = "base"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.codes = self.empty()

    @property
    def codes(self) -> np.ndarray:
        """One row of codes per stored vector."""
        return self._buffer[: self._size]

    @codes.setter
    def codes(self, value: np.ndarray) -> None:
        self._buffer = value  # may be memory-mapped and read-only: append copies it into memory first
        self._size = len(value)

    def empty(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def trained(self) -> bool:
        return True

    def train(self, vectors: np.ndarray) -> None:
        """Learn whatever the codec needs from a sample (nothing for float codecs)."""

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def append(self, vectors: np.ndarray) -> None:
        """Store codes for ``vectors`` after the existing rows (amortised: capacity grows by half)."""
        new = self.encode(vectors)
        end = self._size + len(new)
        if end > len(self._buffer) or not self._buffer.flags.writeable or isinstance(self._buffer, np.memmap):
            buffer = np.empty((max(end, self._size + self._size // 2 + 16), *new.shape[1:]), dtype=new.dtype)
            buffer[: self._size] = self.codes
            self._buffer = buffer
        self._buffer[self._size : end] = new
        self._size = end

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of ``rows`` (exact for float codecs, the quantised approximation for PQ)."""
        raise NotImplementedError

    def keep(self, rows: np.ndarray) -> None:
        self.codes = np.ascontiguousarray(self.codes[rows])

    def scores(self, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """(queries, rows) inner products; all rows when ``rows`` is None."""
        raise NotImplementedError

    @property
    def bytes_per_vector(self) -> int:
        return int(self.codes.itemsize * (self.codes.shape[1] if self.codes.ndim == 2 else 1))

    def state(self) -> dict[str, np.ndarray]:
        return {"codes": self.codes}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.codes = arrays["codes"]

    def params(self) -> dict[str, object]:
        return {"codec": self.name}


class FlatCodec(Codec):
    """Exact float32 vectors."""

    name = "flat"

    def empty(self) -> np.ndarray:
        return np.zeros((0, self.dim), dtype=np.float32)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def scores(self, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        return blocked_inner_products(queries, self.codes if rows is None else self.codes[rows])

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.codes[rows], dtype=np.float32)

    def decode(self, rows: np.ndarray) -> np.ndarray:
        return self.vectors(rows)


class Float16Codec(FlatCodec):
    """Half-precision vectors: half the memory, scores within ~1e-3 of float32."""

    name = "fp16"

    def empty(self) -> np.ndarray:
        return np.zeros((0, self.dim), dtype=np.float16)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(vectors, dtype=np.float16)

    def scores(self, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        return blocked_inner_products(queries, self.codes if rows is None else self.codes[rows])


class PQCodec(Codec):
    """Product quantisation (faiss): ``m`` sub-vectors of ``nbits`` each; optional OPQ rotation first.

    A query is scored through a (m x 2^nbits) table of sub-vector inner products, so scoring a candidate
    reads m bytes instead of 4 x dim.
    """

    name = "pq"

    def __init__(self, dim: int, m: int | None = None, nbits: int = 8, opq: bool = False) -> None:
        if nbits != 8:
            raise ValueError("PQ codes are one byte per sub-vector (nbits=8)")
        self.m = m or _default_pq_m(dim)
        if dim % self.m:
            raise ValueError(f"PQ needs dim ({dim}) divisible by m ({self.m})")
        self.nbits = nbits
        self.opq = opq
        self.centroids = np.zeros((self.m, 2 ** nbits, dim // self.m), dtype=np.float32)
        self.rotation = np.eye(dim, dtype=np.float32)
        self._trained = False
        super().__init__(dim)

    def empty(self) -> np.ndarray:
        return np.zeros((0, self.m), dtype=np.uint8)

    @property
    def trained(self) -> bool:
        return self._trained

    def train(self, vectors: np.ndarray) -> None:
        faiss = require_faiss()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.opq:
            opq = faiss.OPQMatrix(self.dim, self.m)
            opq.train(x)
            self.rotation = faiss.vector_to_array(opq.A).reshape(self.dim, self.dim).astype(np.float32)
            x = x @ self.rotation.T
        pq = faiss.ProductQuantizer(self.dim, self.m, self.nbits)
        pq.train(np.ascontiguousarray(x))
        self.centroids = faiss.vector_to_array(pq.centroids).reshape(self.m, 2 ** self.nbits, -1)
        self._trained = True

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32) @ self.rotation.T
        sub = x.reshape(len(x), self.m, -1)
        codes = np.empty((len(x), self.m), dtype=np.uint8)
        for j in range(self.m):  # nearest centroid per sub-space (L2)
            c = self.centroids[j]
            dist = (c * c).sum(axis=1)[None, :] - 2 * sub[:, j] @ c.T
            codes[:, j] = dist.argmin(axis=1)
        return codes

    def decode(self, rows: np.ndarray) -> np.ndarray:
        codes = self.codes[rows]
        parts = [self.centroids[j][codes[:, j]] for j in range(self.m)]
        rotated = np.concatenate(parts, axis=1) if parts else np.zeros((len(codes), self.dim), np.float32)
        return np.ascontiguousarray(rotated @ self.rotation, dtype=np.float32)  # the rotation is orthogonal

    def tables(self, queries: np.ndarray) -> np.ndarray:
        """(queries, m, 2^nbits) inner products of each query sub-vector with each sub-centroid."""
        q = (np.asarray(queries, dtype=np.float32) @ self.rotation.T).reshape(len(queries), self.m, -1)
        # one BLAS product per sub-space ((m, queries, s) @ (m, s, 256)); einsum was 1.6 ms per query
        per_space = np.matmul(q.transpose(1, 0, 2), self.centroids.transpose(0, 2, 1))
        return np.ascontiguousarray(per_space.transpose(1, 0, 2), dtype=np.float32)

    @property
    def codebooks_by_column(self) -> np.ndarray:
        """(m, sub_dim, 256) contiguous: the layout the compiled scan builds its tables from."""
        if getattr(self, "_by_column", None) is None or self._by_column_of is not self.centroids:
            self._by_column = np.ascontiguousarray(self.centroids.transpose(0, 2, 1), dtype=np.float32)
            self._by_column_of = self.centroids
        return self._by_column

    def scores(self, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        tables = self.tables(queries)
        codes = self.codes if rows is None else self.codes[rows]
        out = np.zeros((len(queries), len(codes)), dtype=np.float32)
        for j in range(self.m):
            out += tables[:, j, codes[:, j]]
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"codes": self.codes, "pq_centroids": self.centroids, "pq_rotation": self.rotation}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.codes = arrays["codes"]
        self.centroids = np.asarray(arrays["pq_centroids"])
        self.rotation = np.asarray(arrays["pq_rotation"])
        self._trained = True

    def params(self) -> dict[str, object]:
        return {"codec": self.name, "pq_m": self.m, "pq_nbits": self.nbits, "opq": self.opq}


def _default_pq_m(dim: int) -> int:
    """Largest divisor of dim that is at most dim / 4 (4 dimensions per byte), e.g. 96 for 384."""
    for m in range(dim // 4, 0, -1):
        if dim % m == 0:
            return m
    return 1


def make_codec(name: str, dim: int, *, pq_m: int | None = None, pq_nbits: int = 8, opq: bool = False) -> Codec:
    if name == "flat":
        return FlatCodec(dim)
    if name == "fp16":
        return Float16Codec(dim)
    if name == "pq":
        return PQCodec(dim, pq_m, pq_nbits, opq)
    raise ValueError(f"unknown codec {name!r}; codecs: {CODECS}")
