"""How well do the RAG pipelines answer, and how much do they cost? HotpotQA distractor (100 questions, each
with its 10 paragraphs) and a needle-in-a-haystack run over the essays, with the bundled SmolLM2-135M.

    python benchmarks/rag_qa.py                     # every pipeline, 100 questions, then NIAH, then the report
    python benchmarks/rag_qa.py --pipelines rag,memorag --shard 0/2 --threads 1 &   # two workers share the
    python benchmarks/rag_qa.py --pipelines rag,memorag --shard 1/2 --threads 1 &   # questions between them
    python benchmarks/rag_qa.py --report            # only rebuild rag_qa.json / rag_qa.md from what is done
    python benchmarks/rag_qa.py --limit 5 --pipelines search_o1,rag_equal_tokens_search_o1 --skip-niah \
        --out rag_qa_slice                          # a trial slice, kept apart from the full results

Variants of an agent's settings run as pipelines of their own: ``search_o1_question_first`` (the first query
is the question itself) and ``memorag_int8_clues`` (an int8 copy of the model writes the clues).

Answers are appended per question to benchmarks/results/rag_qa/<pipeline>.jsonl, so an interrupted run goes
on where it stopped (after changing a pipeline, move its old answers aside). Each question's paragraphs are
chunked (200 MiniLM tokens, i.e. about one paragraph a chunk) and indexed with hybrid dense + BM25
retrieval; RAG, MemoRAG and Search-o1 read k=3 chunks per search. Supporting-fact recall counts the supporting sentences covered by the chunks a pipeline retrieved
(for LC-Boost: the chunks it read; for full context: every chunk that fitted). rag_equal_tokens_X is plain
RAG given, on each question, the tokens agent X used on it (so it runs after X). Searches, unparsed actions
and silent defaults are recomputed from the stored traces. Each answer also keeps the supporting-fact recall
of every retrieval step's chunks on their own (``search_recalls``), from which the report counts the
questions whose first search missed a supporting fact and how many of them searched again.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, SHARED_DATA, first_search_or_answer_decision, save_results

AGENTS = ("memorag", "search_o1", "lc_boost")
EQUAL_TOKENS = "rag_equal_tokens_"
# plain RAG at each agent's cost: per question, the tokens the agent used on that question (run after it)
# settings of an agent other than its defaults, run as pipelines of their own (no equal-token twin); a
# setting "int8" for memory_generator is the same model with int8 linear layers writing MemoRAG's clues
# search_o1_question_first was run before the evidence check existed: it stays without one, as run
VARIANTS = {"search_o1_no_evidence_check": ("search_o1", {"evidence_check": False}),
            "search_o1_question_first": ("search_o1", {"first_query": "question", "evidence_check": False}),
            "memorag_int8_clues": ("memorag", {"memory_generator": "int8"})}
PIPELINE_NAMES = ("no_retrieval", "full_context", "rag", *AGENTS, *(EQUAL_TOKENS + a for a in AGENTS), *VARIANTS)
NIAH_PIPELINES = ("full_context", "rag", "memorag", "lc_boost")


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

    if name.startswith(EQUAL_TOKENS):
        return PIPELINES["rag"](generator, k=k)  # its budget comes per question, see run_hotpotqa
    name, settings = VARIANTS.get(name, (name, {}))
    if settings.get("memory_generator") == "int8":
        from flagstone.models.generator import LocalGenerator

        settings = {**settings, "memory_generator": LocalGenerator(dtype="int8", threads=generator.threads)}
    cls = PIPELINES[name]
    if name in ("rag", "memorag", "search_o1"):
        return cls(generator, k=k, **settings)
    return cls(generator, **settings)


def compact_trace(answer) -> dict:
    """The trace without the prompts (they follow from the code and the data): outputs, ids, counts, actions."""
    from dataclasses import asdict

    trace = answer.trace
    return {"steps": [{"kind": s.kind, "name": s.name, "output": s.output, "chunk_ids": s.chunk_ids,
                       "tokens": s.prompt_tokens + s.completion_tokens, "prompt_tokens": s.prompt_tokens,
                       "cached_tokens": s.cached_tokens, "cache_miss": s.cache_miss, "seconds": round(s.seconds, 2)}
                      for s in trace.steps],
            "clues": trace.clues, "queries": trace.queries, "retrieved": trace.retrieved, "notes": trace.notes,
            "actions": [asdict(a) for a in trace.actions]}


def action_counts(trace: dict) -> dict | None:
    """Searches, unparsed actions, silent defaults and the chosen actions, recomputed from a stored trace
    (None for the action fields of answers recorded before actions were traced)."""
    from flagstone.rag.base import Action, Step, Trace

    searches = sum(s["kind"] == "retrieve" for s in trace["steps"])
    if "actions" not in trace:
        return {"searches": searches, "unparsed_actions": None, "silent_defaults": None, "chosen": None}
    rebuilt = Trace(steps=[Step(s["kind"], s["name"], "") for s in trace["steps"]],
                    actions=[Action(**a) for a in trace["actions"]])
    chosen: dict[str, int] = {}
    for a in rebuilt.actions:
        key = f"{a.step}:{'unparsed' if a.unparsed else a.chosen}" + (f" ({a.source})" if a.source == "policy" else "")
        chosen[key] = chosen.get(key, 0) + 1
    return {"searches": searches, "unparsed_actions": rebuilt.unparsed_actions,
            "silent_defaults": rebuilt.silent_defaults, "chosen": chosen}


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
        path = args.out / f"{name}.jsonl"
        done = done_ids(path)  # read once, not once per question
        todo = [e for e in mine if e.id not in done]
        budgets = {}
        if name.startswith(EQUAL_TOKENS):  # the agent's tokens on each question it answered
            agent = args.out / f"{name[len(EQUAL_TOKENS):]}.jsonl"
            budgets = {r["id"]: r["tokens"] for r in map(json.loads, agent.read_text().splitlines())} \
                if agent.is_file() else {}
            missing = [e.id for e in todo if e.id not in budgets]
            if missing:
                print(f"{name}: {len(missing)} questions have no answer from {agent.stem} yet: skipped", flush=True)
            todo = [e for e in todo if e.id in budgets]
        print(f"{name}: {len(todo)} of {len(mine)} questions to run", flush=True)
        pipeline = build_pipeline(name, generator, args.k)
        for n, example in enumerate(todo, 1):
            context = ContextIndex.build(example.documents, embedder=embedder, cache=cache)
            if budgets:
                answer = pipeline.ask(example.question, context, token_budget=budgets[example.id])
            else:
                answer = pipeline.ask(example.question, context)
            chunks = [context.by_id[c] for c in answer.trace.retrieved]
            # supporting-fact recall of each retrieval step's chunks on its own: did the first search miss a fact?
            search_recalls = [support_recall(example.supporting, [context.by_id[c] for c in s.chunk_ids])
                              for s in answer.trace.steps if s.kind == "retrieve"]
            record = {"id": example.id, "type": example.type, "answer": answer.answer, "gold": example.answers,
                      "em": exact_match(answer.answer, example.answers), "f1": token_f1(answer.answer, example.answers),
                      "support_recall": support_recall(example.supporting, chunks) if name != "no_retrieval" else None,
                      "search_recalls": search_recalls,
                      "chunks": len(chunks), "tokens": answer.trace.tokens, "seconds": round(answer.seconds, 2),
                      "generator_calls": sum(s.kind != "retrieve" for s in answer.trace.steps),
                      "trace": compact_trace(answer)}
            append(path, record)
            counts = action_counts(record["trace"])
            print(f"  {name} {n}/{len(todo)} f1={record['f1']:.2f} recall={record['support_recall']} "
                  f"searches={counts['searches']} unparsed={counts['unparsed_actions']} "
                  f"{answer.seconds:.1f}s {answer.answer[:60]!r}", flush=True)


def run_niah(args, generator, embedder, cache) -> None:
    from flagstone.evaluation.niah import DEFAULT_NEEDLE, build_haystack, load_essays
    from flagstone.rag import ContextIndex

    essays = load_essays(SHARED_DATA / "longctx" / "paulgraham_essays")
    path = args.out / "niah.jsonl"
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
        path = args.out / f"{name}.jsonl"
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = list({r["id"]: r for r in rows}.values())[: args.n]
        recalls = [r["support_recall"] for r in rows if r["support_recall"] is not None]
        counts = [action_counts(r["trace"]) for r in rows]
        traced = all(c["unparsed_actions"] is not None for c in counts)  # None: recorded before actions were
        chosen: dict[str, int] = {}
        for c in counts if traced else []:
            for key, n in c["chosen"].items():
                chosen[key] = chosen.get(key, 0) + n
        pipelines[name] = {
            "em": float(np.mean([r["em"] for r in rows])), "f1": float(np.mean([r["f1"] for r in rows])),
            "support_recall": float(np.mean(recalls)) if recalls else None,
            "chunks_per_q": float(np.mean([r["chunks"] for r in rows])),
            "tokens_per_q": float(np.mean([r["tokens"] for r in rows])),
            "s_per_q": float(np.mean([r["seconds"] for r in rows])),
            "generator_calls_per_q": float(np.mean([r["generator_calls"] for r in rows])),
            "searches_per_q": float(np.mean([c["searches"] for c in counts])),
            "share_with_search": float(np.mean([c["searches"] > 0 for c in counts])),
            "unparsed_actions": sum(c["unparsed_actions"] for c in counts) if traced else None,
            "silent_defaults": sum(c["silent_defaults"] for c in counts) if traced else None,
            "actions": dict(sorted(chosen.items())) if traced else None,
            "n_questions": len(rows),
        }
        # questions whose first search missed a supporting fact, and the share of them that searched again
        recorded = [r for r in rows if r.get("search_recalls")]
        missed = [r for r in recorded if r["search_recalls"][0] < 1.0]
        duplicates = [sum(n.startswith("duplicate query:") for n in r["trace"]["notes"]) for r in rows]
        pipelines[name].update({
            "first_search_missed": len(missed) if recorded else None,
            "second_search_after_miss": float(np.mean([len(r["search_recalls"]) >= 2 for r in missed]))
            if missed else None,
            # of those, the share where a later search brought a supporting fact the first one missed
            "later_search_found_missing": float(np.mean([r["support_recall"] > r["search_recalls"][0]
                                                         for r in missed])) if missed else None,
            "duplicate_queries": sum(duplicates),
            "questions_with_duplicate_query": sum(d > 0 for d in duplicates)})
        # the model's first scored decision after the first search: does it follow whether that search missed?
        for label, group in (("missed", missed), ("found", [r for r in recorded if r not in missed])):
            first = [a for a in map(first_search_or_answer_decision, group) if a is not None]
            pipelines[name][f"first_decision_after_{label}"] = {
                "search": sum(a["chosen"] == "search" for a in first),
                "answer": sum(a["chosen"] == "answer" for a in first),
                "median_log_odds_search": float(np.median([a["scores"]["search"] - a["scores"]["answer"]
                                                           for a in first])) if first else None,
                # of those, the decisions shown Search-o1's evidence line (a name of the question still unread)
                "with_evidence_line": {c: sum(a["chosen"] == c and a["reason"].startswith("evidence check")
                                              for a in first) for c in ("search", "answer")}}
    niah_path = args.out / "niah.jsonl"
    niah = [json.loads(line) for line in niah_path.read_text().splitlines()] if niah_path.is_file() else []
    niah = [{k: r[k] for k in ("method", "length", "depth", "correct", "tokens", "seconds")} for r in niah]
    results = {"generator": generator_name, "n_questions": args.n, "pipelines": pipelines, "niah": niah,
               "settings": {"data": "HotpotQA dev distractor, first 100 records of the shared sample",
                            "chunking": "200 all-MiniLM-L6-v2 tokens, overlap 32",
                            "retrieval": "hybrid dense (all-MiniLM-L6-v2) + BM25", "k": args.k,
                            "decoding": "greedy", "machine": "2 CPU cores, float32"}}
    lines += ["| pipeline | questions | EM | F1 | supporting-fact recall | chunks / q | tokens / q | s / q | "
              "searches / q | share with search | unparsed actions | silent defaults |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in pipelines.items():
        recall = f"{p['support_recall']:.3f}" if p["support_recall"] is not None else "-"
        unparsed, silent = (str(p[k]) if p[k] is not None else "not traced" for k in ("unparsed_actions",
                                                                                      "silent_defaults"))
        lines.append(f"| {name} | {p['n_questions']} | {p['em']:.3f} | {p['f1']:.3f} | {recall} | "
                     f"{p['chunks_per_q']:.1f} | {p['tokens_per_q']:.0f} | {p['s_per_q']:.1f} | "
                     f"{p['searches_per_q']:.2f} | {p['share_with_search']:.2f} | {unparsed} | {silent} |")
    searching = {name: p for name, p in pipelines.items() if p["first_search_missed"] and p["searches_per_q"] > 1}
    if searching:
        lines += ["", "Searching again when the first search missed a supporting fact (supporting-fact recall of the "
                  "first search's chunks below 1):", ""]
        lines += [f"- {name}: first search missed in {p['first_search_missed']} of {p['n_questions']} questions; "
                  f"a second search in {p['second_search_after_miss']:.0%} of those, a later search found a "
                  f"missed fact in {p['later_search_found_missing']:.0%}; repeated queries (not searched again): "
                  f"{p['duplicate_queries']} in {p['questions_with_duplicate_query']} questions"
                  for name, p in searching.items()]
        for name, p in searching.items():
            d = {label: p[f"first_decision_after_{label}"] for label in ("missed", "found")}
            if all(v["median_log_odds_search"] is not None for v in d.values()):
                lines.append(f"- {name}, first scored decision: after a missed first search search "
                             f"{d['missed']['search']} / answer {d['missed']['answer']} (median log-odds of search "
                             f"{d['missed']['median_log_odds_search']:+.2f}); after a hit search {d['found']['search']}"
                             f" / answer {d['found']['answer']} ({d['found']['median_log_odds_search']:+.2f})"
                             + "".join(f"; {label}: evidence line shown in {sum(v['with_evidence_line'].values())} "
                                       f"(search {v['with_evidence_line']['search']})" for label, v in
                                       (("after a miss", d["missed"]), ("after a hit", d["found"]))
                                       if any(v.get("with_evidence_line", {}).values())))
    actions = {name: p["actions"] for name, p in pipelines.items() if p["actions"]}
    if actions:
        lines += ["", "Chosen actions (step:action, summed over the questions; \"(policy)\" = the pipeline's "
                  "rule):", ""]
        lines += [f"- {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) for name, counts in actions.items()]
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
    save_results(args.out.name, "\n".join(lines), **{args.out.name: results})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "qa" / "hotpotqa" / "hotpot_dev_distractor_sample100.jsonl"))
    parser.add_argument("--n", "--limit", dest="n", type=int, default=100, help="questions (default: 100)")
    parser.add_argument("--out", default="rag_qa",
                        help="results name: answers under benchmarks/results/NAME/, report NAME.json/.md (default: "
                             "rag_qa; use another name for a trial slice so the full results stay untouched)")
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
    if not args.out.replace("_", "").replace("-", "").isalnum():
        parser.error("--out must be a plain name (letters, digits, _ and -)")
    args.out = RESULTS / args.out
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
