"""Pipelines report their steps to a listener (``with listening(...)``) and stream the text of the steps it
asks for; flagstone ask uses this for progress and for streaming the answer."""
from __future__ import annotations

import pytest

from flagstone.errors import FlagstoneError
from flagstone.rag import RAG, ContextIndex, MemoRAG, listening
from tests.rag.test_pipelines import DOCUMENTS, ScriptedGenerator


class StreamingScripted(ScriptedGenerator):
    """A scripted generator that also hands its reply to ``on_text`` in pieces, as LocalGenerator does."""

    def generate(self, messages, *, max_new_tokens=256, stop=(), temperature=0.0, on_text=None):
        out = super().generate(messages, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature)
        if on_text is not None:
            for word in out.text.split(" "):
                on_text(word + " ")
        return out


class Events:
    def __init__(self, stream=("answer",)):
        self.events, self.text, self.stream = [], [], stream

    def step_started(self, kind, name):
        self.events.append(("start", kind, name))

    def step_finished(self, step):
        self.events.append(("end", step.kind, step.name))

    def text_sink(self, name):
        return self.text.append if name in self.stream else None


@pytest.fixture(scope="module")
def context():
    return ContextIndex.build(DOCUMENTS, mode="bm25", chunk_tokens=64, overlap=0)


def test_steps_are_reported_in_order_and_only_the_asked_step_streams(context):
    gen = StreamingScripted(["Answer: 1932."])
    events = Events()
    with listening(events):
        answer = RAG(gen, k=2).ask("When did the Velmora bridge open?", context)
    assert answer.answer == "1932"
    assert events.events == [("start", "retrieve", "search"), ("end", "retrieve", "search"),
                             ("start", "generate", "answer"), ("end", "generate", "answer")]
    assert "".join(events.text).strip() == "Answer: 1932."


def test_memorag_reports_every_gist_and_streams_only_the_answer(context):
    gen = StreamingScripted(["gist one", "gist two", "bridge\nDraft answer: Brandt", "Ilse Brandt"])
    events = Events()
    with listening(events):
        MemoRAG(gen, k=2, per_query_k=1, piece_tokens=40, memory="gists").ask("Who ordered the bridge?", context)
    started = [name for kind, _, name in events.events if kind == "start"]
    assert started == ["gist", "gist", "clues", "search", "answer"]
    assert "".join(events.text).strip() == "Ilse Brandt"


def test_no_listener_outside_the_block_and_a_generator_without_on_text_cannot_stream(context):
    events = Events()
    with listening(events):
        pass
    RAG(StreamingScripted(["1932"]), k=1).ask("When?", context)
    assert events.events == []  # the listener only hears the calls made inside its block
    with listening(Events()), pytest.raises(FlagstoneError, match="cannot stream its text"):
        RAG(ScriptedGenerator(["1932"]), k=1).ask("When?", context)
    with listening(Events(stream=())):  # no text asked for: any generator will do
        assert RAG(ScriptedGenerator(["1932"]), k=1).ask("When?", context).answer == "1932"

