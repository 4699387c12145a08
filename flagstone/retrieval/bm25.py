"""BM25 as sparse vectors: documents become rows of precomputed term scores, queries term counts.

Scoring follows Lucene's BM25: idf = ln(1 + (N - df + 0.5) / (df + 0.5)) and a term frequency part
tf / (tf + k1 * (1 - b + b * dl / avgdl)); a query term repeated counts once per occurrence.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from flagstone._io import atomic_write, require_file
from flagstone.errors import DataError, InvalidTextError, NotFittedError
from flagstone.index.sparse import lucene_idf
from flagstone.models.embeddings import SparseWeights
from flagstone.retrieval.lexical import LexicalTokenizer

__all__ = ["BM25", "lucene_idf"]


class BM25:
    """Turns documents and queries into :class:`SparseWeights` over a vocabulary.

    Two ways to use it: ``fit_transform(corpus)`` learns the vocabulary and statistics once and returns the
    documents' BM25 weights (for a dot-product index); or ``count(texts)`` grows the vocabulary and returns term
    counts for ``SparseIndex(scoring="bm25")``, which keeps the statistics exact under adds and removes.
    """

    def __init__(self, *, k1: float = 1.2, b: float = 0.75, tokenizer: LexicalTokenizer | None = None) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1 = k1
        self.b = b
        self.tokenizer = tokenizer or LexicalTokenizer()
        self.vocab: dict[str, int] = {}
        self.idf = np.zeros(0, dtype=np.float32)
        self.avgdl = 0.0

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def fit_transform(self, documents: Sequence[str]) -> SparseWeights:
        """Learn vocabulary, document frequencies and mean length; return the documents' BM25 weights."""
        from scipy.sparse import csr_matrix

        if len(documents) == 0:
            raise InvalidTextError("BM25 needs at least one document")
        tokens = self.tokenizer.tokenize(documents)
        vocab: dict[str, int] = {}
        for words in tokens:
            for w in words:
                vocab.setdefault(w, len(vocab))
        self.vocab = vocab
        counts = self._counts(tokens)  # (docs x vocab) term frequencies
        doc_len = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
        self.avgdl = float(doc_len.mean()) or 1.0
        df = np.bincount(counts.indices, minlength=len(vocab)).astype(np.float64)
        self.idf = lucene_idf(df, len(documents)).astype(np.float32)
        tf = counts.data.astype(np.float64)
        row_len = np.repeat(doc_len, np.diff(counts.indptr))
        norm = self.k1 * (1.0 - self.b + self.b * row_len / self.avgdl)
        data = (self.idf[counts.indices] * tf / (tf + norm)).astype(np.float32)
        return SparseWeights.from_csr(csr_matrix((data, counts.indices, counts.indptr), shape=counts.shape))

    def count(self, texts: Sequence[str]) -> SparseWeights:
        """Term counts of ``texts``, adding their new terms to the vocabulary."""
        tokens = self.tokenizer.tokenize(texts)
        for words in tokens:
            for w in words:
                self.vocab.setdefault(w, len(self.vocab))
        return SparseWeights.from_csr(self._counts(tokens))

    def transform_queries(self, queries: Sequence[str]) -> SparseWeights:
        """Query term counts over the fitted vocabulary (unknown terms cannot match and are dropped)."""
        if not self.vocab:
            raise NotFittedError("BM25 has no vocabulary yet: fit it on (or add) documents first")
        tokens = [[w for w in words if w in self.vocab] for words in self.tokenizer.tokenize(queries)]
        return SparseWeights.from_csr(self._counts(tokens).astype(np.float32))

    def _counts(self, tokens: list[list[str]]):
        from scipy.sparse import csr_matrix

        indptr = np.zeros(len(tokens) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(t) for t in tokens])
        cols = np.fromiter((self.vocab[w] for words in tokens for w in words), dtype=np.int32, count=indptr[-1])
        data = np.ones(len(cols), dtype=np.float32)
        m = csr_matrix((data, cols, indptr), shape=(len(tokens), len(self.vocab)))
        m.sum_duplicates()
        return m

    def config(self) -> dict[str, object]:
        return {"k1": self.k1, "b": self.b, "tokenizer": self.tokenizer.config()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model (settings, vocabulary, and idf and mean length when fitted) as JSON, atomically."""
        state = {**self.config(), "avgdl": self.avgdl, "vocab": list(self.vocab), "idf": self.idf.tolist()}
        with atomic_write(path) as handle:
            json.dump(state, handle)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BM25:
        try:
            state = json.loads(require_file(path, "BM25 model").read_text(encoding="utf-8"))
            tok = state["tokenizer"]
            model = cls(k1=state["k1"], b=state["b"], tokenizer=LexicalTokenizer(
                lowercase=tok["lowercase"], pattern=tok["pattern"], stopwords=tok["stopwords"],
                stemmer=tok["stemmer"]))
            model.vocab = {w: i for i, w in enumerate(state["vocab"])}
            model.idf = np.asarray(state["idf"], dtype=np.float32)
            model.avgdl = float(state["avgdl"])
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a Flagstone BM25 model ({exc})") from None
        return model
