"""Retriever: documents in, ranked ids out, by dense, sparse, ColBERT, BM25 or a hybrid of them.

A retriever has a lifecycle: ``add`` and ``remove`` documents at any time (BM25 statistics stay exact, trained
index structures are kept and ``describe()`` reports their drift until ``retrain()``), ``search`` with an
optional allow-list of ids, ``save`` to a folder and ``Retriever.load`` it back. The CLI and the service both
use this folder format.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flagstone._io import LegacyLayout, atomic_folder, atomic_write, iter_jsonl, read_format_json
from flagstone._io import check_output_folder as check_output
from flagstone.errors import (
    DataError,
    FlagstoneError,
    IdError,
    InvalidTextError,
    MissingHeadError,
    NotFittedError,
)
from flagstone.index.base import Index
from flagstone.index.dense import DenseIndex
from flagstone.index.flat import FlatIndex
from flagstone.index.hi2 import HI2Index
from flagstone.index.ivf import IVFIndex
from flagstone.index.multivector import MultiVectorIndex
from flagstone.index.sparse import CorpusStatistics, SparseIndex
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder, validate_texts
from flagstone.models.embeddings import Embeddings
from flagstone.models.scoring import NORMALIZATIONS
from flagstone.retrieval.bm25 import BM25
from flagstone.retrieval.fusion import SIGNALS, check_weights, reciprocal_rank_fusion, weighted_sum

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
            check_weights(self.weights, SIGNALS)
        if self.candidates < 1:
            raise ValueError("candidates must be at least 1")


@dataclass(frozen=True)
class Hits:
    """Ranked results for a batch of queries, best first, with each signal's own score per hit.

    ``ids`` rows hold only real hits; the score arrays are padded after the last hit with -inf, the same
    convention as the indexes' :class:`~flagstone.index.base.SearchResult` (position -1, score -inf).
    """

    mode: str
    ids: list[list[str]]
    scores: np.ndarray  # (queries, k) final score; -inf after the last hit when a query has fewer than k
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # signal -> (queries, k) raw scores
    evaluated: np.ndarray | None = None  # (queries,) documents scored, for a single-signal search

    def __len__(self) -> int:
        return len(self.ids)

    def to_run(self, query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{query id: {doc id: score}}``, the run format of pytrec_eval and TREC tools."""
        return {q: {d: float(s) for d, s in zip(ids, scores)}  # zip stops at the last real hit
                for q, ids, scores in zip(query_ids, self.ids, self.scores)}


def fuse_candidates(per_signal: Mapping[str, np.ndarray], weights: Mapping[str, float], config: HybridConfig,
                    top: int) -> tuple[np.ndarray, np.ndarray]:
    """One query's hybrid ranking: (the best ``top`` candidates' indices, best first; every candidate's fused
    score). ``per_signal`` holds each signal's scores of the same candidates, listed in the order the
    documents were added, which breaks ties (the earlier-added document first)."""
    if config.method == "rrf":
        fused = reciprocal_rank_fusion(per_signal, weights, config.rrf_k)
    else:
        fused = weighted_sum(per_signal, weights, config.normalize)
    n = len(next(iter(per_signal.values())))
    return np.lexsort((np.arange(n), -fused))[:top], fused


