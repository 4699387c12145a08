"""How well do the RAG pipelines answer, and how much do they cost? HotpotQA distractor (100 questions, each
with its 10 paragraphs) and a needle-in-a-haystack run over the essays, with the bundled SmolLM2-135M.

    python benchmarks/rag_qa.py                     # every pipeline, 100 questions, then NIAH, then the report
    python benchmarks/rag_qa.py --pipelines rag,memorag --shard 0/2 --threads 1 &   # two workers share the
    python benchmarks/rag_qa.py --pipelines rag,memorag --shard 1/2 --threads 1 &   # questions between them
    python benchmarks/rag_qa.py --report            # only rebuild rag_qa.json / rag_qa.md from what is done

Answers are appended per question to benchmarks/results/rag_qa/<pipeline>.jsonl, so an interrupted run goes
on where it stopped. Each question's paragraphs are chunked (200 MiniLM tokens, i.e. about one paragraph a
chunk) and indexed with hybrid dense + BM25 retrieval; RAG, MemoRAG and Search-o1 read k=3 chunks per
search. Supporting-fact recall counts the supporting sentences covered by the chunks a pipeline retrieved
(for LC-Boost: the chunks it read; for full context: every chunk that fitted).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, SHARED_DATA, save_results

PIPELINE_NAMES = ("no_retrieval", "full_context", "rag", "memorag", "search_o1", "lc_boost")
NIAH_PIPELINES = ("full_context", "rag", "memorag", "lc_boost")
OUT = RESULTS / "rag_qa"


def done_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


def append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def build_pipeline(name: str, generator, k: int):
    from flagstone.rag import PIPELINES

    cls = PIPELINES[name]
    if name in ("rag", "memorag", "search_o1"):
        return cls(generator, k=k)
    return cls(generator)


def compact_trace(answer) -> dict:
    """The trace without the prompts (they follow from the code and the data): outputs, ids, counts."""
    trace = answer.trace
    return {"steps": [{"kind": s.kind, "name": s.name, "output": s.output, "chunk_ids": s.chunk_ids,
                       "tokens": s.prompt_tokens + s.completion_tokens, "seconds": round(s.seconds, 2)}
                      for s in trace.steps],
            "clues": trace.clues, "queries": trace.queries, "retrieved": trace.retrieved, "notes": trace.notes}


def run_hotpotqa(args, generator, embedder, cache) -> None:
    from flagstone.evaluation.qa import (
        exact_match,
        load_hotpotqa,
        support_recall,
        token_f1,
    )
    from flagstone.rag import ContextIndex

    examples = load_hotpotqa(args.data, limit=args.n)
    shard, shards = args.shard
    mine = [e for i, e in enumerate(examples) if i % shards == shard]
    for name in args.pipelines:
        path = OUT / f"{name}.jsonl"
        done = done_ids(path)  # read once, not once per question
        todo = [e for e in mine if e.id not in done]
        print(f"{name}: {len(todo)} of {len(mine)} questions to run", flush=True)
        pipeline = build_pipeline(name, generator, args.k)
        for n, example in enumerate(todo, 1):
            context = ContextIndex.build(example.documents, embedder=embedder, cache=cache)
            answer = pipeline.ask(example.question, context)
            chunks = [context.by_id[c] for c in answer.trace.retrieved]
            record = {"id": example.id, "type": example.type, "answer": answer.answer, "gold": example.answers,
                      "em": exact_match(answer.answer, example.answers), "f1": token_f1(answer.answer, example.answers),
                      "support_recall": support_recall(example.supporting, chunks) if name != "no_retrieval" else None,
                      "chunks": len(chunks), "tokens": answer.trace.tokens, "seconds": round(answer.seconds, 2),
                      "generator_calls": sum(s.kind == "generate" for s in answer.trace.steps),
                      "trace": compact_trace(answer)}
            append(path, record)
            print(f"  {name} {n}/{len(todo)} f1={record['f1']:.2f} recall={record['support_recall']} "
                  f"{answer.seconds:.1f}s {answer.answer[:60]!r}", flush=True)


def run_niah(args, generator, embedder, cache) -> None:
    from flagstone.evaluation.niah import DEFAULT_NEEDLE, build_haystack, load_essays
    from flagstone.rag import ContextIndex

    essays = load_essays(SHARED_DATA / "longctx" / "paulgraham_essays")
    path = OUT / "niah.jsonl"
    done = {(r["method"], r["length"], r["depth"]) for r in map(json.loads, path.read_text().splitlines())} \
        if path.is_file() else set()
    shard, shards = args.shard
    cells = [(length, depth) for length in args.niah_lengths for depth in args.niah_depths]
    for i, (length, depth) in enumerate(cells):
        if i % shards != shard:
            continue
        todo = [m for m in NIAH_PIPELINES if (m, length, depth) not in done]
        if not todo:
            continue
        haystack = build_haystack(essays, length, depth, generator.count_tokens)
        context = ContextIndex.build(haystack, embedder=embedder, cache=cache)
        for name in todo:
            answer = build_pipeline(name, generator, args.k).ask(DEFAULT_NEEDLE.question, context)
            record = {"method": name, "length": length, "depth": depth,
                      "correct": DEFAULT_NEEDLE.is_found(answer.answer), "answer": answer.answer,
                      "tokens": answer.trace.tokens, "seconds": round(answer.seconds, 2)}
            append(path, record)
            print(f"  niah {name} length={length} depth={depth} correct={record['correct']} "
                  f"{answer.seconds:.1f}s {answer.answer[:60]!r}", flush=True)


def report(args, generator_name: str) -> None:
    pipelines, lines = {}, []
    for name in PIPELINE_NAMES:
        path = OUT / f"{name}.jsonl"
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = list({r["id"]: r for r in rows}.values())[: args.n]
        recalls = [r["support_recall"] for r in rows if r["support_recall"] is not None]
        pipelines[name] = {
            "em": float(np.mean([r["em"] for r in rows])), "f1": float(np.mean([r["f1"] for r in rows])),
            "support_recall": float(np.mean(recalls)) if recalls else None,
            "chunks_per_q": float(np.mean([r["chunks"] for r in rows])),
            "tokens_per_q": float(np.mean([r["tokens"] for r in rows])),
            "s_per_q": float(np.mean([r["seconds"] for r in rows])),
            "generator_calls_per_q": float(np.mean([r["generator_calls"] for r in rows])),
            "n_questions": len(rows),
        }
    niah_path = OUT / "niah.jsonl"
    niah = [json.loads(line) for line in niah_path.read_text().splitlines()] if niah_path.is_file() else []
    niah = [{k: r[k] for k in ("method", "length", "depth", "correct", "tokens", "seconds")} for r in niah]
    results = {"generator": generator_name, "n_questions": args.n, "pipelines": pipelines, "niah": niah,
               "settings": {"data": "HotpotQA dev distractor, first 100 records of the shared sample",
                            "chunking": "200 all-MiniLM-L6-v2 tokens, overlap 32",
                            "retrieval": "hybrid dense (all-MiniLM-L6-v2) + BM25", "k": args.k,
                            "decoding": "greedy", "machine": "2 CPU cores, float32"}}
    lines += ["| pipeline | questions | EM | F1 | supporting-fact recall | chunks / q | tokens / q | s / q |",
              "|---|---|---|---|---|---|---|---|"]
    for name, p in pipelines.items():
        recall = f"{p['support_recall']:.3f}" if p["support_recall"] is not None else "-"
        lines.append(f"| {name} | {p['n_questions']} | {p['em']:.3f} | {p['f1']:.3f} | {recall} | "
                     f"{p['chunks_per_q']:.1f} | {p['tokens_per_q']:.0f} | {p['s_per_q']:.1f} |")
    if niah:
        lengths = sorted({r["length"] for r in niah})
        lines += ["", "Needle in a haystack (correct / runs over depths), by haystack length in SmolLM2 tokens:", "",
                  "| method | " + " | ".join(str(n) for n in lengths) + " | s / run |",
                  "|---|" + "---|" * (len(lengths) + 1)]
        for method in NIAH_PIPELINES:
            cells = []
            for n in lengths:
                rows = [r for r in niah if r["method"] == method and r["length"] == n]
                cells.append(f"{sum(r['correct'] for r in rows)}/{len(rows)}" if rows else "-")
            runs = [r["seconds"] for r in niah if r["method"] == method]
            if runs:
                lines.append(f"| {method} | " + " | ".join(cells) + f" | {np.mean(runs):.0f} |")
    lines += ["", f"Generator {generator_name}, greedy; retrieval hybrid MiniLM + BM25, k={args.k}; 2 CPU cores."]
    save_results("rag_qa", "\n".join(lines), rag_qa=results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "qa" / "hotpotqa" / "hotpot_dev_distractor_sample100.jsonl"))
    parser.add_argument("--n", type=int, default=100, help="questions (default: 100)")
    parser.add_argument("--pipelines", default=",".join(PIPELINE_NAMES),
                        help=f"comma-separated, from {', '.join(PIPELINE_NAMES)}")
    parser.add_argument("--k", type=int, default=3, help="chunks read per retrieval (default: 3)")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th question starting at i")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for this worker")
    parser.add_argument("--skip-qa", action="store_true", help="skip HotpotQA")
    parser.add_argument("--skip-niah", action="store_true", help="skip the needle-in-a-haystack run")
    parser.add_argument("--niah-lengths", default="2000,4000,8000,16000")
    parser.add_argument("--niah-depths", default="0.1,0.5,0.9")
    parser.add_argument("--report", action="store_true", help="only write the report from finished answers")
    args = parser.parse_args()
    args.pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    unknown = set(args.pipelines) - set(PIPELINE_NAMES)
    if unknown:
        parser.error(f"unknown pipelines {sorted(unknown)}")
    try:
        shard, shards = (int(x) for x in args.shard.split("/"))
        assert 0 <= shard < shards
    except (ValueError, AssertionError):
        parser.error("--shard must look like 0/2")
    args.shard = (shard, shards)
    args.niah_lengths = [int(x) for x in args.niah_lengths.split(",")]
    args.niah_depths = [float(x) for x in args.niah_depths.split(",")]
    if not Path(args.data).is_file():
        print(f"HotpotQA sample not found at {args.data}", file=sys.stderr)
        return 2
    generator_name = "SmolLM2-135M-Instruct (bundled GGUF Q4_1, dequantised to float32)"
    if not args.report:
        import torch

        from flagstone.models.cache import EmbeddingCache
        from flagstone.models.embedder import Embedder
        from flagstone.models.generator import LocalGenerator

        if args.threads:
            torch.set_num_threads(args.threads)
        start = time.perf_counter()
        generator = LocalGenerator()
        embedder, cache = Embedder(show_progress=False), EmbeddingCache()
        if not args.skip_qa:
            run_hotpotqa(args, generator, embedder, cache)
        if not args.skip_niah:
            run_niah(args, generator, embedder, cache)
        print(f"worker {args.shard[0]}/{args.shard[1]} finished in {time.perf_counter() - start:.0f} s")
    report(args, generator_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
