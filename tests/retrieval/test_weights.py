"""Hybrid weights are checked where they are given: a clear ValueError, never a numpy error at search time."""
from __future__ import annotations

import pytest

from flagstone.retrieval.fusion import SIGNALS, check_weights
from flagstone.retrieval.retriever import MODES, HybridConfig


@pytest.mark.parametrize("weights, message", [
    ({"dense": 0.0, "bm25": 0.0}, "all zero"),
    ({}, "all zero"),
    ({"dense": -1.0, "bm25": 1.0}, "not negative, got dense=-1.0"),
    ({"dense": float("nan")}, "finite"),
    ({"dnese": 1.0}, "unknown signals in weights: dnese"),
])
def test_bad_weights_are_refused_when_the_config_is_made(weights, message):
    with pytest.raises(ValueError, match=message):
        HybridConfig(weights=weights)
    with pytest.raises(ValueError, match=message):
        check_weights(weights)


def test_good_weights_pass():
    check_weights({"dense": 0.0, "bm25": 1.0})  # a zero weight alone only drops that signal
    assert HybridConfig(weights={"dense": 0.3, "bm25": 0.7}).weights == {"dense": 0.3, "bm25": 0.7}
    assert MODES == SIGNALS + ("hybrid",)