@dataclass(frozen=True)
class CandidatePool:
    """Each signal's proposals for a batch of queries and every signal's score of their union, so that any
    weighting of these signals fuses without encoding or searching again: ``fuse(weights, k)`` returns the hits a
    hybrid search with those weights returns (a signal weighted 0 proposes nothing, as in the search). Built by
    :func:`candidate_pool`; a weight sweep searches once instead of once per weighting."""

    signals: tuple[str, ...]
    k: int  # the largest k fuse() answers: each signal proposed its top max(config.candidates, k)
    config: HybridConfig
    documents: int
    candidates: list[list[str]]  # per query: the union of every signal's proposals, in insertion order
    proposed: dict[str, list[np.ndarray]]  # signal -> per query: which candidates it proposed (bool mask)
    scores: dict[str, list[np.ndarray]]  # signal -> per query: its score of every candidate

    def fuse(self, weights: Mapping[str, float], k: int | None = None) -> Hits:
        """The hybrid hits of ``weights`` (over this pool's signals), top ``k`` (default: the pool's k). A smaller
        ``k`` gives the head of the same ranking: the search with that k may differ, since each signal proposes
        max(candidates, k) documents and min-max normalisation sees the union."""
        check_weights(weights, SIGNALS)
        weights = {s: w for s, w in weights.items() if w != 0}
        missing = sorted(set(weights) - set(self.signals))
        if missing:
            raise ValueError(f"this pool has no proposals of {missing}; it holds {list(self.signals)}")
        k = self.k if k is None else k
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be between 1 and the pool's k ({self.k}), got {k}")
        top = min(k, self.documents)
        n_queries = len(self.candidates)
        out_ids: list[list[str]] = []
        out_scores = np.full((n_queries, top), -np.inf, dtype=np.float32)
        out_signals = {s: np.full((n_queries, top), -np.inf, dtype=np.float32) for s in weights}
        for qi, cands in enumerate(self.candidates):
            keep = np.flatnonzero(np.logical_or.reduce([self.proposed[s][qi] for s in weights]))
            per_signal = {s: self.scores[s][qi][keep] for s in weights}
            ranked, fused = fuse_candidates(per_signal, weights, self.config, top)
            out_ids.append([cands[keep[j]] for j in ranked])
            out_scores[qi, : len(ranked)] = fused[ranked]
            for s in weights:
                out_signals[s][qi, : len(ranked)] = per_signal[s][ranked]
        return Hits("hybrid", out_ids, out_scores, out_signals)


def _pool(indexes: Mapping[str, Index], encoded: Mapping[str, object], order: Mapping[str, int], n_queries: int,
          k: int, config: HybridConfig, allow: Sequence[str] | None) -> CandidatePool:
    """Each signal's index proposes its top ``config.candidates`` (at least ``k``), every signal rescores the union
    of the proposals; ``order`` is each document's insertion position (the tie-break)."""
    per_signal_k = max(config.candidates, k)  # so the union always holds min(k, corpus) documents
    proposals = {s: index.ids_of(index.search(encoded[s], per_signal_k, allow=allow).positions)
                 for s, index in indexes.items()}
    candidates = [sorted({d for rows in proposals.values() for d in rows[qi]}, key=order.__getitem__)
                  for qi in range(n_queries)]
    proposed = {s: [np.fromiter(map(set(rows[qi]).__contains__, cands), dtype=bool, count=len(cands))
                    for qi, cands in enumerate(candidates)] for s, rows in proposals.items()}
    scores = {s: index.rescore(encoded[s], [index.id_map.positions(c) for c in candidates])
              for s, index in indexes.items()}
    return CandidatePool(tuple(indexes), k, config, len(order), candidates, proposed, scores)


def _fused_search(indexes: Mapping[str, Index], encoded: Mapping[str, object], order: Mapping[str, int],
                  n_queries: int, k: int, config: HybridConfig, weights: Mapping[str, float],
                  allow: Sequence[str] | None) -> Hits:
    """The hybrid search behind :meth:`Retriever.search` and :func:`search_across`: the pool of the weighted
    signals, fused with ``weights``."""
    return _pool({s: indexes[s] for s in weights}, encoded, order, n_queries, k, config, allow).fuse(weights, k)


