"""What every RAG pipeline shares: the indexed context, the trace of what happened, and the answer step."""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from flagstone._io import atomic_write, require_file
from flagstone.errors import DataError, FlagstoneError, InvalidTextError
from flagstone.models.generator import (
    CHOICE_SOURCES,
    Generation,
    Generator,
    Message,
    PromptCache,
    accepts_on_text,
    accepts_prompt_cache,
    generate_accepts,
    match_option,
)
from flagstone.models.presets import DEFAULT_MODEL
from flagstone.rag.chunking import (
    Chunk,
    chunk_documents,
    in_reading_order,
    load_tokenizer,
)

ANSWER_SYSTEM = (
    "You answer questions from the passages you are given. Reply with the answer only: a short phrase, "
    "a name, a number, or yes/no. Do not explain."
)
NO_PASSAGES_SYSTEM = "Answer the question. Reply with the answer only: a short phrase, a name, a number, or yes/no."


@dataclass
class Step:
    """One generator call or one retrieval, in the order they happened."""

    kind: str  # "generate", "choose" (a pick among fixed options) or "retrieve"
    name: str  # what the step was for: "answer", "gist", "clues", "reason_in_documents", "search", ...
    input: str | list[dict[str, str]]  # the messages sent, or the retrieval queries
    output: str = ""
    chunk_ids: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cached_tokens: int = 0  # of prompt_tokens, how many came from a prompt cache instead of being run again
    cache_miss: str = ""  # why a prompt cache offered for this step was not used ("" if used or none offered)


# how an agent's action was decided: a generator's choice (CHOICE_SOURCES) or the pipeline's stated rule
ACTION_SOURCES = (*CHOICE_SOURCES, "policy")


@dataclass
class Action:
    """One decision of an agent: which option, how it was decided, and the text that goes with it.

    ``unparsed`` is True when the model's reply named no option, or the option needs text (a query, a note)
    and none came: the pipeline does not act on it, and the benchmark counts it. ``reason`` explains a
    "policy" decision (the pipeline's rule, not the model's choice); on a model's choice it names what the
    pipeline added to the prompt to inform it (e.g. Search-o1's evidence check).
    """

    step: str  # "decide", "access", "step", "clues", ...
    chosen: str | None
    options: list[str]
    source: str  # one of ACTION_SOURCES
    argument: str = ""
    raw: str = ""  # the model's reply when it chose by text (free text or guided), or wrote the argument
    unparsed: bool = False
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    argument_source: str = ""  # how the argument was written: "constrained", "free_text" or "policy"

    @property
    def silent_default(self) -> bool:
        """An action the pipeline took that no recorded choice, rule or unparsed mark accounts for."""
        if self.unparsed:
            return False
        return self.chosen not in self.options or self.source not in ACTION_SOURCES or \
            (self.source == "policy" and not self.reason)


@dataclass
class Trace:
    steps: list[Step] = field(default_factory=list)
    clues: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)  # chunk ids the pipeline retrieved or read, first seen first
    notes: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)

    @property
    def unparsed_actions(self) -> int:
        return sum(a.unparsed for a in self.actions)

    @property
    def silent_defaults(self) -> int:
        """Actions no choice accounts for, plus choose steps that left no action in the trace."""
        chooses = sum(s.kind == "choose" for s in self.steps)
        by_model = sum(a.source != "policy" for a in self.actions if a.step != "clues")
        return sum(a.silent_default for a in self.actions) + max(0, chooses - by_model)

    @property
    def searches(self) -> int:
        return sum(s.kind == "retrieve" for s in self.steps)

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    def add_retrieved(self, chunk_ids: Sequence[str]) -> None:
        seen = set(self.retrieved)
        self.retrieved += [c for c in chunk_ids if c not in seen and not seen.add(c)]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                    seconds=round(self.seconds, 3), unparsed_actions=self.unparsed_actions,
                    silent_defaults=self.silent_defaults)
        return data


@dataclass
class Answer:
    question: str
    answer: str
    pipeline: str
    trace: Trace
    seconds: float = 0.0  # wall time of the whole call

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "pipeline": self.pipeline,
                "seconds": round(self.seconds, 3), "trace": self.trace.to_dict()}


