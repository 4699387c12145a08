"""HI², the hybrid inverted index: embedding clusters and salient-term posting lists probed together.

Each document sits in one k-means cluster and in the posting lists of its ``terms_per_doc`` most salient
terms (by BM25 weight, or by a model's sparse lexical weights). A query probes its ``n_probe`` nearest
clusters and the posting lists of its ``terms_per_query`` heaviest terms; the union of candidates is scored
by the codec (exact float32, float16 or product quantisation). Clusters catch semantic matches, terms catch
exact lexical ones, so together they reach high recall while scoring a small fraction of the corpus.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from flagstone.errors import VectorError
from flagstone.index.base import SearchResult, register
from flagstone.index.dense import check_vectors
from flagstone.index.ivf import IVFIndex
from flagstone.models.embeddings import Embeddings, SparseWeights


def default_max_posting(n: int) -> int:
    """Posting lists longer than this keep only their highest-weight documents: about sqrt(N), >= 64.
    (On 69k real texts, 256 rather than 2,048 cost 0.002 recall@10 and saved 15% of scored documents.)"""
    return max(64, int(math.sqrt(n)))


def shard_posting_caps(heads: Sequence[tuple[np.ndarray, np.ndarray]], limit: int,
                       vocab_size: int) -> list[np.ndarray]:
    """Each shard's posting cap per term id so that the shards together keep exactly the postings one index over
    the corpus keeps: each term's ``limit`` heaviest, equal weights in corpus order. ``heads`` holds, per shard in
    corpus order (contiguous blocks), :meth:`HI2Index.posting_heads` of the terms whose lists are longer than
    ``limit`` over the corpus; every other term keeps ``limit`` everywhere (it holds fewer anyway)."""
    terms = np.concatenate([h[0] for h in heads]) if heads else np.zeros(0, dtype=np.int64)
    weights = np.concatenate([h[1] for h in heads]) if heads else np.zeros(0, dtype=np.float32)
    shard = np.concatenate([np.full(len(h[0]), s, dtype=np.int64) for s, h in enumerate(heads)]) \
        if heads else np.zeros(0, dtype=np.int64)
    # rank of each entry within its term on its shard (entries come by term, then in posting order)
    local = np.concatenate([np.arange(len(h[0])) - np.searchsorted(h[0], h[0]) for h in heads]) \
        if heads else np.zeros(0, dtype=np.int64)
    order = np.lexsort((local, shard, -weights, terms))
    by_term = terms[order]
    rank = np.arange(len(order)) - np.searchsorted(by_term, by_term)
    kept = order[rank < limit]
    caps = []
    for s in range(len(heads)):
        cap = np.full(vocab_size, limit, dtype=np.int64)
        cap[np.unique(terms)] = 0  # the capped terms: this shard keeps only its share of the corpus's top
        mine = kept[shard[kept] == s]
        cap += np.bincount(terms[mine], minlength=vocab_size)[:vocab_size]
        caps.append(cap)
    return caps


def top_terms(weights: SparseWeights, per_row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, term, weight) of each row's ``per_row`` heaviest terms, vectorised over the CSR layout."""
    rows = np.repeat(np.arange(len(weights)), np.diff(weights.indptr))
    order = np.lexsort((-weights.weights, rows))  # by row, heaviest first
    rank = np.arange(len(order)) - weights.indptr[rows[order]]
    keep = order[rank < per_row]
    return rows[keep], weights.token_ids[keep].astype(np.int64), weights.weights[keep]


