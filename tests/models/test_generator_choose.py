"""Choosing among fixed options: LocalGenerator scores each option's likelihood (checked against a plain
forward pass on the tiny random Llama); OpenAIChatGenerator sends the server's guided-decoding parameters
(vLLM guided_choice, llama.cpp GBNF grammar) or, without them, matches a free reply and says so."""
from __future__ import annotations

import pytest

from flagstone.models.generator import (
    LocalGenerator,
    gbnf_choice,
    match_option,
)
from tests.models.test_generator import Reply, api, client, completion  # noqa: F401 -- api is a fixture

QUESTION = [{"role": "user", "content": "Search or answer?"}]


@pytest.fixture(scope="module")
def gen(tiny_causal_lm_dir):
    return LocalGenerator(str(tiny_causal_lm_dir))


def reference_logprob(gen: LocalGenerator, messages, option: str) -> float:
    """log p(option | prompt) from one forward pass over prompt + option, without a cache."""
    import torch

    ids = gen.prompt_ids(messages)
    tokens = gen.tokenizer(option, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = gen.model(input_ids=torch.tensor([ids + tokens])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[len(ids) - 1 + i, t] for i, t in enumerate(tokens)))


def test_local_choose_scores_equal_a_full_forward_pass_and_the_best_wins(gen):
    options = [" search the collection", " answer", " value value"]
    choice = gen.choose(QUESTION, options)
    assert choice.source == "scored" and choice.raw == ""
    for option in options:
        assert choice.scores[option] == pytest.approx(reference_logprob(gen, QUESTION, option), abs=1e-3)
    assert choice.option == max(options, key=lambda o: choice.scores[o])
    # the cache is cut back to the prompt after each option: scoring in another order gives the same numbers
    again = gen.choose(QUESTION, list(reversed(options)))
    assert again.scores == pytest.approx(choice.scores, abs=1e-4)
    assert choice.prompt_tokens == len(gen.prompt_ids(QUESTION))


def test_local_choose_rejects_bad_options(gen):
    for bad in (["only"], "ab", ["a", "a"], ["a", " "]):
        with pytest.raises(ValueError):
            gen.choose(QUESTION, bad)


def test_match_option():
    options = ["NOTE", "SKIP", "SEARCH", "ANSWER"]
    assert match_option("**Note**: the bridge", options) == "NOTE"
    assert match_option(" search - mayor", options) == "SEARCH"
    assert match_option("The bridge is old.", options) is None
    assert match_option("", options) is None
    assert match_option("search", [" search", " answer"]) == " search"


def test_gbnf_choice_quotes_each_option():
    assert gbnf_choice(["search", 'say "hi"']) == 'root ::= "search" | "say \\"hi\\""'


def test_openai_choose_sends_vllm_guided_choice(api):  # noqa: F811
    api.answer(Reply(body=completion("answer", usage={"prompt_tokens": 9, "completion_tokens": 1})))
    choice = client(api, guided="vllm").choose(QUESTION, [" search", " answer"])
    assert (choice.option, choice.source, choice.prompt_tokens) == (" answer", "guided", 9)
    body = api.requests[0]["body"]
    assert body["guided_choice"] == ["search", "answer"] and "grammar" not in body
    assert body["temperature"] == 0.0 and body["messages"] == QUESTION


def test_openai_choose_sends_a_llama_cpp_grammar(api):  # noqa: F811
    api.answer(Reply(body=completion("search")))
    choice = client(api, guided="llama.cpp").choose(QUESTION, ["search", "answer"])
    assert (choice.option, choice.source) == ("search", "guided")
    body = api.requests[0]["body"]
    assert body["grammar"] == 'root ::= "search" | "answer"' and "guided_choice" not in body


def test_openai_guided_reply_outside_the_options_is_unparsed(api):  # noqa: F811
    api.answer(Reply(body=completion("I think search")))  # a server that ignored the grammar
    choice = client(api, guided="llama.cpp").choose(QUESTION, ["search", "answer"])
    assert choice.option is None and choice.raw == "I think search"


def test_openai_without_guidance_matches_a_free_reply_and_says_so(api):  # noqa: F811
    api.answer(Reply(body=completion("Search: the mayor")), Reply(body=completion("Let me think")))
    gen = client(api)
    first = gen.choose(QUESTION, ["search", "answer"])
    assert (first.option, first.source) == ("search", "free_text")
    assert "guided_choice" not in api.requests[0]["body"] and "grammar" not in api.requests[0]["body"]
    second = gen.choose(QUESTION, ["search", "answer"])
    assert second.option is None and second.source == "free_text"


