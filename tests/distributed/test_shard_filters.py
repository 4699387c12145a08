"""Metadata filters on sharded retrievers (in this process; the service over Ray is in test_serve_sharded.py).

Each shard evaluates the filter over its own documents and searches with the matching ids as its allow-list, so
a filtered sharded search returns what one retriever searched with ``allow`` = every matching id returns: the
same ids and scores for exact indexes, and for IVF / HI² a recall against exact filtered search at least the
unfiltered recall at the same settings (the index protocol's rule)."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.corpora import python_docstrings
from flagstone.distributed.encode import EmbedderSpec
from flagstone.distributed.shards import ShardedRetriever, build_sharded, train_dense_index
from flagstone.errors import InvalidTextError
from flagstone.retrieval.filters import matches
from flagstone.retrieval.retriever import HybridConfig, Retriever

QUERIES = ["read a file from disk", "parse command line arguments", "thread pool executor", "decode json text",
           "zzzz qqqq"]
FILTERS = [
    {"bucket": 7},                                      # one document in a hundred
    {"bucket": {"$in": list(range(10))}},                # a tenth
    {"half": "first"},                                   # a half, all in the first shards
    {"bucket": {"$in": list(range(0, 100, 2))}},         # a half, spread over every shard
    {"half": "second", "odd": True},                     # two fields; "odd" is missing on some documents
    {"odd": None},                                       # matches the documents without that field
    {"bucket": {"$in": []}},                             # matches nothing
    {"bucket": 1.0},                                     # 1.0 is the number 1 ...
    {"odd": 1},                                          # ... but 1 is not true
]


def metadata_of(n: int) -> dict:
    record = {"bucket": n % 100, "half": "first" if n % 200 < 100 else "second"}
    if n % 3:
        record["odd"] = bool(n % 2)
    return record


@pytest.fixture(scope="module")
def corpus():
    ids, texts = python_docstrings(160)
    # exact duplicates under new ids: equal scores everywhere, so tie order is tested too
    ids, texts = ids + [f"{i}~copy" for i in ids[:25]], texts + texts[:25]
    metadata = [metadata_of(n) for n in range(len(ids))]
    metadata[5] = {}  # a document without metadata
    return ids, texts, metadata


def allowed(single: Retriever, where: dict) -> list[str]:
    """What an unsharded collection passes as its allow-list (server/collections.py)."""
    return [i for i in single.ids if matches(single.metadata(i), where)]


def assert_same(a, b) -> None:
    assert a.ids == b.ids
    assert np.array_equal(a.scores, b.scores)
    for signal in a.signals:
        assert np.array_equal(a.signals[signal], b.signals[signal]), signal


def test_flat_filtered_search_equals_one_retriever_with_the_matching_ids_allowed(tmp_path, corpus, tiny_m3_dir,
                                                                                 tiny_m3):
    ids, texts, metadata = corpus
    emb = tiny_m3.encode(texts, dense=True, sparse=True, colbert=True, show_progress=False)
    build_sharded(tmp_path / "sharded", ids, texts, spec=EmbedderSpec(str(tiny_m3_dir)), shards=3,
                  embeddings=emb, metadata=metadata, use_ray=False)
    single = Retriever(tiny_m3)
    single.add(ids, texts, metadata, embeddings=emb)
    sharded = ShardedRetriever.load(tmp_path / "sharded", embedder=tiny_m3, use_ray=False)
    rrf = HybridConfig(weights={"dense": 1, "bm25": 1}, method="rrf", candidates=10)
    for where in FILTERS:
        allow = allowed(single, where)
        for mode in single.modes:
            for k in (3, 40):
                want = single.search(QUERIES, mode=mode, k=k, allow=allow)
                got = sharded.search(QUERIES, mode=mode, k=k, where=where)
                assert_same(want, got)
                assert {i for row in got.ids for i in row} <= set(allow), (where, mode)
        assert_same(single.search(QUERIES, mode="hybrid", k=8, hybrid=rrf, allow=allow),
                    sharded.search(QUERIES, mode="hybrid", k=8, hybrid=rrf, where=where))
    # the filter is a real restriction: the narrow one finds exactly its two documents, held by two shards
    assert set(sharded.search(QUERIES[:1], mode="dense", k=5, where={"bucket": 7}).ids[0]) == {ids[7], ids[107]}
    # a filter and an allow-list together: both must hold
    where, allow = {"half": "first"}, ids[::4]
    both = [i for i in allowed(single, where) if i in set(allow)]
    assert_same(single.search(QUERIES, mode="dense", k=10, allow=both),
                sharded.search(QUERIES, mode="dense", k=10, allow=allow, where=where))
    status = sharded.search_with_status(QUERIES, mode="bm25", k=5, where=where)
    assert status.complete and status.shards_answered == (0, 1, 2)
    with pytest.raises(InvalidTextError, match=r"\$in"):
        sharded.search(QUERIES, mode="dense", k=5, where={"bucket": {"$gt": 3}})


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth)]))


@pytest.mark.parametrize("kind", ["ivf", "hi2"])
def test_approximate_filtered_recall_is_at_least_the_unfiltered_recall(tmp_path, tiny_m3_dir, tiny_m3, kind):
    ids, texts = python_docstrings(800)
    metadata = [metadata_of(n) for n in range(len(ids))]
    queries = [" ".join(t.split()[:6]) for t in texts[::20]]
    emb = tiny_m3.encode(texts, dense=True, show_progress=False)
    options = {"n_lists": 24, "n_probe": 2}
    rows = np.sort(np.random.default_rng(0).choice(len(ids), size=len(ids), replace=False))
    trained = train_dense_index(kind, emb.dense[rows], **options)
    build_sharded(tmp_path / "sharded", ids, texts, spec=EmbedderSpec(str(tiny_m3_dir)), shards=3,
                  signals=["dense", "bm25"], dense_index=trained, embeddings=emb, metadata=metadata, use_ray=False)
    exact = Retriever(tiny_m3, signals=["dense", "bm25"])
    exact.add(ids, texts, metadata, embeddings=emb)
    sharded = ShardedRetriever.load(tmp_path / "sharded", embedder=tiny_m3, use_ray=False)
    k = 10
    unfiltered = recall(sharded.search(queries, mode="dense", k=k).ids, exact.search(queries, mode="dense", k=k).ids)
    assert unfiltered < 1.0  # the settings are approximate, or the comparison says nothing
    for where in FILTERS[:4]:
        allow = allowed(exact, where)
        got = sharded.search(queries, mode="dense", k=k, where=where).ids
        truth = exact.search(queries, mode="dense", k=k, allow=allow).ids
        assert all(len(row) == min(k, len(allow)) for row in got)  # k hits whenever k allowed documents exist
        assert {i for row in got for i in row} <= set(allow)
        assert recall(got, truth) >= unfiltered, where


def test_colbert_scores_do_not_depend_on_which_documents_are_scored_together():
    """A filtered search scores a handful of documents, a shard a part of the corpus: each document's late
    interaction score must be the same bit for bit as when the whole corpus is scored at once."""
    from flagstone.models.embeddings import MultiVectors
    from flagstone.models.scoring import colbert_scores

    rng = np.random.default_rng(0)

    def multi(lengths):
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return MultiVectors(offsets, rng.standard_normal((int(offsets[-1]), 32)).astype(np.float32))

    docs = multi(rng.integers(0, 60, size=400))  # some documents without tokens
    queries = multi([23, 9, 1])
    whole = colbert_scores(queries, docs)
    for rows in ([7], [7, 300], list(range(0, 400, 3)), list(range(150, 160))):
        assert np.array_equal(colbert_scores(queries, docs.take(rows)), whole[:, rows])