def _encode_across(retrievers: Sequence[Retriever], queries: Sequence[str], signals: Sequence[str],
                   k: int) -> tuple[dict[str, Index], dict[str, object], dict[str, int]]:
    """Check that ``retrievers`` can be combined and each of ``signals`` has one owner; each owner encodes the
    queries for its signals. Returns the signals' indexes, the encoded queries and the insertion order."""
    if not retrievers:
        raise ValueError("search_across needs at least one retriever")
    ids = retrievers[0].ids
    if not ids:
        raise NotFittedError("nothing is indexed yet: add(ids, texts) or fit(ids, texts) first")
    if any(r.ids != ids for r in retrievers[1:]):
        raise FlagstoneError("search_across needs retrievers over the same ids added in the same order")
    owners: dict[str, Retriever] = {}
    for signal in signals:
        holders = [r for r in retrievers if signal in r.signals]
        if len(holders) != 1:
            raise FlagstoneError(f"signal {signal!r} is held by {len(holders)} of the retrievers; it must be "
                                 f"held by exactly one (restrict the others with signals=)")
        owners[signal] = holders[0]
    if k < 1:
        raise ValueError("k must be at least 1")
    if isinstance(queries, str):
        raise InvalidTextError("search expects a list of queries, got a single string; wrap it in a list")
    validate_texts(queries)
    encoded: dict[str, object] = {}
    indexes: dict[str, Index] = {}
    for owner in {id(r): r for r in owners.values()}.values():
        mine = [s for s in signals if owners[s] is owner]
        encoded.update(owner.encode_queries(queries, mine))
        indexes.update({s: owner.indexes[s] for s in mine})
    return indexes, encoded, {doc_id: n for n, doc_id in enumerate(ids)}


def search_across(retrievers: Sequence[Retriever], queries: Sequence[str], *, weights: Mapping[str, float],
                  k: int = 10, hybrid: HybridConfig | None = None, allow: Sequence[str] | None = None) -> Hits:
    """A hybrid of signals that live in different retrievers over the same documents, e.g. one model's dense
    vectors with BM25 and another model's sparse and ColBERT heads: the same candidates and fusion as
    ``Retriever.search(mode="hybrid")`` (``hybrid`` gives method, normalisation and candidates; its weights
    are not used). Every retriever must hold the same ids added in the same order, and each signal named in
    ``weights`` must belong to exactly one of them (build them with ``signals=`` to split a model's outputs)."""
    check_weights(weights, SIGNALS)
    weights = {s: w for s, w in weights.items() if w != 0}
    return candidate_pool(retrievers, queries, signals=list(weights), k=k, hybrid=hybrid, allow=allow).fuse(weights)


def candidate_pool(retrievers: Sequence[Retriever], queries: Sequence[str], *, signals: Sequence[str], k: int = 10,
                   hybrid: HybridConfig | None = None, allow: Sequence[str] | None = None) -> CandidatePool:
    """What :func:`search_across` computes before fusing, for every signal in ``signals``: the queries encoded
    once, each signal's proposals and scores. ``pool.fuse(weights)`` then equals ``search_across(retrievers,
    queries, weights=weights, k=k, hybrid=hybrid, allow=allow)`` for any weights over those signals."""
    unknown = sorted(set(signals) - set(SIGNALS))
    if unknown or not signals:
        raise ValueError(f"signals must be some of {SIGNALS}, got {list(signals)}")
    indexes, encoded, order = _encode_across(retrievers, queries, list(dict.fromkeys(signals)), k)
    return _pool(indexes, encoded, order, len(queries), k, hybrid or HybridConfig(), allow)


FORMAT = "flagstone-retriever"
VERSION = 1
_SETTINGS = "retriever.json"
# a retriever folder saved before output markers existed
RETRIEVER_LAYOUT = LegacyLayout(_SETTINGS, frozenset({_SETTINGS, "bm25.json", "documents.jsonl", "indexes"}))