class ContextIndex:
    """A context (one long text or many documents) cut into chunks and indexed with a Flagstone retriever."""

    def __init__(self, documents: Sequence[tuple[str, str]], chunks: Sequence[Chunk], retriever, mode: str,
                 chunk_tokens: int = 200, overlap: int = 32) -> None:
        self.documents = list(documents)
        self.chunk_tokens, self.overlap = chunk_tokens, overlap
        self.chunks = list(chunks)
        self.by_id = {c.id: c for c in self.chunks}
        self.retriever = retriever
        self.mode = mode

    @classmethod
    def build(cls, documents: str | Mapping[str, str] | Sequence[tuple[str, str]], *, embedder=None,
              chunk_tokens: int = 200, overlap: int = 32, mode: str = "hybrid", cache=None, tokenizer=None,
              show_progress: bool = False) -> ContextIndex:
        """Chunk ``documents`` (a text, ``{id: text}`` or ``[(id, text)]``) and index the chunks.

        ``mode`` is any retriever mode ("dense", "bm25", "hybrid", ...). Chunks are counted in the embedder's
        tokens (default: the bundled MiniLM); ``mode="bm25"`` needs no model, only a ``tokenizer`` for chunking
        (default: MiniLM's). With a ``cache`` (:class:`~flagstone.models.cache.EmbeddingCache`) the embedder
        wears it, so rebuilding an index over the same chunks encodes nothing; an embedder that already
        wears one (:class:`~flagstone.models.cache.CachedEmbedder`) needs no ``cache``.
        """
        from flagstone.models.cache import CachedEmbedder
        from flagstone.models.embedder import Embedder
        from flagstone.retrieval.retriever import Retriever

        if isinstance(documents, str):
            documents = [("context", documents)]
        items = list(documents.items()) if isinstance(documents, Mapping) else list(documents)
        if mode == "bm25" and embedder is None:
            retriever = Retriever(None)
            tokenizer = load_tokenizer(tokenizer)
        else:
            embedder = embedder if embedder is not None else Embedder(show_progress=show_progress)
            tokenizer = tokenizer if tokenizer is not None else embedder.tokenizer
            retriever = Retriever(CachedEmbedder(embedder, cache) if cache is not None else embedder)
        if mode not in retriever.modes:
            raise ValueError(f"mode {mode!r} is not available; choose from {retriever.modes}")
        chunks = chunk_documents(items, tokenizer, chunk_tokens=chunk_tokens, overlap=overlap)
        if not chunks:
            raise InvalidTextError("the context is empty: nothing to index")
        retriever.fit([c.id for c in chunks], [c.text for c in chunks], show_progress=show_progress)
        return cls(items, chunks, retriever, mode, chunk_tokens, overlap)

    def save(self, folder: str | os.PathLike) -> None:
        """Write the documents and chunking settings; :meth:`load` rebuilds the index from them (pass an
        embedding cache to make that cheap)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(folder) / "context.json") as f:
            embedder = self.retriever.embedder
            json.dump({"format": 1, "embedder": embedder.name if embedder is not None else None, "mode": self.mode,
                       "chunk_tokens": self.chunk_tokens, "overlap": self.overlap,
                       "documents": [list(d) for d in self.documents]}, f)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, embedder=None, cache=None,
             show_progress: bool = False) -> ContextIndex:
        from flagstone.models.embedder import Embedder

        path = require_file(Path(folder) / "context.json", "saved context")
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            documents = [(str(i), str(t)) for i, t in saved["documents"]]
            settings = {k: saved[k] for k in ("mode", "chunk_tokens", "overlap")}
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path} is not a saved Flagstone context") from None
        if embedder is None and settings["mode"] != "bm25":
            embedder = Embedder(saved.get("embedder") or DEFAULT_MODEL, show_progress=show_progress)
        return cls.build(documents, embedder=embedder, cache=cache, show_progress=show_progress, **settings)

    def search(self, queries: Sequence[str], k: int, *, exclude: Collection[str] = ()) -> list[list[Chunk]]:
        """Top ``k`` chunks per query, best first; with ``exclude``, the top ``k`` of the other chunks (searched
        among them, not cut from a longer list)."""
        excluded = set(exclude)
        unknown = excluded - self.by_id.keys()
        if unknown:
            raise ValueError(f"exclude names chunks this context does not hold: {sorted(unknown)[:3]}")
        allow = [c.id for c in self.chunks if c.id not in excluded] if excluded else None
        k = min(k, len(allow) if allow is not None else len(self.chunks))
        if k == 0:
            return [[] for _ in queries]
        hits = self.retriever.search(list(queries), mode=self.mode, k=k, allow=allow)
        return [[self.by_id[i] for i in row] for row in hits.ids]

    def text(self, separator: str = "\n\n") -> str:
        return separator.join(text for _, text in self.documents)


class StepListener(Protocol):
    """Follows a pipeline's steps as they happen (progress output, streaming); see :func:`listening`."""

    def step_started(self, kind: str, name: str) -> None:
        """A step begins: ``kind`` is "generate" or "retrieve", ``name`` what it is for ("answer", "gist", ...)."""

    def step_finished(self, step: Step) -> None:
        """The step is done and recorded in the trace."""

    def text_sink(self, name: str) -> Callable[[str], None] | None:
        """Where the text of a generate step named ``name`` should go while it is generated, or None."""