@register
class HI2Index(IVFIndex):
    """Hybrid inverted index. ``add`` and ``search`` take :class:`Embeddings` whose ``dense`` part holds the
    vectors and whose ``sparse`` part holds the term weights (a model's lexical weights, or BM25's)."""

    kind = "hi2"
    # HI²'s term lists recover what a few clusters miss: its sqrt(n_lists) default matched exact search on
    # SciFact (nDCG@10 0.6453 against 0.6451), so it is not tuned on documents at the first add
    self_tunes = False

    def __init__(self, dim: int, *, n_lists: int | None = None, n_probe: int | None = None,
                 terms_per_doc: int = 15, terms_per_query: int = 32, max_posting: int | None = None,
                 codec: str = "flat", pq_m: int | None = None, opq: bool = False, refine: int | None = None) -> None:
        super().__init__(dim, n_lists=n_lists, n_probe=n_probe, codec=codec, pq_m=pq_m, opq=opq, refine=refine)
        if terms_per_doc < 0 or terms_per_query < 0:
            raise ValueError("terms_per_doc and terms_per_query must be >= 0")
        self.terms_per_doc = terms_per_doc
        self.terms_per_query = terms_per_query
        self._max_posting = max_posting
        # one shard of a corpus: how many postings of each term id this shard keeps, its share of the corpus's
        # top max_posting (see shard_posting_caps); None: every term keeps max_posting
        self.posting_caps: np.ndarray | None = None
        self.vocab_size = 0
        # int32 rows and term ids: 12 bytes per (document, term) pair, 15 pairs per document by default
        self.term_rows = np.zeros(0, dtype=np.int32)
        self.term_ids = np.zeros(0, dtype=np.int32)
        self.term_weights = np.zeros(0, dtype=np.float32)
        self._postings: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def max_posting(self) -> int:
        return self._max_posting or default_max_posting(max(self.id_map.rows, 1))

    @max_posting.setter
    def max_posting(self, value: int | None) -> None:
        self._max_posting = value
        self._postings = None

    def posting_limit(self, n_docs: int) -> int:
        """The cap on each posting list of an index of ``n_docs`` documents with this index's settings."""
        return self._max_posting or default_max_posting(max(n_docs, 1))

    def cap_postings(self, limit: int, caps: np.ndarray | None) -> None:
        """Make this index one shard of a corpus whose posting lists are capped at ``limit`` over the whole
        corpus: term id ``t`` keeps its heaviest ``caps[t]`` postings here (terms past the end, or every term
        when ``caps`` is None, keep ``limit``: not this shard's own default, which depends on its size)."""
        if limit < 1:
            raise ValueError("the posting limit must be at least 1")
        if caps is not None:
            caps = np.asarray(caps, dtype=np.int64)
            if len(caps) and (caps.min() < 0 or caps.max() > limit):
                raise ValueError(f"posting caps must lie in [0, {limit}]")
        self._max_posting = limit
        self.posting_caps = caps
        self._postings = None

    def posting_counts(self) -> np.ndarray:
        """(vocab_size,) documents posted under each term id before any cap."""
        return np.bincount(self.term_ids, minlength=self.vocab_size).astype(np.int64)

    def _by_term(self) -> tuple[np.ndarray, np.ndarray]:
        """Posting entries by term id, heaviest first, equal weights in the order the documents were added;
        and each entry's rank within its term."""
        order = np.lexsort((-self.term_weights, self.term_ids))
        terms = self.term_ids[order]
        start = np.searchsorted(terms, np.arange(self.vocab_size))
        return order, np.arange(len(order)) - start[terms]

    def posting_heads(self, terms: Sequence[int] | np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """(term ids, weights) of the ``limit`` heaviest postings of each of ``terms``, by term id, then in
        posting order (what a corpus-wide cap over shards is computed from)."""
        order, rank = self._by_term()
        terms = np.asarray(terms, dtype=np.int64)
        wanted = np.zeros(self.vocab_size, dtype=bool)
        wanted[terms[terms < self.vocab_size]] = True  # a term this index never saw has no postings here
        keep = order[(rank < limit) & wanted[self.term_ids[order]]]
        return self.term_ids[keep].astype(np.int64), self.term_weights[keep]

    def _items(self, items: Any) -> tuple[np.ndarray, SparseWeights]:
        if not isinstance(items, Embeddings) or items.dense is None or items.sparse is None:
            raise TypeError("HI2Index takes Embeddings(dense=vectors, sparse=term weights), e.g. with BM25's "
                            "weights as the sparse part")
        if len(items.sparse) != len(items.dense):
            raise ValueError(f"{len(items.dense)} vectors for {len(items.sparse)} rows of term weights")
        return check_vectors(items.dense, self.dim), items.sparse

    def _queries(self, queries: Any) -> tuple[np.ndarray, SparseWeights]:
        if not isinstance(queries, Embeddings) or queries.dense is None or queries.sparse is None:
            raise TypeError("HI2Index.search takes Embeddings(dense=query vectors, sparse=query term weights)")
        if len(queries.sparse) != len(queries.dense):
            raise ValueError(f"{len(queries.dense)} queries for {len(queries.sparse)} rows of query terms")
        if len(queries.sparse.weights) and not np.isfinite(queries.sparse.weights).all():
            raise VectorError("query term weights contain NaN or infinity")
        return check_vectors(queries.dense, self.dim, "queries"), queries.sparse

    def _append(self, rows: np.ndarray, items: tuple[np.ndarray, SparseWeights]) -> None:
        vectors, terms = items
        # record the terms first: adding rows may reorder storage, and the reorder maps term rows too
        saved = (self.term_rows, self.term_ids, self.term_weights, self.vocab_size)
        term_rows, term_ids, weights = top_terms(terms, self.terms_per_doc)
        self.term_rows = np.concatenate([self.term_rows, (term_rows + rows[0]).astype(np.int32)])
        self.term_ids = np.concatenate([self.term_ids, term_ids.astype(np.int32)])
        self.term_weights = np.concatenate([self.term_weights, weights])
        self.vocab_size = max(self.vocab_size, terms.vocab_size)
        self._postings = None
        try:
            super()._append(rows, vectors)
        except BaseException:
            self.term_rows, self.term_ids, self.term_weights, self.vocab_size = saved
            raise

    def _kept(self, keep: np.ndarray) -> None:
        super()._kept(keep)
        new_row = np.full(max(int(self.term_rows.max(initial=-1)) + 1, 1), -1, dtype=np.int64)
        new_row[keep[keep < len(new_row)]] = np.flatnonzero(keep < len(new_row))
        mapped = new_row[self.term_rows]
        live = mapped >= 0
        self.term_rows, self.term_ids = mapped[live].astype(np.int32), self.term_ids[live]
        self.term_weights = self.term_weights[live]
        self._postings = None

    @property
    def postings(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, rows) by term id; each list holds at most ``max_posting`` rows, heaviest first."""
        if self._postings is None:
            order, rank = self._by_term()
            limit = self.max_posting
            if self.posting_caps is not None:  # a shard: each term's share of the corpus-wide cap
                caps = np.full(self.vocab_size, limit, dtype=np.int64)
                known = min(len(self.posting_caps), self.vocab_size)
                caps[:known] = self.posting_caps[:known]
                keep = order[rank < caps[self.term_ids[order]]]
            else:
                keep = order[rank < limit]
            counts = np.bincount(self.term_ids[keep], minlength=self.vocab_size)
            offsets = np.zeros(self.vocab_size + 1, dtype=np.int64)
            offsets[1:] = np.cumsum(counts)
            self._postings = (offsets, self.term_rows[keep])
        return self._postings

    def expected_candidates(self) -> float:
        offsets, _ = self.postings
        lists = np.diff(offsets)
        mean_list = float(lists[lists > 0].mean()) if (lists > 0).any() else 0.0
        return super().expected_candidates() + self.terms_per_query * mean_list

    def _search(self, queries: tuple[np.ndarray, SparseWeights], k: int, mask: np.ndarray,
                allowed_fraction: float) -> SearchResult:
        """Top ``k`` by codec score among the probed clusters' and the query terms' documents."""
        vectors, terms = queries
        probed = self.probed_lists(vectors, self._probe_for(allowed_fraction))
        result = self._scan(vectors, k, mask, probed, self._query_terms(terms), self.postings)
        return self._fill_short(vectors, k, mask, result)

    def _search_rows(self, queries: tuple[np.ndarray, SparseWeights], k: int, rows: np.ndarray) -> SearchResult:
        return self._exhaustive(queries[0], k, rows)

    def rescore(self, queries: Any, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        vectors = queries.dense if isinstance(queries, Embeddings) else queries
        return self._row_scores(check_vectors(vectors, self.dim, "queries"), positions)

    def _query_terms(self, query_terms: SparseWeights) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, terms): each query's ``terms_per_query`` heaviest terms known to the index."""
        q_rows, q_terms, _ = top_terms(query_terms, self.terms_per_query)
        known = q_terms < self.vocab_size
        q_rows, q_terms = q_rows[known], q_terms[known]
        offsets = np.searchsorted(q_rows, np.arange(len(query_terms) + 1)).astype(np.int64)
        return offsets, np.ascontiguousarray(q_terms, dtype=np.int64)

    def _params(self) -> dict[str, object]:
        return {**super()._params(), "terms_per_doc": self.terms_per_doc, "terms_per_query": self.terms_per_query,
                "max_posting": self.max_posting, "vocab_size": self.vocab_size}

    def memory_parts(self) -> dict[str, np.ndarray]:
        offsets, rows = self.postings
        # the per-document term lists (row, term, weight) rebuild the postings after adds and removals
        return {**super().memory_parts(), "posting_rows": rows, "posting_offsets": offsets,
                "term_rows": self.term_rows, "term_ids": self.term_ids, "term_weights": self.term_weights}

    def _state(self) -> dict[str, np.ndarray]:
        caps = {} if self.posting_caps is None else {"posting_caps": self.posting_caps}
        # the posting lists are saved too, so that a load reads them instead of rebuilding them from the
        # term lists (a sort of every (document, term) pair, whose scratch memory stayed resident)
        offsets, rows = self.postings
        return {**super()._state(), "term_rows": self.term_rows, "term_ids": self.term_ids,
                "term_weights": self.term_weights, "posting_offsets": offsets, "posting_rows": rows, **caps}

    @classmethod
    def _from_params(cls, params: dict) -> HI2Index:
        index = cls(params["dim"], n_lists=params["n_lists"], n_probe=params["n_probe"],
                    terms_per_doc=params["terms_per_doc"], terms_per_query=params["terms_per_query"],
                    max_posting=params["max_posting"], codec=params["codec"], pq_m=params.get("pq_m"),
                    opq=params.get("opq", False), refine=params.get("refine"))
        index.vocab_size = params["vocab_size"]
        return index

    def _load_state(self, params: dict, arrays: dict[str, np.ndarray]) -> None:
        super()._load_state(params, arrays)
        self.term_rows = np.asarray(arrays["term_rows"], dtype=np.int32)  # folders before int32 held int64
        self.term_ids = np.asarray(arrays["term_ids"], dtype=np.int32)
        self.term_weights = np.asarray(arrays["term_weights"])
        if "posting_caps" in arrays:
            self.posting_caps = np.asarray(arrays["posting_caps"], dtype=np.int64)
        if "posting_rows" in arrays:  # folders from before they were saved rebuild them at the first search
            offsets, rows = np.asarray(arrays["posting_offsets"]), np.asarray(arrays["posting_rows"])
            if offsets.dtype != np.int64 or rows.dtype != np.int32 or len(offsets) != self.vocab_size + 1 or \
                    offsets[0] != 0 or offsets[-1] != len(rows) or (np.diff(offsets) < 0).any() or \
                    (len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < len(self.assign)):
                raise ValueError("posting lists that do not fit the index")
            self._postings = (offsets, rows)
