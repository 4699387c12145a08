"""Sharded retrievers: built in parallel with shared training, searched by scatter-gather over shard actors.

A sharded retriever folder holds ``sharded.json`` (signals, model, shard list), ``bm25.json`` (the corpus-wide
BM25 vocabulary) and ``shards/NNNNN/``, each an ordinary retriever folder over a contiguous block of the corpus.

Results equal one :class:`~flagstone.retrieval.retriever.Retriever` over all the documents (ids and scores):

- every shard shares the corpus-wide BM25 vocabulary (the first-seen order of terms over the corpus, which is the
  single retriever's term numbering) and the merged statistics (document frequencies, document count, summed
  length), so BM25 scores, and HI²'s term weights, are the single index's;
- IVF / HI² centroids and PQ codebooks are trained once on a sample and every shard (and the single index it is
  compared with) starts from that trained, empty index, so every shard probes the clusters the single index does;
- the merge sorts by score, then by the single index's tie order: the document added first (for IVF / HI²,
  whose rows are grouped by cluster, the lower cluster first, then the document added first);
- hybrid search gathers each signal's global top candidates, rescoring them on their shards, and fuses them over
  the same global candidate set with the single retriever's own fusion code;
- HI² caps each term's posting list at ``max_posting`` documents over the corpus, not per shard: at build the
  shards report the terms whose lists are longer than that over the corpus and, for those, their heaviest
  postings; each shard then keeps exactly its share of the corpus's top ``max_posting`` (equal weights in
  corpus order) and never a smaller default of its own size (:func:`~flagstone.index.hi2.shard_posting_caps`).

Metadata filters (``where``) are evaluated by each shard over its own documents' metadata and applied as that
shard's allow-list inside its index search, never after it: the result is what one retriever searched with
``allow`` = every matching id returns. An allow-list (or filter) is exact for flat, sparse, ColBERT and BM25
search; IVF / HI² widen their probing under it by each shard's own share of allowed documents, and a shard
whose probed lists hold fewer than k allowed documents scores all of them (the index protocol's rule), so their
filtered recall is at least their unfiltered recall, not equal to the single index's filtered results.
"""
from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flagstone._io import atomic_folder, atomic_write, read_format_json
from flagstone.distributed.cluster import ClusterError, ShardUnavailableError, actor_errors, require_ray
from flagstone.distributed.encode import EmbedderSpec, load_encoded, shard_path
from flagstone.errors import DataError, FlagstoneError, InvalidTextError, NotFittedError
from flagstone.index.dense import DenseIndex
from flagstone.index.hi2 import HI2Index, shard_posting_caps
from flagstone.index.ivf import IVFIndex
from flagstone.index.sparse import CorpusStatistics
from flagstone.models.embedder import validate_texts
from flagstone.models.embeddings import Embeddings
from flagstone.retrieval.bm25 import BM25
from flagstone.retrieval.filters import check_filter, matching_ids
from flagstone.retrieval.lexical import LexicalTokenizer
from flagstone.retrieval.retriever import (
    DENSE_INDEXES,
    Hits,
    HybridConfig,
    Retriever,
    check_search_mode,
    fuse_candidates,
    load_indexes,
)

FORMAT = "flagstone-sharded-retriever"
VERSION = 1
MANIFEST = "sharded.json"
_ORDINAL_BITS = 40  # tie keys: cluster << 40 | position in the corpus (up to 10^12 documents)
_MODEL_SIGNALS = ("dense", "sparse", "colbert")


# -- building ------------------------------------------------------------------------------------------------
def _bm25(config: dict[str, Any], vocab: Sequence[str] = ()) -> BM25:
    tok = config["tokenizer"]
    model = BM25(k1=config["k1"], b=config["b"], tokenizer=LexicalTokenizer(
        lowercase=tok["lowercase"], pattern=tok["pattern"], stopwords=tok["stopwords"], stemmer=tok["stemmer"]))
    model.vocab = {w: i for i, w in enumerate(vocab)}
    return model


def merge_vocabularies(parts: Sequence[Sequence[str]]) -> list[str]:
    """Terms in first-seen order over the parts in order: the numbering one BM25 fitted on the concatenated
    corpus gives, so every shard numbers terms as the single retriever does."""
    merged: dict[str, None] = {}
    for terms in parts:
        merged.update(dict.fromkeys(terms))
    return list(merged)


def train_dense_index(kind: str, sample: np.ndarray, **options: Any) -> DenseIndex:
    """An empty dense index of ``kind`` ("flat", "ivf", "hi2") whose clusters and codec (PQ codebooks) are
    trained on ``sample``; every shard starts from a copy, as does the single index it is compared with.
    ``options`` are the index class's keyword arguments (n_lists, n_probe, codec, pq_m, max_posting...)."""
    if kind not in DENSE_INDEXES:
        raise ValueError(f"unknown dense index {kind!r}; choose from {tuple(DENSE_INDEXES)}")
    sample = np.asarray(sample, dtype=np.float32)
    index = DENSE_INDEXES[kind](sample.shape[1], **options)
    index.train(sample)
    return index