# the listener of the pipeline calls running in this thread / task, set by ``listening``: the pipelines
# make their own Recorders, so this reaches all of them without a parameter on every pipeline
_LISTENER: ContextVar[StepListener | None] = ContextVar("flagstone_rag_listener", default=None)


@contextmanager
def listening(listener: StepListener) -> Iterator[StepListener]:
    """Report every step of the pipeline calls inside the block to ``listener``::

        with listening(my_listener):
            answer = MemoRAG(generator).ask(question, context)

    A listener whose ``text_sink`` returns a callable needs a generator that takes ``on_text``
    (:class:`~flagstone.models.generator.LocalGenerator`); others raise a FlagstoneError.
    """
    token = _LISTENER.set(listener)
    try:
        yield listener
    finally:
        _LISTENER.reset(token)


class Recorder:
    """Runs a pipeline's generator calls and retrievals and writes each into the trace (and tells the
    listener set by :func:`listening`, if any)."""

    def __init__(self, generator: Generator, trace: Trace | None = None) -> None:
        self.generator = generator
        self.trace = trace if trace is not None else Trace()

    def generate(self, name: str, messages: Sequence[Message], *, max_new_tokens: int, stop: Sequence[str] = (),
                 temperature: float = 0.0, prompt_cache: PromptCache | None = None,
                 prompt_lookup: int = 0, stop_on_repeat: int = 0) -> Generation:
        """One generator call, recorded as a step. ``prompt_cache``: the key-value cache of the prompt's
        beginning, reused when the generator can (the step's ``cached_tokens``), else the step's ``cache_miss``
        says why not. ``prompt_lookup``: greedy prompt-lookup decoding, for a generator that offers it (the
        caller checks with :func:`~flagstone.models.generator.generate_accepts` and records what it used);
        ``stop_on_repeat`` likewise (a reply that starts repeating itself ends there)."""
        listener = _LISTENER.get()
        extra: dict = {}
        miss = ""
        if listener is not None:
            listener.step_started("generate", name)
            sink = listener.text_sink(name)
            if sink is not None:
                if not accepts_on_text(self.generator):
                    raise FlagstoneError(f"generator {self.generator.name} cannot stream its text (its generate "
                                         f"takes no on_text); use a local generator or do not ask for the text")
                extra["on_text"] = sink
        if prompt_lookup:
            if not generate_accepts(self.generator, "prompt_lookup"):
                raise FlagstoneError(f"generator {self.generator.name} has no prompt-lookup decoding")
            extra["prompt_lookup"] = prompt_lookup
        if stop_on_repeat:
            if not generate_accepts(self.generator, "stop_on_repeat"):
                raise FlagstoneError(f"generator {self.generator.name} cannot stop a reply that repeats itself")
            extra["stop_on_repeat"] = stop_on_repeat
        if prompt_cache is not None:
            if accepts_prompt_cache(self.generator):
                extra["prompt_cache"] = prompt_cache
            else:
                miss = f"generator {self.generator.name} cannot reuse a prompt cache"
        out = self.generator.generate(messages, max_new_tokens=max_new_tokens, stop=stop, temperature=temperature,
                                      **extra)
        self._record(name, messages, out, miss or out.cache_miss, listener)
        return out

    def generate_many(self, name: str, conversations: Sequence[Sequence[Message]], *, max_new_tokens: int
                      ) -> tuple[list[Generation], bool]:
        """Greedy replies to several prompts, each recorded as its own step: in one batch when the generator
        has ``generate_many`` (and no listener streams this step's text), else one by one. Returns the replies
        and whether they were batched."""
        listener = _LISTENER.get()
        batch = getattr(self.generator, "generate_many", None)
        if batch is None or (listener is not None and listener.text_sink(name) is not None):
            return [self.generate(name, m, max_new_tokens=max_new_tokens) for m in conversations], False
        if listener is not None:
            for _ in conversations:
                listener.step_started("generate", name)
        outs = batch(conversations, max_new_tokens=max_new_tokens)
        for messages, out in zip(conversations, outs):
            self._record(name, messages, out, out.cache_miss, listener)
        return outs, True

    def repeat_span(self, span: int, generator: Generator | None = None) -> int:
        """The ``stop_on_repeat`` to ask of ``generator`` (default: this recorder's): ``span`` when it can end a
        reply that repeats itself; otherwise 0, and the trace notes once that its replies run to their token
        limits."""
        generator = generator if generator is not None else self.generator
        if not span or generate_accepts(generator, "stop_on_repeat"):
            return span
        note = f"generator {generator.name} cannot stop a reply that repeats itself: replies run to their limits"
        if note not in self.trace.notes:
            self.trace.notes.append(note)
        return 0

    def _record(self, name: str, messages: Sequence[Message], out: Generation, miss: str, listener) -> None:
        step = Step("generate", name, [dict(m) for m in messages], out.text, prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens, seconds=out.seconds,
                    cached_tokens=out.cached_tokens, cache_miss=miss)
        self.trace.steps.append(step)
        if listener is not None:
            listener.step_finished(step)

    def write(self, name: str, messages: Sequence[Message], *, max_new_tokens: int, stop: Sequence[str] = (),
              avoid: Sequence[str] = ()) -> tuple[Generation, str]:
        """The text an action needs (a query, a note), with the generator's ``write`` (constrained to start
        with a word) when it has one, else plain greedy text; returns it and how it was made
        ("constrained" or "free_text"). ``avoid``: replies it must not be (e.g. queries already searched),
        enforced while decoding when the generator's ``write`` can; otherwise the trace notes that it could
        not and the caller checks the reply."""
        writer = getattr(self.generator, "write", None)
        extra = {}
        if avoid:
            if generate_accepts(self.generator, "avoid", method="write"):
                extra["avoid"] = list(avoid)
            else:
                self.trace.notes.append(f"{name}: generator {self.generator.name} cannot avoid earlier replies "
                                        f"while decoding")
        if writer is None:
            return self.generate(name, messages, max_new_tokens=max_new_tokens, stop=stop), "free_text"
        listener = _LISTENER.get()
        if listener is not None:
            listener.step_started("generate", name)
        out = writer(messages, max_new_tokens=max_new_tokens, stop=stop, **extra)
        step = Step("generate", name, [dict(m) for m in messages], out.text, prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens, seconds=out.seconds)
        self.trace.steps.append(step)
        if listener is not None:
            listener.step_finished(step)
        return out, "constrained"

    def choose(self, name: str, messages: Sequence[Message], options: Sequence[str]) -> Action:
        """Pick one of ``options`` with the generator's ``choose`` (scored or guided), or, for a generator
        without one, from a short free reply matched to an option; recorded as a "choose" step and an Action
        (unparsed when the free reply names no option)."""
        listener = _LISTENER.get()
        if listener is not None:
            listener.step_started("choose", name)
        choose = getattr(self.generator, "choose", None)
        if choose is not None:
            choice = choose(messages, options)
            chosen, source, raw, scores = choice.option, choice.source, choice.raw, choice.scores
            prompt, completion, seconds = choice.prompt_tokens, choice.completion_tokens, choice.seconds
        else:
            out = self.generator.generate(messages, max_new_tokens=16, stop=["\n"])
            chosen, source, raw, scores = match_option(out.text, options), "free_text", out.text, {}
            prompt, completion, seconds = out.prompt_tokens, out.completion_tokens, out.seconds
        # options may carry the spacing that makes them continue the prompt; the trace holds the bare words
        chosen = chosen.strip() if chosen is not None else None
        action = Action(name, chosen, [o.strip() for o in options], source, raw=raw, unparsed=chosen is None,
                        scores={k.strip(): round(v, 3) for k, v in scores.items()})
        step = Step("choose", name, [dict(m) for m in messages], chosen if chosen is not None else raw,
                    prompt_tokens=prompt, completion_tokens=completion, seconds=seconds)
        self.trace.steps.append(step)
        self.trace.actions.append(action)
        if listener is not None:
            listener.step_finished(step)
        return action

    def policy(self, name: str, chosen: str, options: Sequence[str], reason: str) -> Action:
        """Record an action the pipeline's own rule decided (not the model), with the rule."""
        action = Action(name, chosen, list(options), "policy", reason=reason)
        self.trace.actions.append(action)
        return action

    def retrieve(self, name: str, context: ContextIndex, queries: Sequence[str], k: int,
                 exclude: Collection[str] = ()) -> list[list[Chunk]]:
        """Top ``k`` chunks per query (none of the ``exclude`` ids), recorded as a "retrieve" step."""
        listener = _LISTENER.get()
        if listener is not None:
            listener.step_started("retrieve", name)
        start = time.perf_counter()
        results = context.search(queries, k, exclude=exclude)
        ids = [c.id for row in results for c in row]
        step = Step("retrieve", name, "\n".join(queries), chunk_ids=ids, seconds=time.perf_counter() - start)
        self.trace.steps.append(step)
        self.trace.add_retrieved(ids)
        if listener is not None:
            listener.step_finished(step)
        return results


