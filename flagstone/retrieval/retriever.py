"""Retriever: index a corpus once, search it by dense, sparse, ColBERT, BM25 or a hybrid of them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flagstone.errors import FlagstoneError, InvalidTextError, MissingHeadError
from flagstone.index.base import SearchResult
from flagstone.index.dense import DenseIndex
from flagstone.index.flat import FlatIndex
from flagstone.index.hi2 import HI2Index
from flagstone.index.ivf import IVFIndex
from flagstone.index.multivector import MultiVectorIndex
from flagstone.index.sparse import SparseIndex
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder, validate_texts
from flagstone.models.embeddings import Embeddings
from flagstone.models.scoring import NORMALIZATIONS
from flagstone.retrieval.bm25 import BM25
from flagstone.retrieval.fusion import reciprocal_rank_fusion, weighted_sum

SIGNALS = ("dense", "sparse", "colbert", "bm25")
DENSE_INDEXES = {"flat": FlatIndex, "ivf": IVFIndex, "hi2": HI2Index}
MODES = SIGNALS + ("hybrid",)
_MODEL_SIGNALS = ("dense", "sparse", "colbert")


@dataclass(frozen=True)
class HybridConfig:
    """How ``mode="hybrid"`` combines signals.

    ``weights`` maps signals to weights (None: BGE-M3's 0.4/0.2/0.4 when the model has all three heads,
    else dense 0.5 + BM25 0.5, chosen on SciFact's train queries, see benchmarks/retrieval_scifact.py).
    ``method`` is "weighted" (sum of normalised scores) or "rrf" (reciprocal-rank fusion with ``rrf_k``).
    Each signal proposes its top ``candidates`` documents; every candidate is scored by every signal.
    """

    weights: Mapping[str, float] | None = None
    method: str = "weighted"
    normalize: str = "minmax"
    rrf_k: int = 60
    candidates: int = 100

    def __post_init__(self) -> None:
        if self.method not in ("weighted", "rrf"):
            raise ValueError(f"method must be 'weighted' or 'rrf', got {self.method!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.weights is not None:
            unknown = set(self.weights) - set(SIGNALS)
            if unknown:
                raise ValueError(f"unknown signals in weights: {sorted(unknown)}; known: {SIGNALS}")
        if self.candidates < 1:
            raise ValueError("candidates must be at least 1")


@dataclass(frozen=True)
class Hits:
    """Ranked results for a batch of queries, best first, with each signal's own score per hit."""

    mode: str
    ids: list[list[str]]
    scores: np.ndarray  # (queries, k) final score; NaN after the last hit when a query has fewer than k
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # signal -> (queries, k) raw scores

    def __len__(self) -> int:
        return len(self.ids)

    def to_run(self, query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{query id: {doc id: score}}``, the run format of pytrec_eval and TREC tools."""
        return {q: {d: float(s) for d, s in zip(ids, scores)}  # zip stops at the last real hit
                for q, ids, scores in zip(query_ids, self.ids, self.scores)}


class Retriever:
    """Holds one index per signal over the same documents.

    ``signals`` defaults to every output the embedder has plus BM25; pass ``embedder=None`` for a
    BM25-only retriever. ``cache`` stores document embeddings on disk between runs. ``dense_index`` is
    "flat" (exact), "ivf", "hi2", or an empty index instance configured by the caller; HI² takes its
    salient terms from the retriever's BM25 model.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        signals: Sequence[str] | None = None,
        bm25: BM25 | None = None,
        cache: EmbeddingCache | None = None,
        hybrid: HybridConfig | None = None,
        dense_index: str | DenseIndex = "flat",
    ) -> None:
        if isinstance(dense_index, str) and dense_index not in DENSE_INDEXES:
            raise ValueError(f"unknown dense index {dense_index!r}; choose from {tuple(DENSE_INDEXES)}")
        if isinstance(dense_index, DenseIndex) and len(dense_index):
            raise ValueError("pass an empty dense index; the retriever fills it")
        if signals is None:
            signals = (embedder.available_outputs if embedder is not None else ()) + ("bm25",)
        unknown = set(signals) - set(SIGNALS)
        if unknown:
            raise ValueError(f"unknown signals {sorted(unknown)}; known: {SIGNALS}")
        needs_model = [s for s in signals if s in _MODEL_SIGNALS]
        if needs_model and embedder is None:
            raise ValueError(f"signals {needs_model} need an embedder")
        if embedder is not None:
            missing = [s for s in needs_model if s not in embedder.available_outputs]
            if missing:
                raise MissingHeadError(
                    f"model {embedder.name!r} cannot produce {', '.join(missing)} (it has "
                    f"{', '.join(embedder.available_outputs)}); drop those signals or use a model with M3 heads")
        self.embedder = embedder
        self.signals = tuple(signals)
        self.bm25 = bm25 if bm25 is not None else (BM25() if "bm25" in self.signals else None)
        self.dense_index = dense_index
        needs_terms = dense_index == "hi2" or isinstance(dense_index, HI2Index)
        self._term_model = self.bm25 if self.bm25 is not None else (BM25() if needs_terms else None)
        self.cache = cache
        self.hybrid = hybrid or HybridConfig()
        self.ids: list[str] = []
        self._indexes: dict[str, FlatIndex | SparseIndex | MultiVectorIndex] = {}

    @property
    def modes(self) -> tuple[str, ...]:
        return self.signals + (("hybrid",) if len(self.signals) > 1 else ())

    def __len__(self) -> int:
        return len(self.ids)

    def default_weights(self) -> dict[str, float]:
        if all(s in self.signals for s in _MODEL_SIGNALS):
            return {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}
        if "dense" in self.signals and "bm25" in self.signals:
            return {"dense": 0.5, "bm25": 0.5}
        return {s: 1.0 for s in self.signals}

    # -- indexing ------------------------------------------------------------------------------
    def fit(self, ids: Sequence[str], texts: Sequence[str], *, show_progress: bool | None = None) -> Retriever:
        """Index ``texts`` under ``ids`` for every signal (replacing anything indexed before)."""
        ids = [str(i) for i in ids]
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        if not ids:
            raise InvalidTextError("the corpus is empty: nothing to index")
        validate_texts(texts)
        indexes: dict[str, DenseIndex | SparseIndex | MultiVectorIndex] = {}
        term_weights = self._term_model.fit_transform(texts) if self._term_model is not None else None
        model_signals = [s for s in self.signals if s in _MODEL_SIGNALS]
        if model_signals:
            emb = self._encode(texts, model_signals, is_query=False, show_progress=show_progress)
            if emb.dense is not None:
                dense = self.dense_index
                if isinstance(dense, str):
                    dense = DENSE_INDEXES[dense](emb.dense.shape[1])
                elif len(dense):
                    raise FlagstoneError("this retriever's dense index instance is already filled; pass the index "
                                         "kind (e.g. dense_index='hi2') to fit a retriever more than once")
                if isinstance(dense, HI2Index):
                    dense.add(ids, emb.dense, term_weights)
                else:
                    dense.add(ids, emb.dense)
                indexes["dense"] = dense
            if emb.sparse is not None:
                indexes["sparse"] = SparseIndex(emb.sparse.vocab_size)
                indexes["sparse"].add(ids, emb.sparse)
            if emb.colbert is not None:
                indexes["colbert"] = MultiVectorIndex(emb.colbert.dim)
                indexes["colbert"].add(ids, emb.colbert)
        if self.bm25 is not None:
            indexes["bm25"] = SparseIndex(term_weights.vocab_size)
            indexes["bm25"].add(ids, term_weights)
        self._indexes = indexes
        self.ids = ids
        # an index may store rows in its own order (IVF and HI² group them by cluster): keep both mappings
        position = {doc_id: n for n, doc_id in enumerate(ids)}
        self._to_retriever: dict[str, np.ndarray] = {}
        self._to_index: dict[str, np.ndarray] = {}
        for signal, index in indexes.items():
            to_retriever = np.fromiter((position[i] for i in index.id_map.ids), dtype=np.int64, count=len(ids))
            to_index = np.empty_like(to_retriever)
            to_index[to_retriever] = np.arange(len(to_retriever))
            self._to_retriever[signal], self._to_index[signal] = to_retriever, to_index
        return self

    def _encode(self, texts: Sequence[str], outputs: Sequence[str], *, is_query: bool,
                show_progress: bool | None) -> Embeddings:
        flags = {name: name in outputs for name in _MODEL_SIGNALS}
        if self.cache is not None and not is_query:
            return self.cache.encode(self.embedder, texts, is_query=is_query, show_progress=show_progress, **flags)
        return self.embedder.encode(texts, is_query=is_query, show_progress=show_progress, **flags)

    # -- searching -----------------------------------------------------------------------------
    def search(self, queries: Sequence[str], *, mode: str = "dense", k: int = 10,
               hybrid: HybridConfig | None = None) -> Hits:
        """Top ``k`` documents for each query in ``mode`` (a signal name or "hybrid")."""
        if not self.ids:
            raise FlagstoneError("nothing is indexed yet: call fit(ids, texts) first")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {MODES}")
        if mode != "hybrid" and mode not in self.signals:
            raise FlagstoneError(f"mode {mode!r} is not available; this retriever has {self.modes}")
        if k < 1:
            raise ValueError("k must be at least 1")
        if isinstance(queries, str):
            raise InvalidTextError("search expects a list of queries, got a single string; wrap it in a list")
        validate_texts(queries)
        if mode != "hybrid":
            encoded = self._encode_queries(queries, [mode])
            result = self._search_signal(mode, encoded[mode], queries, k)
            keep = result.positions >= 0
            scores = result.scores if keep.all() else np.where(keep, result.scores, np.nan)
            return Hits(mode, self._ids_of(result.positions), scores, {mode: scores})
        return self._search_hybrid(queries, k, hybrid or self.hybrid)

    def _encode_queries(self, queries: Sequence[str], signals: Sequence[str]) -> dict[str, object]:
        encoded: dict[str, object] = {}
        model_signals = [s for s in signals if s in _MODEL_SIGNALS]
        if model_signals:
            emb = self._encode(queries, model_signals, is_query=True, show_progress=False)
            encoded.update({s: getattr(emb, s) for s in model_signals})
        if "bm25" in signals:
            encoded["bm25"] = self.bm25.transform_queries(queries)
        return encoded

    def _search_signal(self, signal: str, encoded: object, queries: Sequence[str], k: int) -> SearchResult:
        """One index's top k, with positions in the retriever's document order."""
        index = self._indexes[signal]
        if isinstance(index, HI2Index):
            result = index.search(encoded, k, query_terms=self._term_model.transform_queries(queries))
        else:
            result = index.search(encoded, k)
        hit = result.positions >= 0
        positions = np.where(hit, self._to_retriever[signal][np.where(hit, result.positions, 0)], -1)
        return SearchResult(positions, result.scores, result.docs_evaluated)

    def _ids_of(self, positions: np.ndarray) -> list[list[str]]:
        return [[self.ids[p] for p in row if p >= 0] for row in positions]

    def _search_hybrid(self, queries: Sequence[str], k: int, config: HybridConfig) -> Hits:
        weights = dict(config.weights) if config.weights is not None else self.default_weights()
        weights = {s: w for s, w in weights.items() if w != 0}
        missing = [s for s in weights if s not in self.signals]
        if missing:
            raise FlagstoneError(f"hybrid weights name signals this retriever lacks: {missing}")
        encoded = self._encode_queries(queries, list(weights))
        per_signal_k = max(config.candidates, k)  # so the union always holds min(k, corpus) documents
        proposals = [self._search_signal(s, encoded[s], queries, per_signal_k) for s in weights]
        top = min(k, len(self.ids))
        out_pos = np.full((len(queries), top), -1, dtype=np.int64)
        out_scores = np.full((len(queries), top), np.nan, dtype=np.float32)
        out_signals = {s: np.full((len(queries), top), np.nan, dtype=np.float32) for s in weights}
        candidates = [np.unique(np.concatenate([p.positions[qi][p.positions[qi] >= 0] for p in proposals]))
                      for qi in range(len(queries))]
        rescored = {s: self._indexes[s].rescore(encoded[s], [self._to_index[s][c] for c in candidates])
                    for s in weights}
        for qi, cand in enumerate(candidates):
            per_signal = {s: rescored[s][qi] for s in weights}
            if config.method == "rrf":
                fused = reciprocal_rank_fusion(per_signal, weights, config.rrf_k)
            else:
                fused = weighted_sum(per_signal, weights, config.normalize)
            order = np.lexsort((cand, -fused))[:top]  # approximate signals may propose fewer than top
            out_pos[qi, : len(order)] = cand[order]
            out_scores[qi, : len(order)] = fused[order]
            for s in weights:
                out_signals[s][qi, : len(order)] = per_signal[s][order]
        return Hits("hybrid", self._ids_of(out_pos), out_scores, out_signals)
