"""LLMReranker's pairwise and listwise modes: aggregation by wins, order bias cancelled, strict listwise parsing
with unparsed replies counted, the sliding window; the return type stays one float per pair."""
from __future__ import annotations

import numpy as np
import pytest

from flagstone.models.reranker import ListwiseParseError, LLMReranker, aggregate_pairwise, rerank

QUERY = "how are streams of bytes decoded"
PASSAGES = ["decode a stream of bytes into text", "the weather is nice", "bytes and streams",
            "a recipe for bread", "unicode decoding of byte streams"]


def test_aggregate_pairwise_counts_wins_and_halves_ties():
    pairs = [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_array_equal(aggregate_pairwise(3, pairs, np.array([1.0, -2.0, 0.0])), [1.0, 0.5, 1.5])
    with pytest.raises(ValueError):
        aggregate_pairwise(3, pairs, np.array([1.0]))


def test_pairwise_mode_scores_wins_per_query(tiny_causal_lm_dir):
    reranker = LLMReranker(tiny_causal_lm_dir, mode="pairwise", batch_size=4)
    pairs = [(QUERY, p) for p in PASSAGES] + [("another query", p) for p in PASSAGES[:3]]
    scores = reranker.score_pairs(pairs)
    assert scores.dtype == np.float32 and scores.shape == (8,)
    assert scores[:5].sum() == pytest.approx(5 * 4 / 2)  # every comparison hands out one win
    assert scores[5:].sum() == pytest.approx(3)
    out = rerank(reranker, QUERY, PASSAGES)
    assert sorted(out.order.tolist()) == list(range(5))


def test_both_orders_cancel_a_constant_preference_for_a(tiny_causal_lm_dir, monkeypatch):
    reranker = LLMReranker(tiny_causal_lm_dir, mode="pairwise")
    strength = {p: i for i, p in enumerate(PASSAGES)}  # the true order: the later passage is better
    shown = []

    def fake(prompts, first, second):
        out = []
        for ids in prompts:
            text = reranker.tokenizer.decode(ids)
            a = next(p for p in PASSAGES if f"Passage A: {p}" in text)
            b = next(p for p in PASSAGES if f"Passage B: {p}" in text)
            shown.append((a, b))
            out.append(5.0 + strength[a] - strength[b])  # a bias of +5 for "A" swamps the real difference
        return np.array(out, np.float32)

    monkeypatch.setattr(reranker, "_next_token_logodds", fake)
    np.testing.assert_array_equal(reranker.pairwise_wins(QUERY, PASSAGES), [0, 1, 2, 3, 4])
    assert len(shown) == 20
    reranker.both_orders = False  # one order: the bias wins every comparison for the passage shown first
    np.testing.assert_array_equal(reranker.pairwise_wins(QUERY, PASSAGES), [4, 3, 2, 1, 0])


def _scripted(reranker, replies):
    """Make the reranker's model 'generate' the given replies, one per call."""
    import torch

    calls = iter(replies)

    def generate(input_ids, **_):
        reply = reranker.tokenizer(next(calls), add_special_tokens=False)["input_ids"]
        return torch.cat([input_ids, torch.tensor([reply])], dim=1)

    reranker.model.generate = generate


def test_listwise_reorders_by_a_parsed_reply(tiny_causal_lm_dir):
    reranker = LLMReranker(tiny_causal_lm_dir, mode="listwise", window=5, step=2)
    _scripted(reranker, ["[5] > [3] > [1] > [2] > [4]"])
    scores = reranker.score_pairs([(QUERY, p) for p in PASSAGES])
    assert np.argsort(-scores, kind="stable").tolist() == [4, 2, 0, 1, 3]
    assert reranker.listwise_unparsed == 0 and len(reranker.listwise_log) == 1


def test_unparsed_listwise_replies_are_counted_never_mapped(tiny_causal_lm_dir):
    strict = LLMReranker(tiny_causal_lm_dir, mode="listwise")
    _scripted(strict, ["[5] > [3] and the rest"])
    with pytest.raises(ListwiseParseError, match="could not be parsed"):
        strict.score_pairs([(QUERY, p) for p in PASSAGES])
    assert strict.listwise_unparsed == 1 and strict.listwise_log[0].reply.startswith("[5] > [3]")

    keep = LLMReranker(tiny_causal_lm_dir, mode="listwise", on_unparsed="keep")
    _scripted(keep, ["I think passage 5"])
    scores = keep.score_pairs([(QUERY, p) for p in PASSAGES])
    assert np.argsort(-scores, kind="stable").tolist() == [0, 1, 2, 3, 4]  # the order it came in
    assert keep.listwise_unparsed == 1 and not keep.listwise_log[0].parsed


def test_listwise_slides_a_window_up_from_the_bottom(tiny_causal_lm_dir):
    reranker = LLMReranker(tiny_causal_lm_dir, mode="listwise", window=3, step=2)
    # 5 passages, window 3, step 2: windows at 2-4, then 0-2; each reply puts its last passage first
    _scripted(reranker, ["[3] > [1] > [2]", "[3] > [1] > [2]"])
    scores = reranker.score_pairs([(QUERY, p) for p in PASSAGES])
    # [0,1,2,3,4] -> window 2..4 gives [0,1,4,2,3] -> window 0..2 gives [4,0,1,2,3]
    assert np.argsort(-scores, kind="stable").tolist() == [4, 0, 1, 2, 3]
    assert [r.n_passages for r in reranker.listwise_log] == [3, 3]


def test_mode_arguments_are_checked(tiny_causal_lm_dir):
    with pytest.raises(ValueError, match="mode"):
        LLMReranker(tiny_causal_lm_dir, mode="groupwise")
    with pytest.raises(ValueError, match="few-shot"):
        LLMReranker(tiny_causal_lm_dir, mode="pairwise", template="better-shots")
    with pytest.raises(ValueError, match="window"):
        LLMReranker(tiny_causal_lm_dir, mode="listwise", window=3, step=3)
    with pytest.raises(ValueError, match="on_unparsed"):
        LLMReranker(tiny_causal_lm_dir, mode="listwise", on_unparsed="guess")
    pointwise = LLMReranker(tiny_causal_lm_dir, template="useful")
    assert pointwise.prompt.startswith("Would this document help")


def test_permutation_constraint_only_allows_full_rankings(tiny_causal_lm_dir):
    """A random walk through the allowed tokens always ends in a ranking of 1..n (n >= 10 checks that [1]
    and [10] share a prefix without one blocking the other)."""
    import random

    from transformers import AutoTokenizer

    from flagstone.models.prompts import parse_permutation
    from flagstone.models.reranker import PermutationConstraint

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    eos = {tokenizer.eos_token_id}
    rng = random.Random(0)
    for n in (1, 2, 5, 10, 12):
        constraint = PermutationConstraint(tokenizer, n, 0, eos)
        for _ in range(20):
            reply: list[int] = []
            while not (reply and reply[-1] in eos):
                allowed = constraint.allowed(reply)
                assert allowed, reply
                reply.append(rng.choice(allowed))
            assert len(reply) <= constraint.max_tokens
            assert parse_permutation(tokenizer.decode(reply[:-1]), n) is not None
    assert PermutationConstraint(tokenizer, 3, 0, eos).allowed(tokenizer("hello", add_special_tokens=False)
                                                              ["input_ids"]) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constrained_listwise_replies_always_parse(tmp_path, seed):
    """A randomly initialised model writes noise when free; constrained, every window's reply is a ranking."""
    from tests.helpers import build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path / "lm", chat_template=True, seed=seed, context=512)
    passages = PASSAGES + [f"passage {i} on bytes and text" for i in range(8)]  # 13: windows of up to 10
    reranker = LLMReranker(folder, mode="listwise", listwise_decoding="constrained", window=10, step=3,
                           max_length=400)
    scores = reranker.score_pairs([(QUERY, p) for p in passages])
    assert sorted(scores.tolist()) == list(range(1, len(passages) + 1))  # a full order, each passage once
    assert reranker.listwise_unparsed == 0 and len(reranker.listwise_log) == 2  # windows at 3-12, 0-9
    for reply in reranker.listwise_log:
        assert reply.parsed and reply.reply.count("[") == reply.n_passages
    short = LLMReranker(folder, mode="listwise", listwise_decoding="constrained", max_length=400)
    short.score_pairs([(QUERY, p) for p in PASSAGES[:2]])
    assert short.listwise_log[0].parsed and short.listwise_log[0].reply in ("[1] > [2]", "[2] > [1]")


def test_a_constrained_reply_that_does_not_parse_is_still_counted(tiny_causal_lm_dir):
    keep = LLMReranker(tiny_causal_lm_dir, mode="listwise", listwise_decoding="constrained", on_unparsed="keep")
    _scripted(keep, ["[5] > [3]"])  # a model that ignored the constraint
    scores = keep.score_pairs([(QUERY, p) for p in PASSAGES])
    assert np.argsort(-scores, kind="stable").tolist() == [0, 1, 2, 3, 4]
    assert keep.listwise_unparsed == 1 and keep.listwise_decoding == "constrained"
    assert LLMReranker(tiny_causal_lm_dir, mode="listwise").listwise_decoding == "free"  # the default
    with pytest.raises(ValueError, match="listwise_decoding"):
        LLMReranker(tiny_causal_lm_dir, mode="listwise", listwise_decoding="grammar")
