from __future__ import annotations

from flagstone.models.cache import CachedEmbedder, EmbeddingCache
from flagstone.rag import ContextIndex
from tests.rag.test_pipelines import DOCUMENTS


def test_context_index_encodes_chunks_once_with_a_cache(tiny_m3, tmp_path, monkeypatch):
    plain = ContextIndex.build(DOCUMENTS, embedder=tiny_m3, mode="dense", chunk_tokens=32, overlap=0)
    first = ContextIndex.build(DOCUMENTS, embedder=tiny_m3, mode="dense", chunk_tokens=32, overlap=0,
                               cache=EmbeddingCache(tmp_path))
    assert isinstance(first.retriever.embedder, CachedEmbedder)
    question = ["When did the bridge open?"]
    expected = [c.id for c in plain.search(question, 3)[0]]
    calls = []
    original = tiny_m3.forward
    monkeypatch.setattr(tiny_m3, "forward", lambda *a, **kw: calls.append(len(a[0])) or original(*a, **kw))
    first.save(tmp_path / "saved")
    again = ContextIndex.load(tmp_path / "saved", embedder=tiny_m3, cache=EmbeddingCache(tmp_path))
    assert calls == []  # every chunk came from the cache
    assert [c.id for c in again.search(question, 3)[0]] == expected
    assert len(calls) == 1  # the question is encoded, not cached