class ShardBuilder:
    """Builds one shard (a retriever folder); runs inside a Ray actor or in this process."""

    def __init__(self, spec: EmbedderSpec | None, signals: Sequence[str] | None, bm25_config: dict[str, Any],
                 hybrid: dict[str, Any]) -> None:
        self.embedder = spec.build() if spec is not None else None
        self.signals = tuple(signals) if signals is not None else (
            (self.embedder.available_outputs if self.embedder is not None else ()) + ("bm25",))
        self.bm25_config = bm25_config
        self.hybrid = hybrid
        self._vocab: list[str] | None = None
        self._built: Retriever | None = None  # between build and save

    def describe(self) -> dict[str, Any]:
        return {"signals": list(self.signals), "dim": self.embedder.dim if self.embedder is not None else None}

    def vocabulary(self, texts: Sequence[str]) -> list[str]:
        """This block's terms in first-seen order."""
        model = _bm25(self.bm25_config)
        model.count(texts)
        return list(model.vocab)

    def statistics(self, vocab: list[str], texts: Sequence[str]) -> CorpusStatistics:
        """BM25 statistics of this block over the corpus-wide vocabulary (kept for :meth:`build`)."""
        self._vocab = vocab
        counter = Retriever(None, signals=["bm25"], bm25=_bm25(self.bm25_config, vocab))
        return counter.term_statistics(texts)

    def encode_dense(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.encode(texts, is_query=False, show_progress=False, dense=True).dense

    def build(self, folder: str, ids: Sequence[str], texts: Sequence[str], stats: CorpusStatistics | None,
              dense_index: str | DenseIndex, embeddings: Embeddings | None,
              encoded: tuple[str, int, int] | None, metadata: Sequence[dict] | None = None) -> int:
        """Index the block (kept here until :meth:`save`); returns its document count."""
        needs_terms = "bm25" in self.signals or ("dense" in self.signals and (
            dense_index == "hi2" or getattr(dense_index, "kind", None) == "hi2"))
        bm25 = _bm25(self.bm25_config, self._vocab or ()) if needs_terms else None
        retriever = Retriever(self.embedder, signals=self.signals, bm25=bm25, hybrid=HybridConfig(**self.hybrid),
                              dense_index=copy.deepcopy(dense_index))
        if bm25 is not None:
            retriever.share_corpus_statistics(stats)
        if encoded is not None:
            encoded_ids, embeddings = load_encoded(encoded[0], rows=(encoded[1], encoded[2]))
            if encoded_ids != list(ids):
                raise DataError(f"{encoded[0]}: the encoded ids of rows {encoded[1]}:{encoded[2]} are not the "
                                f"corpus's; encode this corpus again")
        retriever.add(ids, texts, metadata, embeddings=embeddings, show_progress=False)
        self._built = retriever
        return len(retriever)

    def _hi2(self) -> HI2Index:
        return self._built.indexes["dense"]

    def posting_counts(self) -> np.ndarray:
        """Documents posted under each term id in this shard's HI² index, before any cap."""
        return self._hi2().posting_counts()

    def posting_heads(self, terms: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
        return self._hi2().posting_heads(terms, limit)

    def cap_postings(self, limit: int, caps: np.ndarray | None) -> None:
        self._hi2().cap_postings(limit, caps)

    def save(self, folder: str) -> None:
        """Save the shard built by :meth:`build` at ``folder`` and let it go."""
        self._built.save(folder)
        self._built = None


def _shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous blocks of nearly equal size, in corpus order."""
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def build_sharded(folder: str | os.PathLike[str], ids: Sequence[str], texts: Sequence[str], *,
                  spec: EmbedderSpec | None, shards: int, signals: Sequence[str] | None = None,
                  dense_index: str | DenseIndex = "flat", dense_options: dict[str, Any] | None = None,
                  embeddings: Embeddings | None = None, encoded: str | os.PathLike[str] | None = None,
                  train_sample: int = 100_000, seed: int = 0, bm25: BM25 | None = None,
                  hybrid: HybridConfig | None = None, use_ray: bool = True,
                  overwrite: bool = False, metadata: Sequence[dict] | None = None) -> Path:
    """Split the corpus into ``shards`` contiguous blocks and build each as a retriever folder, in parallel on
    Ray actors (``use_ray=False``: one after another here, the same result), into ``folder``.

    Document outputs come from ``embeddings`` (all documents, corpus order), from an ``encoded`` folder written by
    :func:`~flagstone.distributed.encode.encode_corpus` (each shard reads its own rows), or else each shard encodes
    its block. ``dense_index`` "ivf" / "hi2" (with ``dense_options``) is trained once on ``train_sample`` random
    documents here; pass an already trained empty index to choose the sample yourself. ``metadata``: one dict
    per document (corpus order), kept with each shard's documents.
    """
    if shards < 1:
        raise ValueError("shards must be at least 1")
    if len(ids) != len(texts) or not ids:
        raise InvalidTextError(f"{len(ids)} ids for {len(texts)} texts (and at least one document is needed)")
    if len(set(map(str, ids))) != len(ids):
        raise DataError("document ids are not unique")
    if embeddings is not None and encoded is not None:
        raise ValueError("give embeddings or an encoded folder, not both")
    if embeddings is not None and len(embeddings) != len(ids):
        raise ValueError(f"{len(embeddings)} embeddings for {len(ids)} documents")
    if metadata is not None and len(metadata) != len(ids):
        raise ValueError(f"{len(metadata)} metadata entries for {len(ids)} documents")
    validate_texts(texts, allow_empty=True)
    ids = [str(i) for i in ids]
    shards = min(shards, len(ids))
    bm25_config = (bm25 or BM25()).config()
    hybrid = hybrid or HybridConfig()
    hybrid_settings = asdict(hybrid) | {"weights": dict(hybrid.weights) if hybrid.weights else None}
    bounds = _shard_bounds(len(ids), shards)
    builders = _Workers(ShardBuilder, [(spec, signals, bm25_config, hybrid_settings)] * shards, use_ray)
    try:
        first = builders.call_one(0, "describe")
        signal_list = first["signals"]
        needs_terms = "bm25" in signal_list or ("dense" in signal_list and (
            dense_index == "hi2" or getattr(dense_index, "kind", None) == "hi2"))
        stats = None
        vocab: list[str] = []
        if needs_terms:
            vocab = merge_vocabularies(builders.call_each("vocabulary", [(texts[a:b],) for a, b in bounds]))
            stats = CorpusStatistics.merge(builders.call_each("statistics", [(vocab, texts[a:b]) for a, b in bounds]))
        if isinstance(dense_index, str) and dense_index in ("ivf", "hi2") and "dense" in signal_list:
            rows = _sample_rows(len(ids), train_sample, seed)
            if embeddings is not None:
                sample = embeddings.dense[rows]
            elif encoded is not None:
                sample = _encoded_sample(Path(encoded), rows)
            else:
                sample = builders.call_one(0, "encode_dense", [texts[r] for r in rows])
            dense_index = train_dense_index(dense_index, sample, **(dense_options or {}))
        with atomic_folder(folder, overwrite=overwrite) as staging:
            shard_folders = [staging / "shards" / f"{s:05d}" for s in range(shards)]
            args = []
            for (a, b), shard_folder in zip(bounds, shard_folders):
                part = embeddings.take(np.arange(a, b)) if embeddings is not None else None
                args.append((str(shard_folder), ids[a:b], texts[a:b], stats, dense_index, part,
                             (str(encoded), a, b) if encoded is not None else None,
                             list(metadata[a:b]) if metadata is not None else None))
            sizes = builders.call_each("build", args)
            if "dense" in signal_list and isinstance(dense_index, HI2Index):
                _cap_hi2_postings(builders, dense_index.posting_limit(len(ids)))
            builders.call_each("save", [(str(f),) for f in shard_folders])
            if needs_terms:
                _bm25(bm25_config, vocab).save(staging / "bm25.json")
            manifest = {
                "format": FORMAT, "version": VERSION, "signals": list(signal_list),
                "dense_index": dense_index if isinstance(dense_index, str) else dense_index.kind,
                "model": None if spec is None else {"path": spec.model, "max_length": spec.max_length},
                "hybrid": hybrid_settings, "documents": len(ids),
                "statistics": None if stats is None else {"documents": stats.n_docs, "terms": len(vocab),
                                                          "mean_length": stats.total_length / max(stats.n_docs, 1)},
                "shards": [{"folder": f"shards/{s:05d}", "documents": n, "offset": a}
                           for s, ((a, _), n) in enumerate(zip(bounds, sizes))]}
            with atomic_write(staging / MANIFEST) as handle:
                json.dump(manifest, handle, indent=2)
    finally:
        builders.close()
    return Path(folder)


def _cap_hi2_postings(builders: _Workers, limit: int) -> None:
    """Cap HI²'s posting lists over the corpus, not per shard: one index keeps each term's ``limit`` heaviest
    postings, so each shard keeps those of them it holds. Only terms posted more than ``limit`` times over the
    corpus travel (their ``limit`` heaviest postings per shard, 12 bytes each)."""
    counts = builders.call_each("posting_counts", [()] * len(builders))
    width = max(len(c) for c in counts)
    total = np.zeros(width, dtype=np.int64)
    for c in counts:
        total[: len(c)] += c
    capped = np.flatnonzero(total > limit)
    if len(capped) == 0:  # the cap binds nowhere over the corpus: no shard may apply a smaller one of its own
        builders.call_each("cap_postings", [(limit, None)] * len(builders))
        return
    heads = builders.call_each("posting_heads", [(capped, limit)] * len(builders))
    caps = shard_posting_caps(heads, limit, width)
    builders.call_each("cap_postings", [(limit, cap) for cap in caps])


def _encoded_sample(folder: Path, rows: np.ndarray) -> np.ndarray:
    """Dense vectors of the corpus rows ``rows`` (sorted), read shard file by shard file."""
    settings = json.loads((folder / "encoding.json").read_text(encoding="utf-8"))
    size = settings["shard_size"]
    parts = []
    for shard in np.unique(rows // size):
        with np.load(shard_path(folder, int(shard))) as arrays:
            parts.append(arrays["dense"][rows[rows // size == shard] - shard * size])
    return np.concatenate(parts)


def is_sharded_folder(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / MANIFEST).is_file()


# -- searching -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardAnswer:
    """One shard's top hits for a batch of queries: per query the ids, scores, tie keys and corpus positions."""

    ids: list[list[str]]
    scores: list[np.ndarray]
    keys: list[np.ndarray]
    ordinals: list[np.ndarray]
    evaluated: np.ndarray | None


class ShardSearcher:
    """Answers one shard's searches; runs inside a Ray actor (one per shard and replica) or in this process."""

    def __init__(self, folder: str, offset: int, mmap: bool = False, keep_documents: bool = False) -> None:
        self.indexes, records = load_indexes(folder, mmap=mmap)
        doc_ids = [record["_id"] for record in records]
        # texts and metadata stay on the shard (what a service shows with each hit), not in the driver; the
        # metadata is always kept: metadata filters are evaluated here, over this shard's documents
        self.metadata: dict[str, dict] = {r["_id"]: r["metadata"] for r in records if r.get("metadata")}
        self.texts: dict[str, tuple[str, dict | None]] | None = None
        if keep_documents:
            self.texts = {r["_id"]: (r["text"], r.get("metadata")) for r in records}
        del records  # the texts go unless kept
        self.ordinal = {doc_id: offset + n for n, doc_id in enumerate(doc_ids)}
        self.documents = len(doc_ids)
        # each row's place in the single index's tie order (see the module docstring)
        self.row_keys: dict[str, np.ndarray] = {}
        self.row_ordinals: dict[str, np.ndarray] = {}
        for signal, index in self.indexes.items():
            ordinals = np.array([self.ordinal[i] if i is not None else -1 for i in index.ids], dtype=np.int64)
            keys = ordinals.copy()
            if isinstance(index, IVFIndex):
                keys = (index.assign[: len(ordinals)].astype(np.int64) << _ORDINAL_BITS) | ordinals
            self.row_keys[signal], self.row_ordinals[signal] = keys, ordinals
            if isinstance(index, DenseIndex) and index.kind != "hi2" and len(index):
                # compile (or load) the search kernels now, not inside the first search's deadline
                index.search(np.zeros((1, index.dim), dtype=np.float32), 1)

    def ping(self) -> int:
        return self.documents

    def documents_of(self, ids: Sequence[str]) -> dict[str, tuple[str, dict | None]]:
        """(text, metadata) of those of ``ids`` this shard holds."""
        if self.texts is None:
            raise NotFittedError("this shard was started without its documents (keep_documents=False)")
        return {i: self.texts[i] for i in ids if i in self.texts}

    def allowed(self, allow: Sequence[str] | None, where: Mapping | None) -> list[str] | None:
        """This shard's documents that ``allow`` lists (all when None) and whose metadata passes ``where``
        (None: no restriction at all)."""
        if not where:
            return allow
        candidates = self.ordinal if allow is None else (i for i in allow if i in self.ordinal)
        return matching_ids(candidates, self.metadata, where)

    def search(self, signal: str, queries: Any, k: int, allow: Sequence[str] | None,
               where: Mapping | None = None) -> ShardAnswer:
        """This shard's top ``k``; a metadata filter becomes an allow-list applied inside the index search."""
        index = self.indexes[signal]
        result = index.search(queries, k, allow=self.allowed(allow, where))
        ids, scores, keys, ordinals = [], [], [], []
        for positions, row_scores in zip(result.positions, result.scores):
            hit = positions >= 0
            rows = positions[hit]
            ids.append(index.id_map.ids_at(rows))
            scores.append(row_scores[hit])
            keys.append(self.row_keys[signal][rows])
            ordinals.append(self.row_ordinals[signal][rows])
        return ShardAnswer(ids, scores, keys, ordinals, result.docs_evaluated)

    def rescore(self, signal: str, queries: Any, ids: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Exact scores of given documents of this shard, one array per query."""
        index = self.indexes[signal]
        positions = [index.id_map.positions(list(per_query)) for per_query in ids]
        if not any(len(p) for p in positions):
            return [np.zeros(0, np.float32) for _ in positions]
        return index.rescore(queries, positions)


@dataclass(frozen=True)
class ShardedHits:
    """Hits of a scatter-gather search and which shards they come from. ``complete`` is False when a shard
    answered on none of its replicas within the deadline: the hits then miss that shard's documents."""

    hits: Hits
    shards_answered: tuple[int, ...]
    shards_missing: tuple[int, ...]
    retries: int  # calls repeated on another replica

    @property
    def complete(self) -> bool:
        return not self.shards_missing


class _Workers:
    """One object per shard (and replica), as Ray actors or plain objects, with deadline-bounded calls that
    move to the next replica when an actor times out, dies or its node is gone."""

    def __init__(self, cls: type, args: Sequence[tuple], use_ray: bool, *, replicas: int = 1,
                 deadline_s: float | None = None, num_cpus: float = 1.0) -> None:
        self.deadline_s = deadline_s
        self.ray = require_ray() if use_ray else None
        if self.ray is None:
            self.workers = [[cls(*a)] for a in args]
        else:
            remote = self.ray.remote(cls)
            nodes = sorted(n["NodeID"] for n in self.ray.nodes() if n["Alive"]) if replicas > 1 else []
            self.workers = [[remote.options(num_cpus=num_cpus, scheduling_strategy=self._placement(s, r, nodes))
                             .remote(*a) for r in range(replicas)] for s, a in enumerate(args)]
            self._errors = actor_errors(self.ray)
        self.preferred = [0] * len(args)

    def __len__(self) -> int:
        return len(self.workers)

    @staticmethod
    def _placement(shard: int, replica: int, nodes: list[str]) -> Any:
        """Replicas of a shard on different nodes (soft: elsewhere when that node is full), so one node's
        loss leaves every shard a replica; single actors are spread by Ray."""
        if not nodes:
            return "SPREAD"
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(node_id=nodes[(shard + replica) % len(nodes)], soft=True)

    def call_one(self, shard: int, method: str, *args: Any) -> Any:
        results, missing, _ = self.scatter(method, {shard: args})
        if missing:
            raise ShardUnavailableError(f"shard {shard} did not answer {method}")
        return results[shard]

    def call_each(self, method: str, args: Sequence[tuple]) -> list[Any]:
        results, missing, _ = self.scatter(method, dict(enumerate(args)))
        if missing:
            raise ShardUnavailableError(f"shards {missing} did not answer {method}")
        return [results[s] for s in range(len(args))]

    def _submit(self, shard: int, attempt: int, method: str, args: tuple) -> Any:
        replicas = self.workers[shard]
        worker = replicas[(self.preferred[shard] + attempt) % len(replicas)]
        return getattr(worker, method).remote(*args)

    def scatter(self, method: str, args: dict[int, tuple]) -> tuple[dict[int, Any], list[int], int]:
        """Call ``method`` on each shard in ``args`` at once; returns (answers, shards that gave none, retries)."""
        if self.ray is None:
            return {s: getattr(self.workers[s][0], method)(*a) for s, a in args.items()}, [], 0
        ray = self.ray
        attempts = dict.fromkeys(args, 0)
        pending: dict[Any, int] = {}
        due: dict[Any, float] = {}

        def submit(shard: int) -> None:
            ref = self._submit(shard, attempts[shard], method, args[shard])
            pending[ref] = shard
            due[ref] = time.monotonic() + self.deadline_s if self.deadline_s else float("inf")

        for shard in args:
            submit(shard)
        results: dict[int, Any] = {}
        missing: list[int] = []
        retries = 0
        while pending:
            wait = min(due[r] for r in pending) - time.monotonic()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if wait == float("inf") else max(wait, 0))
            now = time.monotonic()
            finished = ready + [r for r in pending if r not in ready and due[r] <= now]
            for ref in finished:
                shard = pending.pop(ref)
                try:
                    if ref not in ready:
                        raise ray.exceptions.GetTimeoutError(f"shard {shard} gave no answer in {self.deadline_s} s")
                    results[shard] = ray.get(ref)
                    self.preferred[shard] = (self.preferred[shard] + attempts[shard]) % len(self.workers[shard])
                except self._errors:
                    attempts[shard] += 1
                    if attempts[shard] < len(self.workers[shard]):
                        retries += 1
                        submit(shard)
                    else:
                        missing.append(shard)
        return results, sorted(missing), retries

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every actor (each replica) has started, or stop them all and raise ClusterError."""
        refs = [worker.ping.remote() for replicas in self.workers for worker in replicas]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        try:
            self.ray.get(ready)
        except self._errors as exc:
            self.close()
            raise ClusterError(f"a shard actor failed to start: {str(exc).splitlines()[0]}") from None
        if len(ready) < len(refs):
            self.close()
            raise ClusterError(f"only {len(ready)} of {len(refs)} shard actors started within {timeout_s:.0f} s; "
                               f"the cluster may lack the CPUs (each actor reserves num_cpus) or the memory")

    def close(self) -> None:
        if self.ray is not None:
            for replicas in self.workers:
                for worker in replicas:
                    self.ray.kill(worker)
        self.workers = []


class ShardedRetriever:
    """Search a sharded retriever folder: queries are encoded once here, sent to every shard's actor, and the
    shards' top hits merged into what one retriever over all documents returns (see the module docstring).

    ``replicas`` actors serve each shard (spread over nodes); a call that a replica does not answer within
    ``deadline_s`` (timed out, actor or node dead) moves to the next replica. :meth:`search` raises
    :class:`ShardUnavailableError` when a shard answers on no replica; :meth:`search_with_status` returns the
    partial hits flagged instead, when asked to.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], query_encoder: Retriever | None,
                 workers: _Workers) -> None:
        self.root = root
        self.manifest = manifest
        self.signals = tuple(manifest["signals"])
        self.hybrid = HybridConfig(**manifest["hybrid"])
        self.dense_kind = manifest["dense_index"]
        self._query_encoder = query_encoder
        self._workers = workers
        self.embedder = query_encoder.embedder if query_encoder is not None else None
        self.bm25 = query_encoder.bm25 if query_encoder is not None else None

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, embedder: Any = None, use_ray: bool = True, replicas: int = 1,
             deadline_s: float = 30.0, mmap: bool = False, num_cpus: float = 1.0,
             load_model: bool = True, start_timeout_s: float = 600.0,
             documents: bool = False) -> ShardedRetriever:
        """Open a folder written by :func:`build_sharded`, starting one actor per shard and replica on the
        connected Ray cluster (``use_ray=False``: shards searched one after another in this process). The query
        model is loaded from the saved path unless given; ``load_model=False`` skips it, for searches with
        encoded queries only (:meth:`search_encoded`). Each actor reserves ``num_cpus``; actors that are not all
        up within ``start_timeout_s`` (the cluster lacks the CPUs or memory) raise :class:`ClusterError`.
        ``documents``: each shard actor also keeps its documents' texts and metadata (:meth:`documents_of`)."""
        root = Path(folder)
        manifest = read_format_json(root / MANIFEST, format_name=FORMAT, version=VERSION,
                                    what="a sharded retriever folder", kind="sharded retriever")
        if replicas < 1 or deadline_s <= 0:
            raise ValueError("replicas must be at least 1 and deadline_s positive")
        for shard in manifest["shards"]:
            if not (root / shard["folder"]).is_dir():
                raise DataError(f"{root}: shard folder {shard['folder']} is missing")
        query_encoder = None
        if load_model:
            model = manifest.get("model")
            if embedder is None and model is not None and any(s in _MODEL_SIGNALS for s in manifest["signals"]):
                from flagstone.models.embedder import Embedder

                embedder = Embedder(model["path"], max_length=model["max_length"], show_progress=False,
                                    splade=bool(model.get("splade", False)))
            bm25 = BM25.load(root / "bm25.json") if (root / "bm25.json").is_file() else None
            signals = manifest["signals"] if embedder is not None else [s for s in manifest["signals"]
                                                                       if s not in _MODEL_SIGNALS]
            query_encoder = Retriever(embedder, signals=signals, bm25=bm25, dense_index=manifest["dense_index"])
        args = [(str(root / s["folder"]), int(s["offset"]), mmap, documents) for s in manifest["shards"]]
        workers = _Workers(ShardSearcher, args, use_ray, replicas=replicas, deadline_s=deadline_s, num_cpus=num_cpus)
        if use_ray:  # every actor loaded before the first search, so its deadline measures searching
            workers.wait_ready(start_timeout_s)
        return cls(root, manifest, query_encoder, workers)

    def __len__(self) -> int:
        return int(self.manifest["documents"])

    @property
    def shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def modes(self) -> tuple[str, ...]:
        return self.signals + (("hybrid",) if len(self.signals) > 1 else ())

    def default_weights(self) -> dict[str, float]:
        return Retriever.default_weights(self)  # the single retriever's rule over the same signals

    def close(self) -> None:
        """Stop the shard actors."""
        self._workers.close()

    def documents_of(self, ids: Sequence[str], *,
                     shards: Sequence[int] | None = None) -> dict[str, tuple[str, dict | None]]:
        """(text, metadata) of each of ``ids`` found on the given shards (default: all; needs ``documents=True``
        at load). Raises :class:`ShardUnavailableError` when a shard answers on no replica: a missing text is
        never silently left out."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        asked = range(len(self._workers)) if shards is None else shards
        answers, missing, _ = self._workers.scatter("documents_of", {s: (wanted,) for s in asked})
        if missing:
            raise ShardUnavailableError(f"shard(s) {missing} of {len(self._workers)} answered on none of their "
                                        f"replicas within {self._workers.deadline_s} s when asked for documents")
        found: dict[str, tuple[str, dict | None]] = {}
        for answer in answers.values():
            found.update(answer)
        return found

    def describe(self) -> dict[str, Any]:
        return {"documents": len(self), "signals": list(self.signals), "dense_index": self.dense_kind,
                "shards": self.manifest["shards"], "replicas": len(self._workers.workers[0])
                if self._workers.workers else 0}

    # -- searching ---------------------------------------------------------------------------------------
    def search(self, queries: Sequence[str], *, mode: str = "dense", k: int = 10,
               hybrid: HybridConfig | None = None, allow: Sequence[str] | None = None,
               where: Mapping | None = None) -> Hits:
        """What :meth:`Retriever.search` returns over all the shards' documents; raises
        :class:`ShardUnavailableError` naming the shards that did not answer on any replica.

        ``where``: a metadata filter (:func:`~flagstone.retrieval.filters.check_filter`); each shard evaluates
        it over its own documents and searches with the matching ones as its allow-list (with ``allow`` too:
        both must hold), which is what one retriever searched with ``allow`` = every matching id returns."""
        return self.search_with_status(queries, mode=mode, k=k, hybrid=hybrid, allow=allow, where=where,
                                       allow_partial=False).hits

    def search_with_status(self, queries: Sequence[str], *, mode: str = "dense", k: int = 10,
                           hybrid: HybridConfig | None = None, allow: Sequence[str] | None = None,
                           where: Mapping | None = None, allow_partial: bool = False) -> ShardedHits:
        """Search and say which shards answered. With ``allow_partial`` a shard that answered on no replica
        leaves its documents out and the result says so (``complete`` False); without it that raises."""
        if isinstance(queries, str):
            raise InvalidTextError("search expects a list of queries, got a single string; wrap it in a list")
        validate_texts(queries)
        check_search_mode(mode, k, self.signals, self.modes)
        if self._query_encoder is None:
            raise NotFittedError("this sharded retriever was opened without its model (load_model=False): "
                                 "use search_encoded")
        config = hybrid or self.hybrid
        signals = [mode] if mode != "hybrid" else list(self._weights(config))
        encoded = self._query_encoder.encode_queries(queries, signals)
        if self.dense_kind == "hi2" and "dense" in encoded:  # HI²'s query form carries the query terms
            encoded["dense"] = Embeddings(dense=encoded["dense"], sparse=self.bm25.transform_queries(queries))
        return self.search_encoded(encoded, len(queries), mode=mode, k=k, hybrid=config, allow=allow,
                                   where=where, allow_partial=allow_partial)

    def _weights(self, config: HybridConfig) -> dict[str, float]:
        return Retriever.hybrid_weights(self, config)  # the same checks and defaults as the single retriever

    def search_encoded(self, encoded: dict[str, Any], n_queries: int, *, mode: str = "dense", k: int = 10,
                       hybrid: HybridConfig | None = None, allow: Sequence[str] | None = None,
                       where: Mapping | None = None, allow_partial: bool = False) -> ShardedHits:
        """Search with queries already in each signal's query form (what ``Retriever.encode_queries`` gives:
        dense vectors, sparse weights, BM25 term counts over the corpus vocabulary, ColBERT vectors)."""
        check_search_mode(mode, k, self.signals, self.modes)
        restrict = (allow, check_filter(where) or None)  # checked here, once, not in every shard
        if mode != "hybrid":
            merged, evaluated, answered, missing, retries = self._gather_top(mode, encoded[mode], n_queries, k,
                                                                             restrict, allow_partial)
            scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
            for qi, (_, row_scores, _, _) in enumerate(merged):
                scores[qi, : len(row_scores)] = row_scores
            hits = Hits(mode, [m[0] for m in merged], scores, {mode: scores}, evaluated)
            return ShardedHits(hits, answered, missing, retries)
        return self._search_hybrid(encoded, n_queries, k, hybrid or self.hybrid, restrict, allow_partial)

    def _ref(self, value: Any) -> Any:
        """One copy of the queries in the object store for every shard to read (the value itself locally)."""
        return self._workers.ray.put(value) if self._workers.ray is not None else value

    def _gather_top(self, signal: str, queries: Any, n_queries: int, k: int,
                    restrict: tuple[Sequence[str] | None, dict | None], allow_partial: bool):
        """Each query's global top ``k`` for ``signal`` among the documents ``restrict`` (allow-list, metadata
        filter) lets through: [(ids, scores, ordinals, shard of each hit)] plus the documents evaluated, the
        shards that answered and those that did not, and the retries."""
        shards = range(len(self._workers))
        ref = self._ref(queries)
        allow, where = restrict
        if allow is not None:
            allow = self._ref(allow)  # one copy in the object store for every shard
        answers, missing, retries = self._workers.scatter("search", {s: (signal, ref, k, allow, where)
                                                                     for s in shards})
        self._check_missing(missing, allow_partial)
        merged = []
        for qi in range(n_queries):
            ids: list[str] = []
            owner = []
            for s, answer in answers.items():
                ids += answer.ids[qi]
                owner += [s] * len(answer.ids[qi])
            if not ids:
                merged.append(([], np.zeros(0, np.float32), np.zeros(0, np.int64), []))
                continue
            scores = np.concatenate([a.scores[qi] for a in answers.values()])
            keys = np.concatenate([a.keys[qi] for a in answers.values()])
            ordinals = np.concatenate([a.ordinals[qi] for a in answers.values()])
            order = np.lexsort((keys, -scores))[:k]  # the single index's order: score, then its tie order
            merged.append(([ids[j] for j in order], scores[order], ordinals[order], [owner[j] for j in order]))
        counts = [a.evaluated for a in answers.values()]
        evaluated = None if not counts or any(c is None for c in counts) else np.sum(counts, axis=0)
        answered = tuple(sorted(answers))
        return merged, evaluated, answered, tuple(missing), retries

    def _check_missing(self, missing: Sequence[int], allow_partial: bool) -> None:
        if missing and not allow_partial:
            raise ShardUnavailableError(f"shard(s) {list(missing)} of {len(self._workers)} answered on none of "
                                        f"their replicas within {self._workers.deadline_s} s; no partial results "
                                        f"are returned (allow_partial=True returns them flagged)")

    def _search_hybrid(self, encoded: dict[str, Any], n_queries: int, k: int, config: HybridConfig,
                       restrict: tuple[Sequence[str] | None, dict | None], allow_partial: bool) -> ShardedHits:
        """The single retriever's hybrid search, distributed: each signal's global top candidates (merged from
        the shards), every candidate rescored on its shard by every signal, fused over the global candidate
        set in corpus order with the single retriever's fusion."""
        weights = self._weights(config)
        per_signal_k = max(config.candidates, k)
        missing: set[int] = set()
        retries = 0
        candidates: list[dict[str, tuple[int, int]]] = [{} for _ in range(n_queries)]  # id -> (ordinal, shard)
        for signal in weights:
            merged, _, _, gone, tries = self._gather_top(signal, encoded[signal], n_queries, per_signal_k,
                                                         restrict, allow_partial)
            missing |= set(gone)
            retries += tries
            for qi, (ids, _, ordinals, owners) in enumerate(merged):
                for doc_id, ordinal, shard in zip(ids, ordinals, owners):
                    candidates[qi][doc_id] = (int(ordinal), shard)
        ordered = [sorted(c, key=lambda d, c=c: c[d][0]) for c in candidates]  # corpus order, as the single one
        # per shard and query, the candidates it holds; every signal rescores them on that shard. A shard that
        # missed one signal's gather is reported missing, so none of its documents may stay among the hits
        # (some would, found through the other signals): not asked to rescore, its candidates drop out below
        wanted = {s: [[d for d in ids if cands[d][1] == s] for ids, cands in zip(ordered, candidates)]
                  for s in range(len(self._workers)) if s not in missing}
        wanted = {s: lists for s, lists in wanted.items() if any(lists)}
        rescored: dict[str, dict[int, list[np.ndarray]]] = {}
        for signal in weights:
            ref = self._ref(encoded[signal])
            answers, gone, tries = self._workers.scatter("rescore", {s: (signal, ref, lists)
                                                                     for s, lists in wanted.items()})
            self._check_missing(gone, allow_partial)
            missing |= set(gone)
            retries += tries
            rescored[signal] = answers
        top = min(k, len(self))
        out_ids: list[list[str]] = []
        out_scores = np.full((n_queries, top), -np.inf, dtype=np.float32)
        out_signals = {s: np.full((n_queries, top), -np.inf, dtype=np.float32) for s in weights}
        for qi in range(n_queries):
            score_of: dict[str, dict[str, float]] = {s: {} for s in weights}
            for signal in weights:
                for shard, per_query in rescored[signal].items():
                    score_of[signal].update(zip(wanted[shard][qi], per_query[qi]))
            # a missing shard's candidates have no scores: gone, so the hits hold the answering shards' only
            cands = [d for d in ordered[qi] if all(d in score_of[s] for s in weights)]
            if not cands:
                out_ids.append([])
                continue
            per_signal = {s: np.array([score_of[s][d] for d in cands]) for s in weights}  # dtype as rescored
            order, fused = fuse_candidates(per_signal, weights, config, top)
            out_ids.append([cands[j] for j in order])
            out_scores[qi, : len(order)] = fused[order]
            for s in weights:
                out_signals[s][qi, : len(order)] = per_signal[s][order]
        answered = tuple(s for s in range(len(self._workers)) if s not in missing)
        return ShardedHits(Hits("hybrid", out_ids, out_scores, out_signals), answered, tuple(sorted(missing)),
                           retries)

