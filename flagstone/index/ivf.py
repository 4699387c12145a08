"""Inverted-file index: k-means clusters over the vectors; a query scores the documents of its nearest
clusters only."""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from flagstone.errors import TuningError
from flagstone.index.base import Index, SearchResult, register
from flagstone.index.codecs import FlatCodec, PQCodec, require_faiss
from flagstone.index.dense import DenseIndex, check_vectors
from flagstone.models.scoring import blocked_inner_products

_MIN_POINTS_PER_LIST = 39  # faiss's k-means warns below this many training points per centroid
# vectors per matrix product when assigning them to clusters (see IVFIndex.nearest_centroids): bounds the
# (vectors, centroids) float64 matrix; no padding, so a one-document add costs one row
_ASSIGN_BLOCK = 1024


DEFAULT_TARGET_RECALL = 0.995
SELF_TUNE_K = 100


def _check_recall(target: float) -> None:
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target}")


def default_n_lists(n: int) -> int:
    """About 4 sqrt(N) clusters, never fewer than 39 training points each."""
    return max(1, min(int(4 * math.sqrt(n)), n // _MIN_POINTS_PER_LIST))


def train_centroids(vectors: np.ndarray, n_lists: int, seed: int = 1234, *,
                    min_points_per_centroid: int | None = None) -> np.ndarray:
    """Spherical k-means centroids (unit length, for inner-product assignment). ``min_points_per_centroid``
    lowers faiss's sampling floor (and its warning below it) for callers that split small sets on purpose."""
    if n_lists == 1:
        c = vectors.mean(axis=0, keepdims=True)
        return (c / max(np.linalg.norm(c), 1e-12)).astype(np.float32)
    faiss = require_faiss()
    floor = {} if min_points_per_centroid is None else {"min_points_per_centroid": min_points_per_centroid}
    kmeans = faiss.Kmeans(vectors.shape[1], n_lists, niter=20, seed=seed, spherical=True, verbose=False, **floor)
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return kmeans.centroids.astype(np.float32)


@register
class IVFIndex(DenseIndex):
    """``n_lists`` clusters (default about 4 sqrt(N) at the first add), ``n_probe`` probed per query
    (default: tuned at the first add on a sample of the documents, see ``_self_tune``; ``tune()`` sets it from
    real queries and a recall target). Each document lives in exactly one cluster.

    Clusters are learnt at the first ``add`` and kept across later adds; ``describe()["drift"]`` tells how far
    the documents have moved from them, and ``retrain()`` learns them again from the stored vectors.
    """

    kind = "ivf"
    # without an n_probe, the first add tunes one on a sample of the documents themselves (see _self_tune)
    self_tunes = True

    def __init__(self, dim: int, *, n_lists: int | None = None, n_probe: int | None = None, codec: str = "flat",
                 pq_m: int | None = None, opq: bool = False, refine: int | None = None) -> None:
        super().__init__(dim, codec=codec, pq_m=pq_m, opq=opq, refine=refine)
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
        self.tuning: dict[str, Any] | None = None  # what tune() measured and chose (saved with the index)

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
        self.similarity_at_training = float(self.nearest_centroids(vectors)[1].mean())
        self.codec.train(vectors)

    def retrain(self, vectors: np.ndarray | None = None) -> None:
        """Learn the clusters again from the live documents and reassign every row.

        The codec's own parameters (PQ codebooks) are learnt again only when the documents' exact
        ``vectors`` are passed (in row order of the live rows); without them the stored codes are decoded,
        which is exact for float32 / float16 storage.
        """
        self.compact()
        if vectors is None and self.refine_store is not None:  # the refinement vectors are exact
            vectors = np.asarray(self.refine_store.codes)
        exact = vectors is not None
        vectors = check_vectors(vectors, self.dim) if exact else self.codec.decode(np.arange(self.id_map.rows))
        if len(vectors) != self.id_map.rows:
            raise ValueError(f"{len(vectors)} vectors for {self.id_map.rows} documents")
        if len(vectors) == 0:
            return
        self.n_lists = min(self._configured_lists or default_n_lists(len(vectors)), len(vectors))
        self.centroids = train_centroids(vectors, self.n_lists)
        self.trained_on = len(vectors)
        self.similarity_at_training = float(self.nearest_centroids(vectors)[1].mean())
        if exact:
            self.codec.train(vectors)
            self.codec.codes = self.codec.encode(vectors)
        self.assign = np.zeros(0, dtype=np.int32)
        self.assign_similarity = np.zeros(0, dtype=np.float32)
        self._added(np.arange(len(vectors)), vectors)
        if self.tuning is not None and self.tuning.get("sample") == "documents":
            self._self_tune(vectors)

    def _append(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        first = not self.trained
        super()._append(rows, vectors)
        if first and self._n_probe is None and self.self_tunes:
            self._self_tune(vectors)

    def _self_tune(self, vectors: np.ndarray) -> None:
        """The default n_probe: the fewest clusters reaching recall@100 >= 0.995 with up to 256 stored documents
        as the queries. Documents as queries are easier than real questions (on 69k MiniLM vectors, recall@10
        >= 0.99 took 227 of 1,048 lists for documents, 287 for questions), so the default asks for more. On
        SciFact (132 lists) it picks 72 and nDCG@10 is 0.6457 against exact search's 0.6451; the
        sqrt(n_lists) rule it replaces probed 12 and lost 0.06, recall@50 >= 0.99 probed 48 and lost 0.0027."""
        sample = vectors[np.random.default_rng(0).choice(len(vectors), min(256, len(vectors)), replace=False)]
        self._n_probe = None
        self.tune(sample, target_recall=DEFAULT_TARGET_RECALL, k=min(SELF_TUNE_K, len(self)))
        self.tuning["sample"] = "documents"

    def nearest_centroids(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each vector's nearest centroid by inner product (int32) and its similarity to it (float32).

        The products come from ``blocked_inner_products`` (float64 sums rounded to float32), so a vector almost
        as near to two centroids lands in the same cluster whether it is added among 62 vectors (a shard) or
        among 185 (one index over the corpus); float32 BLAS rounds with the batch and could split them."""
        vectors = np.asarray(vectors, dtype=np.float32)
        assign = np.empty(len(vectors), dtype=np.int32)
        similarity = np.empty(len(vectors), dtype=np.float32)
        for start in range(0, len(vectors), _ASSIGN_BLOCK):
            scores = blocked_inner_products(vectors[start : start + _ASSIGN_BLOCK], self.centroids)
            assign[start : start + len(scores)] = scores.argmax(axis=1)
            similarity[start : start + len(scores)] = scores.max(axis=1)
        return assign, similarity

    def _added(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        assign, similarity = self.nearest_centroids(vectors)
        self.assign = np.concatenate([self.assign, assign])
        self.assign_similarity = np.concatenate([self.assign_similarity, similarity])
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
            self._lists = (offsets, order.astype(np.int32))
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
        no_postings = np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
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
        assign = np.ascontiguousarray(self.assign)
        if isinstance(self.codec, PQCodec):
            from flagstone.index import _kernels

            rotated = np.ascontiguousarray(queries @ self.codec.rotation.T, dtype=np.float32)
            rows, scores, evaluated = _kernels.search_lists_pq(rotated, self.codec.codebooks_by_column,
                                                               np.asarray(self.codec.codes), assign, mask, probed,
                                                               list_offsets, list_rows, term_offsets, terms,
                                                               post_offsets, post_rows, k)
            return SearchResult(rows, scores, evaluated)
        if type(self.codec) is FlatCodec:
            from flagstone.index import _kernels

            rows, scores, evaluated = _kernels.search_lists(queries, np.asarray(self.codec.codes), assign, mask,
                                                            probed, list_offsets, list_rows, term_offsets, terms,
                                                            post_offsets, post_rows, k)
            return SearchResult(rows, scores, evaluated)
        candidates = []
        for qi, clusters in enumerate(probed):
            parts = [list_rows[list_offsets[c] : list_offsets[c + 1]] for c in clusters]
            parts += [post_rows[post_offsets[t] : post_offsets[t + 1]]
                      for t in terms[term_offsets[qi] : term_offsets[qi + 1]]]
            candidates.append(np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64))
        return self._search_candidates(queries, k, mask, candidates)

    def search(self, queries: Any, k: int, *, allow: Sequence[str] | None = None, n_probe: int | None = None,
               target_recall: float | None = None) -> SearchResult:
        """As :meth:`Index.search`; ``n_probe`` overrides the clusters probed for this call, and
        ``target_recall`` picks the fewest that reached it in :meth:`tune`'s measurements."""
        if n_probe is not None and target_recall is not None:
            raise ValueError("pass n_probe or target_recall, not both")
        if n_probe is not None and n_probe < 1:
            raise ValueError("n_probe must be at least 1")
        if target_recall is not None:
            n_probe = self.n_probe_for(target_recall)
        if n_probe is None:
            return super().search(queries, k, allow=allow)
        view = copy.copy(self)  # shares every array; only this call's n_probe differs (thread-safe)
        view._n_probe = n_probe
        return Index.search(view, queries, k, allow=allow)

    def n_probe_for(self, target_recall: float) -> int:
        """The fewest clusters that reached ``target_recall`` on :meth:`tune`'s sample (all clusters when no
        measured setting did)."""
        _check_recall(target_recall)
        if self.tuning is None:
            raise TuningError("this index has not been tuned: call tune(sample_queries, target_recall=...) first, "
                              "or pass n_probe")
        reached = [probe for probe, recall in self.tuning["curve"] if recall >= target_recall]
        return min(reached) if reached else int(self.n_lists or 1)

    def tune(self, sample_queries: Any, *, target_recall: float = 0.99, k: int = 10,
             max_refine: int = 64) -> dict[str, Any]:
        """Pick the fewest probed clusters whose recall@k against exact search on ``sample_queries`` reaches
        ``target_recall`` (as faiss's auto-tuning does for its knobs) and make it this index's ``n_probe``.

        Exact search here scores every live row with float32 vectors (the refinement vectors, or the codec
        when it is flat); a PQ or fp16 index without refinement is measured against its own exhaustive
        search, so the recall counts what probing loses, not what compression loses. Recall is monotone in
        n_probe (the probed clusters of a smaller setting are among those of a larger one), so a doubling
        search followed by bisection finds the setting in about 2 log2(n_lists) measurements.

        With refinement, a refine factor too small for the target misses it even probing every cluster (the
        codec's k x refine candidates do not hold the true top k). Then the factor is doubled, up to
        ``max_refine``, until probing every cluster reaches the target, and the smallest such factor becomes
        this index's ``refine``. The choice and every measurement are kept in ``tuning`` and saved with the
        index. A target that no tried setting reaches gives n_lists (and the largest factor tried) with
        ``reached`` false."""
        _check_recall(target_recall)
        if k < 1:
            raise ValueError("k must be at least 1")
        if max_refine < 1:
            raise ValueError("max_refine must be at least 1")
        if len(self) == 0:
            raise TuningError("tune() needs documents in the index")
        queries = self._queries(sample_queries)
        n_queries = len(queries[0] if isinstance(queries, tuple) else queries)
        if n_queries == 0:
            raise TuningError("tune() needs at least one sample query")
        truth = self.exact_top(queries[0] if isinstance(queries, tuple) else queries, min(k, len(self)))
        measured: dict[tuple[int | None, int], float] = {}

        def recall_at(refine: int | None, n_probe: int) -> float:
            if (refine, n_probe) not in measured:
                view = copy.copy(self)
                view._n_probe = n_probe
                view.refine = refine
                found = view._finish(queries, k, view._search(queries, view._candidates_for(k), self._alive,
                                                              1.0)).positions
                hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) / max((t >= 0).sum(), 1)
                        for f, t in zip(found, truth)]
                measured[(refine, n_probe)] = float(np.mean(hits))
            return measured[(refine, n_probe)]

        n_lists = int(self.n_lists or 1)
        refine = self.refine
        if self.refine_store is not None:
            # grow the factor while even every cluster falls short; candidates beyond the corpus add nothing
            while (recall_at(refine, n_lists) < target_recall and refine * 2 <= max_refine
                   and k * refine < len(self)):
                refine *= 2
        high = 1
        while high < n_lists and recall_at(refine, high) < target_recall:
            high = min(high * 2, n_lists)
        low = high // 2  # the last doubling step that fell short (0: none did)
        if recall_at(refine, high) >= target_recall:
            while high - low > 1:
                middle = (low + high) // 2
                if recall_at(refine, middle) >= target_recall:
                    high = middle
                else:
                    low = middle
        self._n_probe = high
        tried_refine = sorted({r for r, _ in measured} - {None})
        if self.refine_store is not None:
            self.refine = refine
        self.tuning = {"target_recall": target_recall, "k": k, "sample": "queries", "sample_queries": n_queries,
                       "n_probe": high, "refine": self.refine, "reached": recall_at(refine, high) >= target_recall,
                       "recall": recall_at(refine, high),
                       "curve": sorted([p, r] for (f, p), r in measured.items() if f == refine),
                       "refine_tried": [{"refine": f, "recall_probing_all": measured.get((f, n_lists))}
                                        for f in tried_refine]}
        return dict(self.tuning)

    def _params(self) -> dict[str, object]:
        return {**super()._params(), "n_lists": self.n_lists, "n_probe": self.n_probe, "tuning": self.tuning}

    def memory_parts(self) -> dict[str, np.ndarray]:
        offsets, rows = self.lists if self.centroids is not None else (np.zeros(0, np.int64), np.zeros(0, np.int32))
        return {**super().memory_parts(), "list_rows": rows, "list_offsets": offsets, "assign": self.assign,
                "assign_similarity": self.assign_similarity,
                "centroids": self.centroids if self.centroids is not None else np.zeros(0, np.float32)}

    def _state(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids, "assign": self.assign, "assign_similarity": self.assign_similarity,
                "trained_on": np.asarray(self.trained_on), "similarity_at_training": np.asarray(
                    self.similarity_at_training)}

    @classmethod
    def _from_params(cls, params: dict) -> IVFIndex:
        return cls(params["dim"], n_lists=params["n_lists"], n_probe=params["n_probe"], codec=params["codec"],
                   pq_m=params.get("pq_m"), opq=params.get("opq", False), refine=params.get("refine"))

    def _load_state(self, params: dict, arrays: dict[str, np.ndarray]) -> None:
        self.tuning = params.get("tuning")
        self.centroids = np.asarray(arrays["centroids"])
        self.assign = np.asarray(arrays["assign"])
        if "assign_similarity" in arrays:  # folders from before drift tracking lack these
            self.assign_similarity = np.asarray(arrays["assign_similarity"])
            self.trained_on = int(arrays["trained_on"])
            self.similarity_at_training = float(arrays["similarity_at_training"])
        else:
            self.assign_similarity = np.zeros(len(self.assign), dtype=np.float32)
