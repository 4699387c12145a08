from __future__ import annotations

import random

import pytest

from flagstone.evaluation.metrics import evaluate_run, query_metrics, rank_documents

K_VALUES = (1, 3, 5, 10, 100)


def _random_case(seed: int):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 8))
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        if q % 9 == 0:
            continue  # a judged query with no results
        retrieved = rng.sample(docs, rng.randint(1, 50))
        # coarse scores force ties, which trec_eval breaks by document id
        run[qid] = {d: round(rng.random(), 1) for d in retrieved}
    return qrels, run


def _pytrec(qrels, run, measures, relevance_level=1):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    return pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=relevance_level).evaluate(run)


@pytest.mark.parametrize("relevance_level", [1, 2])
@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_pytrec_eval(seed, relevance_level):
    """Graded judgements 0-3: nDCG's gains are the grades, binary metrics count grades >= relevance_level."""
    qrels, run = _random_case(seed)
    ks = ",".join(map(str, K_VALUES))
    reference = _pytrec(qrels, run, {f"ndcg_cut.{ks}", f"recall.{ks}", f"map_cut.{ks}", f"P.{ks}"},
                        relevance_level)
    ours = evaluate_run(run, qrels, K_VALUES, relevance_level=relevance_level).per_query
    for qid, ref in reference.items():
        for k in K_VALUES:
            assert ours[qid][f"ndcg@{k}"] == pytest.approx(ref[f"ndcg_cut_{k}"], abs=1e-6)
            assert ours[qid][f"recall@{k}"] == pytest.approx(ref[f"recall_{k}"], abs=1e-6)
            assert ours[qid][f"map@{k}"] == pytest.approx(ref[f"map_cut_{k}"], abs=1e-6)
            assert ours[qid][f"precision@{k}"] == pytest.approx(ref[f"P_{k}"], abs=1e-6)
    # MRR@k is trec_eval's recip_rank on the run cut at k
    for k in K_VALUES:
        cut = {q: {d: docs[d] for d in rank_documents(docs)[:k]} for q, docs in run.items()}
        for qid, ref in _pytrec(qrels, cut, {"recip_rank"}, relevance_level).items():
            assert ours[qid][f"mrr@{k}"] == pytest.approx(ref["recip_rank"], abs=1e-6)


def test_queries_without_results_count_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    report = evaluate_run({"q1": {"a": 1.0}}, qrels, (10,))
    assert report.per_query["q2"]["ndcg@10"] == 0.0
    assert report.mean["ndcg@10"] == pytest.approx(0.5)


def test_hand_computed_values():
    m = query_metrics(["x", "a", "y", "b"], {"a": 2, "b": 1, "c": 1}, [4])
    # DCG = 2/log2(3) + 1/log2(5); IDCG = 2 + 1/log2(3) + 1/log2(4)
    import math

    assert m["ndcg@4"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(5)) / (2 + 1 / math.log2(3) + 0.5))
    assert m["mrr@4"] == 0.5 and m["recall@4"] == pytest.approx(2 / 3)
    assert m["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_bad_arguments():
    with pytest.raises(ValueError):
        evaluate_run({}, {"q": {"a": 1}}, (0,))
    with pytest.raises(ValueError):
        evaluate_run({}, {"q": {"a": 1}}, (10,), metrics=("ndgc",))
