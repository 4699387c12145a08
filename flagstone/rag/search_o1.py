"""Search-o1: the model searches in the middle of its reasoning.

The reasoning runs as a sequence of decision points. At each one the next action, ``search`` or ``answer``,
is chosen, never guessed from free text: the generator scores both options (a local model: their
likelihood after the reasoning so far; a server: guided decoding, or a free reply matched to an option,
marked ``free_text`` in the trace). On ``search`` the pipeline writes ``BEGIN_SEARCH`` itself and the model
writes the query up to ``END_SEARCH`` (free text inside forced tags); the retriever answers, a
Reason-in-Documents call condenses the documents against the reasoning so far, and the condensed text goes
back between ``BEGIN_RESULT`` and ``END_RESULT``; the model then reasons on it and the next decision point
comes. On ``answer`` (or when the search budget or the turns run out, recorded as a "policy" action) the
final answer is written as ``\\boxed{...}``.

Policy for the first decision (``first_search``): "forced" (default) searches at the first decision point
whenever the search budget allows, recorded as a "policy" action: a model that has read nothing yet has
nothing to answer from, and small models score "answer" too high there; "scored" lets the model choose it
too. Every later decision is the model's. ``first_query``: "model" (default) lets the model write the
first query like every other; "question" searches the question itself first (a "policy" argument).

Small models, greedy, tend to write the same query again after reading its results. With
``avoid_searched`` (default) a local query writer cannot end a query on one already searched (same words,
case and punctuation aside; see :meth:`~flagstone.models.generator.LocalGenerator.write`); a server cannot,
which the trace notes. A query the model leaves empty is recorded as unparsed and not searched; a repeated
query that still comes is not searched again (the model is reminded) but counts against ``max_searches``,
so a model stuck on one query cannot loop until the turn limit. With ``new_chunks_only`` (default) each
search returns the top ``k`` chunks not yet read for this question, so a second search on the same topic
brings new text rather than the chunks the model has already condensed.

Left alone, a small model's choice to search again does not follow the evidence: on HotpotQA its log-odds
of searching were lower after a first search that missed a supporting fact than after one that found them.
With ``evidence_check`` (default) every scored decision after a search sees one more line, written by the
pipeline, not the model: the names of the question (its capitalised words and numbers after the first word)
that no document read so far mentions, when there are any. The model still makes the choice; the line is
recorded as the action's ``reason``.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from flagstone.models.generator import Generator, reply_key
from flagstone.rag.base import (
    Answer,
    ContextIndex,
    Recorder,
    check_question,
    clean_answer,
    fit_passages,
    format_passages,
    prompt_budget,
)
from flagstone.rag.chunking import Chunk
from flagstone.retrieval.lexical import ENGLISH_STOPWORDS, LexicalTokenizer

BEGIN_SEARCH, END_SEARCH = "<|begin_search_query|>", "<|end_search_query|>"
BEGIN_RESULT, END_RESULT = "<|begin_search_result|>", "<|end_search_result|>"

REASONING_SYSTEM = (
    "You answer questions by reasoning step by step, and you can search a document collection.\n"
    "At each 'Next step:' you choose search or answer. To search, you write your query as "
    f"{BEGIN_SEARCH}your query{END_SEARCH}; the findings appear as {BEGIN_RESULT}...{END_RESULT} and you "
    "continue reasoning. Search for one fact at a time; you may search up to {max_searches} times.\n"
    "When you know the answer, end with the answer itself, a few words at most, inside \\boxed{{}}."
)
NEXT_STEP = "\n\nNext step:"
ACTIONS = (" search", " answer")
DOCUMENTS_SYSTEM = "You read search results and pull out what matters for an ongoing line of reasoning."
DOCUMENTS_PROMPT = (
    "Reasoning so far:\n{history}\n\nSearch query: {query}\n\nSearch results:\n{documents}\n\n"
    "Write the facts from the search results that answer the search query or move the reasoning forward, "
    "in two or three sentences. If nothing helps, write: No helpful information found."
)
DUPLICATE_QUERY = "You already searched for this; use the findings above or search for something else."
FINAL_PREFIX = "\n\nTherefore, the final answer is \\boxed{"
NOT_MENTIONED = "\n\nThe documents found so far do not mention: {names}."


def question_names(question: str) -> list[str]:
    """The words of a question that name something: capitalised words and numbers after its first word
    (which is capitalised anyway), stop words aside; each once, in order."""
    words = re.findall(r"[^\W_][\w'-]*", question)
    names = [w for w in words[1:] if (w[0].isupper() or w[0].isdigit()) and w.lower() not in ENGLISH_STOPWORDS]
    return list(dict.fromkeys(names))


def unmentioned_names(question: str, read_terms: set[str], tokenizer: LexicalTokenizer) -> list[str]:
    """The question's names none of whose terms (lower-cased, stemmed) occur among ``read_terms``."""
    return [name for name in question_names(question)
            if (terms := tokenizer(name)) and not any(t in read_terms for t in terms)]