def check_question(question: object) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InvalidTextError("the question must be a non-empty string")
    return question.strip()


def without_overlap(chunks: Sequence[Chunk]) -> list[Chunk]:
    """Chunks in reading order, each cut to start where the previous one ended, so no text repeats."""
    out: list[Chunk] = []
    last_doc, last_end = None, 0
    for c in in_reading_order(chunks):
        if c.doc_id == last_doc and c.start < last_end:
            cut = last_end - c.start
            if cut >= len(c.text):
                continue
            c = Chunk(c.id, c.doc_id, c.doc_order, c.index, c.text[cut:], last_end, c.end)
        out.append(c)
        last_doc, last_end = c.doc_id, c.end
    return out


def format_passages(chunks: Sequence[Chunk]) -> str:
    return "\n\n".join(f"[{i}] {c.text.strip()}" for i, c in enumerate(chunks, 1))


def fit_passages(generator: Generator, chunks: Sequence[Chunk], budget: int) -> list[Chunk]:
    """The longest prefix of ``chunks`` whose text fits ``budget`` generator tokens (at least one chunk,
    cut to the budget, so an oversized chunk still leaves a prompt that fits)."""
    kept, used = [], 0
    for chunk in chunks:
        cost = generator.count_tokens(chunk.text) + 4
        if used + cost > budget:
            if not kept and budget > 8:
                ratio = budget / cost
                cut = chunk.text[: max(1, int(len(chunk.text) * ratio * 0.9))]
                kept.append(Chunk(chunk.id, chunk.doc_id, chunk.doc_order, chunk.index, cut, chunk.start,
                                  chunk.start + len(cut)))
            break
        kept.append(chunk)
        used += cost
    return kept


