"""Collections backed by Ray shard actors (``flagstone serve --ray``).

A sharded collection is a sharded retriever folder (:func:`flagstone.distributed.shards.build_sharded`) searched by
scatter-gather over one actor per shard and replica (:class:`~flagstone.distributed.shards.ShardedRetriever`).
Every search response says which shards answered. A shard that answers on no replica within the deadline makes
the search fail (503, naming the shard) unless the request allows partial results; then the hits of the shards
that answered come back with ``complete: false`` and the missing shards listed. Never a silent partial result.

Metadata filters work as on an unsharded collection: each shard evaluates the filter over its own documents'
metadata and searches with the matching ids as its allow-list (inside the index search), so a filtered search
returns what the unsharded collection returns.

Reranking is the unsharded collection's too: the first stage's top ``max(k, rerank_depth)`` come back from the
shards in the unsharded collection's order, their texts are fetched from the shards that answered, and
:func:`~flagstone.server.collections.search_hits` scores them with the reranker, so the reranker sees the same
(query, text) pairs and gives the same scores; a partial result stays flagged after reranking.

Sharded collections are read-only: an add or delete would have to change the corpus-wide BM25 vocabulary and
statistics that every shard shares (and the shard boundaries), which the shard actors cannot do in place; the
service refuses writes with 409 ``read_only`` and says to rebuild the folder instead.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flagstone.errors import IdError, InvalidTextError
from flagstone.retrieval.filters import check_filter
from flagstone.server.collections import CollectionReadOnly, SearchHit, search_hits


@dataclass(frozen=True)
class ShardedSearch:
    """A sharded collection's hits and which shards they come from."""

    hits: list[SearchHit]
    shards: int
    answered: tuple[int, ...]
    missing: tuple[int, ...]
    retries: int  # calls repeated on another replica of the same shard

    @property
    def complete(self) -> bool:
        return not self.missing

    def status(self) -> dict[str, Any]:
        return {"total": self.shards, "answered": list(self.answered), "missing": list(self.missing),
                "complete": self.complete, "retries": self.retries}


class ShardedCollection:
    """A read-only collection whose documents live on Ray shard actors."""

    def __init__(self, name: str, folder: Path, retriever, *, description: str = "",
                 model: str | None = None) -> None:
        self.name = name
        self.folder = folder
        self.retriever = retriever  # a ShardedRetriever loaded with documents=True
        self.description = description
        self.model = model

    @property
    def index_kind(self) -> str:
        return self.retriever.dense_kind

    def count(self) -> int:
        return len(self.retriever)

    def describe(self) -> dict:
        return {"name": self.name, "documents": len(self.retriever), "index": self.index_kind, "model": self.model,
                "modes": list(self.retriever.modes), "description": self.description, "writable": False,
                "sharded": {"shards": self.retriever.shards,
                            "replicas": self.retriever.describe()["replicas"]}}

    def _refuse(self, what: str) -> CollectionReadOnly:
        return CollectionReadOnly(
            f"collection {self.name!r} is served by {self.retriever.shards} Ray shard actors and is read-only: "
            f"{what} would change the BM25 vocabulary and statistics every shard shares; write to an unsharded "
            f"collection and shard it again (flagstone serve --ray --shards N) or rebuild the sharded folder")

    def add(self, documents, *, overwrite: bool) -> int:
        raise self._refuse("adding documents")

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        raise self._refuse("deleting documents")

    def get(self, doc_id: str):
        from flagstone.server.store import Document

        found = self.retriever.documents_of([doc_id])
        if doc_id not in found:
            raise IdError(f"no document {doc_id!r} in collection {self.name!r}")
        text, metadata = found[doc_id]
        return Document(doc_id, text, metadata or {})

    def search(self, query: str, *, mode: str = "hybrid", k: int = 10, where: Mapping | None = None,
               reranker=None, rerank_depth: int = 50, allow_partial: bool = False) -> ShardedSearch:
        """Scatter-gather search; raises ShardUnavailableError (503) when a shard answers on no replica,
        unless ``allow_partial`` (then the result lists the missing shards)."""
        if mode not in self.retriever.modes:
            raise InvalidTextError(f"mode {mode!r} is not available; this collection has "
                                   f"{', '.join(self.retriever.modes)}")
        where = check_filter(where)
        depth = max(k, rerank_depth if reranker is not None else k)
        # the filter travels to the shards: each evaluates it over its own documents' metadata and searches
        # with the matching ids as its allow-list (inside the index search), as an unsharded collection does
        result = self.retriever.search_with_status([query], mode=mode, k=min(depth, len(self.retriever)),
                                                   where=where or None, allow_partial=allow_partial)
        found = {i: (text, metadata or {}) for i, (text, metadata) in
                 self.retriever.documents_of(result.hits.ids[0], shards=result.shards_answered).items()}
        hits = search_hits(self.retriever.bm25, query, result.hits, found, k, reranker)
        return ShardedSearch(hits, self.retriever.shards, result.shards_answered, result.shards_missing,
                             result.retries)

    def close(self, *, save: bool = True) -> None:
        self.retriever.close()


def open_sharded(name: str, folder: str | Path, embedder, *, replicas: int, deadline_s: float,
                 description: str = "") -> ShardedCollection:
    """A sharded retriever folder served by shard actors on the connected Ray cluster (texts and metadata kept
    on the shards); ``embedder`` encodes the queries here."""
    from flagstone.distributed.shards import ShardedRetriever, is_sharded_folder
    from flagstone.errors import DataError

    if not is_sharded_folder(folder):
        raise DataError(f"{folder} is not a sharded retriever folder (no sharded.json); build one with "
                        f"flagstone.distributed.shards.build_sharded")
    retriever = ShardedRetriever.load(folder, embedder=embedder, replicas=replicas, deadline_s=deadline_s,
                                      documents=True)
    return ShardedCollection(name, Path(folder), retriever, description=description,
                             model=getattr(embedder, "name", None))


def shard_collection(collection, folder: Path, embedder, raw_embedder, cache, *, shards: int, replicas: int,
                     deadline_s: float) -> ShardedCollection | None:
    """Build a store-backed collection's documents into a sharded folder (embeddings from the service's cache,
    shards built on Ray actors) and serve it from shard actors; None for an empty collection (it stays as it is,
    writable: there is nothing to shard)."""
    from flagstone.distributed.encode import EmbedderSpec
    from flagstone.distributed.shards import build_sharded

    _, docs = collection.store.snapshot()
    if not docs:
        return None
    texts = [d.text for d in docs]
    outputs = {o: True for o in embedder.available_outputs}
    embeddings = cache.encode(embedder, texts, is_query=False, show_progress=False, **outputs)
    build_sharded(folder, [d.id for d in docs], texts, spec=EmbedderSpec.of(raw_embedder), shards=shards,
                  dense_index=collection.index_kind, embeddings=embeddings, metadata=[d.metadata for d in docs],
                  overwrite=True)
    return open_sharded(collection.name, folder, embedder, replicas=replicas, deadline_s=deadline_s,
                        description=collection.settings.get("description", ""))
