"""The MIND leaderboard's metrics against hand-computed values and scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from flagstone.errors import DataError
from flagstone.newsrec.metrics import auc, impression_metrics, mean_metrics, mrr, ndcg


def test_hand_computed_impression():
    labels, scores = [1, 0, 0, 1], [0.9, 0.8, 0.3, 0.1]
    # ranked labels 1 0 0 1: clicked pairs beat unclicked 2 of 4 times; reciprocal ranks 1 and 1/4
    assert auc(labels, scores) == pytest.approx(0.5)
    assert mrr(labels, scores) == pytest.approx((1 + 1 / 4) / 2)
    dcg, ideal = 1 + 1 / math.log2(5), 1 + 1 / math.log2(3)
    assert ndcg(labels, scores, 5) == pytest.approx(dcg / ideal)
    assert ndcg(labels, scores, 2) == pytest.approx(1 / ideal)
    assert impression_metrics([0, 1], [0.2, 0.7]) == {"auc": 1.0, "mrr": 1.0, "ndcg@5": 1.0, "ndcg@10": 1.0}


def test_agrees_with_sklearn_on_random_impressions():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        labels = rng.integers(0, 2, size=n)
        labels[0], labels[1] = 1, 0
        scores = np.round(rng.normal(size=n), 1)  # rounded: ties happen, AUC counts them half
        assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
        distinct = rng.permutation(n).astype(float)  # sklearn's nDCG averages over ties; compare without them
        for k in (5, 10):
            assert ndcg(labels, distinct, k) == pytest.approx(ndcg_score([labels], [distinct], k=k))


def test_mean_skips_impressions_without_a_contrast():
    result = mean_metrics([[1, 0], [0, 1, 0], [1, 1], [0, 0]], [[0.9, 0.1], [0.5, 0.1, 0.2], [1, 2], [3, 4]])
    assert result.impressions == 2 and result.skipped == 2
    assert result.auc == pytest.approx((1.0 + 0.0) / 2)
    assert result.mrr == pytest.approx((1.0 + 1 / 3) / 2)
    with pytest.raises(DataError, match="no impression has both"):
        mean_metrics([[1, 1]], [[0.1, 0.2]])
    with pytest.raises(DataError, match="impression #0: 2 labels but 1 scores"):
        mean_metrics([[1, 0]], [[0.1]])
    with pytest.raises(DataError, match="not finite"):
        mean_metrics([[1, 0]], [[float("nan"), 0.1]])
