"""Search-o1: the model searches in the middle of its reasoning.

The model writes a query between ``BEGIN_SEARCH`` and ``END_SEARCH``; generation stops at the end tag, the
retriever answers, a Reason-in-Documents call condenses the documents against the reasoning so far, and
the condensed text goes back between ``BEGIN_RESULT`` and ``END_RESULT`` before reasoning continues. The
final answer is written as ``\\boxed{...}``.

Small models often never write a search tag; then the pipeline searches the question itself, inserts the
condensed result and asks for the boxed answer (``fallback_search``). A reasoning that ends without a
boxed answer is asked for one explicitly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from flagstone.models.generator import Generator
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

BEGIN_SEARCH, END_SEARCH = "<|begin_search_query|>", "<|end_search_query|>"
BEGIN_RESULT, END_RESULT = "<|begin_search_result|>", "<|end_search_result|>"

REASONING_SYSTEM = (
    "You answer questions by reasoning step by step, and you can search a document collection.\n"
    f"To search, write {BEGIN_SEARCH}your query{END_SEARCH} and stop. The findings will appear as "
    f"{BEGIN_RESULT}...{END_RESULT}; then continue reasoning. Search for one fact at a time; you may search "
    "up to {max_searches} times.\nWhen you know the answer, end with the answer itself, a few words at most, "
    "inside \\boxed{{}}."
)
DOCUMENTS_SYSTEM = "You read search results and pull out what matters for an ongoing line of reasoning."
DOCUMENTS_PROMPT = (
    "Reasoning so far:\n{history}\n\nSearch query: {query}\n\nSearch results:\n{documents}\n\n"
    "Write the facts from the search results that answer the search query or move the reasoning forward, "
    "in two or three sentences. If nothing helps, write: No helpful information found."
)
LIMIT_REACHED = "The search limit is reached. Answer with what you have found."
DUPLICATE_QUERY = "You already searched for this; use the findings above or search for something else."
FINAL_PREFIX = "\n\nTherefore, the final answer is \\boxed{"


def last_query(text: str) -> str | None:
    """The query after the last begin-search tag, or None when the text has no open search."""
    at = text.rfind(BEGIN_SEARCH)
    if at == -1:
        return None
    query = text[at + len(BEGIN_SEARCH):]
    query = query.split(END_SEARCH)[0]
    return " ".join(query.split()) or None


def history_for_documents(reasoning: str) -> str:
    """Reasoning shown to Reason-in-Documents: the first step, every step with a search, the last four."""
    steps = [s for s in reasoning.split("\n\n") if s.strip()]
    keep = {0} | set(range(max(0, len(steps) - 4), len(steps)))
    keep |= {i for i, s in enumerate(steps) if BEGIN_SEARCH in s}
    return "\n\n".join(steps[i] for i in sorted(keep)) or "(none yet)"


@dataclass
class SearchO1:
    generator: Generator
    k: int = 5
    max_searches: int = 5
    max_turns: int = 8
    turn_tokens: int = 192
    document_tokens: int = 128
    max_new_tokens: int = 32
    fallback_search: bool = True
    name: str = "search_o1"

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
                                max_new_tokens=self.document_tokens)
        return " ".join(out.text.split()) or "No helpful information found."

    def _search(self, query: str, reasoning: str, context: ContextIndex, recorder: Recorder,
                searched: set[str]) -> str:
        key = query.lower()
        if key in searched:
            recorder.trace.notes.append(f"duplicate query: {query}")
            return DUPLICATE_QUERY
        if len(searched) >= self.max_searches:
            recorder.trace.notes.append(f"search limit reached, not searched: {query}")
            return LIMIT_REACHED
        searched.add(key)
        recorder.trace.queries.append(query)
        (chunks,) = recorder.retrieve("search", context, [query], self.k)
        return self._reason_in_documents(query, reasoning, chunks, recorder)

    def ask(self, question: str, context: ContextIndex) -> Answer:
        question = check_question(question)
        start, recorder = time.perf_counter(), Recorder(self.generator)
        reasoning, searched = "", set()
        for _turn in range(self.max_turns):
            out = recorder.generate("reason", self._messages(question, reasoning), max_new_tokens=self.turn_tokens,
                                    stop=[END_SEARCH])
            reasoning += out.text
            query = last_query(out.text) if out.stop == END_SEARCH else None
            if query is None:
                if out.stop == END_SEARCH:  # an empty query: close the tag and go on
                    reasoning += END_SEARCH
                if "\\boxed{" in out.text or out.finish_reason == "stop":
                    break
                continue  # cut by the token limit: let it go on
            reasoning += END_SEARCH
            result = self._search(query, reasoning, context, recorder, searched)
            reasoning += f"\n\n{BEGIN_RESULT}{result}{END_RESULT}\n\n"
        if not searched and self.fallback_search:
            recorder.trace.notes.append("no search tag written: searched the question itself")
            reasoning += f"\n\n{BEGIN_SEARCH}{question}{END_SEARCH}"
            result = self._search(question, reasoning, context, recorder, searched)
            reasoning += f"\n\n{BEGIN_RESULT}{result}{END_RESULT}\n\n"
            answer = self._final_answer(question, reasoning, recorder)
        else:
            boxed = clean_answer(reasoning) if "\\boxed{" in reasoning else ""
            answer = boxed or self._final_answer(question, reasoning, recorder)  # an empty box is no answer
        recorder.trace.notes.append(f"reasoning: {reasoning}")
        return Answer(question, answer, self.name, recorder.trace, time.perf_counter() - start)

    def _final_answer(self, question: str, reasoning: str, recorder: Recorder) -> str:
        """Ask for the boxed answer by continuing the reasoning with the start of one."""
        out = recorder.generate("final_answer", self._messages(question, reasoning.rstrip() + FINAL_PREFIX),
                                max_new_tokens=self.max_new_tokens, stop=["}"])
        return clean_answer(out.text)
