"""rerank_hits and interpolate_with_first_stage: re-ordering a retriever's Hits with a reranker model."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.models.reranker import CrossEncoderReranker
from flagstone.models.scoring import normalize_scores
from flagstone.rerank import interpolate_with_first_stage, rerank_hits
from flagstone.retrieval.retriever import Hits
from tests.models.test_reranker import PASSAGES, QUERY


@pytest.fixture(scope="module")
def cross_encoder(tiny_cross_encoder_dir):
    return CrossEncoderReranker(tiny_cross_encoder_dir, batch_size=3)


def test_rerank_hits_reorders_each_query_and_keeps_first_stage(cross_encoder):
    texts = {f"d{i}": p for i, p in enumerate(PASSAGES)}
    hits = Hits(mode="dense", ids=[["d0", "d1", "d2", "d3"], ["d3", "d2"]],
                scores=np.array([[4, 3, 2, 1], [2, 1, -np.inf, -np.inf]], dtype=np.float32))
    out = rerank_hits(cross_encoder, [QUERY, "dictionary keys"], hits, texts, depth=3)
    assert out.mode == "dense+rerank"
    assert sorted(out.ids[0]) == ["d0", "d1", "d2"] and sorted(out.ids[1]) == ["d2", "d3"]
    for qi, query in enumerate([QUERY, "dictionary keys"]):
        expected = cross_encoder.score_pairs([(query, texts[d]) for d in out.ids[qi]])
        np.testing.assert_allclose(out.scores[qi, : len(expected)], expected, atol=1e-5)
        assert np.all(np.diff(out.scores[qi, : len(expected)]) <= 0)
    first = {d: s for d, s in zip(hits.ids[0], hits.scores[0])}
    assert [first[d] for d in out.ids[0]] == list(out.signals["first_stage"][0])
    with pytest.raises(KeyError, match="d9"):
        rerank_hits(cross_encoder, [QUERY], Hits("dense", [["d9"]], np.ones((1, 1), np.float32)), texts)


def test_rerank_hits_interpolates_with_the_first_stage(cross_encoder):
    texts = {f"d{i}": p for i, p in enumerate(PASSAGES)}
    first = np.array([[4, 3, 2, 1]], dtype=np.float32)
    hits = Hits(mode="bm25", ids=[["d0", "d1", "d2", "d3"]], scores=first)
    out = rerank_hits(cross_encoder, [QUERY], hits, texts, first_stage_weight=0.3)
    ce = cross_encoder.score_pairs([(QUERY, p) for p in PASSAGES])
    expected = 0.7 * normalize_scores(ce, "minmax") + 0.3 * normalize_scores(first[0], "minmax")
    got = dict(zip(out.ids[0], out.scores[0]))
    np.testing.assert_allclose([got[f"d{i}"] for i in range(4)], expected, atol=1e-5)
    only_first = rerank_hits(cross_encoder, [QUERY], hits, texts, first_stage_weight=1.0)
    assert only_first.ids[0] == ["d0", "d1", "d2", "d3"]
    with pytest.raises(ValueError, match="between 0 and 1"):
        rerank_hits(cross_encoder, [QUERY], hits, texts, first_stage_weight=1.5)


def test_interpolating_again_equals_reranking_with_that_weight(cross_encoder):
    texts = {f"d{i}": p for i, p in enumerate(PASSAGES)}
    hits = Hits(mode="bm25", ids=[["d0", "d1", "d2", "d3"]], scores=np.array([[4, 3, 2, 1]], dtype=np.float32))
    direct = rerank_hits(cross_encoder, [QUERY], hits, texts, first_stage_weight=0.6)
    again = interpolate_with_first_stage(rerank_hits(cross_encoder, [QUERY], hits, texts), 0.6)
    assert again.ids == direct.ids
    np.testing.assert_allclose(again.scores, direct.scores, atol=1e-6)
