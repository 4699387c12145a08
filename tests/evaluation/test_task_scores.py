"""Each task type's score equals the ``mteb`` package's own evaluator on the same embeddings (1e-4)."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.evaluation import scoring

oracle = pytest.importorskip("tests.evaluation.mteb_oracle", reason="mteb (the parity oracle) is not installed",
                             exc_type=ImportError)
TOL = 1e-4


def _close(ours: dict, theirs: dict, keys) -> None:
    for key in keys:
        assert ours[key] == pytest.approx(theirs[key], abs=TOL), key


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def _pairs(rng, n=120, d=24):
    e1 = rng.normal(size=(n, d)).astype(np.float32)
    e2 = (e1 + rng.normal(scale=1.2, size=(n, d))).astype(np.float32)
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    return e1, e2, cos


def test_sts_matches_mteb(rng):
    e1, e2, cos = _pairs(rng)
    gold = np.round(np.clip(2.5 + 2.5 * cos + rng.normal(scale=0.6, size=len(cos)), 0, 5), 1)  # ties, like STS-B
    ours = scoring.sts_scores(e1, e2, gold)
    theirs = oracle.sts_scores(e1, e2, gold)
    keys = [k for k in theirs if k != "main_score"]
    assert set(keys) <= set(ours)
    _close(ours, theirs, keys)
    assert ours["cosine_spearman"] == pytest.approx(theirs["main_score"], abs=TOL)


@pytest.mark.parametrize("tied", [False, True])
def test_pair_classification_matches_mteb(rng, tied):
    e1, e2, cos = _pairs(rng)
    if tied:  # duplicated pairs give tied scores: thresholds must not split them
        e1[10:20], e2[10:20] = e1[0], e2[0]
    labels = (cos + rng.normal(scale=0.25, size=len(cos)) > np.median(cos)).astype(int)
    ours = scoring.pair_classification_scores(e1, e2, labels)
    theirs = oracle.pair_classification_scores(e1, e2, labels)
    keys = [k for k in theirs if k != "main_score"]
    assert set(keys) <= set(ours)
    _close(ours, theirs, keys)
    assert ours["max_ap"] == pytest.approx(theirs["main_score"], abs=TOL)


@pytest.mark.parametrize("n_classes", [2, 6])
def test_classification_matches_mteb(rng, n_classes):
    d = 16
    centers = rng.normal(size=(n_classes, d))
    y_train = rng.permutation(np.repeat(np.arange(n_classes), 30))  # rows in no particular order
    y_test = np.repeat(np.arange(n_classes), 15)
    x_train = (centers[y_train] + rng.normal(scale=1.4, size=(len(y_train), d))).astype(np.float32)
    x_test = (centers[y_test] + rng.normal(scale=1.4, size=(len(y_test), d))).astype(np.float32)
    ours = scoring.classification_scores(x_train, y_train.tolist(), x_test, y_test.tolist())
    theirs = oracle.classification_scores(x_train, y_train, x_test, y_test)
    keys = ["accuracy", "f1", "f1_weighted", "precision", "precision_weighted", "recall", "recall_weighted"]
    if n_classes == 2:
        keys += ["ap", "ap_weighted"]
    _close(ours, theirs, keys)
    for a, b in zip(ours["scores_per_experiment"], theirs["scores_per_experiment"]):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=TOL)


def test_clustering_matches_mteb(rng):
    d = 16
    centers = rng.normal(size=(7, d))
    labels = rng.integers(0, 7, size=400)
    emb = (centers[labels] + rng.normal(scale=1.1, size=(400, d))).astype(np.float32)
    for fraction in (None, 0.5):
        ours = scoring.clustering_scores(emb, labels.tolist(), max_fraction=fraction, docs_per_run=500, n_runs=4)
        theirs = oracle.clustering_scores(emb, labels, overrides={
            "max_fraction_of_documents_to_embed": fraction, "max_documents_per_cluster": 500, "n_clusters": 4})
        _close(ours, theirs, ["v_measure", "v_measure_std", "ami", "ami_std"])


def test_reranking_matches_mteb(rng):
    d = 16
    queries = rng.normal(size=(12, d)).astype(np.float32)
    candidates, relevance = [], []
    for i in range(12):
        n = int(rng.integers(5, 25))
        rel = np.zeros(n, dtype=int)
        rel[rng.choice(n, size=int(rng.integers(0, 4)), replace=False)] = 1  # some queries have no positive
        cands = rng.normal(size=(n, d)) + np.where(rel[:, None] == 1, 0.7 * queries[i], 0.0)
        candidates.append(cands.astype(np.float32))
        relevance.append(rel.tolist())
    ours = scoring.reranking_scores(queries, candidates, relevance)
    theirs = oracle.reranking_scores(queries, candidates, relevance)
    keys = [f"{m}_at_{k}" for m in ("map", "ndcg", "mrr", "recall", "precision") for k in (1, 3, 5, 10, 20, 1000)]
    _close(ours, theirs, keys)
    assert ours["map_at_1000"] == pytest.approx(theirs["main_score"], abs=TOL)


def test_bad_inputs_raise():
    e = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="gold"):
        scoring.sts_scores(e, e, [1.0, 2.0])
    with pytest.raises(ValueError, match="0 or 1"):
        scoring.pair_classification_scores(e, e, [0, 1, 2])
    with pytest.raises(ValueError, match="candidates"):
        scoring.reranking_scores(e[:1], [e], [[1, 0]])
