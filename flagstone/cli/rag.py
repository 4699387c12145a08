"""The ``flagstone ask`` command: answer a question over a context with one of the RAG pipelines."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from flagstone.cli._common import (
    EPILOG,
    MODES,
    _add_cache_options,
    _cache,
    _read_texts,
    add_backend_options,
    causal_lm_name,
    check_argument,
    check_with,
    existing_path,
    http_url,
    model_name,
    non_negative_int,
    output_folder,
    positive_int,
)
from flagstone.errors import FlagstoneError

PIPELINE_HELP = {
    "rag": "retrieve the top-k chunks and answer from them",
    "memorag": "read the whole context as a memory (gists when it is too long), write clues from it, retrieve "
               "with them, answer",
    "search_o1": "reason, searching the context between tags; retrieved text is condensed before it is inserted",
    "lc_boost": "walk the context part by part, keeping notes, searching or answering at each step",
    "full_context": "put as much of the context as fits into one prompt",
    "no_retrieval": "answer from the model alone",
}


def add_parsers(sub, epilog: str = EPILOG) -> None:
    lines = "\n".join(f"  {name:13s} {text}" for name, text in PIPELINE_HELP.items())
    p = sub.add_parser(
        "ask", help="answer a question over a document or collection with RAG, MemoRAG, Search-o1 or LC-Boost",
        description="Answer a question from a context with a retrieval-augmented pipeline:\n" + lines +
                    "\nThe generator is a local causal LM (default: the bundled SmolLM2-135M-Instruct; a folder, "
                    "a .gguf file or a hub name) or any OpenAI-compatible server with --base-url "
                    "(key from $OPENAI_API_KEY).",
        epilog=epilog + " Example: flagstone ask 'Who wrote it?' --context essay.txt --pipeline memorag --trace",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("question")
    p.add_argument("--context", action="append", type=existing_path, default=None, metavar="PATH",
                   help="a .txt/.md file (one document), a .jsonl file (one document per line, field 'text'), or "
                        "a BEIR folder; repeatable")
    p.add_argument("--pipeline", choices=tuple(PIPELINE_HELP), default="rag", help="(default: rag)")
    p.add_argument("--generator", default="smollm2-135m-instruct",
                   help="local model (name, folder, .gguf) or, with --base-url, the served model's name")
    p.add_argument("--base-url", type=http_url, default=None,
                   help="OpenAI-compatible API root, e.g. http://localhost:8080/v1 (probed before anything loads)")
    p.add_argument("--model", type=model_name, default=None,
                   help="embedding model for retrieval (default: all-MiniLM-L6-v2)")
    add_backend_options(p)
    p.add_argument("--mode", choices=MODES, default="hybrid", help="retrieval mode (default: hybrid)")
    _add_cache_options(p)
    p.add_argument("-k", type=positive_int, default=3, help="chunks read per retrieval (default: 3)")
    p.add_argument("--chunk-tokens", type=positive_int, default=200, help="tokens per chunk (default: 200)")
    p.add_argument("--overlap", type=non_negative_int, default=32,
                   help="tokens shared by neighbouring chunks (default: 32)")
    p.add_argument("--memory", type=output_folder, default=None, metavar="DIR",
                   help="MemoRAG: load the memory and context from DIR if saved there, else build and save them")
    p.add_argument("--memory-kind", choices=("auto", "context", "gists"), default=None,
                   help="MemoRAG: write the clues from the context itself (read whole) or from a gist of each piece; "
                        "auto (the default): the context when it fits the model's window with the clue prompt")
    p.add_argument("--int8-clues", action="store_true",
                   help="MemoRAG with a local generator: write the clues with a second copy of the model whose linear "
                        "layers are quantised to int8 (faster on a CPU; the answer stays the generator's)")
    p.add_argument("--first-query", choices=("model", "question"), default=None,
                   help="Search-o1: who writes the first search query: the model, inside its reasoning (the "
                        "default), or the question itself is searched first")
    p.add_argument("--no-evidence-check", dest="evidence_check", action="store_false", default=None,
                   help="Search-o1: do not tell the model, at each decision after a search, which names of the "
                        "question (capitalised words, numbers) no document read so far mentions")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens in the answer (default: 64)")
    p.add_argument("--guided", choices=("vllm", "llama.cpp"), default=None,
                   help="with --base-url: constrain the agents' choices with the server's guided decoding (vLLM "
                        "guided_choice / guided_regex, llama.cpp grammar); without it a served model's choices "
                        "are matched from free replies and the trace says free_text")
    p.add_argument("--trace", action="store_true",
                   help="print every step: outputs, search queries, retrieved chunks, chosen actions and how they "
                        "were chosen, condensed notes, unparsed replies, tokens, time")
    p.add_argument("--json", action="store_true", help="print the answer and its full trace as JSON")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print the answer step's reply as it is generated (local generators); default: when "
                        "stdout is a terminal and neither --json nor --base-url is given")
    p.add_argument("--quiet", action="store_true",
                   help="no progress on stderr (loading, indexing bars, each retrieval and generation)")
    check_with(p, _check_ask)


def _check_ask(args: argparse.Namespace) -> None:
    if args.stream and args.json:
        raise FlagstoneError("--stream prints the reply as text, --json prints one JSON object: choose one")
    if args.stream and args.base_url is not None:
        raise FlagstoneError("--stream needs a local generator (one served through --base-url is not streamed)")
    if args.chunk_tokens < 2 or args.overlap >= args.chunk_tokens:
        raise FlagstoneError(f"--chunk-tokens {args.chunk_tokens} --overlap {args.overlap}: chunks need at least 2 "
                             "tokens and --overlap must be below --chunk-tokens")
    if args.pipeline != "memorag" and (args.memory_kind is not None or args.int8_clues):
        raise FlagstoneError("--memory-kind and --int8-clues are MemoRAG options: add --pipeline memorag")
    if args.pipeline != "search_o1" and (args.first_query is not None or args.evidence_check is not None):
        raise FlagstoneError("--first-query and --no-evidence-check are Search-o1 options: add --pipeline search_o1")
    if args.int8_clues and args.base_url is not None:
        raise FlagstoneError("--int8-clues quantises a local model: it cannot be used with --base-url")
    if args.guided is not None and args.base_url is None:
        raise FlagstoneError("--guided is a server option: it needs --base-url (local models score their choices)")
    if args.base_url is None:
        check_argument("--generator", args.generator, causal_lm_name)
    else:
        _probe(args.base_url)  # last: the slowest check


def _probe(base_url: str, timeout: float = 3.0) -> None:
    """Any HTTP answer (even 404) means a server is there; a refused or silent one fails here, not after the
    context has been embedded and the generator's retries have run out."""
    import httpx

    try:
        httpx.get(base_url, timeout=timeout)
    except httpx.TimeoutException:
        raise FlagstoneError(f"cannot reach --base-url {base_url}: no answer within {timeout:g} s") from None
    except httpx.TransportError as exc:
        raise FlagstoneError(f"cannot reach --base-url {base_url}: {type(exc).__name__}: {exc}") from None