def prompt_budget(generator: Generator, max_new_tokens: int, *texts: str, reserve: int = 64) -> int:
    """Tokens left for passages once the fixed parts of a prompt and the answer are counted."""
    fixed = sum(generator.count_tokens(t) for t in texts)
    budget = generator.context_window - max_new_tokens - fixed - reserve
    if budget < 16:
        raise FlagstoneError(
            f"the question and instructions leave no room for passages in {generator.name}'s "
            f"{generator.context_window}-token window"
        )
    return budget


def answer_from_passages(recorder: Recorder, question: str, chunks: Sequence[Chunk], *, max_new_tokens: int,
                         name: str = "answer", extra: str = "") -> str:
    """The final answer step shared by the pipelines: passages in reading order, then the question."""
    gen = recorder.generator
    if chunks:
        budget = prompt_budget(gen, max_new_tokens, ANSWER_SYSTEM, question, extra)
        kept = fit_passages(gen, in_reading_order(chunks), budget)
        user = f"Passages:\n{format_passages(kept)}\n\n{extra}Question: {question}\nAnswer:"
        messages = [{"role": "system", "content": ANSWER_SYSTEM}, {"role": "user", "content": user}]
    else:
        user = f"{extra}Question: {question}\nAnswer:"
        messages = [{"role": "system", "content": NO_PASSAGES_SYSTEM}, {"role": "user", "content": user}]
    out = recorder.generate(name, messages, max_new_tokens=max_new_tokens, stop=["\n\n"])
    return clean_answer(out.text)


_ANSWER_PREFIX = re.compile(r"^\s*(final answer|answer)\s*[:\-]\s*", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def clean_answer(text: str) -> str:
    """The answer part of a model reply: a \\boxed{} value if any, else the first non-empty line without an
    "Answer:" prefix or a trailing full stop."""
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _ANSWER_PREFIX.sub("", line)
    return line[:-1].strip() if line.endswith(".") else line