def check_search_mode(mode: str, k: int, signals: Sequence[str], modes: Sequence[str]) -> None:
    """Refuse a search ``mode`` this retriever (single or sharded) cannot answer, and ``k`` below 1."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {MODES}")
    if mode != "hybrid" and mode not in signals:
        raise FlagstoneError(f"mode {mode!r} is not available; this retriever has {modes}")
    if k < 1:
        raise ValueError("k must be at least 1")

class Retriever:
    """Holds one index per signal over the same documents.

    ``signals`` defaults to every output the embedder has plus BM25; pass ``embedder=None`` for a
    BM25-only retriever. ``cache`` stores document embeddings on disk between runs. ``dense_index`` is
    "flat" (exact), "ivf", "hi2", or an empty index instance configured by the caller; HI² takes its
    salient terms from the retriever's BM25 statistics.
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
        self.dense_index = dense_index
        needs_terms = "bm25" in self.signals or (
            "dense" in self.signals and (dense_index == "hi2" or isinstance(dense_index, HI2Index)))
        self.bm25 = bm25 if bm25 is not None else (BM25() if needs_terms else None)
        self.cache = cache
        self.hybrid = hybrid or HybridConfig()
        self._reset()

    def _reset(self) -> None:
        self._texts: dict[str, str] = {}  # insertion order is the tie-break order of results
        self._metadata: dict[str, dict] = {}
        self._order: dict[str, int] = {}
        self._next = 0
        self._indexes: dict[str, Index] = {}
        self._terms: SparseIndex | None = None  # BM25 statistics (the "bm25" signal's index, or HI²'s terms)
        self._corpus_statistics: CorpusStatistics | None = None  # a whole corpus's, when this is one shard

    @property
    def modes(self) -> tuple[str, ...]:
        return self.signals + (("hybrid",) if len(self.signals) > 1 else ())

    @property
    def ids(self) -> list[str]:
        """Ids of the indexed documents, in the order they were added."""
        return list(self._texts)

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._texts

    def text(self, doc_id: str) -> str:
        return self._texts[doc_id]

    def metadata(self, doc_id: str) -> dict:
        return self._metadata.get(doc_id, {})

    @property
    def indexes(self) -> dict[str, Index]:
        """The index behind each signal (read-only use)."""
        return dict(self._indexes)

    def default_weights(self) -> dict[str, float]:
        if all(s in self.signals for s in _MODEL_SIGNALS):
            return {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}
        if "dense" in self.signals and "bm25" in self.signals:
            return {"dense": 0.5, "bm25": 0.5}
        return {s: 1.0 for s in self.signals}

    # -- writing -------------------------------------------------------------------------------
    def fit(self, ids: Sequence[str], texts: Sequence[str], *, show_progress: bool | None = None) -> Retriever:
        """Index ``texts`` under ``ids`` for every signal, replacing anything indexed before."""
        if len(ids) == 0:
            raise InvalidTextError("the corpus is empty: nothing to index")
        if isinstance(self.dense_index, DenseIndex) and len(self.dense_index):
            raise FlagstoneError("this retriever's dense index instance is already filled; pass the index "
                                 "kind (e.g. dense_index='hi2') to fit a retriever more than once")
        self._reset()
        if self.bm25 is not None and self.bm25.vocab:
            self.bm25 = BM25(k1=self.bm25.k1, b=self.bm25.b, tokenizer=self.bm25.tokenizer)
        self.add(ids, texts, show_progress=show_progress)
        return self

    def add(self, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[Mapping] | None = None, *,
            show_progress: bool | None = None, embeddings: Embeddings | None = None) -> None:
        """Index more documents. Ids must be new (``remove`` first to replace one). Encoding happens before any
        index changes, and an index that refuses the rows makes the others drop them again, so a failed add
        leaves no trace in search results. ``embeddings``: the documents' outputs computed elsewhere (e.g. by
        distributed encoding with this retriever's model), used instead of encoding ``texts``; they must hold
        every model signal of this retriever."""
        ids = [str(i) for i in ids]
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        if metadata is not None and len(metadata) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(metadata)} metadata records")
        if not ids:
            return
        if any(not i for i in ids) or len(set(ids)) != len(ids):
            raise IdError("ids must be non-empty and unique within one add() call")
        present = [i for i in ids if i in self._texts]
        if present:
            raise IdError(f"{len(present)} ids already indexed, e.g. {present[:3]}; remove them first")
        validate_texts(texts, allow_empty=True)  # an empty document matches nothing lexically, as in BEIR
        model_signals = [s for s in self.signals if s in _MODEL_SIGNALS]
        if embeddings is not None:
            lacking = [s for s in model_signals if getattr(embeddings, s) is None]
            if lacking:
                raise ValueError(f"the embeddings passed lack {lacking}, which this retriever indexes")
            emb = Embeddings(**{s: getattr(embeddings, s) for s in model_signals})
            if any(len(getattr(emb, s)) != len(ids) for s in model_signals):
                raise ValueError(f"{len(ids)} ids for embeddings of another length")
        else:
            emb = (self._encode(texts, model_signals, is_query=False, show_progress=show_progress)
                   if model_signals else Embeddings())
        try:
            self._add_to_indexes(ids, texts, emb)
        except BaseException:  # an index refused the rows (e.g. NaN vectors): take them out of those that took them
            for index in self._all_indexes():
                taken = [i for i in ids if i in index]
                if taken:
                    index.remove(taken)
            raise
        for n, (doc_id, text) in enumerate(zip(ids, texts)):
            self._texts[doc_id] = text
            self._order[doc_id] = self._next
            self._next += 1
            if metadata is not None and metadata[n]:
                self._metadata[doc_id] = dict(metadata[n])

    def _add_to_indexes(self, ids: list[str], texts: Sequence[str], emb: Embeddings) -> None:
        if self.bm25 is not None:
            counts = self.bm25.count(texts)
            if self._terms is None:
                self._terms = SparseIndex(counts.vocab_size, scoring="bm25", k1=self.bm25.k1, b=self.bm25.b)
            self._terms.add(ids, counts)
            if self._corpus_statistics is not None and not self._terms.shares_statistics:
                self._terms.share_statistics(self._corpus_statistics)
            if "bm25" in self.signals:
                self._indexes["bm25"] = self._terms
        if emb.dense is not None:
            dense = self._indexes.get("dense")
            if dense is None:
                dense = self.dense_index if isinstance(self.dense_index, DenseIndex) else \
                    DENSE_INDEXES[self.dense_index](emb.dense.shape[1])
                self._indexes["dense"] = dense
            if isinstance(dense, HI2Index):  # the documents' BM25 weights as HI²'s term lists
                dense.add(ids, Embeddings(dense=emb.dense, sparse=self._terms.document_weights(ids)))
            else:
                dense.add(ids, emb.dense)
        if emb.sparse is not None:
            self._indexes.setdefault("sparse", SparseIndex(emb.sparse.vocab_size)).add(ids, emb.sparse)
        if emb.colbert is not None:
            self._indexes.setdefault("colbert", MultiVectorIndex(emb.colbert.dim)).add(ids, emb.colbert)

    def share_corpus_statistics(self, stats: CorpusStatistics) -> None:
        """Make this retriever one shard of a larger corpus: BM25 (and HI²'s term weights) use ``stats``, the
        merged statistics of every shard, with term ids from a vocabulary shared by all shards (this
        retriever's ``bm25`` must have been given it). Call before ``add``; the statistics are a snapshot."""
        if self.bm25 is None:
            raise FlagstoneError("this retriever has no BM25 statistics to share (no bm25 signal, no HI² index)")
        if len(stats.doc_freq) < self.bm25.vocab_size:
            raise ValueError(f"statistics cover {len(stats.doc_freq)} terms, the vocabulary {self.bm25.vocab_size}")
        self._corpus_statistics = stats
        if self._terms is not None:
            self._terms.share_statistics(stats)

    def term_statistics(self, texts: Sequence[str]) -> CorpusStatistics:
        """BM25 statistics of ``texts`` over this retriever's vocabulary, which grows by their new terms (how
        shards agree on one vocabulary and merge their statistics before indexing)."""
        if self.bm25 is None:
            raise FlagstoneError("this retriever has no BM25 statistics (no bm25 signal, no HI² index)")
        counts = self.bm25.count(texts).to_scipy()
        lengths = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
        doc_freq = np.bincount(counts.indices, minlength=self.bm25.vocab_size).astype(np.int64)
        return CorpusStatistics(doc_freq, len(texts), float(lengths.sum()))

    def _all_indexes(self) -> list[Index]:
        """Every index once (the BM25 statistics are the "bm25" signal's index when it is one)."""
        return list({id(x): x for x in (*self._indexes.values(), self._terms) if x is not None}.values())

    def remove(self, ids: Sequence[str]) -> None:
        """Forget documents; they stop matching at once."""
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in self._texts]
        if missing:
            raise IdError(f"{len(missing)} unknown ids, e.g. {missing[:3]}")
        for index in self._all_indexes():
            index.remove(ids)
        for doc_id in ids:
            del self._texts[doc_id], self._order[doc_id]
            self._metadata.pop(doc_id, None)

    def retrain(self) -> None:
        """Learn trained structures (IVF / HI² clusters) again from the current documents."""
        for index in self._indexes.values():
            if hasattr(index, "retrain"):
                index.retrain()

    def describe(self) -> dict[str, Any]:
        """Documents, signals, model, and each index's description (with drift for clustered indexes)."""
        return {"documents": len(self), "signals": list(self.signals),
                "model": self.embedder.name if self.embedder is not None else None,
                "indexes": {s: index.describe() for s, index in self._indexes.items()}}

    def _encode(self, texts: Sequence[str], outputs: Sequence[str], *, is_query: bool,
                show_progress: bool | None) -> Embeddings:
        flags = {name: name in outputs for name in _MODEL_SIGNALS}
        if self.cache is not None and not is_query:
            return self.cache.encode(self.embedder, texts, is_query=is_query, show_progress=show_progress, **flags)
        return self.embedder.encode(texts, is_query=is_query, show_progress=show_progress, **flags)

    # -- searching -----------------------------------------------------------------------------
    def search(self, queries: Sequence[str], *, mode: str = "dense", k: int = 10,
               hybrid: HybridConfig | None = None, allow: Sequence[str] | None = None) -> Hits:
        """Top ``k`` documents for each query in ``mode`` (a signal name or "hybrid"); ``allow`` restricts the
        results to those ids, inside each index's search."""
        if not self._texts:
            raise NotFittedError("nothing is indexed yet: add(ids, texts) or fit(ids, texts) first")
        check_search_mode(mode, k, self.signals, self.modes)
        if isinstance(queries, str):
            raise InvalidTextError("search expects a list of queries, got a single string; wrap it in a list")
        validate_texts(queries)
        if mode != "hybrid":
            encoded = self.encode_queries(queries, [mode])
            index = self._indexes[mode]
            result = index.search(encoded[mode], k, allow=allow)
            scores = result.scores
            return Hits(mode, index.ids_of(result.positions), scores, {mode: scores}, result.docs_evaluated)
        return self._search_hybrid(queries, k, hybrid or self.hybrid, allow)

    def tune_dense(self, queries: Sequence[str], *, target_recall: float, k: int = 10) -> dict[str, Any]:
        """Tune the dense index's n_probe on sample ``queries`` (texts) to reach ``target_recall`` of exact
        search's top ``k`` (see :meth:`IVFIndex.tune`); the choice is saved with the retriever."""
        index = self._indexes.get("dense")
        if not isinstance(index, IVFIndex):
            raise FlagstoneError("a recall target needs an IVF or HI² dense index (the flat index is exact)")
        if isinstance(queries, str):
            raise InvalidTextError("tune_dense expects a list of queries, got a single string; wrap it in a list")
        validate_texts(queries)
        return index.tune(self.encode_queries(queries, ["dense"])["dense"], target_recall=target_recall, k=k)

    def encode_queries(self, queries: Sequence[str], signals: Sequence[str]) -> dict[str, object]:
        """Each signal's query form for ``queries``, as its index searches it (HI²'s dense part carries the
        query terms too). Scatter-gather search encodes once here and sends the result to every shard."""
        encoded: dict[str, object] = {}
        model_signals = [s for s in signals if s in _MODEL_SIGNALS]
        hi2 = "dense" in model_signals and isinstance(self._indexes.get("dense"), HI2Index)
        terms = self.bm25.transform_queries(queries) if "bm25" in signals or hi2 else None
        if model_signals:
            emb = self._encode(queries, model_signals, is_query=True, show_progress=False)
            encoded.update({s: getattr(emb, s) for s in model_signals})
            if hi2:
                encoded["dense"] = Embeddings(dense=emb.dense, sparse=terms)
        if "bm25" in signals:
            encoded["bm25"] = terms
        return encoded

    def hybrid_weights(self, config: HybridConfig) -> dict[str, float]:
        """The non-zero weights ``config`` gives (or the defaults), checked against this retriever's signals."""
        weights = dict(config.weights) if config.weights is not None else self.default_weights()
        weights = {s: w for s, w in weights.items() if w != 0}
        if not weights:
            raise ValueError("hybrid weights are all zero: give at least one signal a non-zero weight")
        missing = [s for s in weights if s not in self.signals]
        if missing:
            raise FlagstoneError(f"hybrid weights name signals this retriever lacks: {missing}")
        return weights

    def _search_hybrid(self, queries: Sequence[str], k: int, config: HybridConfig,
                       allow: Sequence[str] | None) -> Hits:
        weights = self.hybrid_weights(config)
        encoded = self.encode_queries(queries, list(weights))
        return _fused_search({s: self._indexes[s] for s in weights}, encoded, self._order, len(queries), k,
                             config, weights, allow)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the retriever (settings, BM25 vocabulary, documents, every index) to ``folder``.

        The folder is written beside the target and renamed into place. An existing retriever folder is
        replaced only with ``overwrite=True``; any other existing non-empty path is never touched.
        """
        target = Path(folder)
        with atomic_folder(target, overwrite=overwrite, legacy=RETRIEVER_LAYOUT) as staging:
            settings = {"format": FORMAT, "version": VERSION, "signals": list(self.signals),
                        "dense_index": self._indexes["dense"].kind if "dense" in self._indexes else
                        (self.dense_index if isinstance(self.dense_index, str) else self.dense_index.kind),
                        "hybrid": asdict(self.hybrid), "documents": len(self),
                        "model": None if self.embedder is None else self._model_settings()}
            if self.bm25 is not None:
                self.bm25.save(staging / "bm25.json")
            with atomic_write(staging / "documents.jsonl") as handle:
                for doc_id, text in self._texts.items():
                    record = {"_id": doc_id, "text": text}
                    if doc_id in self._metadata:
                        record["metadata"] = self._metadata[doc_id]
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            for signal, index in self._indexes.items():
                index.save(staging / "indexes" / signal)
            if self._terms is not None and "bm25" not in self._indexes:
                self._terms.save(staging / "indexes" / "terms")
            with atomic_write(staging / _SETTINGS) as handle:
                json.dump(settings, handle, indent=2)

    def _model_settings(self) -> dict[str, Any]:
        model = {"name": self.embedder.name, "path": str(self.embedder.path),
                 "max_length": self.embedder.settings.max_length}
        if self.embedder.settings.splade:  # only then, so folders of other models stay as they were
            model["splade"] = True
        return model

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, embedder: Embedder | None = None,
             cache: EmbeddingCache | None = None, mmap: bool = False, verify: bool = True) -> Retriever:
        """Open a folder written by :meth:`save`. The embedder is loaded from the saved model path unless one
        is given (it must be the same model for the stored vectors to make sense). ``verify`` checks every
        index array's SHA-256, also with ``mmap=True``; see :func:`verify_folder` to check without loading."""
        saved = _read_saved(Path(folder), mmap=mmap, verify=verify)  # before any model weights are read
        settings = saved.settings
        model = settings.get("model")
        if embedder is None and model is not None:
            embedder = Embedder(model["path"], max_length=model["max_length"], splade=bool(model.get("splade", False)))
        hybrid = settings.get("hybrid") or {}
        retriever = cls(embedder, signals=settings["signals"], bm25=saved.bm25, cache=cache,
                        hybrid=HybridConfig(**hybrid), dense_index=settings["dense_index"])
        retriever._indexes.update(saved.indexes)
        retriever._terms = saved.terms
        for record in saved.records:
            doc_id = record["_id"]
            retriever._texts[doc_id] = record["text"]
            retriever._order[doc_id] = retriever._next
            retriever._next += 1
            if record.get("metadata"):
                retriever._metadata[doc_id] = record["metadata"]
        return retriever


