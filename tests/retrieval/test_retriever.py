from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import FlagstoneError, MissingHeadError
from flagstone.models.scoring import colbert_scores, dense_scores, normalize_scores, sparse_scores
from flagstone.retrieval.fusion import reciprocal_rank_fusion, weighted_sum
from flagstone.retrieval.retriever import HybridConfig, Retriever

DOCS = {
    "zinc": "Zinc lozenges shorten the common cold in adults.",
    "vitc": "Vitamin C does not prevent colds in the general population.",
    "sleep": "Short sleep duration raises the risk of infection after exposure to a cold virus.",
    "bees": "Honey bees communicate the location of flowers with a waggle dance.",
    "stars": "Neutron stars are the collapsed cores of massive stars.",
    "exercise": "Regular moderate exercise is associated with fewer upper respiratory infections.",
}


@pytest.fixture(scope="module")
def m3_retriever(tiny_m3):
    return Retriever(tiny_m3).fit(list(DOCS), list(DOCS.values()))


@pytest.fixture(scope="module")
def minilm_retriever(minilm):
    return Retriever(minilm).fit(list(DOCS), list(DOCS.values()))


def test_every_mode_returns_full_rankings(m3_retriever):
    assert m3_retriever.modes == ("dense", "sparse", "colbert", "bm25", "hybrid")
    for mode in m3_retriever.modes:
        hits = m3_retriever.search(["cold remedies", "bees and flowers"], mode=mode, k=4)
        assert len(hits) == 2 and all(len(row) == 4 for row in hits.ids)
        assert hits.scores.shape == (2, 4)
        assert np.all(np.diff(hits.scores, axis=1) <= 1e-6)  # best first
        assert all(len(set(row)) == 4 for row in hits.ids)


def test_single_mode_scores_equal_exhaustive_scoring(m3_retriever, tiny_m3):
    queries = ["cold remedies", "stars"]
    q = tiny_m3.encode_queries(queries, sparse=True, colbert=True)
    d = tiny_m3.encode_documents(list(DOCS.values()), sparse=True, colbert=True)
    for mode, full in (("dense", dense_scores(q.dense, d.dense)), ("sparse", sparse_scores(q.sparse, d.sparse)),
                       ("colbert", colbert_scores(q.colbert, d.colbert))):
        hits = m3_retriever.search(queries, mode=mode, k=len(DOCS))
        for qi in range(len(queries)):
            expected = sorted(full[qi], reverse=True)
            assert np.allclose(hits.scores[qi], expected, atol=1e-5), mode


def test_hybrid_reports_each_signal_and_matches_manual_fusion(minilm_retriever):
    hits = minilm_retriever.search(["cold virus infection"], mode="hybrid", k=6)
    assert set(hits.signals) == {"dense", "bm25"}
    dense = minilm_retriever.search(["cold virus infection"], mode="dense", k=6)
    by_id = dict(zip(dense.ids[0], dense.scores[0]))
    for doc_id, s in zip(hits.ids[0], hits.signals["dense"][0]):
        assert s == pytest.approx(by_id[doc_id], abs=1e-6)
    fused = weighted_sum({"dense": hits.signals["dense"][0], "bm25": hits.signals["bm25"][0]},
                         {"dense": 0.5, "bm25": 0.5})
    assert np.allclose(fused, hits.scores[0], atol=1e-6)
    rrf = minilm_retriever.search(["cold virus infection"], mode="hybrid", k=6, hybrid=HybridConfig(method="rrf"))
    assert rrf.scores[0, 0] <= 2 / 61 + 1e-9


def test_fusion_functions():
    assert np.allclose(normalize_scores(np.array([1.0, 3.0, 2.0]), "minmax"), [0, 1, 0.5])
    # a tie (or a single candidate) has no range: a positive score is the top (1), zero or less nothing (0)
    assert np.allclose(normalize_scores(np.array([2.0, 2.0]), "minmax"), [1, 1])
    assert np.allclose(normalize_scores(np.array([0.7]), "minmax"), [1])
    assert np.allclose(normalize_scores(np.array([0.0, 0.0]), "minmax"), [0, 0])
    assert np.allclose(normalize_scores(np.array([-0.2]), "minmax"), [0])
    assert np.allclose(normalize_scores(np.array([1.0, 3.0]), "zscore"), [-1, 1])
    rrf = reciprocal_rank_fusion({"a": np.array([3.0, 1.0]), "b": np.array([1.0, 2.0])}, {"a": 1, "b": 1}, k=60)
    assert np.allclose(rrf, [1 / 61 + 1 / 62, 1 / 62 + 1 / 61])
    with pytest.raises(ValueError):
        normalize_scores(np.ones(2), "softmax")


