"""Inverted-file index: k-means clusters over the vectors; a query scores the documents of its nearest
clusters only."""
from __future__ import annotations

import math

import numpy as np

from flagstone.index.base import SearchResult, register
from flagstone.index.codecs import FlatCodec, Float16Codec, PQCodec, require_faiss
from flagstone.index.dense import DenseIndex, check_vectors

_MIN_POINTS_PER_LIST = 39
_NO_VECTORS = np.zeros((0, 1), dtype=np.float32)  # placeholders for the kernel argument a codec does not use
_NO_CODES = np.zeros((0, 1), dtype=np.uint8)  # faiss's k-means warns below this many training points per centroid


def default_n_lists(n: int) -> int:
    """About 4 sqrt(N) clusters, never fewer than 39 training points each."""
    return max(1, min(int(4 * math.sqrt(n)), n // _MIN_POINTS_PER_LIST))


def train_centroids(vectors: np.ndarray, n_lists: int, seed: int = 1234) -> np.ndarray:
    """Spherical k-means centroids (unit length, for inner-product assignment)."""
    if n_lists == 1:
        c = vectors.mean(axis=0, keepdims=True)
        return (c / max(np.linalg.norm(c), 1e-12)).astype(np.float32)
    faiss = require_faiss()
    kmeans = faiss.Kmeans(vectors.shape[1], n_lists, niter=20, seed=seed, spherical=True, verbose=False)
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return kmeans.centroids.astype(np.float32)


@register
class IVFIndex(DenseIndex):
    """``n_lists`` clusters (default about 4 sqrt(N) at the first add), ``n_probe`` probed per query
    (default sqrt(n_lists)). Each document lives in exactly one cluster.

    Clusters are learnt at the first ``add`` and kept across later adds; ``describe()["drift"]`` tells how far
    the documents have moved from them, and ``retrain()`` learns them again from the stored vectors.
    """

    kind = "ivf"

    def __init__(self, dim: int, *, n_lists: int | None = None, n_probe: int | None = None, codec: str = "flat",
                 pq_m: int | None = None, opq: bool = False) -> None:
        super().__init__(dim, codec=codec, pq_m=pq_m, opq=opq)
        if n_lists is not None and n_lists < 1 or n_probe is not None and n_probe < 1:
            raise ValueError("n_lists and n_probe must be at least 1")
        self.n_lists = n_lists
        self._configured_lists = n_lists
        self._n_probe = n_probe
        self.centroids: np.ndarray | None = None
        self.assign = np.zeros(0, dtype=np.int32)
        self.assign_similarity = np.zeros(0, dtype=np.float32)  # each row's similarity to its centroid
        self.trained_on = 0  # documents the centroids were learnt from
        self.similarity_at_training = 0.0  # their mean similarity to their centroid
        self._lists: tuple[np.ndarray, np.ndarray] | None = None  # (offsets, rows) grouped by cluster

    @property
    def n_probe(self) -> int:
        default = math.ceil(math.sqrt(self.n_lists or 1))
        return min(self._n_probe or default, self.n_lists or 1)

    @n_probe.setter
    def n_probe(self, value: int) -> None:
        if value < 1:
            raise ValueError("n_probe must be at least 1")
        self._n_probe = value

    @property
    def trained(self) -> bool:
        return self.centroids is not None and self.codec.trained

    def train(self, vectors: np.ndarray) -> None:
        vectors = check_vectors(vectors, self.dim)
        self.n_lists = min(self.n_lists or default_n_lists(len(vectors)), len(vectors))
        self.centroids = train_centroids(vectors, self.n_lists)
        self.trained_on = len(vectors)
        self.similarity_at_training = float((vectors @ self.centroids.T).max(axis=1).mean())
        self.codec.train(vectors)

    def retrain(self, vectors: np.ndarray | None = None) -> None:
        """Learn the clusters again from the live documents and reassign every row.

        The codec's own parameters (PQ codebooks) are learnt again only when the documents' exact
        ``vectors`` are passed (in row order of the live rows); without them the stored codes are decoded,
        which is exact for float32 / float16 storage.
        """
        self.compact()
        exact = vectors is not None
        vectors = check_vectors(vectors, self.dim) if exact else self.codec.decode(np.arange(self.id_map.rows))
        if len(vectors) != self.id_map.rows:
            raise ValueError(f"{len(vectors)} vectors for {self.id_map.rows} documents")
        if len(vectors) == 0:
            return
        self.n_lists = min(self._configured_lists or default_n_lists(len(vectors)), len(vectors))
        self.centroids = train_centroids(vectors, self.n_lists)
        self.trained_on = len(vectors)
        self.similarity_at_training = float((vectors @ self.centroids.T).max(axis=1).mean())
        if exact:
            self.codec.train(vectors)
            self.codec.codes = self.codec.encode(vectors)
        self.assign = np.zeros(0, dtype=np.int32)
        self.assign_similarity = np.zeros(0, dtype=np.float32)
        self._added(np.arange(len(vectors)), vectors)

    def _added(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        similarity = vectors @ self.centroids.T
        self.assign = np.concatenate([self.assign, similarity.argmax(axis=1).astype(np.int32)])
        self.assign_similarity = np.concatenate([self.assign_similarity, similarity.max(axis=1).astype(np.float32)])
        self._lists = None
        # a bulk add stores rows cluster by cluster, so a probed list is one contiguous block of memory;
        # small adds stay appended (cheap) until the next bulk add, compact or save
        if len(rows) * 8 >= self.id_map.rows:
            self._sort_by_cluster()

    def _sort_by_cluster(self) -> None:
        order = np.argsort(self.assign, kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            self._permute(order)

    def compact(self) -> None:
        super().compact()
        self._sort_by_cluster()

    def _kept(self, keep: np.ndarray) -> None:
        self.assign = self.assign[keep]
        self.assign_similarity = self.assign_similarity[keep]
        self._lists = None

    def drift(self) -> dict[str, float | int]:
        """How far the documents have moved from the clusters: documents added since training, and the mean
        similarity of live documents to their centroid now against when the clusters were learnt."""
        live = self._alive[: len(self.assign_similarity)]
        now = float(self.assign_similarity[live].mean()) if live.any() else 0.0
        sizes = np.bincount(self.assign[live], minlength=self.n_lists or 1) if live.any() else np.zeros(1)
        return {"trained_on": self.trained_on, "added_since_training": max(self.id_map.rows - self.trained_on, 0),
                "centroid_similarity_at_training": round(self.similarity_at_training, 6),
                "centroid_similarity_now": round(now, 6),
                "largest_list_over_mean": round(float(sizes.max() / max(sizes.mean(), 1e-12)), 3)}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "drift": self.drift()}

    @property
    def lists(self) -> tuple[np.ndarray, np.ndarray]:
        if self._lists is None:
            order = np.argsort(self.assign, kind="stable")
            offsets = np.zeros(self.n_lists + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(np.bincount(self.assign, minlength=self.n_lists))
            self._lists = (offsets, order.astype(np.int64))
        return self._lists

    def expected_candidates(self) -> float:
        return self.n_probe * self.id_map.rows / max(self.n_lists or 1, 1)

    def probed_lists(self, queries: np.ndarray, n_probe: int | None = None) -> np.ndarray:
        """(queries, n_probe) the clusters each query visits, nearest centroids by inner product."""
        n_probe = min(n_probe or self.n_probe, self.n_lists)
        scores = queries @ self.centroids.T
        if n_probe >= self.n_lists:
            return np.ascontiguousarray(np.broadcast_to(np.arange(self.n_lists), scores.shape), dtype=np.int64)
        return np.ascontiguousarray(np.argpartition(-scores, n_probe - 1, axis=1)[:, :n_probe], dtype=np.int64)

    def _probe_for(self, allowed_fraction: float) -> int:
        """Probe 1/fraction times more lists under an allow-list, so as many allowed rows are scored as
        unfiltered rows would be."""
        return min(self.n_lists, math.ceil(self.n_probe / max(allowed_fraction, 1e-9)))

    def _search(self, queries: np.ndarray, k: int, mask: np.ndarray, allowed_fraction: float) -> SearchResult:
        no_terms = np.zeros(len(queries) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        no_postings = np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        result = self._scan(queries, k, mask, self.probed_lists(queries, self._probe_for(allowed_fraction)),
                            no_terms, no_postings)
        return self._fill_short(queries, k, mask, result)

    def _fill_short(self, queries: np.ndarray, k: int, mask: np.ndarray, result: SearchResult) -> SearchResult:
        """Under an allow-list, queries whose probed lists held fewer than k allowed rows are scored over the
        whole allowed set, so a filtered search returns k hits whenever k allowed documents exist."""
        if mask is self._alive:
            return result
        allowed = np.flatnonzero(mask)
        short = np.flatnonzero((result.positions >= 0).sum(axis=1) < min(k, len(allowed)))
        if len(short) == 0:
            return result
        exact = self._exhaustive(queries[short], k, allowed)
        positions, scores = result.positions.copy(), result.scores.copy()
        evaluated = result.docs_evaluated.copy()
        positions[short], scores[short] = exact.positions, exact.scores
        evaluated[short] += exact.docs_evaluated
        return SearchResult(positions, scores, evaluated)

    def _scan(self, queries: np.ndarray, k: int, mask: np.ndarray, probed: np.ndarray,
              query_terms: tuple[np.ndarray, np.ndarray], postings: tuple[np.ndarray, np.ndarray]) -> SearchResult:
        """Score the union of probed clusters and term postings; compiled for float32 and PQ codecs."""
        list_offsets, list_rows = self.lists
        term_offsets, terms = query_terms
        post_offsets, post_rows = postings
        mask = np.ascontiguousarray(mask)
        if isinstance(self.codec, (FlatCodec, PQCodec)) and type(self.codec) is not Float16Codec:
            from flagstone.index import _kernels

            use_pq = isinstance(self.codec, PQCodec)
            if use_pq:
                vectors, codes, luts = _NO_VECTORS, self.codec.codes, self.codec.tables(queries)
            else:
                vectors, codes, luts = self.codec.codes, _NO_CODES, np.zeros((len(queries), 1, 1), np.float32)
            rows, scores, evaluated = _kernels.search_lists(queries, vectors, codes, luts, use_pq, mask, probed,
                                                            list_offsets, list_rows, term_offsets, terms,
                                                            post_offsets, post_rows, k)
            return SearchResult(rows, scores, evaluated)
        candidates = []
        for qi, clusters in enumerate(probed):
            parts = [list_rows[list_offsets[c] : list_offsets[c + 1]] for c in clusters]
            parts += [post_rows[post_offsets[t] : post_offsets[t + 1]]
                      for t in terms[term_offsets[qi] : term_offsets[qi + 1]]]
            candidates.append(np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64))
        return self._search_candidates(queries, k, mask, candidates)

    def _params(self) -> dict[str, object]:
        return {**super()._params(), "n_lists": self.n_lists, "n_probe": self.n_probe}

    def bytes_per_document(self) -> float:
        n = max(len(self), 1)
        return self.codec.bytes_per_vector + 4 + (self.centroids.nbytes if self.centroids is not None else 0) / n

    def _state(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids, "assign": self.assign, "assign_similarity": self.assign_similarity,
                "trained_on": np.asarray(self.trained_on), "similarity_at_training": np.asarray(
                    self.similarity_at_training)}

    @classmethod
    def _from_params(cls, params: dict) -> IVFIndex:
        return cls(params["dim"], n_lists=params["n_lists"], n_probe=params["n_probe"], codec=params["codec"],
                   pq_m=params.get("pq_m"), opq=params.get("opq", False))

    def _load_state(self, params: dict, arrays: dict[str, np.ndarray]) -> None:
        self.centroids = np.asarray(arrays["centroids"])
        self.assign = np.asarray(arrays["assign"])
        if "assign_similarity" in arrays:  # folders from before drift tracking lack these
            self.assign_similarity = np.asarray(arrays["assign_similarity"])
            self.trained_on = int(arrays["trained_on"])
            self.similarity_at_training = float(arrays["similarity_at_training"])
        else:
            self.assign_similarity = np.zeros(len(self.assign), dtype=np.float32)