@dataclass
class _Saved:
    """What a retriever folder holds, read and checked, without the model."""

    settings: dict[str, Any]
    bm25: BM25 | None
    indexes: dict[str, Index]
    terms: Index | None
    records: list[dict[str, Any]]
    files: list[Path]  # every file read, for `flagstone index verify`


def _read_saved(root: Path, *, mmap: bool, verify: bool) -> _Saved:
    from flagstone.index.storage import index_files

    settings = read_settings(root)
    files = [root / _SETTINGS]
    signals = settings.get("signals")
    if not isinstance(signals, list) or not all(isinstance(s, str) for s in signals) \
            or not isinstance(settings.get("dense_index"), str):
        raise DataError(f"{root / _SETTINGS}: malformed (needs a list of signals and a dense_index)")
    bm25 = None
    if (root / "bm25.json").is_file():
        bm25 = BM25.load(root / "bm25.json")
        files.append(root / "bm25.json")
    folders = {signal: root / "indexes" / signal for signal in signals}
    if "bm25" not in signals and (root / "indexes" / "terms").is_dir():
        folders["terms"] = root / "indexes" / "terms"
    indexes = {}
    for name, index_folder in folders.items():
        indexes[name] = Index.load(index_folder, mmap=mmap, verify=verify)
        files += index_files(index_folder)
    terms = indexes.pop("terms", None) if "terms" in folders else indexes.get("bm25")
    documents = root / "documents.jsonl"
    records = []
    for line_no, record in iter_jsonl(documents):
        if not isinstance(record.get("_id"), str) or not isinstance(record.get("text"), str):
            raise DataError(f"{documents}:{line_no}: a saved document needs string fields _id and text")
        records.append(record)
    files.append(documents)
    for signal, index in indexes.items():
        if len(index) != len(records):
            raise DataError(f"{root}: the {signal} index holds {len(index)} documents, the document list "
                            f"{len(records)}; the folder is damaged")
    return _Saved(settings, bm25, indexes, terms, records, files)


