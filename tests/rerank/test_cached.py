"""CachedReranker: pair scores read from disk, only unseen pairs scored, keys that change with the model."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.models.cache import EmbeddingCache
from flagstone.models.reranker import CrossEncoderReranker
from flagstone.rerank import CachedReranker, rerank_hits
from flagstone.retrieval.retriever import Hits
from tests.models.test_reranker import PASSAGES, QUERY


class CountingReranker:
    """Delegates to a real cross-encoder and records every pair it is asked to score."""

    def __init__(self, inner: CrossEncoderReranker) -> None:
        self.inner = inner
        self.scored: list[tuple[str, str]] = []

    def cache_key(self) -> str:
        return self.inner.cache_key()

    def score_pairs(self, pairs):
        self.scored += list(pairs)
        return self.inner.score_pairs(pairs)


@pytest.fixture(scope="module")
def cross_encoder(tiny_cross_encoder_dir):
    return CrossEncoderReranker(tiny_cross_encoder_dir, batch_size=3)


def test_scores_only_unseen_pairs_and_matches_the_model(cross_encoder, tmp_path):
    pairs = [(QUERY, p) for p in PASSAGES]
    counting = CountingReranker(cross_encoder)
    cached = CachedReranker(counting, EmbeddingCache(tmp_path))
    first = cached.score_pairs(pairs[:2])
    np.testing.assert_allclose(first, cross_encoder.score_pairs(pairs[:2]), atol=1e-6)
    both = cached.score_pairs(pairs)
    assert counting.scored == pairs[:2] + pairs[2:]  # the first two came from the cache
    assert cached.pairs_scored == len(pairs) and cached.seconds_scoring > 0
    np.testing.assert_allclose(both, cross_encoder.score_pairs(pairs), atol=1e-6)
    assert both.dtype == np.float32 and both.shape == (len(pairs),)
    # a new cache object on the same folder (a resumed run) scores nothing
    again = CountingReranker(cross_encoder)
    np.testing.assert_array_equal(CachedReranker(again, EmbeddingCache(tmp_path)).score_pairs(pairs[::-1]), both[::-1])
    assert again.scored == []
    # the pair, not its parts, is the key: swapping query and passage is a different pair
    swapped = [(PASSAGES[0], QUERY)]
    CachedReranker(again, EmbeddingCache(tmp_path)).score_pairs(swapped)
    assert again.scored == swapped
    assert cached.score_pairs([]).shape == (0,)


def test_key_changes_with_what_changes_scores(tiny_cross_encoder_dir, cross_encoder):
    same = CrossEncoderReranker(tiny_cross_encoder_dir, batch_size=7)  # batch size does not change a score
    assert same.cache_key() == cross_encoder.cache_key()
    for other in (CrossEncoderReranker(tiny_cross_encoder_dir, max_length=16),
                  CrossEncoderReranker(tiny_cross_encoder_dir, normalize=True),
                  CrossEncoderReranker(tiny_cross_encoder_dir, dtype="bfloat16")):
        assert other.cache_key() != cross_encoder.cache_key()


def test_works_under_rerank_hits_and_rejects_what_it_cannot_key(cross_encoder, tmp_path):
    texts = {f"d{i}": p for i, p in enumerate(PASSAGES)}
    hits = Hits(mode="dense", ids=[["d0", "d1", "d2"]], scores=np.array([[3, 2, 1]], dtype=np.float32))
    plain = rerank_hits(cross_encoder, [QUERY], hits, texts)
    cached = rerank_hits(CachedReranker(cross_encoder, EmbeddingCache(tmp_path)), [QUERY], hits, texts)
    assert cached.ids == plain.ids
    np.testing.assert_allclose(cached.scores, plain.scores, atol=1e-6)

    class NoKey:
        def score_pairs(self, pairs):
            return np.zeros(len(pairs), np.float32)

    with pytest.raises(TypeError, match="cache_key"):
        CachedReranker(NoKey(), EmbeddingCache(tmp_path))
    with pytest.raises(TypeError, match="EmbeddingCache"):
        CachedReranker(cross_encoder, str(tmp_path))


def test_since_a_mark_counts_what_was_asked_scored_and_cached(cross_encoder, tmp_path):
    pairs = [(QUERY, p) for p in PASSAGES]
    cached = CachedReranker(cross_encoder, EmbeddingCache(tmp_path))
    cached.score_pairs(pairs[:1])
    mark = cached.mark()
    cached.score_pairs(pairs)  # one pair from the cache, the rest scored
    cost = cached.since(mark)
    assert (cost.pairs, cost.pairs_scored, cost.from_cache) == (len(pairs), len(pairs) - 1, 1)
    assert 0 < cost.seconds_scoring <= cached.seconds_scoring
    # the time of a freshly scored pair stands for every pair asked for, over 2 queries
    assert cost.ms_per_query(2) == pytest.approx(1000 * cost.seconds_scoring / (len(pairs) - 1) * len(pairs) / 2)
    assert cost.to_dict()["from_cache"] == 1
    mark = cached.mark()
    cached.score_pairs(pairs)
    assert cached.since(mark).pairs_scored == 0 and cached.since(mark).ms_per_query(2) is None  # nothing timed
