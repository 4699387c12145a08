from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from flagstone.models.cache import CachedEmbedder, EmbeddingCache
from tests.helpers import REPO

TEXTS = [f"document number {i} about topic {i % 7}" for i in range(40)]


def _counting(embedder, monkeypatch):
    calls = []
    original = embedder.encode

    def wrapped(texts, **kw):
        calls.append(len(texts))
        return original(texts, **kw)

    monkeypatch.setattr(embedder, "encode", wrapped)
    return calls


def test_second_call_does_not_reencode(tiny_m3, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    calls = _counting(tiny_m3, monkeypatch)
    first = cache.encode(tiny_m3, TEXTS, dense=True, sparse=True, colbert=True)
    assert sum(calls) == len(TEXTS)
    second = EmbeddingCache(tmp_path).encode(tiny_m3, TEXTS[::-1] + ["a new text"], dense=True, sparse=True,
                                              colbert=True)
    assert sum(calls) == len(TEXTS) + 1  # only the new text was encoded
    monkeypatch.undo()
    fresh = tiny_m3.encode(TEXTS, dense=True, sparse=True, colbert=True)
    for got in (first, second.take(np.arange(len(TEXTS))[::-1])):
        assert np.array_equal(got.dense, fresh.dense)
        assert got.sparse.to_dicts() == fresh.sparse.to_dicts()
        for i in range(len(TEXTS)):
            assert np.array_equal(got.colbert[i], fresh.colbert[i])


def test_duplicates_and_other_settings(tiny_m3, tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    calls = _counting(tiny_m3, monkeypatch)
    out = cache.encode(tiny_m3, ["same", "same", "other"])
    assert sum(calls) == 2 and np.array_equal(out.dense[0], out.dense[1])
    cache.encode(tiny_m3, ["same"], sparse=True)  # other outputs: another key, encoded again
    assert sum(calls) == 3


def test_shards_are_read_once_and_new_ones_are_found(tiny_m3, tmp_path, monkeypatch):
    import flagstone.models.cache as cache_module

    cache, other = EmbeddingCache(tmp_path), EmbeddingCache(tmp_path)
    cache.encode(tiny_m3, TEXTS[:20])
    reads = []
    real_load = np.load
    monkeypatch.setattr(cache_module.np, "load", lambda path, *a, **kw: reads.append(path) or real_load(path, *a, **kw))
    calls = _counting(tiny_m3, monkeypatch)
    cache.encode(tiny_m3, TEXTS[:20])
    assert reads == [] and calls == []  # its own shard is in memory already
    other.encode(tiny_m3, TEXTS[20:])  # another writer (another process, in real use) adds a shard
    reads.clear()
    calls.clear()
    both = cache.encode(tiny_m3, TEXTS)
    assert len(reads) == 1 and calls == []  # only the new shard is read, nothing is encoded
    monkeypatch.undo()
    assert np.allclose(both.dense, tiny_m3.encode(TEXTS).dense, atol=1e-5)  # batches differ: padding


def test_corrupt_shard_is_ignored_and_reencoded(tiny_m3, tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.encode(tiny_m3, TEXTS)
    (shard,) = list(tmp_path.glob("*/shard-*.npz"))
    shard.write_bytes(shard.read_bytes()[:100])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = EmbeddingCache(tmp_path).encode(tiny_m3, TEXTS)  # a later run reads the damaged shard
    assert any("unreadable cache shard" in str(w.message) for w in caught)
    assert np.array_equal(again.dense, tiny_m3.encode(TEXTS).dense)


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import flagstone.models.cache as cache_module
    from flagstone.models.embedder import Embedder

    real_savez = np.savez
    written = [0]

    def slow_savez(handle, **arrays):
        written[0] += 1
        if written[0] < 3:
            return real_savez(handle, **arrays)
        import io
        buffer = io.BytesIO()
        real_savez(buffer, **arrays)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        print("WRITING", flush=True)
        time.sleep(120)

    cache_module.np.savez = slow_savez
    cache_module._SHARD_TEXTS = 8
    embedder = Embedder(sys.argv[1], show_progress=False)
    texts = [f"document number {i} about topic {i % 7}" for i in range(40)]
    cache_module.EmbeddingCache(sys.argv[2]).encode(embedder, texts)
""")


def test_kill_during_write_leaves_no_corrupt_entry(tiny_m3, tiny_m3_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_m3_dir), str(tmp_path)],
                             stdout=subprocess.PIPE, env=env, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "WRITING", "the child never reached its third shard"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    shards = list(tmp_path.glob("*/shard-*.npz"))
    assert len(shards) == 2  # the half-written third shard never got a final name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no shard may be unreadable
        out = EmbeddingCache(tmp_path).encode(tiny_m3, TEXTS)
    assert np.abs(out.dense - tiny_m3.encode(TEXTS).dense).max() < 1e-6


def test_unusable_cache_dir_is_a_clear_error(tmp_path):
    from flagstone.errors import CacheError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="cannot create cache directory"):
        EmbeddingCache(blocker / "sub")


def test_stale_temporary_files_are_removed(tiny_m3, tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.encode(tiny_m3, TEXTS[:2])
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    stale, fresh = folder / ".shard-a.npz.flagstone-tmp-1-x", folder / ".shard-b.npz.flagstone-tmp-2-y"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    cache.encode(tiny_m3, TEXTS[:2])
    assert not stale.exists() and fresh.exists()


def _forward_calls(embedder, monkeypatch):
    """Count model forward passes (one per batch) on ``embedder``."""
    calls = []
    original = embedder.forward

    def spy(input_ids, attention_mask, **heads):
        calls.append(len(input_ids))
        return original(input_ids, attention_mask, **heads)

    monkeypatch.setattr(embedder, "forward", spy)
    return calls


def _assert_same(got, want):
    assert np.array_equal(got.dense, want.dense)
    assert got.sparse.to_dicts() == want.sparse.to_dicts()
    for i in range(len(want)):
        assert np.array_equal(got.colbert[i], want.colbert[i])


def test_cached_embedder_reads_documents_from_the_cache_the_second_time(tiny_m3, tmp_path, monkeypatch):
    from flagstone.models.cache import CachedEmbedder

    bare = tiny_m3.encode(TEXTS, dense=True, sparse=True, colbert=True)
    calls = _forward_calls(tiny_m3, monkeypatch)
    cached = CachedEmbedder(tiny_m3, EmbeddingCache(tmp_path))
    first = cached.encode(TEXTS, dense=True, sparse=True, colbert=True)
    assert sum(calls) == len(TEXTS)
    assert list(tmp_path.glob("*/shard-*.npz"))  # written on the first call
    again = CachedEmbedder(tiny_m3, EmbeddingCache(tmp_path))  # a new process would start like this
    second = again.encode_documents(TEXTS[::-1], dense=True, sparse=True, colbert=True)
    assert sum(calls) == len(TEXTS)  # no model call
    _assert_same(first, bare)
    _assert_same(second.take(np.arange(len(TEXTS))[::-1]), bare)


def test_cached_embedder_encodes_queries_every_time_and_does_not_store_them(tiny_m3, tmp_path, monkeypatch):
    from flagstone.models.cache import CachedEmbedder

    bare = tiny_m3.encode_queries(TEXTS[:5], dense=True, sparse=True)
    calls = _forward_calls(tiny_m3, monkeypatch)
    cached = CachedEmbedder(tiny_m3, EmbeddingCache(tmp_path))
    for _ in range(2):
        q = cached.encode_queries(TEXTS[:5], dense=True, sparse=True)
        assert np.array_equal(q.dense, bare.dense) and q.sparse.to_dicts() == bare.sparse.to_dicts()
    assert sum(calls) == 10
    assert not list(tmp_path.glob("*/shard-*.npz"))


def test_cached_embedder_looks_like_its_embedder(tiny_m3, tmp_path):
    from flagstone.errors import InvalidTextError
    from flagstone.models.cache import CachedEmbedder
    from flagstone.retrieval.retriever import Retriever

    cached = CachedEmbedder(tiny_m3, EmbeddingCache(tmp_path))
    assert isinstance(cached, CachedEmbedder) and cached.embedder is tiny_m3
    for name in ("name", "path", "settings", "fingerprint", "dim", "vocab_size", "available_outputs", "tokenizer"):
        assert getattr(cached, name) == getattr(tiny_m3, name)
    assert cached.tokenize(TEXTS[:2], is_query=True) == tiny_m3.tokenize(TEXTS[:2], is_query=True)
    assert cached.cache_key(["dense"], False) == tiny_m3.cache_key(["dense"], False)
    one = cached.encode("one text")  # one string is one text, as for the embedder
    assert len(one) == 1 and np.allclose(one.dense, tiny_m3.encode(["one text"]).dense, atol=1e-6)
    with pytest.raises(InvalidTextError):
        cached.encode(["fine", "  "], is_query=True)  # an empty document is encoded
    with pytest.raises(ValueError, match="at least one"):
        cached.encode(TEXTS, dense=False)
    cached.encode([" ".join(["word"] * 300)])  # cached, truncated
    with pytest.raises(InvalidTextError, match="max_length"):
        cached.encode([" ".join(["word"] * 300)], truncate=False)  # still refused though it is cached

    ids = [str(i) for i in range(len(TEXTS))]
    plain = Retriever(tiny_m3, signals=["dense", "sparse"]).fit(ids, TEXTS, show_progress=False)
    worn = Retriever(cached, signals=["dense", "sparse"]).fit(ids, TEXTS, show_progress=False)
    for mode in ("dense", "sparse"):
        assert worn.search(TEXTS[:3], mode=mode, k=5).ids == plain.search(TEXTS[:3], mode=mode, k=5).ids


def test_missing_head_and_double_wrapping(minilm, tiny_m3, tmp_path):
    from flagstone.errors import MissingHeadError
    from flagstone.models.cache import CachedEmbedder

    with pytest.raises(MissingHeadError):
        CachedEmbedder(minilm, EmbeddingCache(tmp_path / "a")).encode(["text"], sparse=True)
    inner, outer = EmbeddingCache(tmp_path / "inner"), EmbeddingCache(tmp_path / "outer")
    outer.encode(CachedEmbedder(tiny_m3, inner), TEXTS[:3])  # the outer cache is the one asked: only it stores
    assert len(list((tmp_path / "outer").glob("*/shard-*.npz"))) == 1
    assert not list((tmp_path / "inner").glob("*/shard-*.npz"))
    with pytest.raises(TypeError):
        CachedEmbedder(tiny_m3, str(tmp_path))