def _documents(paths: list[str]) -> list[tuple[str, str]]:
    from flagstone._io import read_text

    documents: list[tuple[str, str]] = []
    for path in paths:
        p = Path(path)
        if p.is_file() and p.suffix.lower() in (".txt", ".md", ""):
            documents.append((p.name, read_text(p, "context file")))
        else:
            ids, texts = _read_texts(path)
            documents += list(zip(ids, texts))
    ids = [d for d, _ in documents]
    if len(set(ids)) != len(ids):
        raise FlagstoneError("two context documents share an id (file name or record id); rename one")
    return documents


# the steps whose reply is the answer the user reads (the pipelines clean it into Answer.answer)
ANSWER_STEPS = ("answer", "final_answer")


class AskListener:
    """What ``flagstone ask`` shows while it works: a line on stderr as each phase and step starts (unless
    quiet), and, when streaming, the answer step's reply on stdout as the generator writes it."""

    def __init__(self, *, progress: bool, stream: bool, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.progress, self.stream = progress, stream
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.start = time.perf_counter()
        self.counts: dict[str, int] = {}
        self.streamed: list[str] = []  # the text of each streamed answer step
        self._writing = False

    def note(self, text: str) -> None:
        if self.progress:
            print(f"[{time.perf_counter() - self.start:6.1f} s] {text}", file=self.err, flush=True)

    def step_started(self, kind: str, name: str) -> None:
        n = self.counts[name] = self.counts.get(name, 0) + 1
        verb = {"generate": "generating", "choose": "choosing"}.get(kind, "retrieving")
        self.note(f"{verb}: {name}" + (f" #{n}" if n > 1 else ""))
        if self.text_sink(name) is not None:
            self.streamed.append("")
            self._writing = False

    def step_finished(self, step: object) -> None:
        if self._writing:  # end the streamed reply's line
            self.out.write("\n")
            self.out.flush()
            self._writing = False

    def text_sink(self, name: str) -> Callable[[str], None] | None:
        return self._write if self.stream and name in ANSWER_STEPS else None

    def _write(self, text: str) -> None:
        if not self._writing:
            text = text.lstrip()  # replies usually start with a space or a newline
            if not text:
                return
            self._writing = True
        self.streamed[-1] += text
        self.out.write(text)
        self.out.flush()

    def shown(self, answer: str) -> bool:
        """Whether the streamed text already shows ``answer`` (the last answer step's reply, once cleaned)."""
        from flagstone.rag.base import clean_answer

        return bool(self.streamed) and bool(self.streamed[-1].strip()) and clean_answer(self.streamed[-1]) == answer


def cmd_ask(args: argparse.Namespace) -> int:
    from flagstone.models.generator import accepts_on_text, load_generator
    from flagstone.rag import PIPELINES, ContextIndex, Memory, listening

    if args.pipeline != "no_retrieval" and not args.context and not args.memory:
        raise FlagstoneError(f"--pipeline {args.pipeline} needs --context (or a saved --memory folder)")
    if args.stream and args.json:
        raise FlagstoneError("--stream prints the reply as text, --json prints one JSON object: choose one")
    settings = {"max_new_tokens": args.max_new_tokens}
    if args.pipeline in ("rag", "memorag", "search_o1"):
        settings["k"] = args.k
    if args.memory_kind is not None:  # a MemoRAG option (checked before any loading)
        settings["memory"] = args.memory_kind
    if args.first_query is not None:  # a Search-o1 option, likewise
        settings["first_query"] = args.first_query
    if args.evidence_check is not None:
        settings["evidence_check"] = args.evidence_check
    listener = AskListener(progress=not args.quiet, stream=False)
    listener.note(f"loading generator {args.generator}" + (f" at {args.base_url}" if args.base_url else ""))
    generator = load_generator(args.generator, base_url=args.base_url, guided=args.guided)
    if args.stream and not accepts_on_text(generator):
        raise FlagstoneError("--stream needs a local generator (one served through --base-url is not streamed)")
    listener.stream = args.stream if args.stream is not None else (
        sys.stdout.isatty() and not args.json and accepts_on_text(generator))
    if args.int8_clues:
        listener.note(f"loading {args.generator} in int8 to write the clues")
        settings["memory_generator"] = load_generator(args.generator, dtype="int8")
    pipeline = PIPELINES[args.pipeline](generator, **settings)

    context = memory = None
    saved = args.memory and (Path(args.memory) / "context.json").is_file()
    if saved:
        listener.note(f"loading the saved context from {args.memory} and indexing it")
        context = ContextIndex.load(args.memory, embedder=_embedder_for(args, listener), cache=_cache(args),
                                    show_progress=not args.quiet)
        if (Path(args.memory) / "memory.json").is_file():
            memory = Memory.load(args.memory)
    elif args.context:
        documents = _documents(args.context)
        embedder = _embedder_for(args, listener)
        listener.note(f"indexing {len(documents)} document(s) for {args.mode} retrieval")
        context = ContextIndex.build(documents, embedder=embedder, mode=args.mode, chunk_tokens=args.chunk_tokens,
                                     overlap=args.overlap, cache=_cache(args), show_progress=not args.quiet)
    with listening(listener):
        if args.pipeline == "memorag":
            answer = pipeline.ask(args.question, context, memory=memory, save_to=None if memory else args.memory)
            if memory is not None and memory.save_cache(args.memory):  # filled (or recomputed) by this question
                listener.note(f"saved the clue prompt's key-value cache in {args.memory}")
        else:
            answer = pipeline.ask(args.question, context)
    listener.note(f"done: {answer.trace.tokens} tokens")

    if args.json:
        print(json.dumps(answer.to_dict(), indent=2, ensure_ascii=False))
        return 0
    if not listener.shown(answer.answer):  # not streamed, or the answer came from another step
        print(answer.answer)
    if args.trace:
        print_trace(answer)
    return 0


def describe_action(action) -> str:
    """One line for a chosen action: what, how it was chosen, its text; or the unparsed reply."""
    how = f"policy: {action.reason}" if action.source == "policy" else action.source
    if action.scores:
        how += " " + ", ".join(f"{k}={v:.2f}" for k, v in action.scores.items())
    if action.reason and action.source != "policy":  # what the pipeline showed the model before it chose
        how += f"; {action.reason}"
    if action.unparsed:
        what = f"UNPARSED {action.chosen or ''} reply {' '.join(action.raw.split())[:200]!r}".replace("  ", " ")
    else:
        what = action.chosen + (f" {' '.join(action.argument.split())[:200]!r}" if action.argument else "")
    return f"[{action.step}] {what} ({how})"


def print_trace(answer, out: TextIO | None = None) -> None:
    """The steps in order (a retrieval: the query and the chunk ids; a choice: the chosen action and how it was
    chosen), then clues, queries, chunks read, condensed notes and the counts."""
    out = out or sys.stdout
    trace = answer.trace
    actions = iter(a for a in trace.actions if a.source != "policy" and a.step != "clues")
    for step in trace.steps:
        if step.kind == "retrieve":
            detail = f"query {' '.join(str(step.input).split())[:200]!r} -> {', '.join(step.chunk_ids)}"
        elif step.kind == "choose":
            action = next(actions, None)
            detail = "chose " + describe_action(action) if action is not None else step.output
        else:
            detail = " ".join(step.output.split())[:300]
        tokens = f"{step.prompt_tokens}+{step.completion_tokens} tok, " if step.kind != "retrieve" else ""
        print(f"  [{step.name}] ({tokens}{step.seconds:.1f} s) {detail}", file=out)
    for action in trace.actions:
        print(f"  action {describe_action(action)}", file=out)
    for label, values in (("clues", trace.clues), ("queries", trace.queries), ("chunks", trace.retrieved)):
        if values:
            print(f"  {label}: {' | '.join(values)}", file=out)
    for note in trace.notes:
        print(f"  note: {' '.join(note.split())[:300]}", file=out)
    print(f"  total: {trace.tokens} tokens, {answer.seconds:.1f} s, {trace.searches} searches, "
          f"{trace.unparsed_actions} unparsed actions", file=out)


def _embedder_for(args: argparse.Namespace, listener: AskListener):
    if args.mode == "bm25":
        return None
    from flagstone.models.embedder import Embedder
    from flagstone.models.presets import DEFAULT_MODEL

    listener.note(f"loading embedding model {args.model or DEFAULT_MODEL}")
    return Embedder(args.model or DEFAULT_MODEL, backend=args.backend, precision=args.precision,
                    show_progress=not args.quiet)


COMMANDS = {"ask": cmd_ask}