def history_for_documents(reasoning: str) -> str:
    """Reasoning shown to Reason-in-Documents: the first step, every step with a search, the last four."""
    steps = [s for s in reasoning.split("\n\n") if s.strip()]
    keep = {0} | set(range(max(0, len(steps) - 4), len(steps)))
    keep |= {i for i, s in enumerate(steps) if BEGIN_SEARCH in s}
    return "\n\n".join(steps[i] for i in sorted(keep)) or "(none yet)"


FIRST_SEARCH = ("forced", "scored")
FIRST_QUERY = ("model", "question")


@dataclass
class SearchO1:
    generator: Generator
    k: int = 5
    max_searches: int = 5
    max_turns: int = 8
    turn_tokens: int = 96
    query_tokens: int = 32
    document_tokens: int = 128
    max_new_tokens: int = 32
    first_search: str = "forced"
    first_query: str = "model"
    avoid_searched: bool = True
    new_chunks_only: bool = True
    evidence_check: bool = True
    # reasoning and Reason-in-Documents replies end once their last this many tokens already occurred in them
    # (local generators): a small model's loops add no reasoning, only seconds. 0: run to the token limits
    stop_on_repeat: int = 16
    name: str = "search_o1"

    def __post_init__(self) -> None:
        if self.first_search not in FIRST_SEARCH:
            raise ValueError(f"first_search must be one of {FIRST_SEARCH}, got {self.first_search!r}")
        if self.first_query not in FIRST_QUERY:
            raise ValueError(f"first_query must be one of {FIRST_QUERY}, got {self.first_query!r}")
        self._terms = LexicalTokenizer()  # the evidence check's matching: lower-cased, stemmed, as BM25's

    def _messages(self, question: str, reasoning: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": REASONING_SYSTEM.format(max_searches=self.max_searches)},
                    {"role": "user", "content": f"Question: {question}"}]
        if reasoning:
            messages.append({"role": "assistant", "content": reasoning})
        return messages

    def _reason_in_documents(self, query: str, reasoning: str, chunks: list[Chunk], recorder: Recorder) -> str:
        history = history_for_documents(reasoning)
        fixed = DOCUMENTS_PROMPT.format(history=history, query=query, documents="")
        budget = prompt_budget(self.generator, self.document_tokens, DOCUMENTS_SYSTEM, fixed)
        documents = format_passages(fit_passages(self.generator, chunks, budget))
        prompt = DOCUMENTS_PROMPT.format(history=history, query=query, documents=documents)
        out = recorder.generate("reason_in_documents", [{"role": "system", "content": DOCUMENTS_SYSTEM},
                                                        {"role": "user", "content": prompt}],
                                max_new_tokens=self.document_tokens, stop_on_repeat=recorder.repeat_span(self.stop_on_repeat))
        condensed = " ".join(out.text.split()) or "No helpful information found."
        recorder.trace.notes.append(f"condensed: {condensed}")
        return condensed

    def _search(self, query: str, reasoning: str, context: ContextIndex, recorder: Recorder,
                searched: list[str], read_terms: set[str]) -> str:
        key = reply_key(query)
        searched.append(key)  # a repeated query uses up the budget too: a model stuck on one query stops
        if key in searched[:-1]:
            recorder.trace.notes.append(f"duplicate query: {query}")
            return DUPLICATE_QUERY
        recorder.trace.queries.append(query)
        read = recorder.trace.retrieved if self.new_chunks_only else ()
        (chunks,) = recorder.retrieve("search", context, [query], self.k, exclude=read)
        if not chunks:
            recorder.trace.notes.append(f"every chunk already read; nothing new for: {query}")
            return "No new documents: every document has been read."
        for terms in self._terms.tokenize([c.text for c in chunks]):
            read_terms.update(terms)
        return self._reason_in_documents(query, reasoning, chunks, recorder)

    def _decide(self, question: str, reasoning: str, turn: int, searched: list[str], recorder: Recorder,
                read_terms: set[str]) -> str:
        options = [a.strip() for a in ACTIONS]
        if len(searched) >= self.max_searches:
            return recorder.policy("decide", "answer", options, "search limit reached").chosen
        if turn == 0 and self.first_search == "forced":
            return recorder.policy("decide", "search", options, "first decision searches (first_search='forced')"
                                   ).chosen
        names = unmentioned_names(question, read_terms, self._terms) if self.evidence_check and searched else []
        evidence = NOT_MENTIONED.format(names=", ".join(names)) if names else ""
        action = recorder.choose("decide", self._messages(question, reasoning.rstrip() + evidence + NEXT_STEP),
                                 ACTIONS)
        if names:
            action.reason = f"evidence check: not mentioned: {', '.join(names)}"
        return "unparsed" if action.chosen is None else action.chosen

    def ask(self, question: str, context: ContextIndex) -> Answer:
        question = check_question(question)
        start, recorder = time.perf_counter(), Recorder(self.generator)
        reasoning, searched = "", []  # every query issued, repeated ones included
        read_terms: set[str] = set()  # terms of every chunk read, for the evidence check
        for turn in range(self.max_turns):
            decision = self._decide(question, reasoning, turn, searched, recorder, read_terms)
            if decision == "answer":
                break
            if decision == "unparsed":  # recorded in the trace; nothing to act on, so reason on
                reasoning = self._reason(question, reasoning, recorder)
                continue
            action = recorder.trace.actions[-1]
            prefix = reasoning.rstrip() + ("\n\n" if reasoning.strip() else "") + BEGIN_SEARCH
            if not searched and self.first_query == "question":
                query, action.argument_source = question, "policy"
            else:
                out, action.argument_source = recorder.write(
                    "query", self._messages(question, prefix), max_new_tokens=self.query_tokens,
                    stop=[END_SEARCH, "\n"], avoid=searched if self.avoid_searched else ())
                query = " ".join(out.text.split())
                action.raw = out.text
            action.argument = query
            if not query:
                action.unparsed = True  # an empty query: recorded and counted, never replaced
                continue
            reasoning = f"{prefix}{query}{END_SEARCH}"
            result = self._search(query, reasoning, context, recorder, searched, read_terms)
            reasoning += f"\n\n{BEGIN_RESULT}{result}{END_RESULT}\n\n"
            reasoning = self._reason(question, reasoning, recorder)
        else:
            recorder.policy("decide", "answer", [a.strip() for a in ACTIONS], f"turn limit ({self.max_turns}) reached")
        answer = self._final_answer(question, reasoning, recorder)
        recorder.trace.notes.append(f"reasoning: {reasoning}")
        return Answer(question, answer, self.name, recorder.trace, time.perf_counter() - start)

    def _reason(self, question: str, reasoning: str, recorder: Recorder) -> str:
        """The model's reasoning up to its next decision point (it stops where it would search or answer)."""
        out = recorder.generate("reason", self._messages(question, reasoning), max_new_tokens=self.turn_tokens,
                                stop=[BEGIN_SEARCH, "\\boxed{", "Next step:"], stop_on_repeat=recorder.repeat_span(self.stop_on_repeat))
        return reasoning + out.text

    def _final_answer(self, question: str, reasoning: str, recorder: Recorder) -> str:
        """Ask for the boxed answer by continuing the reasoning with the start of one."""
        out = recorder.generate("final_answer", self._messages(question, reasoning.rstrip() + FINAL_PREFIX),
                                max_new_tokens=self.max_new_tokens, stop=["}"])
        return clean_answer(out.text)
