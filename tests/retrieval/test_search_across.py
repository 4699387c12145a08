"""search_across: a hybrid over signals held by different retrievers ranks exactly as one retriever holding
them all, and refuses retrievers it cannot combine."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import FlagstoneError
from flagstone.retrieval.retriever import HybridConfig, Retriever, candidate_pool, search_across

DOCS = {f"d{i}": text for i, text in enumerate([
    "zinc lozenges shorten colds", "neutron stars are dense", "vitamin c and the common cold",
    "black holes bend light", "colds spread in winter", "stars form in nebulae", "zinc is a metal",
    "light travels fast"])}
QUERIES = ["zinc and colds", "how do stars form", "light"]


def test_split_retrievers_rank_as_one(tiny_m3):
    ids, texts = list(DOCS), list(DOCS.values())
    whole = Retriever(tiny_m3).fit(ids, texts)
    first = Retriever(tiny_m3, signals=["dense", "bm25"]).fit(ids, texts)
    second = Retriever(tiny_m3, signals=["sparse", "colbert"]).fit(ids, texts)
    weights = {"dense": 0.3, "bm25": 0.2, "sparse": 0.1, "colbert": 0.4}
    config = HybridConfig(weights=weights, candidates=3)
    expected = whole.search(QUERIES, mode="hybrid", k=5, hybrid=config)
    got = search_across([first, second], QUERIES, weights=weights, k=5, hybrid=HybridConfig(candidates=3))
    assert got.ids == expected.ids
    np.testing.assert_array_equal(got.scores, expected.scores)
    for signal in weights:
        np.testing.assert_array_equal(got.signals[signal], expected.signals[signal])


def test_refuses_what_it_cannot_combine(tiny_m3):
    ids, texts = list(DOCS), list(DOCS.values())
    first = Retriever(tiny_m3, signals=["dense", "bm25"]).fit(ids, texts)
    both = Retriever(tiny_m3, signals=["dense", "colbert"]).fit(ids, texts)
    with pytest.raises(FlagstoneError, match="exactly one"):
        search_across([first, both], QUERIES, weights={"dense": 1.0, "colbert": 1.0})
    reordered = Retriever(tiny_m3, signals=["colbert"]).fit(ids[::-1], texts[::-1])
    with pytest.raises(FlagstoneError, match="same order"):
        search_across([first, reordered], QUERIES, weights={"dense": 1.0, "colbert": 1.0})


@pytest.mark.parametrize("weights", [{"dense": 0.3, "bm25": 0.2, "sparse": 0.1, "colbert": 0.4},
                                     {"dense": 1.0, "bm25": 0.0, "sparse": 0.0, "colbert": 0.0},
                                     {"dense": 0.0, "bm25": 0.5, "sparse": 0.5, "colbert": 0.0},
                                     {"colbert": 0.7, "sparse": 0.3}])
def test_a_pool_fuses_as_the_search_does(tiny_m3, weights):
    # a weighting sweep fuses one pool; each point must be the hits of searching with that weighting
    ids, texts = list(DOCS), list(DOCS.values())
    first = Retriever(tiny_m3, signals=["dense", "bm25"]).fit(ids, texts)
    second = Retriever(tiny_m3, signals=["sparse", "colbert"]).fit(ids, texts)
    config = HybridConfig(candidates=2)
    pool = candidate_pool([first, second], QUERIES, signals=["dense", "bm25", "sparse", "colbert"], k=4,
                          hybrid=config)
    expected = search_across([first, second], QUERIES, weights=weights, k=4, hybrid=config)
    got = pool.fuse(weights)
    assert got.ids == expected.ids
    np.testing.assert_array_equal(got.scores, expected.scores)
    assert set(got.signals) == {s for s, w in weights.items() if w}
    for signal in got.signals:
        np.testing.assert_array_equal(got.signals[signal], expected.signals[signal])
    shorter = pool.fuse(weights, k=2)  # the head of the same ranking (the search's k=2 would propose fewer)
    assert shorter.ids == [row[:2] for row in got.ids]
    np.testing.assert_array_equal(shorter.scores, got.scores[:, :2])


def test_a_pool_refuses_what_it_did_not_gather(tiny_m3):
    ids, texts = list(DOCS), list(DOCS.values())
    first = Retriever(tiny_m3, signals=["dense", "bm25"]).fit(ids, texts)
    pool = candidate_pool([first], QUERIES, signals=["dense"], k=3)
    with pytest.raises(ValueError, match="no proposals of"):
        pool.fuse({"dense": 0.5, "bm25": 0.5})
    with pytest.raises(ValueError, match="pool's k"):
        pool.fuse({"dense": 1.0}, k=4)
    with pytest.raises(ValueError, match="signals must be"):
        candidate_pool([first], QUERIES, signals=["title"])
