"""The ``flagstone search`` command: search a corpus in any mode, optionally reranked."""
from __future__ import annotations

import argparse
import json

from flagstone.cli._common import (
    EPILOG,
    MODES,
    _add_hybrid_options,
    _add_model_options,
    _read_texts,
    _retriever,
    _snippet,
    existing_path,
    positive_int,
    probability,
    reranker_spec,
)


def add_parsers(sub) -> None:
    p = sub.add_parser("search", help="search a corpus (BEIR folder, JSONL or text file) with any mode",
                       description="Index a corpus and print the top results for each query.", epilog=EPILOG)
    p.add_argument("corpus", type=existing_path,
                   help="a BEIR folder, a corpus .jsonl (_id/id, title, text) or a .txt file")
    p.add_argument("-q", "--query", action="append", required=True, help="a query (repeatable)")
    p.add_argument("--mode", choices=MODES, default="hybrid", help="retrieval mode (default: hybrid)")
    p.add_argument("-k", type=positive_int, default=10, help="results per query (default: 10)")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    g = p.add_argument_group("reranking")
    g.add_argument("--rerank", type=reranker_spec, default=None, metavar="MODEL",
                   help="rerank the first stage: a cross-encoder (folder or hub name, bge-reranker format), "
                        "'llm' for the bundled SmolLM2 yes/no reranker, or 'llm:MODEL' for another causal LM")
    g.add_argument("--rerank-depth", type=positive_int, default=100, help="first-stage hits to rerank (default: 100)")
    g.add_argument("--first-stage-weight", type=probability, default=0.0,
                   help="interpolate: (1-w) reranker + w first stage, min-max normalised (default: 0)")
    _add_model_options(p)
    _add_hybrid_options(p)


def cmd_search(args: argparse.Namespace) -> int:
    ids, texts = _read_texts(args.corpus)
    retriever = _retriever(args, [args.mode])
    retriever.fit(ids, texts)
    by_id = dict(zip(ids, texts))
    if args.rerank:
        from flagstone.rerank import rerank_hits

        reranker = _reranker(args.rerank, args.backend, args.precision)
        first = retriever.search(args.query, mode=args.mode, k=max(args.k, args.rerank_depth))
        from flagstone.retrieval.retriever import Hits

        ranked = rerank_hits(reranker, args.query, first, by_id, depth=args.rerank_depth,
                             first_stage_weight=args.first_stage_weight, show_progress=not args.quiet)
        hits = Hits(ranked.mode, [row[: args.k] for row in ranked.ids], ranked.scores[:, : args.k],
                    {n: v[:, : args.k] for n, v in ranked.signals.items()})
    else:
        hits = retriever.search(args.query, mode=args.mode, k=args.k)
    for qi, query in enumerate(args.query):
        if args.json:
            print(json.dumps({"query": query, "mode": hits.mode, "hits": [
                {"id": d, "score": float(s), **{n: float(v[qi, r]) for n, v in hits.signals.items()}}
                for r, (d, s) in enumerate(zip(hits.ids[qi], hits.scores[qi]))]}))
            continue
        print(f"\n{query}  [{hits.mode}]")
        for rank, (doc_id, score) in enumerate(zip(hits.ids[qi], hits.scores[qi]), start=1):
            print(f"  {rank:>2}. {score:8.4f}  {doc_id}: {_snippet(by_id[doc_id])}")
    return 0


def _reranker(spec: str, backend: str, precision: str):
    """The reranker ``spec`` names; a cross-encoder runs on the embedder's backend and precision (the LLM
    reranker on torch: it is a causal LM, which the backends do not export)."""
    from flagstone.models.reranker import CrossEncoderReranker, LLMReranker

    if spec == "llm":
        return LLMReranker()
    if spec.startswith("llm:"):
        return LLMReranker(spec[4:])
    return CrossEncoderReranker(spec, backend=backend, precision=precision)


COMMANDS = {"search": cmd_search}
