"""Could a pooled corpus let the RAG agents beat plain RAG at equal tokens? Retrieval only, no generation.

    python benchmarks/rag_budget_pooled.py          # after rag_qa.py: reads the agents' stored answers

rag_qa.py gives each HotpotQA question its own 10 paragraphs (about 1,600 tokens), so plain RAG at any agent's
token budget reads the whole context (supporting-fact recall 1.000) and no agent can match it. This benchmark
asks whether one index over all 100 questions' paragraphs (1,000 paragraphs, each question then searching every
one) changes that, before spending generator time on it. For every agent with stored answers
(benchmarks/results/rag_qa/<agent>.jsonl) it takes, per question, the tokens the agent used and the chunks plain
RAG would read at that budget (RAG.passages_within: rank order, whole call within the budget, capped by the
generator's window), on the question's own paragraphs and on the pooled corpus, and reports the supporting-fact
recall of those chunks beside the agent's stored recall (measured on its own paragraphs only; the agents were
not run on the pooled corpus). Also plain RAG at fixed k on both corpora. Chunking and retrieval as rag_qa.py
(200 MiniLM tokens, overlap 32, hybrid dense + BM25); embeddings come from the embedding cache.
Writes benchmarks/results/rag_budget_pooled.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, SHARED_DATA, save_results

AGENTS = ("search_o1", "memorag", "lc_boost")  # rag_qa.py's
FIXED_K = (3, 5, 10, 20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data",
                        default=str(SHARED_DATA / "qa" / "hotpotqa" / "hotpot_dev_distractor_sample100.jsonl"))
    parser.add_argument("--answers", default=str(RESULTS / "rag_qa"),
                        help="folder of rag_qa.py's stored answers (default: benchmarks/results/rag_qa)")
    parser.add_argument("-n", type=int, default=100, help="questions (default: 100)")
    args = parser.parse_args()
    answers = Path(args.answers)
    if not Path(args.data).is_file():
        print(f"HotpotQA sample not found at {args.data}", file=sys.stderr)
        return 2
    stored = {a: {r["id"]: r for r in map(json.loads, (answers / f"{a}.jsonl").read_text().splitlines())}
              for a in AGENTS if (answers / f"{a}.jsonl").is_file()}
    if not stored:
        print(f"no agent answers under {answers}: run benchmarks/rag_qa.py first", file=sys.stderr)
        return 2

    from flagstone.evaluation.qa import load_hotpotqa, support_recall
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.embedder import Embedder
    from flagstone.models.generator import LocalGenerator
    from flagstone.rag import ContextIndex
    from flagstone.rag.plain import RAG

    started = time.perf_counter()
    examples = load_hotpotqa(args.data, limit=args.n)
    embedder, cache = Embedder(show_progress=False), EmbeddingCache()
    rag = RAG(LocalGenerator(threads=1))  # only its tokenizer and window are used
    pooled = ContextIndex.build([d for e in examples for d in e.documents], embedder=embedder, cache=cache)
    own = {e.id: ContextIndex.build(e.documents, embedder=embedder, cache=cache) for e in examples}
    corpora = {"own": lambda e: own[e.id], "pooled": lambda e: pooled}

    fixed_k = {corpus: {k: float(np.mean([support_recall(e.supporting, pick(e).search([e.question], k)[0])
                                          for e in examples])) for k in FIXED_K}
               for corpus, pick in corpora.items()}
    at_budget = {}
    for agent, records in stored.items():
        asked = [e for e in examples if e.id in records]
        row = {"questions": len(asked),
               "agent_tokens_per_q": float(np.mean([records[e.id]["tokens"] for e in asked])),
               "agent_support_recall_own": float(np.mean([records[e.id]["support_recall"] for e in asked]))}
        for corpus, pick in corpora.items():
            recalls, chunks = [], []
            for e in asked:
                context = pick(e)
                (ranked,) = context.search([e.question], min(len(context.chunks), 200))
                read = rag.passages_within(e.question, ranked, records[e.id]["tokens"])
                recalls.append(support_recall(e.supporting, read))
                chunks.append(len(read))
            row[f"rag_support_recall_{corpus}"] = float(np.mean(recalls))
            row[f"rag_chunks_per_q_{corpus}"] = float(np.mean(chunks))
        at_budget[agent] = row

    own_per_q = float(np.mean([len(c.chunks) for c in own.values()]))
    results = {"questions": len(examples), "chunks": {"own_per_q": own_per_q, "pooled": len(pooled.chunks)},
               "rag_fixed_k": fixed_k, "rag_at_agent_budget": at_budget,
               "settings": {"chunking": "200 all-MiniLM-L6-v2 tokens, overlap 32",
                            "window": rag.generator.context_window,
                            "retrieval": "hybrid dense (all-MiniLM-L6-v2) + BM25", "answers": str(answers)},
               "wall_s": round(time.perf_counter() - started, 1)}
    lines = [f"HotpotQA distractor, {len(examples)} questions: each question's own paragraphs "
             f"({results['chunks']['own_per_q']:.1f} chunks) vs one pooled index over all of them "
             f"({len(pooled.chunks)} chunks). Supporting-fact recall of the chunks plain RAG reads; "
             "retrieval only.", "",
             "| plain RAG, fixed k | " + " | ".join(f"k={k}" for k in FIXED_K) + " |",
             "|---|" + "---|" * len(FIXED_K)]
    lines += [f"| {corpus} | " + " | ".join(f"{fixed_k[corpus][k]:.3f}" for k in FIXED_K) + " |" for corpus in corpora]
    lines += ["", "| agent | tokens / q | agent recall (own paragraphs, stored) | RAG at its budget, own: recall "
              "(chunks) | RAG at its budget, pooled: recall (chunks) |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {r['agent_tokens_per_q']:.0f} | {r['agent_support_recall_own']:.3f} | "
              f"{r['rag_support_recall_own']:.3f} ({r['rag_chunks_per_q_own']:.1f}) | "
              f"{r['rag_support_recall_pooled']:.3f} ({r['rag_chunks_per_q_pooled']:.1f}) |"
              for a, r in at_budget.items()]
    lines += ["", "The agents were not run on the pooled corpus; their recall is from rag_qa.py on each question's own "
              "paragraphs. RAG's budget is the agent's tokens on that question, the whole call capped by the "
              f"{rag.generator.context_window}-token window. {results['wall_s']:.0f} s."]
    save_results("rag_budget_pooled", "\n".join(lines), rag_budget_pooled=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
