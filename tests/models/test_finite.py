"""NaN and infinity never pass silently between layers: model outputs, reranker scores, fusion, runs."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import NonFiniteError, VectorError
from tests.helpers import poison_token


@pytest.fixture
def poisoned_m3(tiny_m3_dir):
    """The tiny M3 with the input embedding of a token only the third text has set to NaN."""
    from flagstone.models.embedder import Embedder

    embedder = Embedder(str(tiny_m3_dir), show_progress=False)
    texts = ["the first text", "another one here", "return the value"]
    poison_token(embedder, texts[2], texts[:2])
    return embedder, texts


@pytest.mark.parametrize("output", ["dense", "sparse", "colbert"])
def test_encode_names_the_text_whose_output_is_not_finite(poisoned_m3, output):
    embedder, texts = poisoned_m3
    flags = {"dense": output == "dense", "sparse": output == "sparse", "colbert": output == "colbert"}
    with pytest.raises(NonFiniteError, match=rf"{output} output holds NaN at text 2"):
        embedder.encode(texts, **flags)
    clean = embedder.encode(texts[:2], **flags)  # the other texts still encode
    values = {"dense": clean.dense, "sparse": getattr(clean.sparse, "weights", None),
              "colbert": getattr(clean.colbert, "vectors", None)}[output]
    assert values is not None and len(values) and np.isfinite(values).all()


class _Scripted:
    def __init__(self, scores):
        self.scores = scores

    def score_pairs(self, pairs):
        return np.asarray(self.scores[: len(pairs)], dtype=np.float32)


def test_rerank_refuses_a_nan_score_instead_of_sorting_it_anywhere():
    from flagstone.models.reranker import rerank

    with pytest.raises(NonFiniteError, match="_Scripted scores holds NaN at pair 1"):
        rerank(_Scripted([0.3, float("nan"), 0.1]), "q", ["a", "b", "c"])
    with pytest.raises(NonFiniteError, match="infinity at pair 0"):
        rerank(_Scripted([float("inf"), 0.2]), "q", ["a", "b"])
    with pytest.raises(ValueError, match=r"returned shape \(2,\) for 3 pairs"):
        rerank(_Scripted([0.3, 0.2]), "q", ["a", "b", "c"])
    assert rerank(_Scripted([0.3, 0.9, 0.1]), "q", ["a", "b", "c"]).order.tolist() == [1, 0, 2]


def test_rerank_hits_checks_scores():
    from flagstone.rerank.hits import rerank_hits
    from flagstone.retrieval.retriever import Retriever

    retriever = Retriever(signals=("bm25",))
    retriever.add(["a", "b"], ["apples are red", "apples and pears"])
    hits = retriever.search(["apples"], k=2, mode="bm25")
    with pytest.raises(NonFiniteError):
        rerank_hits(_Scripted([float("nan"), 1.0]), ["apples"], hits, {"a": "apples are red", "b": "apples and pears"},
                    show_progress=False)


def test_fusion_and_normalisation_refuse_non_finite_scores():
    from flagstone.models.scoring import normalize_scores
    from flagstone.retrieval.fusion import reciprocal_rank_fusion, weighted_sum

    with pytest.raises(NonFiniteError, match="NaN at row 1"):
        normalize_scores(np.array([0.5, np.nan, 0.1]), "minmax")
    with pytest.raises(NonFiniteError, match="infinity"):
        weighted_sum({"dense": np.array([0.5, -np.inf])}, {"dense": 1.0})
    with pytest.raises(NonFiniteError, match="bm25 scores to fuse holds NaN"):
        reciprocal_rank_fusion({"bm25": np.array([np.nan, 1.0])}, {"bm25": 1.0})
    assert normalize_scores(np.array([1.0, 3.0]), "minmax").tolist() == [0.0, 1.0]


def test_metrics_refuse_a_nan_score_in_a_run():
    from flagstone.evaluation.metrics import evaluate_run

    qrels = {"q1": {"d1": 1}}
    with pytest.raises(NonFiniteError, match="'d2'"):
        evaluate_run({"q1": {"d1": 1.0, "d2": float("nan")}}, qrels, k_values=(10,))
    assert evaluate_run({"q1": {"d1": 1.0, "d2": 0.5}}, qrels, k_values=(10,)).mean["ndcg@10"] == 1.0


def test_hi2_refuses_non_finite_query_terms():
    pytest.importorskip("faiss")
    from flagstone.index.hi2 import HI2Index
    from flagstone.models.embeddings import Embeddings, SparseWeights

    rng = np.random.default_rng(0)
    docs = rng.normal(size=(64, 8)).astype(np.float32)
    terms = SparseWeights.from_dicts([{i % 5: 1.0} for i in range(64)], vocab_size=10)
    index = HI2Index(8, n_lists=4)
    index.add([str(i) for i in range(64)], Embeddings(dense=docs, sparse=terms))
    bad = Embeddings(dense=docs[:1], sparse=SparseWeights.from_dicts([{1: float("nan")}], vocab_size=10))
    with pytest.raises(VectorError, match="query term weights"):
        index.search(bad, 3)
