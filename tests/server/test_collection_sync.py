"""A collection's retriever follows its store write by write, and falls back to the store when it cannot."""
from __future__ import annotations

import pytest

from flagstone.models.cache import EmbeddingCache
from flagstone.server.collections import CollectionManager
from flagstone.server.store import Document

DOCS = [Document("cold", "Zinc lozenges shorten the common cold.", {"topic": "health"}),
        Document("stars", "Neutron stars are the collapsed cores of massive stars.", {"topic": "space"}),
        Document("tea", "Green tea contains catechins and caffeine.", {"topic": "health"})]


def ids(collection, query, **kw):
    """Documents sharing a term with the query (BM25 also ranks the others, at score 0)."""
    return [h.id for h in collection.search(query, mode="bm25", k=5, **kw) if h.score > 0]


def test_writes_apply_incrementally_and_a_failed_apply_rebuilds_from_the_store(minilm, tmp_path, monkeypatch):
    manager = CollectionManager(tmp_path / "collections", minilm, EmbeddingCache(tmp_path / "cache"))
    collection = manager.create("docs")
    collection.add(DOCS, overwrite=False)
    assert ids(collection, "zinc cold") == ["cold"]
    built = collection._retriever
    collection.add([Document("honey", "Honey soothes a cold and a sore throat.", {})], overwrite=False)
    assert collection._retriever is built  # applied to the same retriever, not rebuilt
    assert set(ids(collection, "cold")) == {"cold", "honey"}
    collection.delete(["cold"])
    assert ids(collection, "cold") == ["honey"] and ids(collection, "tea", where={"topic": "health"}) == ["tea"]

    def refuse(*args, **kwargs):
        raise OSError("disk trouble")

    monkeypatch.setattr(built, "add", refuse)
    with pytest.raises(OSError):
        collection.add([Document("lemon", "Lemon and honey for a cold.", {})], overwrite=False)
    assert collection._retriever is None  # dropped, not left disagreeing with the store
    assert set(ids(collection, "lemon honey cold")) == {"lemon", "honey"}  # rebuilt from the store

    manager.close()  # saves each retriever; the next start loads it when it matches the store
    again = CollectionManager(tmp_path / "collections", minilm, EmbeddingCache(tmp_path / "cache"))
    reopened = again.get("docs")
    assert reopened._saved_retriever(reopened.store.snapshot()[1]) is not None
    assert set(ids(reopened, "lemon honey cold")) == {"lemon", "honey"}
    again.close()
