"""Real data: SciFact from ../shared/data (skipped with a reason when the folder is absent)."""
from __future__ import annotations

import pytest

from flagstone.evaluation.beir import BeirDataset, load_beir
from flagstone.evaluation.metrics import evaluate_run
from flagstone.evaluation.retrieval import evaluate_retrieval
from flagstone.retrieval.retriever import Retriever


@pytest.fixture(scope="module")
def scifact(scifact_dir):
    return load_beir(scifact_dir, "test")


def test_bm25_reaches_published_quality_and_metrics_equal_pytrec_eval(scifact):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    report = evaluate_retrieval(Retriever(None), scifact, k_values=(10, 100))
    bm25 = report.results["bm25"]
    assert len(scifact.qrels) == 300 and len(scifact.doc_ids) == 5183
    assert bm25.metrics.mean["ndcg@10"] >= 0.66  # published BM25: 0.665-0.679
    reference = pytrec_eval.RelevanceEvaluator(scifact.qrels, {"ndcg_cut.10", "recall.100", "map_cut.10"}).evaluate(
        bm25.run)
    for qid, ref in reference.items():
        assert bm25.metrics.per_query[qid]["ndcg@10"] == pytest.approx(ref["ndcg_cut_10"], abs=1e-6)
        assert bm25.metrics.per_query[qid]["recall@100"] == pytest.approx(ref["recall_100"], abs=1e-6)
        assert bm25.metrics.per_query[qid]["map@10"] == pytest.approx(ref["map_cut_10"], abs=1e-6)


def test_dense_and_hybrid_on_a_slice(scifact, minilm):
    """40 test queries over their relevant documents plus 360 others: small enough for CI."""
    qids = list(scifact.qrels)[:40]
    relevant = {d for q in qids for d in scifact.qrels[q]}
    keep = [i for i, d in enumerate(scifact.doc_ids) if d in relevant]
    keep += [i for i, d in enumerate(scifact.doc_ids) if d not in relevant][:400 - len(keep)]
    sliced = BeirDataset("scifact-slice", [scifact.doc_ids[i] for i in keep], [scifact.doc_texts[i] for i in keep],
                         {q: scifact.queries[q] for q in qids}, {q: scifact.qrels[q] for q in qids})
    report = evaluate_retrieval(Retriever(minilm), sliced, k_values=(10,))
    ndcg = {mode: r.metrics.mean["ndcg@10"] for mode, r in report.results.items()}
    assert ndcg["dense"] > 0.6 and ndcg["bm25"] > 0.6
    assert ndcg["hybrid"] >= max(ndcg["dense"], ndcg["bm25"]) - 0.02
    # the runs are ordinary pytrec_eval runs
    again = evaluate_run(report.results["hybrid"].run, sliced.qrels, (10,))
    assert again.mean["ndcg@10"] == pytest.approx(ndcg["hybrid"])
