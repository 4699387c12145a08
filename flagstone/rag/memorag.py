"""MemoRAG (Lite): a global memory of the whole context guides retrieval.

1. memorize: the context is read in pieces of ``piece_tokens`` generator tokens; each piece becomes a short
   gist; the gists in order are the memory (saved and loaded as JSON beside the context);
2. recall: from the memory the generator writes clues (phrases likely to sit near the answer, or simpler
   sub-questions), one per line, and a draft answer;
3. retrieve: the question, each clue and the draft each retrieve; the lists are fused by reciprocal rank
   and the best ``k`` are the clue-retrieved passages (``question_weight`` > 1 trusts the question's own
   list more in that fusion; ``clean_clues`` cuts looping clues and drops echoes of the question: knobs for
   weak clue writers, off by default as in MemoRAG);
4. answer from the union of the clue-retrieved passages and the question's own top ``k`` (deduplicated,
   in reading order), as the reference MemoRAG does: the clues add evidence, they never push out what the
   question finds itself. So MemoRAG reads between ``k`` and ``2k`` chunks; compare it with plain RAG at
   its token budget.

A clue reply from which no clue and no draft can be parsed is recorded as an unparsed action (the question
alone then retrieves). The memory is built once per context and reused: ``Memory.save``/``Memory.load``
(``flagstone ask --memory DIR``) keep it beside the context, so later questions skip the gisting.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flagstone._io import atomic_write, require_file
from flagstone.errors import DataError
from flagstone.models.generator import Generator
from flagstone.rag.base import (
    Action,
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

GIST_SYSTEM = (
    "You condense text for a reader who will later answer questions about it. Write a few short sentences "
    "that keep the names, titles, dates, numbers and relations stated in the text."
)
CLUE_SYSTEM = "You have read a long text and kept notes on it. You help find the passages that answer a question."
CLUE_PROMPT = (
    "Notes on the text:\n{memory}\n\nQuestion: {question}\n\n"
    "Which passages of the full text should be looked up to answer the question? Write up to {max_clues} "
    "clues, one per line: an exact phrase or name likely to appear near the answer, or a simpler question "
    "that leads to it. Then write one line that starts with 'Draft answer:' and your best guess."
)
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|clue\s*\d*\s*:)\s*", re.IGNORECASE)
_DRAFT = re.compile(r"^\s*draft answer\s*:\s*", re.IGNORECASE)


@dataclass
class Memory:
    """The gists of the context's pieces, in reading order, and which chunks each piece covers."""

    gists: list[str]
    pieces: list[list[str]]  # chunk ids per piece
    generator: str
    settings: dict = field(default_factory=dict)

    def text(self) -> str:
        return "\n".join(f"- {g}" for g in self.gists if g)

    def save(self, folder: str | os.PathLike) -> None:
        with atomic_write(Path(folder) / "memory.json") as f:
            json.dump({"format": 1, "gists": self.gists, "pieces": self.pieces, "generator": self.generator,
                       "settings": self.settings}, f)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Memory:
        path = require_file(Path(folder) / "memory.json", "saved MemoRAG memory")
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            return cls([str(g) for g in saved["gists"]], [[str(c) for c in p] for p in saved["pieces"]],
                       str(saved["generator"]), dict(saved.get("settings") or {}))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path} is not a saved MemoRAG memory") from None


def parse_clues(text: str, *, max_clues: int = 5, min_words: int = 2) -> tuple[list[str], str]:
    """Clue lines (bullets and numbering stripped, duplicates and short lines dropped) and the draft answer."""
    clues, draft, seen = [], "", set()
    for line in text.splitlines():
        if _DRAFT.match(line):
            draft = draft or _DRAFT.sub("", line).strip()
            continue
        clue = _BULLET.sub("", line).strip().strip('"').strip()
        key = clue.lower()
        if len(clue.split()) < min_words or key in seen:
            continue
        seen.add(key)
        clues.append(clue)
    return clues[:max_clues], draft


def fuse_rankings(rankings: Sequence[Sequence[Chunk]], k: int, rrf_k: int = 60,
                  weights: Sequence[float] | None = None) -> list[Chunk]:
    """The ``k`` best chunks by (weighted) reciprocal-rank fusion of ranked lists (ties: first list first)."""
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    score: dict[str, float] = {}
    first_seen: dict[str, tuple[int, int]] = {}
    chunks: dict[str, Chunk] = {}
    for li, (ranking, weight) in enumerate(zip(rankings, weights)):
        for rank, chunk in enumerate(ranking, 1):
            score[chunk.id] = score.get(chunk.id, 0.0) + weight / (rrf_k + rank)
            first_seen.setdefault(chunk.id, (rank, li))
            chunks[chunk.id] = chunk
    best = sorted(score, key=lambda c: (-score[c], first_seen[c]))
    return [chunks[c] for c in best[:k]]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def clean_clue(clue: str, question: str, *, max_words: int = 24, max_overlap: float = 0.7) -> str:
    """A clue fit for searching, or "" when it adds nothing to the question.

    Small models loop ("Dred Scott Decision Dred Scott Decision ...") and echo the question; a looping clue is
    cut where its first word trigram comes back, then capped at ``max_words``; a clue whose words are mostly
    the question's (Jaccard >= ``max_overlap``) is dropped, since the question is searched anyway.
    """
    words = clue.split()
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - 2):
        gram = tuple(w.lower() for w in words[i:i + 3])
        if gram in seen:
            words = words[:i]
            break
        seen.add(gram)
    words = words[:max_words]
    mine, theirs = set(_words(" ".join(words))), set(_words(question))
    if not mine or len(mine & theirs) / len(mine | theirs) >= max_overlap:
        return ""
    return " ".join(words)


