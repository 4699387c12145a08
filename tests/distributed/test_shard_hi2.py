"""HI² over shards when ``max_posting`` binds: one index keeps each term's ``max_posting`` heaviest postings of
the whole corpus, so each shard must keep exactly its share of those (not its own heaviest ``max_posting``, and
not a smaller default of its own size); then the sharded results equal the single index's, ids and scores."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from flagstone.corpora import python_docstrings
from flagstone.distributed.encode import EmbedderSpec
from flagstone.distributed.shards import ShardedRetriever, build_sharded, train_dense_index
from flagstone.index.hi2 import shard_posting_caps
from flagstone.retrieval.retriever import Retriever


def assert_same(a, b) -> None:
    assert a.ids == b.ids
    assert np.array_equal(a.scores, b.scores)


def posting_pairs(index) -> set[tuple[int, str]]:
    """(term id, document id) of every posting the index keeps."""
    offsets, rows = index.postings
    terms = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return {(int(t), index.ids[r]) for t, r in zip(terms, rows)}


def test_shard_caps_keep_the_corpus_top_with_ties_in_corpus_order():
    # term 0: weights over shards 0 and 1; the corpus's top 3 are 0.9 (shard 1), then the two 0.5s in corpus
    # order (shard 0's before shard 1's); term 1 is capped in shard 1 only; term 2 is not capped at all
    heads = [(np.array([0, 0, 1]), np.array([0.5, 0.2, 0.7], np.float32)),
             (np.array([0, 0, 0, 1, 1]), np.array([0.9, 0.5, 0.5, 0.8, 0.6], np.float32))]
    caps = shard_posting_caps(heads, 3, 3)
    assert [c.tolist() for c in caps] == [[1, 1, 3], [2, 2, 3]]


@pytest.fixture(scope="module")
def corpus():
    ids, texts = python_docstrings(300)
    # exact copies at the end of the corpus (in the last shard): their postings tie with the originals'
    return ids + [f"{i}~copy" for i in ids[:40]], texts + texts[:40]


@pytest.mark.parametrize("max_posting", [3, 12])
def test_sharded_hi2_equals_one_index_when_the_posting_cap_binds(tmp_path, corpus, tiny_m3_dir, tiny_m3,
                                                                  max_posting):
    ids, texts = corpus
    queries = [" ".join(t.split()[:8]) for t in texts[::9]]
    emb = tiny_m3.encode(texts, dense=True, show_progress=False)
    rows = np.sort(np.random.default_rng(0).choice(len(ids), size=len(ids), replace=False))
    trained = train_dense_index("hi2", emb.dense[rows], n_lists=16, n_probe=1, max_posting=max_posting)
    build_sharded(tmp_path / "sharded", ids, texts, spec=EmbedderSpec(str(tiny_m3_dir)), shards=3,
                  signals=["dense", "bm25"], dense_index=trained, embeddings=emb, use_ray=False)
    single = Retriever(tiny_m3, signals=["dense", "bm25"], dense_index=copy.deepcopy(trained))
    single.add(ids, texts, embeddings=emb)
    index = single.indexes["dense"]
    assert (index.posting_counts() > max_posting).sum() > 20  # the cap binds on many terms
    sharded = ShardedRetriever.load(tmp_path / "sharded", embedder=tiny_m3, use_ray=False)
    shard_indexes = [replicas[0].indexes["dense"] for replicas in sharded._workers.workers]
    kept = sum(len(s.postings[1]) for s in shard_indexes)
    # together the shards keep exactly the single index's postings
    assert set().union(*map(posting_pairs, shard_indexes)) == posting_pairs(index) and kept == len(index.postings[1])
    for k in (5, 30):
        assert_same(single.search(queries, mode="dense", k=k), sharded.search(queries, mode="dense", k=k))

    # what each shard capping on its own would keep instead (the behaviour before): more postings, other results
    for shard in shard_indexes:
        shard.cap_postings(max_posting, None)
    assert sum(len(s.postings[1]) for s in shard_indexes) > kept
    own = sharded.search(queries, mode="dense", k=30)
    assert own.ids != single.search(queries, mode="dense", k=30).ids
