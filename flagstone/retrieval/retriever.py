"""Retriever: index a corpus once, search it by dense, sparse, ColBERT, BM25 or a hybrid of them."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from flagstone.errors import FlagstoneError, InvalidTextError, MissingHeadError
from flagstone.index.base import SearchResult
from flagstone.index.flat import FlatIndex
from flagstone.index.multivector import MultiVectorIndex
from flagstone.index.sparse import SparseIndex
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder, validate_texts
from flagstone.models.embeddings import Embeddings
from flagstone.retrieval.bm25 import BM25
from flagstone.retrieval.fusion import NORMALIZATIONS, reciprocal_rank_fusion, weighted_sum

SIGNALS = ("dense", "sparse", "colbert", "bm25")
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
    scores: np.ndarray  # (queries, k) final score
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # signal -> (queries, k) raw scores

    def __len__(self) -> int:
        return len(self.ids)

    def to_run(self, query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{query id: {doc id: score}}``, the run format of pytrec_eval and TREC tools."""
        return {q: {d: float(s) for d, s in zip(ids, scores)}
                for q, ids, scores in zip(query_ids, self.ids, self.scores)}


class Retriever:
    """Holds one index per signal over the same documents.

    ``signals`` defaults to every output the embedder has plus BM25; pass ``embedder=None`` for a
    BM25-only retriever. ``cache`` stores document embeddings on disk between runs.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        signals: Sequence[str] | None = None,
        bm25: BM25 | None = None,
        cache: EmbeddingCache | None = None,
        hybrid: HybridConfig | None = None,
    ) -> None:
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
        indexes: dict[str, FlatIndex | SparseIndex | MultiVectorIndex] = {}
        model_signals = [s for s in self.signals if s in _MODEL_SIGNALS]
        if model_signals:
            emb = self._encode(texts, model_signals, is_query=False, show_progress=show_progress)
            if emb.dense is not None:
                indexes["dense"] = FlatIndex(emb.dense.shape[1])
                indexes["dense"].add(ids, emb.dense)
            if emb.sparse is not None:
                indexes["sparse"] = SparseIndex(emb.sparse.vocab_size)
                indexes["sparse"].add(ids, emb.sparse)
            if emb.colbert is not None:
                indexes["colbert"] = MultiVectorIndex(emb.colbert.dim)
                indexes["colbert"].add(ids, emb.colbert)
        if self.bm25 is not None:
            weights = self.bm25.fit_transform(texts)
            indexes["bm25"] = SparseIndex(weights.vocab_size)
            indexes["bm25"].add(ids, weights)
        self._indexes = indexes
        self.ids = ids
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
            result = self._indexes[mode].search(encoded[mode], k)
            return Hits(mode, self._ids_of(result.positions), result.scores, {mode: result.scores})
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
        proposals: list[SearchResult] = [self._indexes[s].search(encoded[s], per_signal_k) for s in weights]
        top = min(k, len(self.ids))
        out_pos = np.zeros((len(queries), top), dtype=np.int64)
        out_scores = np.zeros((len(queries), top), dtype=np.float32)
        out_signals = {s: np.zeros((len(queries), top), dtype=np.float32) for s in weights}
        candidates = [np.unique(np.concatenate([p.positions[qi][p.positions[qi] >= 0] for p in proposals]))
                      for qi in range(len(queries))]
        rescored = {s: self._indexes[s].rescore(encoded[s], candidates) for s in weights}
        for qi, cand in enumerate(candidates):
            per_signal = {s: rescored[s][qi] for s in weights}
            if config.method == "rrf":
                fused = reciprocal_rank_fusion(per_signal, weights, config.rrf_k)
            else:
                fused = weighted_sum(per_signal, weights, config.normalize)
            order = np.lexsort((cand, -fused))[:top]
            out_pos[qi] = cand[order]
            out_scores[qi] = fused[order]
            for s in weights:
                out_signals[s][qi] = per_signal[s][order]
        return Hits("hybrid", self._ids_of(out_pos), out_scores, out_signals)