@dataclass
class MemoRAG:
    generator: Generator
    k: int = 3
    per_query_k: int = 3
    piece_tokens: int = 1024
    gist_tokens: int = 96
    clue_tokens: int = 128
    max_clues: int = 5
    min_clue_words: int = 2
    max_new_tokens: int = 32
    # the question's own ranking counts this many times in the fusion; clues are cleaned of loops and echoes
    question_weight: float = 1.0
    clean_clues: bool = False
    # a long-context memory model (e.g. flagstone.longctx.generator.BeaconGenerator): clues are written from
    # the whole context read through it, instead of from gists
    memory_generator: Generator | None = None
    name: str = "memorag"

    def memorize(self, context: ContextIndex, recorder: Recorder | None = None) -> Memory:
        """Gist the context piece by piece (each piece fits the generator's window); with a memory model the
        memory is the context itself, which that model reads whole."""
        recorder = recorder or Recorder(self.generator)
        if self.memory_generator is not None:
            chunks = without_overlap(context.chunks)
            return Memory([" ".join(c.text.split()) for c in chunks], [[c.id] for c in chunks],
                          self.memory_generator.name, {"memory": "context, read by the memory model"})
        budget = min(self.piece_tokens, prompt_budget(self.generator, self.gist_tokens, GIST_SYSTEM))
        gists, pieces = [], []
        remaining = without_overlap(context.chunks)
        while remaining:
            piece = fit_passages(self.generator, remaining, budget)
            remaining = remaining[len(piece):]  # a chunk longer than a piece is cut, never repeated
            text = "\n".join(c.text.strip() for c in piece)
            out = recorder.generate("gist", [{"role": "system", "content": GIST_SYSTEM},
                                             {"role": "user", "content": f"Text:\n{text}\n\nCondensed:"}],
                                    max_new_tokens=self.gist_tokens)
            gists.append(" ".join(out.text.split()))
            pieces.append([c.id for c in piece])
        return Memory(gists, pieces, self.generator.name,
                      {"piece_tokens": self.piece_tokens, "gist_tokens": self.gist_tokens})

    def recall(self, question: str, memory: Memory, recorder: Recorder) -> tuple[list[str], str]:
        prompt = CLUE_PROMPT.format(memory=memory.text(), question=question, max_clues=self.max_clues)
        writer = self.memory_generator or self.generator
        prompt_budget(writer, self.clue_tokens, CLUE_SYSTEM, prompt)  # raises when the memory cannot fit
        messages = [{"role": "system", "content": CLUE_SYSTEM}, {"role": "user", "content": prompt}]
        if self.memory_generator is not None:
            out = Recorder(self.memory_generator, recorder.trace).generate("clues", messages,
                                                                          max_new_tokens=self.clue_tokens)
        else:
            out = recorder.generate("clues", messages, max_new_tokens=self.clue_tokens)
        return parse_clues(out.text, max_clues=self.max_clues, min_words=self.min_clue_words)

    def retrieve(self, question: str, clues: Sequence[str], draft: str, context: ContextIndex,
                 recorder: Recorder) -> list[Chunk]:
        if self.clean_clues:
            clues, draft = [clean_clue(c, question) for c in clues], clean_clue(draft, question)
        queries = [question]
        for clue in [*clues, draft]:
            if len(clue.split()) >= self.min_clue_words and clue.lower() not in map(str.lower, queries):
                queries.append(clue)
        recorder.trace.queries += queries
        rankings = recorder.retrieve("search", context, queries, max(self.k, self.per_query_k))
        fused = fuse_rankings([r[: self.per_query_k] for r in rankings], self.k,
                              weights=[self.question_weight] + [1.0] * (len(queries) - 1))
        own = rankings[0][: self.k]
        chosen = list({c.id: c for c in [*own, *fused]}.values())  # the union, each chunk once
        recorder.trace.retrieved = [c.id for c in chosen]  # what the answer reads, not every candidate
        return chosen

    def ask(self, question: str, context: ContextIndex, memory: Memory | None = None,
            save_to: str | os.PathLike | None = None) -> Answer:
        """Answer with ``memory``, or memorize the context first (saving memory and context to ``save_to``,
        for later calls with :meth:`Memory.load` and :meth:`ContextIndex.load`)."""
        question = check_question(question)
        start, recorder = time.perf_counter(), Recorder(self.generator)
        if memory is None:
            memory = self.memorize(context, recorder)
            if save_to is not None:
                context.save(save_to)
                memory.save(save_to)
        clues, draft = self.recall(question, memory, recorder)
        recorder.trace.clues = clues + ([f"draft: {draft}"] if draft else [])
        reply = next(s.output for s in reversed(recorder.trace.steps) if s.name == "clues")
        recorder.trace.actions.append(Action("clues", "clues" if clues or draft else None, ["clues"], "free_text",
                                             argument=" | ".join(recorder.trace.clues), raw=reply,
                                             unparsed=not (clues or draft)))
        chunks = self.retrieve(question, clues, draft, context, recorder)
        answer = answer_from_passages(recorder, question, chunks, max_new_tokens=self.max_new_tokens)
        return Answer(question, answer, self.name, recorder.trace, time.perf_counter() - start)
