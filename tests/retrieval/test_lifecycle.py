"""The Retriever's lifecycle: add, remove, search with allow-lists, save and load, describe and retrain."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import DataError, IdError, NotFittedError, VectorError
from flagstone.index.sparse import SparseIndex
from flagstone.retrieval.bm25 import BM25
from flagstone.retrieval.retriever import Retriever

CORPUS = [
    "Zinc lozenges shorten the common cold in adults.",
    "Vitamin C does not prevent colds in the general population.",
    "Short sleep duration raises the risk of infection after exposure to a cold virus.",
    "Honey bees communicate the location of flowers with a waggle dance.",
    "Neutron stars are the collapsed cores of massive stars.",
    "Regular moderate exercise is associated with fewer upper respiratory infections.",
    "Cold water swimming and the immune response of winter swimmers.",
    "Bumble bees forage on flowers in cold weather less often than honey bees.",
    "Massive stars end their lives as supernovae, leaving neutron stars or black holes.",
    "Sleep deprivation impairs the immune response to vaccination.",
    "Exercise in cold weather: respiratory infections among athletes.",
    "The dance language of bees was decoded by Karl von Frisch.",
]
IDS = [f"doc{i}" for i in range(len(CORPUS))]
QUERIES = ["cold infection", "bees flowers dance", "neutron stars", "immune response sleep"]


def bm25_scores(retriever: Retriever) -> list[dict[str, float]]:
    hits = retriever.search(QUERIES, mode="bm25", k=len(retriever))
    return [{i: float(s) for i, s in zip(row, scores) if np.isfinite(s)} for row, scores in zip(hits.ids, hits.scores)]


def test_bm25_stays_exact_under_adds_and_removes():
    grown = Retriever(None, signals=["bm25"])
    grown.add(IDS[:4], CORPUS[:4])
    for lo in range(4, len(CORPUS), 3):
        grown.add(IDS[lo : lo + 3], CORPUS[lo : lo + 3])
    grown.remove(["doc1", "doc7", "doc10"])
    live = [n for n, i in enumerate(IDS) if i not in {"doc1", "doc7", "doc10"}]
    fresh = Retriever(None, signals=["bm25"]).fit([IDS[n] for n in live], [CORPUS[n] for n in live])
    for got, want in zip(bm25_scores(grown), bm25_scores(fresh)):
        assert got.keys() == want.keys()
        for doc_id in want:
            assert got[doc_id] == pytest.approx(want[doc_id], rel=1e-5)


def test_bm25_index_equals_precomputed_weights():
    """Scoring at query time from term counts gives what BM25.fit_transform's precomputed weights give."""
    model = BM25()
    weights = model.fit_transform(CORPUS)
    precomputed = SparseIndex(weights.vocab_size)
    precomputed.add(IDS, weights)
    retriever = Retriever(None, signals=["bm25"]).fit(IDS, CORPUS)
    # the same full weights per document (HI² ranks a document's salient terms by them); same vocabulary order
    stored = retriever.indexes["bm25"].document_weights(IDS).to_scipy().toarray()
    np.testing.assert_allclose(stored, weights.to_scipy().toarray(), rtol=1e-5, atol=1e-7)
    queries = model.transform_queries(QUERIES)
    expected = precomputed.search(queries, len(IDS))
    got = bm25_scores(retriever)
    for qi, row in enumerate(precomputed.ids_of(expected.positions)):
        for doc_id, score in zip(row, expected.scores[qi]):
            if score > 0:
                assert got[qi][doc_id] == pytest.approx(float(score), rel=1e-5)


