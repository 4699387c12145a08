"""Plain RAG (retrieve top-k chunks, answer) and the two baselines every RAG number is read against:
no retrieval (the model's own knowledge) and full context (as much of the context as fits the window)."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from flagstone.models.generator import Generator
from flagstone.rag.base import (
    ANSWER_SYSTEM,
    Answer,
    ContextIndex,
    Recorder,
    answer_from_passages,
    check_question,
    fit_passages,
    prompt_budget,
    without_overlap,
)
from flagstone.rag.chunking import Chunk


@dataclass
class NoRetrieval:
    generator: Generator
    max_new_tokens: int = 32
    name: str = "no_retrieval"

    def ask(self, question: str, context: ContextIndex | None = None) -> Answer:
        question = check_question(question)
        start, recorder = time.perf_counter(), Recorder(self.generator)
        answer = answer_from_passages(recorder, question, [], max_new_tokens=self.max_new_tokens)
        return Answer(question, answer, self.name, recorder.trace, time.perf_counter() - start)


@dataclass
class FullContext:
    """Every chunk in reading order, cut at the end when the context is longer than the generator's window."""

    generator: Generator
    max_new_tokens: int = 32
    name: str = "full_context"

    def ask(self, question: str, context: ContextIndex) -> Answer:
        question = check_question(question)
        start, recorder = time.perf_counter(), Recorder(self.generator)
        budget = prompt_budget(self.generator, self.max_new_tokens, ANSWER_SYSTEM, question)
        kept = fit_passages(self.generator, without_overlap(context.chunks), budget)
        if len(kept) < len(context.chunks):
            recorder.trace.notes.append(f"context cut to {len(kept)} of {len(context.chunks)} chunks to fit")
        recorder.trace.add_retrieved([c.id for c in kept])
        answer = answer_from_passages(recorder, question, kept, max_new_tokens=self.max_new_tokens)
        return Answer(question, answer, self.name, recorder.trace, time.perf_counter() - start)


@dataclass
class RAG:
    """Retrieve the top ``k`` chunks for the question and answer from them in reading order.

    With ``token_budget`` (or a per-call ``token_budget``) the number of chunks follows a cost instead:
    chunks are taken in rank order while the whole call (instructions, question, passages and the answer's
    ``max_new_tokens``) stays within the budget, so plain RAG can be compared with an agent at the agent's
    cost. At least one chunk is read; the generator's window caps the budget.
    """

    generator: Generator
    k: int = 3
    max_new_tokens: int = 32
    token_budget: int | None = None
    name: str = "rag"

    def ask(self, question: str, context: ContextIndex, token_budget: int | None = None) -> Answer:
        question = check_question(question)
        budget = token_budget if token_budget is not None else self.token_budget
        if budget is not None and budget < 1:
            raise ValueError(f"token_budget must be at least 1, got {budget}")
        start, recorder = time.perf_counter(), Recorder(self.generator)
        recorder.trace.queries.append(question)
        if budget is None:
            (chunks,) = recorder.retrieve("search", context, [question], self.k)
        else:
            (ranked,) = recorder.retrieve("search", context, [question], len(context.chunks))
            chunks = self.passages_within(question, ranked, budget)
            recorder.trace.notes.append(f"token budget {budget}: read {len(chunks)} of {len(ranked)} chunks")
            recorder.trace.retrieved = [c.id for c in chunks]  # what the answer reads, not the whole ranking
        answer = answer_from_passages(recorder, question, chunks, max_new_tokens=self.max_new_tokens)
        return Answer(question, answer, self.name, recorder.trace, time.perf_counter() - start)

    def passages_within(self, question: str, ranked: Sequence[Chunk], token_budget: int) -> list[Chunk]:
        """The prefix of ``ranked`` that one answer call reads at ``token_budget`` tokens for the whole call
        (instructions, question, passages, answer), capped by the generator's window; at least one chunk."""
        fixed = sum(self.generator.count_tokens(t) for t in (ANSWER_SYSTEM, question)) + self.max_new_tokens + 24
        room = min(token_budget - fixed, prompt_budget(self.generator, self.max_new_tokens, ANSWER_SYSTEM, question))
        return fit_passages(self.generator, ranked, max(1, room)) or list(ranked[:1])
