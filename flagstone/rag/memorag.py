"""MemoRAG (Lite): a global memory of the whole context guides retrieval.

1. memorize: when the whole context fits the clue writer's window (``memory="auto"``, the default, or
   ``"context"``), the memory is the context itself, which the clue writer reads whole as MemoRAG's memory
   model does (its key-value cache is then the memory's working form, see below); otherwise (or
   ``memory="gists"``) the context is read in pieces of ``piece_tokens`` generator tokens, each piece becomes a
   short gist, and the gists in order are the memory. Either is saved and loaded as JSON beside the context,
   and its settings say which it is;
2. recall: from the memory the clue writer (``memory_generator``, else the generator) writes clues (phrases likely to sit near the answer, or simpler
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

Speed options, with the same replies (greedy; off by default, see the fields): with a local generator the
pieces can be gisted in batches of ``gist_batch`` decoded together (``generate_many``), and gists and clues
decoded by prompt lookup (``prompt_lookup``: tokens the reply copies from its prompt are checked several per
forward pass); the memory's settings say how the gists were made. Every clue prompt on a memory begins with the same
notes, so with a local generator the key-value cache of that beginning is kept with the memory (filled by the
first question's clue call, saved as ``memory_kv.safetensors`` beside ``memory.json``) and later questions
run only their own tokens. The cache names its model and its exact tokens; another model or other notes
recompute it, and the clue step's ``cache_miss`` says why (also when the generator, e.g. a served one, cannot
cache).
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
from flagstone.models.generator import Generator, PromptCache, accepts_prompt_cache, generate_accepts
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


KV_FILE = "memory_kv.safetensors"


@dataclass
class Memory:
    """The gists of the context's pieces, in reading order, and which chunks each piece covers.

    ``prompt_cache`` is the key-value cache of the clue prompt up to the question (local generators only),
    kept in memory and saved beside ``memory.json`` as :data:`KV_FILE`; it is not part of the memory's value.
    """

    gists: list[str]
    pieces: list[list[str]]  # chunk ids per piece
    generator: str
    settings: dict = field(default_factory=dict)
    prompt_cache: PromptCache | None = field(default=None, compare=False, repr=False)
    _saved_cache: PromptCache | None = field(default=None, init=False, compare=False, repr=False)

    def text(self) -> str:
        return "\n".join(f"- {g}" for g in self.gists if g)

    def save(self, folder: str | os.PathLike) -> None:
        with atomic_write(Path(folder) / "memory.json") as f:
            json.dump({"format": 1, "gists": self.gists, "pieces": self.pieces, "generator": self.generator,
                       "settings": self.settings}, f)
        self.save_cache(folder)

    def save_cache(self, folder: str | os.PathLike) -> bool:
        """Write the prompt cache beside ``memory.json`` when it is filled and not the one already there
        (a cache recomputed for another model or other notes replaces the stale file). True if written."""
        cache = self.prompt_cache
        if cache is None or not cache.filled or cache is self._saved_cache:
            return False
        cache.save(Path(folder) / KV_FILE)
        self._saved_cache = cache
        return True

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Memory:
        """The memory saved in ``folder``, with its prompt cache when one was saved (checked against the model
        and the prompt when used, never trusted blindly)."""
        path = require_file(Path(folder) / "memory.json", "saved MemoRAG memory")
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            memory = cls([str(g) for g in saved["gists"]], [[str(c) for c in p] for p in saved["pieces"]],
                         str(saved["generator"]), dict(saved.get("settings") or {}))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path} is not a saved MemoRAG memory") from None
        if (Path(folder) / KV_FILE).is_file():
            memory.prompt_cache = memory._saved_cache = PromptCache.load(Path(folder) / KV_FILE)
        return memory


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


MEMORY_KINDS = ("auto", "context", "gists")
# tokens kept free for the question and the chat template when "auto" decides whether the context fits
QUESTION_RESERVE = 256


def _context_memory(context: ContextIndex) -> Memory:
    """The context itself as a memory: its chunks without overlap, one per line, each its own piece."""
    chunks = without_overlap(context.chunks)
    return Memory([" ".join(c.text.split()) for c in chunks], [[c.id] for c in chunks], "", {})


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
    # what the clues are written from: "context" (the context itself, read whole), "gists" (a gist per piece),
    # or "auto": the context when it fits the clue writer's window with the clue prompt, else gists
    memory: str = "auto"
    # a separate memory model that writes the clues, as in MemoRAG: a long-context one (e.g.
    # flagstone.longctx.generator.BeaconGenerator) reads the whole context, a cheaper one (e.g. the generator's
    # model in int8) writes clues faster; the answer is still the generator's
    memory_generator: Generator | None = None
    # greedy prompt-lookup decoding (local generators) of the clues, and of the gists when gist_batch is 1: up to
    # this many tokens copied from the prompt are checked per forward pass. 0: token by token
    prompt_lookup: int = 0
    # pieces gisted in batches of this many, decoded together (generators with generate_many; without prompt
    # lookup); 1: one by one. Both are off by default: on 5 HotpotQA questions on the shared 2-core machine their
    # effect is within the load's noise (identical replies; back to back, batches of 8 took 1.17x and prompt
    # lookup 10 0.99x the plain time, benchmarks/results/rag_qa_slice_memorag_*_run2.md; interleaved per
    # question in one process while the load rose, batches of 8 0.88x and prompt lookup 4 0.83x,
    # benchmarks/results/memorag_speed.md)
    gist_batch: int = 1
    # a gist or clue reply ends once its last this many tokens already occurred in it (local generators): small
    # models loop ("The answer to the question is: The answer to ..."), and a loop adds no clue, only seconds.
    # 0: run to gist_tokens / clue_tokens
    stop_on_repeat: int = 16
    name: str = "memorag"

    @property
    def clue_writer(self) -> Generator:
        """The model that reads the memory and writes the clues: the memory model, else the generator."""
        return self.memory_generator or self.generator

    def memory_kind(self, context: ContextIndex) -> str:
        """"context" or "gists": what :meth:`memorize` makes of ``context`` with this pipeline's ``memory``."""
        if self.memory not in MEMORY_KINDS:
            raise ValueError(f"memory must be one of {', '.join(MEMORY_KINDS)}, got {self.memory!r}")
        if self.memory != "auto":
            return self.memory
        writer = self.clue_writer
        prompt = CLUE_PROMPT.format(memory=_context_memory(context).text(), question="", max_clues=self.max_clues)
        needed = writer.count_tokens(CLUE_SYSTEM) + writer.count_tokens(prompt) + self.clue_tokens + QUESTION_RESERVE
        return "context" if needed <= writer.context_window else "gists"

    def memorize(self, context: ContextIndex, recorder: Recorder | None = None) -> Memory:
        """The memory of ``context`` (see :meth:`memory_kind`): the context itself, or a gist per piece (each
        piece fits the generator's window)."""
        recorder = recorder or Recorder(self.generator)
        if self.memory_kind(context) == "context":
            writer = self.clue_writer
            memory = _context_memory(context)
            memory.generator = writer.name
            memory.settings = {"memory": f"context, read whole by {writer.name}"}
            return memory
        if self.gist_batch < 1:
            raise ValueError(f"gist_batch must be at least 1, got {self.gist_batch}")
        budget = min(self.piece_tokens, prompt_budget(self.generator, self.gist_tokens, GIST_SYSTEM))
        pieces, prompts = [], []
        remaining = without_overlap(context.chunks)
        while remaining:
            piece = fit_passages(self.generator, remaining, budget)
            remaining = remaining[len(piece):]  # a chunk longer than a piece is cut, never repeated
            text = "\n".join(c.text.strip() for c in piece)
            prompts.append([{"role": "system", "content": GIST_SYSTEM},
                            {"role": "user", "content": f"Text:\n{text}\n\nCondensed:"}])
            pieces.append([c.id for c in piece])
        gists: list[str] = []
        if self.gist_batch > 1:
            batched = True
            for at in range(0, len(prompts), self.gist_batch):
                outs, in_batch = recorder.generate_many("gist", prompts[at:at + self.gist_batch],
                                                        max_new_tokens=self.gist_tokens)
                gists += [" ".join(out.text.split()) for out in outs]
                batched = batched and in_batch
            how = f"in batches of {self.gist_batch}" if batched else \
                f"one by one (generator {self.generator.name} has no generate_many, or the gists were streamed)"
        else:
            lookup, repeat = self._lookup(self.generator), recorder.repeat_span(self.stop_on_repeat)
            for prompt in prompts:
                out = recorder.generate("gist", prompt, max_new_tokens=self.gist_tokens, prompt_lookup=lookup,
                                        stop_on_repeat=repeat)
                gists.append(" ".join(out.text.split()))
            how = "one by one, " + self._decoding(self.generator) + (
                f", a reply ending when it repeats {repeat} tokens" if repeat else "")
        return Memory(gists, pieces, self.generator.name,
                      {"piece_tokens": self.piece_tokens, "gist_tokens": self.gist_tokens, "gists": how})

    def _lookup(self, generator: Generator) -> int:
        return self.prompt_lookup if generate_accepts(generator, "prompt_lookup") else 0

    def _decoding(self, generator: Generator) -> str:
        if self._lookup(generator):
            return f"greedy by prompt lookup ({self.prompt_lookup} tokens a pass)"
        if self.prompt_lookup:
            return f"greedy token by token (generator {generator.name} has no prompt-lookup decoding)"
        return "greedy token by token"

    def clue_messages(self, question: str, memory: Memory) -> list[dict[str, str]]:
        prompt = CLUE_PROMPT.format(memory=memory.text(), question=question, max_clues=self.max_clues)
        return [{"role": "system", "content": CLUE_SYSTEM}, {"role": "user", "content": prompt}]

    def clue_cache(self, memory: Memory) -> tuple[PromptCache | None, str]:
        """The prompt cache of the clue prompt up to the question for this memory and writer (the memory's
        own when it fits, else a new unfilled one that the next clue call fills), or None and why not."""
        writer = self.clue_writer
        if not accepts_prompt_cache(writer) or not hasattr(writer, "prompt_cache"):
            return None, f"generator {writer.name} cannot cache a prompt: the whole clue prompt is run"
        # up to "Question:" without the space: the space belongs to the question's first token
        head = CLUE_PROMPT[: CLUE_PROMPT.index("{question}")].rstrip().format(memory=memory.text())
        fresh = writer.prompt_cache([{"role": "system", "content": CLUE_SYSTEM}, {"role": "user", "content": head}])
        kept = memory.prompt_cache
        if kept is not None and kept.model == fresh.model and kept.ids == fresh.ids:
            return kept, ""
        refused = "" if kept is None else (
            f"the memory's prompt cache was refused ({kept.mismatch(fresh.model, fresh.ids + [-1])}) and recomputed")
        memory.prompt_cache = fresh
        return fresh, refused

    def recall(self, question: str, memory: Memory, recorder: Recorder) -> tuple[list[str], str]:
        messages = self.clue_messages(question, memory)
        writer = self.clue_writer
        prompt_budget(writer, self.clue_tokens, *(m["content"] for m in messages))  # raises if the memory can't fit
        cache, note = self.clue_cache(memory)
        clue_recorder = recorder if self.memory_generator is None else Recorder(self.memory_generator, recorder.trace)
        out = clue_recorder.generate("clues", messages, max_new_tokens=self.clue_tokens, prompt_cache=cache,
                                     prompt_lookup=self._lookup(writer),
                                     stop_on_repeat=recorder.repeat_span(self.stop_on_repeat, writer))
        if note:  # the cache could not be used at all, or a stale one was replaced: the step says so
            step = recorder.trace.steps[-1]
            step.cache_miss = "; ".join(x for x in (note, step.cache_miss) if x)
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
        if save_to is not None:
            memory.save_cache(save_to)  # filled by the clue call just made
        recorder.trace.clues = clues + ([f"draft: {draft}"] if draft else [])
        reply = next(s.output for s in reversed(recorder.trace.steps) if s.name == "clues")
        recorder.trace.actions.append(Action("clues", "clues" if clues or draft else None, ["clues"], "free_text",
                                             argument=" | ".join(recorder.trace.clues), raw=reply,
                                             unparsed=not (clues or draft)))
        chunks = self.retrieve(question, clues, draft, context, recorder)
        answer = answer_from_passages(recorder, question, chunks, max_new_tokens=self.max_new_tokens)
        return Answer(question, answer, self.name, recorder.trace, time.perf_counter() - start)