def test_lifecycle_with_every_signal(tiny_m3, tmp_path):
    retriever = Retriever(tiny_m3)
    with pytest.raises(NotFittedError):
        retriever.search(["x"], mode="dense")
    retriever.add(IDS[:6], CORPUS[:6], [{"topic": "health" if n in (0, 1, 2, 5) else "science"} for n in range(6)])
    retriever.add(IDS[6:], CORPUS[6:])
    with pytest.raises(IdError, match="already indexed"):
        retriever.add(["doc0"], ["again"])
    retriever.remove(["doc3"])
    with pytest.raises(IdError, match="unknown ids"):
        retriever.remove(["doc3"])
    assert len(retriever) == len(IDS) - 1 and "doc3" not in retriever
    allow = ["doc0", "doc2", "doc5", "doc9"]
    for mode in retriever.modes:
        hits = retriever.search(QUERIES, mode=mode, k=3, allow=allow)
        assert all(set(row) <= set(allow) and len(row) == 3 for row in hits.ids), mode
        assert all("doc3" not in row for row in retriever.search(QUERIES, mode=mode, k=11).ids)
    before = {mode: retriever.search(QUERIES, mode=mode, k=5) for mode in retriever.modes}

    retriever.save(tmp_path / "r")
    with pytest.raises(DataError, match="overwrite"):
        retriever.save(tmp_path / "r")
    retriever.save(tmp_path / "r", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by Flagstone"):
        retriever.save(tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"

    loaded = Retriever.load(tmp_path / "r", embedder=tiny_m3)
    assert loaded.ids == retriever.ids and loaded.metadata("doc0") == {"topic": "health"}
    for mode, hits in before.items():
        again = loaded.search(QUERIES, mode=mode, k=5)
        np.testing.assert_allclose(again.scores, hits.scores, rtol=1e-5, atol=1e-6)
        for row_a, row_b, scores in zip(again.ids, hits.ids, hits.scores):  # equal scores may swap places
            distinct = [j for j in range(len(row_b)) if np.sum(np.abs(scores - scores[j]) < 1e-5) == 1]
            assert [row_a[j] for j in distinct] == [row_b[j] for j in distinct], mode
    loaded.add(["new"], ["Honey and lemon for a sore throat during a cold."])
    assert "new" in loaded.search(["honey lemon sore throat"], mode="bm25", k=1).ids[0]


def test_describe_reports_drift_and_retrain_resets_it(minilm):
    retriever = Retriever(minilm, signals=["dense"], dense_index="ivf")
    retriever.add(IDS[:6], CORPUS[:6])
    retriever.add(IDS[6:], CORPUS[6:])
    drift = retriever.describe()["indexes"]["dense"]["drift"]
    assert drift["trained_on"] == 6 and drift["added_since_training"] == 6
    retriever.retrain()
    drift = retriever.describe()["indexes"]["dense"]["drift"]
    assert drift["trained_on"] == 12 and drift["added_since_training"] == 0
    assert drift["centroid_similarity_now"] == pytest.approx(drift["centroid_similarity_at_training"], abs=1e-5)
    assert retriever.search(["bees"], mode="dense", k=2).ids[0][0] in {"doc3", "doc7", "doc11"}


def test_a_refused_add_leaves_no_trace(tiny_m3, monkeypatch):
    retriever = Retriever(tiny_m3, signals=["dense", "bm25"]).fit(IDS[:4], CORPUS[:4])
    real = retriever._encode
    broken = real(["x"], ["dense"], is_query=False, show_progress=False)
    monkeypatch.setattr(retriever, "_encode", lambda *a, **kw: type(broken)(dense=np.full_like(broken.dense, np.nan)))
    with pytest.raises(VectorError):
        retriever.add(["bad"], ["Honey bees and zinc lozenges."])
    monkeypatch.undo()
    assert "bad" not in retriever and len(retriever) == 4
    assert all("bad" not in row for row in retriever.search(["honey bees zinc"], mode="bm25", k=4).ids)
    retriever.add(["bad"], ["Honey bees and zinc lozenges."])  # the id is free again
    assert retriever.search(["honey bees zinc"], mode="bm25", k=1).ids[0] == ["bad"]