def load_indexes(folder: str | os.PathLike[str], *, mmap: bool = False,
                 verify: bool = True) -> tuple[dict[str, Index], list[dict[str, Any]]]:
    """A saved retriever's index per signal and its document records (``_id``, ``text`` and, when it has any,
    ``metadata``) in the order they were added, without the model (what a search-only shard of a sharded
    retriever needs: the ids, and the metadata its filters are evaluated on)."""
    saved = _read_saved(Path(folder), mmap=mmap, verify=verify)
    return saved.indexes, saved.records


def verify_folder(folder: str | os.PathLike[str]) -> list[Path]:
    """Check a saved retriever folder as :meth:`Retriever.load` does, every index array's checksum included,
    without loading the model or the vectors into memory; returns the files checked. Raises a
    :class:`~flagstone.errors.DataError` (a :class:`~flagstone.errors.CorruptIndexError` for index files)
    naming the first bad file."""
    return _read_saved(Path(folder), mmap=True, verify=True).files


def read_settings(root: Path) -> dict[str, Any]:
    """The settings of a saved retriever folder, or :class:`DataError` saying what the folder is not."""
    file = root / _SETTINGS
    if not file.is_file():
        if (root / "sharded.json").is_file():
            raise DataError(f"{root} is a sharded retriever: open it with "
                            f"flagstone.distributed.shards.ShardedRetriever.load (the CLI's --ray)")
        if (root / "flagstone-index.json").is_file():
            raise DataError(f"{root} was written by an older Flagstone (flagstone-index.json); build it again "
                            f"with `flagstone index build`")
        raise DataError(f"{root} is not a retriever folder (no {_SETTINGS})")
    return read_format_json(file, format_name=FORMAT, version=VERSION, what="a retriever folder", kind="retriever")


def check_output_folder(target: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Before any work: may a retriever be saved at ``target``? (see :func:`flagstone._io.check_output_folder`)"""
    return check_output(target, overwrite=overwrite, legacy=RETRIEVER_LAYOUT)

