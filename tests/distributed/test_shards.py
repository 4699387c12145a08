"""Sharded retrievers searched by scatter-gather equal one retriever over the same documents (ids and scores,
ties included), in this process; the Ray runs are in test_ray.py."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.corpora import python_docstrings
from flagstone.distributed.encode import EmbedderSpec
from flagstone.distributed.shards import (
    ShardedRetriever,
    build_sharded,
    merge_vocabularies,
    train_dense_index,
)
from flagstone.index.base import top_k
from flagstone.index.codecs import SCORE_BLOCK, blocked_inner_products
from flagstone.index.sparse import CorpusStatistics, SparseIndex
from flagstone.retrieval.bm25 import BM25
from flagstone.retrieval.retriever import HybridConfig, Retriever

QUERIES = ["read a file from disk", "parse command line arguments", "thread pool executor", "decode json text",
           "zzzz qqqq"]  # the last matches no term: every BM25 score ties at 0


@pytest.fixture(scope="module")
def corpus():
    ids, texts = python_docstrings(160)
    # exact duplicates under new ids: equal scores everywhere, so tie order is tested too
    return ids + [f"{i}~copy" for i in ids[:25]], texts + texts[:25]


def assert_same(a, b) -> None:
    assert a.ids == b.ids
    assert np.array_equal(a.scores, b.scores)
    for signal in a.signals:
        assert np.array_equal(a.signals[signal], b.signals[signal]), signal


def test_top_k_keeps_the_lowest_positions_among_ties_at_the_cut():
    scores = np.array([[0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    assert top_k(scores, 4).positions.tolist() == [[1, 4, 0, 2]]


def test_exact_scores_do_not_depend_on_how_many_rows_are_scored():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((3 * SCORE_BLOCK + 17, 48)).astype(np.float32)
    queries = rng.standard_normal((5, 48)).astype(np.float32)
    whole = blocked_inner_products(queries, rows)
    for start, stop in ((0, 1), (5, 300), (SCORE_BLOCK - 3, 2 * SCORE_BLOCK + 40)):
        assert np.array_equal(blocked_inner_products(queries, rows[start:stop]), whole[:, start:stop])


def test_merged_vocabulary_numbers_terms_as_one_bm25_over_the_corpus(corpus):
    ids, texts = corpus
    single = BM25()
    single.count(texts)
    parts = []
    for block in (texts[:50], texts[50:51], texts[51:]):
        model = BM25()
        model.count(block)
        parts.append(list(model.vocab))
    assert merge_vocabularies(parts) == list(single.vocab)


def test_bm25_shards_with_shared_statistics_score_as_one_index(corpus):
    _, texts = corpus
    bm25 = BM25()
    counts = bm25.count(texts)
    ids = [str(i) for i in range(len(texts))]
    single = SparseIndex(counts.vocab_size, scoring="bm25")
    single.add(ids, counts)
    shards = [SparseIndex(counts.vocab_size, scoring="bm25") for _ in range(2)]
    shards[0].add(ids[:70], counts.take(np.arange(70)))
    shards[1].add(ids[70:], counts.take(np.arange(70, len(ids))))
    query = bm25.transform_queries(["thread pool executor"])
    alone = shards[1].search(query, 5).scores
    stats = CorpusStatistics.merge([s.statistics() for s in shards])
    for shard in shards:
        shard.share_statistics(stats)
    want = single.search(query, len(ids))
    got = {}
    for shard in shards:
        result = shard.search(query, len(ids))
        got.update(dict(zip(shard.ids_of(result.positions)[0], result.scores[0])))
    assert dict(zip(single.ids_of(want.positions)[0], want.scores[0])) == got
    assert not np.array_equal(alone, shards[1].search(query, 5).scores)  # its own statistics scored otherwise


def test_shared_statistics_survive_save_and_load(tmp_path, corpus):
    _, texts = corpus
    counts = BM25().count(texts)
    index = SparseIndex(counts.vocab_size, scoring="bm25")
    index.add([str(i) for i in range(40)], counts.take(np.arange(40)))
    stats = CorpusStatistics(np.bincount(counts.token_ids, minlength=counts.vocab_size).astype(np.int64) * 3,
                             len(texts) * 3, 999.0)
    index.share_statistics(stats)
    index.save(tmp_path / "ix")
    loaded = SparseIndex.load(tmp_path / "ix")
    query = counts.take(np.arange(1))  # any rows over the same vocabulary
    assert np.array_equal(loaded.search(query, 5).scores, index.search(query, 5).scores)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_sharded_search_equals_one_retriever_in_every_mode(tmp_path, corpus, tiny_m3_dir, tiny_m3, kind):
    ids, texts = corpus
    spec = EmbedderSpec(str(tiny_m3_dir))
    emb = tiny_m3.encode(texts, dense=True, sparse=True, colbert=True, show_progress=False)
    options = {"n_lists": 6, "n_probe": 2} if kind == "ivf" else {}
    build_sharded(tmp_path / "sharded", ids, texts, spec=spec, shards=3, dense_index=kind, dense_options=options,
                  embeddings=emb, use_ray=False, train_sample=len(ids), seed=0)
    dense = kind
    if kind == "ivf":
        rows = np.sort(np.random.default_rng(0).choice(len(ids), size=len(ids), replace=False))
        dense = train_dense_index(kind, emb.dense[rows], **options)
    single = Retriever(tiny_m3, dense_index=dense)
    single.add(ids, texts, embeddings=emb)
    sharded = ShardedRetriever.load(tmp_path / "sharded", embedder=tiny_m3, use_ray=False)
    assert len(sharded) == len(ids) and sharded.modes == single.modes
    for mode in single.modes:
        for k in (3, 40):
            assert_same(single.search(QUERIES, mode=mode, k=k), sharded.search(QUERIES, mode=mode, k=k))
    rrf = HybridConfig(weights={"dense": 1, "bm25": 1}, method="rrf", candidates=10)
    assert_same(single.search(QUERIES, mode="hybrid", k=8, hybrid=rrf),
                sharded.search(QUERIES, mode="hybrid", k=8, hybrid=rrf))
    allow = ids[::3]
    assert_same(single.search(QUERIES, mode="bm25", k=10, allow=allow),
                sharded.search(QUERIES, mode="bm25", k=10, allow=allow))


def test_retriever_load_points_at_the_sharded_loader(tmp_path, corpus):
    from flagstone.errors import DataError

    ids, texts = corpus
    build_sharded(tmp_path / "s", ids[:30], texts[:30], spec=None, shards=2, use_ray=False)
    with pytest.raises(DataError, match="sharded"):
        Retriever.load(tmp_path / "s")
    sharded = ShardedRetriever.load(tmp_path / "s", use_ray=False)
    single = Retriever(None).fit(ids[:30], texts[:30])
    assert_same(single.search(QUERIES, mode="bm25", k=7), sharded.search(QUERIES, mode="bm25", k=7))


def test_an_existing_folder_is_not_replaced_without_overwrite(tmp_path, corpus):
    from flagstone.errors import DataError

    ids, texts = corpus
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mine.txt").write_text("keep")
    with pytest.raises(DataError):
        build_sharded(tmp_path / "s", ids[:10], texts[:10], spec=None, shards=2, use_ray=False)
    assert (tmp_path / "s" / "mine.txt").read_text() == "keep"


def test_without_ray_the_error_names_the_extra(monkeypatch):
    import sys

    from flagstone.distributed.cluster import connect
    from flagstone.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"flagstone\[ray\]"):
        connect()


@pytest.fixture(scope="module")
def flat_sharded(tmp_path_factory, corpus, tiny_m3_dir, tiny_m3):
    """A flat sharded folder (3 shards, texts kept by the shards) and one retriever over the same documents."""
    ids, texts = corpus
    emb = tiny_m3.encode(texts, dense=True, sparse=True, colbert=True, show_progress=False)
    folder = build_sharded(tmp_path_factory.mktemp("flat") / "sharded", ids, texts,
                           spec=EmbedderSpec(str(tiny_m3_dir)), shards=3, embeddings=emb, use_ray=False)
    single = Retriever(tiny_m3)
    single.add(ids, texts, embeddings=emb)
    return ShardedRetriever.load(folder, embedder=tiny_m3, use_ray=False, documents=True), single


def test_reranking_sharded_hits_equals_reranking_one_retrievers(flat_sharded, corpus, tiny_cross_encoder_dir):
    from flagstone.models.reranker import CrossEncoderReranker
    from flagstone.rerank import rerank_hits

    ids, texts = corpus
    sharded, single = flat_sharded
    reranker = CrossEncoderReranker(tiny_cross_encoder_dir, batch_size=8)
    for mode, weight in (("hybrid", 0.0), ("dense", 0.0), ("bm25", 0.3)):
        first = sharded.search(QUERIES, mode=mode, k=20)
        # the texts the shards keep for the hits: the reranker sees what one retriever's texts would show it
        shown = {i: text for i, (text, _) in sharded.documents_of([i for row in first.ids for i in row]).items()}
        assert shown == {i: texts[ids.index(i)] for i in shown}
        got = rerank_hits(reranker, QUERIES, first, shown, depth=12, first_stage_weight=weight)
        want = rerank_hits(reranker, QUERIES, single.search(QUERIES, mode=mode, k=20),
                           {i: single.text(i) for i in ids}, depth=12, first_stage_weight=weight)
        assert_same(want, got)
        assert got.ids != [row[:12] for row in first.ids]  # the reranker re-ordered the first stage


def test_a_shard_missing_one_signal_leaves_none_of_its_documents_in_hybrid_hits(flat_sharded, corpus,
                                                                                 monkeypatch):
    ids, _ = corpus
    sharded, single = flat_sharded
    config = HybridConfig(weights={"dense": 1, "bm25": 1}, candidates=len(ids))  # every document a candidate
    shard_0 = set(ids[: sharded.manifest["shards"][1]["offset"]])
    whole = sharded.search(QUERIES, mode="hybrid", k=10, hybrid=config)
    assert all(set(row) & shard_0 for row in whole.ids[:4])  # shard 0 holds hits of every real query
    scatter = sharded._workers.scatter
    searches = []

    def bm25_gather_misses_shard_0(method, args):  # shard 0 answers the dense gather and the rescores only
        answers, missing, retries = scatter(method, args)
        if method == "search":
            searches.append(args[0][0])
            if args[0][0] == "bm25":
                return {s: a for s, a in answers.items() if s != 0}, [0], retries
        return answers, missing, retries

    monkeypatch.setattr(sharded._workers, "scatter", bm25_gather_misses_shard_0)
    partial = sharded.search_with_status(QUERIES, mode="hybrid", k=10, hybrid=config, allow_partial=True)
    assert sorted(searches) == ["bm25", "dense"]
    assert not partial.complete and partial.shards_missing == (0,) and partial.shards_answered == (1, 2)
    # none of shard 0's documents (some came through the dense gather): what one retriever over the answering
    # shards' documents returns, since every document is a candidate
    answering = [i for i in ids if i not in shard_0]
    assert_same(single.search(QUERIES, mode="hybrid", k=10, hybrid=config, allow=answering), partial.hits)