def test_errors(minilm, minilm_retriever):
    with pytest.raises(MissingHeadError, match="cannot produce sparse"):
        Retriever(minilm, signals=["dense", "sparse"])
    with pytest.raises(FlagstoneError, match="not available"):
        minilm_retriever.search(["q"], mode="colbert")
    with pytest.raises(ValueError, match="unknown mode"):
        minilm_retriever.search(["q"], mode="fuzzy")
    with pytest.raises(FlagstoneError, match="nothing is indexed"):
        Retriever(minilm).search(["q"])
    with pytest.raises(FlagstoneError, match="corpus is empty"):
        Retriever(minilm).fit([], [])
    with pytest.raises(ValueError, match="unknown signals"):
        HybridConfig(weights={"dnese": 1.0})
    with pytest.raises(FlagstoneError, match="lacks"):
        minilm_retriever.search(["q"], mode="hybrid", hybrid=HybridConfig(weights={"sparse": 1.0}))


def test_bm25_only_retriever_needs_no_model():
    r = Retriever(None).fit(list(DOCS), list(DOCS.values()))
    assert r.modes == ("bm25",)
    assert r.search(["neutron stars"], mode="bm25", k=1).ids == [["stars"]]


def test_colbert_scores_are_the_same_in_small_blocks(monkeypatch):
    import flagstone.models.scoring as scoring
    from flagstone.models.embeddings import MultiVectors

    rng = np.random.default_rng(0)
    docs = MultiVectors.from_list([rng.normal(size=(n, 8)).astype(np.float32) for n in (5, 0, 3, 9, 1, 0, 4)], 8)
    queries = MultiVectors.from_list([rng.normal(size=(n, 8)).astype(np.float32) for n in (2, 4, 0)], 8)
    expected = np.array([[(q @ docs[j].T).max(axis=1).mean() if len(q) and len(docs[j]) else 0.0
                          for j in range(len(docs))] for q in (queries[i] for i in range(len(queries)))])
    assert np.allclose(scoring.colbert_scores(queries, docs), expected, atol=1e-5)
    monkeypatch.setattr(scoring, "_COLBERT_BLOCK_TOKENS", 4)
    assert np.allclose(scoring.colbert_scores(queries, docs), expected, atol=1e-5)


@pytest.fixture(scope="module")
def docstring_cache(tmp_path_factory):
    """One embedding cache for the module: the 400 docstrings are encoded once, not once per retriever."""
    from flagstone.models.cache import EmbeddingCache

    return EmbeddingCache(tmp_path_factory.mktemp("embeddings"))


@pytest.mark.parametrize("dense_index", ["ivf", "hi2"])
def test_approximate_dense_indexes_in_the_retriever(minilm, docstring_cache, dense_index):
    pytest.importorskip("faiss")
    from flagstone.corpora import python_docstrings

    ids, texts = python_docstrings(400)
    exact = Retriever(minilm, signals=["dense"], cache=docstring_cache).fit(ids, texts)
    approx = Retriever(minilm, signals=["dense"], dense_index=dense_index, cache=docstring_cache).fit(ids, texts)
    queries = ["compress a file", "parse a date string", "open a network socket", "read a CSV file"]
    truth = exact.search(queries, mode="dense", k=5)
    got = approx.search(queries, mode="dense", k=5)
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(truth.ids, got.ids)])
    assert overlap >= 0.6
    hybrid = Retriever(minilm, dense_index=dense_index, cache=docstring_cache).fit(ids, texts)
    hybrid = hybrid.search(queries, mode="hybrid", k=5)
    assert all(len(row) == 5 for row in hybrid.ids)


def test_dense_index_argument_is_checked(minilm):
    with pytest.raises(ValueError, match="unknown dense index"):
        Retriever(minilm, dense_index="annoy")


def test_an_index_instance_is_filled_once(minilm):
    pytest.importorskip("faiss")
    from flagstone.index.ivf import IVFIndex

    index = IVFIndex(384, n_lists=2, n_probe=2)
    retriever = Retriever(minilm, signals=["dense"], dense_index=index).fit(list(DOCS), list(DOCS.values()))
    assert len(index) == len(DOCS)
    assert retriever.search(["bees"], mode="dense", k=1).ids == [["bees"]]
    with pytest.raises(FlagstoneError, match="already filled"):
        retriever.fit(list(DOCS), list(DOCS.values()))