def test_openai_guided_must_be_known():
    with pytest.raises(ValueError, match="guided must be one of"):
        client_kwargs = {"guided": "outlines"}
        from flagstone.models.generator import OpenAIChatGenerator

        OpenAIChatGenerator("m", **client_kwargs)


def test_write_masks_only_the_first_token_to_word_starts(gen):
    import re

    import torch

    from flagstone.models.generator import first_token_mask

    mask = gen.word_start_mask()
    newline = gen.tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    word = gen.tokenizer("value", add_special_tokens=False)["input_ids"][0]
    assert not mask[newline] and mask[word] and not mask[gen.tokenizer.eos_token_id]
    processor = first_token_mask(3, mask)
    first = processor(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, len(mask)))
    assert torch.isinf(first[0, ~mask]).all() and (first[0, mask] == 0).all()
    later = processor(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, len(mask)))
    assert (later == 0).all()  # after the first token anything goes
    out = gen.write([*QUESTION, {"role": "assistant", "content": "Query:\n\n"}], max_new_tokens=4)
    assert re.match(r"^ ?\w", out.text)


def test_openai_write_sends_the_guided_regex_or_grammar(api):  # noqa: F811
    api.answer(Reply(body=completion("Velmora bridge")))
    assert client(api, guided="vllm").write(QUESTION, max_new_tokens=8, stop=["END"]).text == "Velmora bridge"
    assert client(api, guided="llama.cpp").write(QUESTION, max_new_tokens=8).text == "Velmora bridge"
    client(api).write(QUESTION, max_new_tokens=8)
    vllm, llama, plain = (r["body"] for r in api.requests)
    assert vllm["guided_regex"] == r"\w[^\n]*" and vllm["stop"] == ["END"] and vllm["temperature"] == 0.0
    assert llama["grammar"] == "root ::= [0-9A-Za-z] [^\\n]*"
    assert "guided_regex" not in plain and "grammar" not in plain


def test_reply_key_ignores_case_punctuation_and_spacing():
    from flagstone.models.generator import reply_key

    assert reply_key("  Velmora   bridge, opened?") == reply_key("velmora bridge opened") == "velmora bridge opened"
    assert reply_key("Velmora bridge opened 1932") != reply_key("Velmora bridge opened")
    assert reply_key("?!") == ""


@pytest.mark.parametrize("limit", [3, 12], ids=["ends_at_the_limit", "ends_at_a_stop"])
def test_write_cannot_end_on_an_avoided_reply(gen, limit):
    from flagstone.models.generator import reply_key

    prompt = [*QUESTION, {"role": "assistant", "content": "Query:"}]
    first = gen.write(prompt, max_new_tokens=limit, stop=["\n"])
    assert reply_key(first.text)  # the tiny model writes words: there is something to avoid
    again = gen.write(prompt, max_new_tokens=limit, stop=["\n"], avoid=[first.text])
    assert reply_key(again.text) != reply_key(first.text)
    # the same words in another case and punctuation are the same reply
    shouted = gen.write(prompt, max_new_tokens=limit, stop=["\n"], avoid=[first.text.upper() + " ?!"])
    assert reply_key(shouted.text) != reply_key(first.text)
    # avoiding something else leaves the greedy reply as it was
    assert gen.write(prompt, max_new_tokens=limit, stop=["\n"], avoid=["zzz unrelated"]).text == first.text


def test_word_content_mask_allows_no_ending_token(gen):
    from flagstone.models.generator import eos_token_ids

    mask = gen.word_content_mask(["<|end|>", "\n"])
    newline = gen.tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    word = gen.tokenizer("value", add_special_tokens=False)["input_ids"][0]
    assert mask[word] and not mask[newline]
    assert not any(mask[i] for i in eos_token_ids(gen.model, gen.tokenizer))
    texts = [gen.tokenizer.convert_tokens_to_string([t]) for t in gen.tokenizer.convert_ids_to_tokens(
        [i for i in range(len(gen.tokenizer)) if mask[i]])]
    assert texts and not any("<" in t or "\n" in t for t in texts)


def test_word_masks_match_each_token_decoded_alone(gen):
    import re

    size = gen.model.get_output_embeddings().out_features
    texts = gen.token_texts()
    assert len(texts) == size and texts is gen.token_texts()  # decoded once, cached
    for i in range(0, min(size, len(gen.tokenizer)), 7):
        assert texts[i] == gen.tokenizer.convert_tokens_to_string([gen.tokenizer.convert_ids_to_tokens(i)])
        assert bool(gen.word_start_mask()[i]) == (re.match(r"^ ?\w", texts[i]) is not None)
    content = gen.word_content_mask(["<|end|>"])
    assert content.shape == gen.word_start_mask().shape == (size,)
    assert all(not content[i] for i in range(size) if "<" in texts[i] or "\n" in texts[i] or not texts[i])
