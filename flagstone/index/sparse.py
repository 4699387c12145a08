"""Exact search over sparse term weights with an inverted layout: a model's lexical weights (dot product) or
BM25 computed at query time from stored term counts, so its statistics stay exact under adds and removes."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flagstone.errors import VectorError
from flagstone.index.base import Index, SearchResult, pad_to, part_of, register, stack_results, top_k
from flagstone.models.embeddings import SparseWeights

_QUERY_BLOCK = 256
_SCORINGS = ("dot", "bm25")


def lucene_idf(doc_freq: np.ndarray, n_docs: int) -> np.ndarray:
    """Lucene's BM25 inverse document frequency, ln(1 + (N - df + 0.5) / (df + 0.5)): never negative."""
    return np.log1p((n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def bm25_term_weights(tf: np.ndarray, doc_len: np.ndarray, avgdl: float, k1: float, b: float) -> np.ndarray:
    """The term-frequency part of BM25 for each (tf, length of its document): tf / (tf + k1 (1 - b + b dl/avgdl))."""
    tf = tf.astype(np.float64)
    return tf / (tf + k1 * (1.0 - b + b * doc_len / (avgdl or 1.0)))


@dataclass(frozen=True)
class CorpusStatistics:
    """BM25's corpus-wide statistics: documents holding each term id, the document count and the summed
    document length. Shards of one corpus share the merged statistics so each scores as one index would."""

    doc_freq: np.ndarray  # (vocab,) int64
    n_docs: int
    total_length: float

    def __post_init__(self) -> None:
        if self.n_docs < 0 or self.total_length < 0 or (len(self.doc_freq) and self.doc_freq.min() < 0):
            raise ValueError("corpus statistics cannot be negative")

    @classmethod
    def merge(cls, parts: Sequence[CorpusStatistics]) -> CorpusStatistics:
        """The statistics of the union of disjoint document sets (term ids must already be shared)."""
        width = max((len(p.doc_freq) for p in parts), default=0)
        doc_freq = np.zeros(width, dtype=np.int64)
        for p in parts:
            doc_freq[: len(p.doc_freq)] += p.doc_freq
        return cls(doc_freq, sum(p.n_docs for p in parts), float(sum(p.total_length for p in parts)))


@register
class SparseIndex(Index):
    """Documents as rows of a sparse (docs x vocabulary) matrix.

    ``scoring="dot"`` (default): rows are term weights (e.g. BGE-M3's lexical weights) and a query's score is
    the sparse dot product with its own weights. ``scoring="bm25"``: rows are term counts and a query (term
    counts too) is scored by Lucene's BM25 with the document frequencies, document count and mean length of
    the live documents at search time, so scores always equal a fresh BM25 fit on the same documents.

    New rows go to a small tail that is scored directly and merged into the main inverted layout once it holds
    an eighth of the rows, so adding one document costs about one document's work.
    """

    kind = "sparse"

    def __init__(self, vocab_size: int = 0, *, scoring: str = "dot", k1: float = 1.2, b: float = 0.75) -> None:
        from scipy.sparse import csr_matrix

        if scoring not in _SCORINGS:
            raise ValueError(f"scoring must be one of {_SCORINGS}, got {scoring!r}")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        super().__init__()
        self.vocab_size = vocab_size
        self.scoring = scoring
        self.k1, self.b = k1, b
        self._main = csr_matrix((0, vocab_size), dtype=np.float32)
        self._main_postings = None  # (vocab x main rows) CSR, built lazily: each row is a posting list
        self._tail: list = []  # CSR blocks added since the last merge
        self._tail_rows = 0
        self.doc_len = np.zeros(0, dtype=np.float64)  # sum of each row's values (term counts under BM25)
        self._doc_freq = np.zeros(vocab_size, dtype=np.int64)  # live rows holding each term
        self._live_len = 0.0
        self._shared: CorpusStatistics | None = None  # a whole corpus's statistics when this is one shard

    # -- statistics ----------------------------------------------------------------------------
    def statistics(self) -> CorpusStatistics:
        """This index's own BM25 statistics (live documents only)."""
        return CorpusStatistics(self._doc_freq.copy(), len(self), self._live_len)

    def share_statistics(self, stats: CorpusStatistics | None) -> None:
        """Score with a whole corpus's statistics instead of this index's own, so that a shard of the corpus
        gives every document the score one index over the corpus would (None: back to its own). The shared
        statistics are a snapshot: adds and removes here do not change them."""
        if self.scoring != "bm25":
            raise ValueError("only a BM25 index (scoring='bm25') uses corpus statistics")
        if stats is not None and len(stats.doc_freq) < self.vocab_size:
            raise ValueError(f"statistics cover {len(stats.doc_freq)} terms, the index {self.vocab_size}")
        self._shared = stats

    @property
    def shares_statistics(self) -> bool:
        return self._shared is not None

    def _idf(self, terms: np.ndarray) -> np.ndarray:
        if self._shared is not None:
            return lucene_idf(self._shared.doc_freq[terms], self._shared.n_docs)
        return lucene_idf(self._doc_freq[terms], len(self))

    # -- writing -------------------------------------------------------------------------------
    def _items(self, items: Any) -> SparseWeights:
        weights = part_of(items, "sparse", SparseWeights, "sparse term weights")
        if len(weights.weights) and not np.isfinite(weights.weights).all():
            raise VectorError("term weights contain NaN or infinity")
        return weights

    def _append(self, rows: np.ndarray, weights: SparseWeights) -> None:
        block = weights.to_scipy()
        if weights.vocab_size > self.vocab_size:
            self.vocab_size = weights.vocab_size
            self._doc_freq = np.concatenate([self._doc_freq, np.zeros(self.vocab_size - len(self._doc_freq),
                                                                      np.int64)])
        lengths = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
        self._doc_freq += np.bincount(block.indices, minlength=self.vocab_size)
        self.doc_len = np.concatenate([self.doc_len, lengths])
        self._live_len += float(lengths.sum())
        self._tail.append(block)
        self._tail_rows += block.shape[0]
        if self._tail_rows * 8 >= self.id_map.rows:
            self._merge_tail()

    def remove(self, ids: Sequence[str]) -> None:
        rows = self.id_map.positions(ids)
        gone = self._rows_matrix(rows)
        super().remove(ids)
        self._doc_freq -= np.bincount(gone.indices, minlength=self.vocab_size)
        self._live_len -= float(self.doc_len[rows].sum())

    def _merge_tail(self) -> None:
        from scipy.sparse import vstack

        if self._tail:
            blocks = [_widen(m, self.vocab_size) for m in (self._main, *self._tail)]
            self._main = vstack(blocks, format="csr")
            self._tail, self._tail_rows = [], 0
            self._main_postings = None

    def _permute(self, rows: np.ndarray) -> None:
        self._merge_tail()
        super()._permute(rows)
        self._main = self._main[rows]
        self._main_postings = None
        self.doc_len = self.doc_len[rows]

    def _rows_matrix(self, rows: np.ndarray):
        """The stored rows ``rows`` as one CSR matrix over the whole vocabulary, in ``rows`` order."""
        from scipy.sparse import vstack

        rows = np.asarray(rows, dtype=np.int64)
        main = _widen(self._main, self.vocab_size)
        if not self._tail:
            return main[rows]
        n_main = main.shape[0]
        tail = vstack([_widen(m, self.vocab_size) for m in self._tail], format="csr")
        in_main = rows < n_main
        parts = vstack([main[rows[in_main]], tail[rows[~in_main] - n_main]], format="csr")
        order = np.empty(len(rows), dtype=np.int64)  # row i of the result is parts' row order[i]
        order[np.flatnonzero(in_main)] = np.arange(in_main.sum())
        order[np.flatnonzero(~in_main)] = in_main.sum() + np.arange((~in_main).sum())
        return parts[order]

    # -- scoring -------------------------------------------------------------------------------
    @property
    def postings(self):
        """(vocab x rows) CSR of the main part: row t is term t's posting list."""
        if self._main_postings is None:
            self._main_postings = self._main.T.tocsr()
        return self._main_postings

    def _query_matrix(self, queries: SparseWeights):
        """Queries as CSR over the index's vocabulary, with BM25's idf folded into the query side."""
        q = _widen(queries.to_scipy(), self.vocab_size, clip=True)
        if self.scoring == "bm25":
            q = q.copy()
            q.data = (q.data * self._idf(q.indices)).astype(np.float32)
        return q

    def _document_side(self, matrix, lengths: np.ndarray):
        """Stored values as the document side of the score: as they are for dot products, BM25's
        length-normalised tf otherwise (``lengths``: the document length of each stored value)."""
        if self.scoring == "dot":
            return matrix
        out = matrix.copy()
        out.data = bm25_term_weights(matrix.data, lengths, self._avgdl(), self.k1, self.b).astype(np.float32)
        return out

    def _avgdl(self) -> float:
        if self._shared is not None:
            return self._shared.total_length / max(self._shared.n_docs, 1)
        return self._live_len / max(len(self), 1)

    def _scores(self, q) -> np.ndarray:
        """(queries, rows) scores of every stored row."""
        parts = []
        if self._main.shape[0]:
            postings = self.postings
            terms = np.unique(q.indices)
            terms = terms[terms < postings.shape[0]]  # terms first seen after the last merge are in the tail
            sub = postings[terms]  # only the query terms' posting lists; their column indices are rows
            sub = self._document_side(sub, self.doc_len[sub.indices])
            parts.append(np.asarray((q[:, terms] @ sub).todense(), dtype=np.float32))
        first = self._main.shape[0]
        for block in self._tail:
            lengths = np.repeat(self.doc_len[first : first + block.shape[0]], np.diff(block.indptr))
            side = self._document_side(_widen(block, self.vocab_size), lengths)
            parts.append(np.asarray((q @ side.T).todense(), dtype=np.float32))
            first += block.shape[0]
        return np.concatenate(parts, axis=1) if parts else np.zeros((q.shape[0], 0), np.float32)

    def _search(self, queries: SparseWeights, k: int, mask: np.ndarray, allowed_fraction: float) -> SearchResult:
        q = self._query_matrix(queries)
        parts = []
        for s in range(0, q.shape[0], _QUERY_BLOCK):
            scores = self._scores(q[s : s + _QUERY_BLOCK])
            if not mask.all():
                scores[:, ~mask] = -np.inf
            block = top_k(scores, k)
            parts.append(SearchResult(block.positions, block.scores,
                                      np.full(len(block.positions), int(mask.sum()), np.int64)))
        return pad_to(stack_results(parts), k) if parts else top_k(np.zeros((0, 0), np.float32), k)

    def _search_rows(self, queries: SparseWeights, k: int, rows: np.ndarray) -> SearchResult:
        q = self._query_matrix(queries)
        docs = self._weighted_rows(rows)
        scores = np.asarray((q @ docs.T).todense(), dtype=np.float32)
        result = top_k(scores, k)
        hit = result.positions >= 0
        positions = np.where(hit, rows[np.where(hit, result.positions, 0)], -1)
        return pad_to(SearchResult(positions, result.scores, np.full(len(positions), len(rows), np.int64)), k)

    def _weighted_rows(self, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        matrix = self._rows_matrix(rows)
        return self._document_side(matrix, np.repeat(self.doc_len[rows], np.diff(matrix.indptr)))

    def rescore(self, queries: Any, positions: Sequence[np.ndarray]) -> list[np.ndarray]:
        q = self._query_matrix(self._queries(queries))
        return [np.asarray((self._weighted_rows(p) @ q[i].T).todense(), dtype=np.float32).ravel()
                for i, p in enumerate(positions)]

    def document_weights(self, ids: Sequence[str]) -> SparseWeights:
        """Each document's weight per term, in ``ids`` order: the stored weights, or under ``scoring="bm25"``
        the full BM25 weight idf x length-normalised tf with today's statistics (what ranks a document's
        salient terms; searching folds the idf into the query side instead)."""
        weights = self._weighted_rows(self.id_map.positions(ids))
        if self.scoring == "bm25":
            weights.data = (weights.data * self._idf(weights.indices)).astype(np.float32)
        return SparseWeights.from_csr(weights)

    # -- description and persistence -------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"vocab_size": self.vocab_size, "scoring": self.scoring}
        if self.scoring == "bm25":
            params |= {"k1": self.k1, "b": self.b}
        if self._shared is not None:
            params |= {"shared_n_docs": self._shared.n_docs, "shared_total_length": self._shared.total_length}
        return params

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "postings": int(self._main.nnz + sum(m.nnz for m in self._tail))}

    def bytes_per_document(self) -> float:
        matrices = (self._main, *self._tail)
        total = sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in matrices) + self.doc_len.nbytes
        return total / max(len(self), 1)

    def _arrays(self) -> dict[str, np.ndarray]:
        self._merge_tail()
        m = self._main
        arrays = {"indptr": m.indptr, "indices": m.indices, "data": m.data, "doc_len": self.doc_len}
        if self._shared is not None:
            arrays["shared_doc_freq"] = self._shared.doc_freq
        return arrays

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> SparseIndex:
        return cls(params["vocab_size"], scoring=params.get("scoring", "dot"), k1=params.get("k1", 1.2),
                   b=params.get("b", 0.75))

    def _restore(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from scipy.sparse import csr_matrix

        self._main = csr_matrix((np.asarray(arrays["data"]), np.asarray(arrays["indices"]),
                                 np.asarray(arrays["indptr"])), shape=(len(self.id_map), self.vocab_size))
        self.doc_len = (np.asarray(arrays["doc_len"], dtype=np.float64) if "doc_len" in arrays
                        else np.asarray(self._main.sum(axis=1), dtype=np.float64).ravel())
        self._doc_freq = np.bincount(self._main.indices, minlength=self.vocab_size).astype(np.int64)
        self._live_len = float(self.doc_len.sum())
        if "shared_n_docs" in params:
            self._shared = CorpusStatistics(np.asarray(arrays["shared_doc_freq"], dtype=np.int64),
                                            int(params["shared_n_docs"]), float(params["shared_total_length"]))


def _widen(matrix, vocab_size: int, *, clip: bool = False):
    """``matrix`` with ``vocab_size`` columns: padded when narrower; with ``clip``, columns past it dropped."""
    from scipy.sparse import csr_matrix

    width = matrix.shape[1]
    if width == vocab_size:
        return matrix
    if width < vocab_size:
        return csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=(matrix.shape[0], vocab_size))
    if not clip:
        raise ValueError(f"term ids up to {width - 1} for a vocabulary of {vocab_size}")
    return matrix[:, :vocab_size].tocsr()

