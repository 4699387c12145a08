"""How good is generative retrieval (DSI / NCI style) on SciFact, beside BM25 and dense MiniLM?

Two slices, each evaluated on SciFact's 300 test queries (nDCG@10, Recall@10, ms/query, model size):

- ``subset_1000``: 1,000 SciFact documents: every document judged relevant to a test query, then documents drawn
  uniformly at random (seed 0) from the rest of the corpus until there are 1,000. Every test query's relevant
  documents are in it, so it is an easier, smaller corpus (where DSI-style models are known to compete);
- ``scifact``: the whole corpus (5,183 documents).

The generative models are initialised at random (a small Llama-shaped decoder over the bundled MiniLM's WordPiece
vocabulary plus the docid tokens) and trained here, on 2 CPU cores, on indexing examples (each document's opening
tokens), cheap pseudo-queries (first sentence and random word spans, see flagstone/genir/training.py) and the
SciFact *train* queries whose relevant documents are in the slice. Nothing is tuned: the settings are fixed before
the run, and the test split is only scored. BM25 and dense (all-MiniLM-L6-v2, exact search) index the same
documents and answer the same queries.

    python benchmarks/genir.py [--slices subset_1000 scifact] [--epochs 8] [--docids semantic atomic] [--max-minutes M]
        [--pseudo-query-source spans llm] [--llm-queries 1] [--query-generator smollm2-135m-instruct] [--out NAME]

``--pseudo-query-source llm`` trains on queries the bundled chat LM writes for every document (doc2query / DSI-QG
style, flagstone/genir/query_generation.py) instead of the spans; the generation time is part of that row's cost
(``query_generation``; ``cost_seconds`` = generation + training, where a rerun that reads the cached queries counts
the generation time recorded when they were written).

Writes benchmarks/results/NAME.json and NAME.md (default NAME: genir) after every system, so a run cut short keeps
what finished.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, SHARED_DATA, save_results

from flagstone.evaluation.beir import BeirDataset, load_beir, load_qrels
from flagstone.evaluation.retrieval import evaluate_retrieval
from flagstone.genir.docids import atomic_docids, semantic_docids
from flagstone.genir.evaluation import evaluate_generative
from flagstone.genir.query_generation import PseudoQueries, QueryGenerationSettings, generate_pseudo_queries
from flagstone.genir.settings import GenIRModelConfig, GenIRTrainingSettings
from flagstone.genir.training import train_generative_retriever
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.retrieval.retriever import Retriever

K = (10,)
DEPTH = 10  # every system returns 10 hits per query; the generative ones decode with 10 beams


def subset_1000(test: BeirDataset, size: int = 1000, seed: int = 0) -> BeirDataset:
    """The test-relevant documents plus a seeded random draw from the rest, in corpus order."""
    relevant = {d for judged in test.qrels.values() for d in judged}
    rest = [d for d in test.doc_ids if d not in relevant]
    keep = relevant | set(random.Random(seed).sample(rest, size - len(relevant)))
    rows = [i for i, d in enumerate(test.doc_ids) if d in keep]
    return BeirDataset("scifact-subset-1000", [test.doc_ids[i] for i in rows], [test.doc_texts[i] for i in rows],
                       test.queries, test.qrels)


def baseline_rows(dataset: BeirDataset, embedder: Embedder, cache: EmbeddingCache) -> list[dict]:
    rows = []
    embedder.encode_queries(["warm-up: load the weights before any query is timed"])
    for mode, retriever in (("bm25", Retriever(None, signals=["bm25"])),
                            ("dense", Retriever(embedder, signals=["dense"], cache=cache))):
        start = time.perf_counter()
        retriever.fit(dataset.doc_ids, dataset.doc_texts)
        index_seconds = time.perf_counter() - start
        report = evaluate_retrieval(retriever, dataset, modes=[mode], k_values=K, depth=DEPTH, fit=False)
        result = report.results[mode]
        params = sum(p.numel() for p in embedder.model.parameters()) if mode == "dense" else None
        rows.append({"system": "BM25" if mode == "bm25" else "dense all-MiniLM-L6-v2 (flat)",
                     "ndcg@10": round(result.metrics.mean["ndcg@10"], 4),
                     "recall@10": round(result.metrics.mean["recall@10"], 4), "invalid_docids": 0,
                     "ms_per_query": round(1000 * result.seconds / len(dataset.qrels), 2),
                     "parameters": params, "index_seconds": round(index_seconds, 1)})
    return rows


def genir_row(dataset: BeirDataset, kind: str, train_pairs: list[tuple[str, str]], embedder: Embedder,
              cache: EmbeddingCache, config: GenIRModelConfig, settings: GenIRTrainingSettings,
              generated: PseudoQueries | None = None) -> dict:
    if kind == "atomic":
        docids = atomic_docids(dataset.doc_ids)
    else:
        vectors = cache.encode(embedder, dataset.doc_texts).dense
        docids = semantic_docids(dataset.doc_ids, vectors, branching=10, leaf_size=100, seed=0)
    result = train_generative_retriever(dataset.doc_texts, docids, queries=train_pairs, config=config,
                                        settings=settings,
                                        generated_queries=None if generated is None else generated.queries)
    retriever = result.retriever
    report = evaluate_generative(retriever, dataset, k_values=K, depth=DEPTH)
    metrics = report.results["genir"].metrics.mean
    # the same model decoding without the trie: how often would it invent a docid on its own?
    free = retriever.decode(dataset.query_texts(), DEPTH, constrained=False)
    unconstrained_invalid = sum(d is None for r in free for d in r.documents)
    with tempfile.TemporaryDirectory() as tmp:
        folder = retriever.save(Path(tmp) / "genir")
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    system = f"genir {kind} ids"
    extra = {}
    if generated is not None:
        system += f", llm pseudo-queries ({generated.replies // len(generated.queries)} per document)"
        if settings.pseudo_query_source == "llm+spans":
            system += f" + {settings.pseudo_queries} spans"
        extra = {"query_generation": generated.stats(),
                 "examples": {dataset.doc_ids[i]: generated.queries[i] for i in range(3)}}
    return {"system": system, **extra, "ndcg@10": round(metrics["ndcg@10"], 4),
            "recall@10": round(metrics["recall@10"], 4), "invalid_docids": report.settings["invalid_docids"],
            "unconstrained_invalid_docids": unconstrained_invalid, "hits_returned": DEPTH * len(dataset.qrels),
            "ms_per_query": report.settings["ms_per_query"], "parameters": retriever.parameters,
            "folder_bytes": size, "docid_tokens": retriever.n_docid_tokens, "docid_depth": docids.depth,
            "train_seconds": round(result.seconds, 1), "train_steps": result.steps, "epochs_run": result.epochs_run,
            "examples_per_epoch": result.examples_per_epoch, "final_loss": retriever.training["final_loss"],
            "pseudo_queries": settings.pseudo_queries, "pseudo_query_source": settings.pseudo_query_source}


def write(results: dict, name: str) -> None:
    lines = ["# Generative retrieval on SciFact (test queries, 10 hits each)", "",
             results["note"], ""]
    for slice_name in ("subset_1000", "scifact"):
        part = results.get(slice_name)
        if not part:
            lines += [f"## {slice_name}: not run", ""]
            continue
        lines += [f"## {slice_name}: {part['documents']:,} documents, {part['test_queries']} test queries, "
                  f"{part['train_pairs']} train query-document pairs", "",
                  "| system | nDCG@10 | Recall@10 | invalid docids | ms/query | parameters | epochs run | train s |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in part["rows"]:
            params = f"{row['parameters'] / 1e6:.1f}M" if row.get("parameters") else "-"
            lines.append(f"| {row['system']} | {row['ndcg@10']:.4f} | {row['recall@10']:.4f} | "
                         f"{row['invalid_docids']} | {row['ms_per_query']:.1f} | {params} | "
                         f"{row.get('epochs_run', '-')} | {row.get('train_seconds', '-')} |")
        lines.append("")
    save_results(name, "\n".join(lines), **{name: results})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "beir" / "scifact"))
    parser.add_argument("--slices", nargs="+", choices=("subset_1000", "scifact"), default=["subset_1000", "scifact"])
    parser.add_argument("--docids", nargs="+", choices=("atomic", "semantic"), default=["semantic", "atomic"])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs on subset_1000 (default: 8)")
    parser.add_argument("--full-epochs", type=int, default=5, help="training epochs on the full corpus (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-clock budget per generative model's training; it stops after the epoch in which "
                             "the budget runs out (the epochs run are recorded)")
    parser.add_argument("--pseudo-query-source", nargs="+", choices=("spans", "llm", "llm+spans"), default=["spans"],
                        help="pseudo-queries of each generative model, one row per source (default: spans)")
    parser.add_argument("--llm-queries", type=int, default=1,
                        help="queries generated per document for llm rows (1: greedy; more: top-k sampling, seed 0)")
    parser.add_argument("--query-generator", default="smollm2-135m-instruct",
                        help="chat LM writing the llm pseudo-queries (default: the bundled smollm2-135m-instruct)")
    parser.add_argument("--query-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the query generator's weights and activations (default: float32)")
    parser.add_argument("--only-generate", action="store_true",
                        help="generate (and cache) the llm pseudo-queries of the slices, write nothing else, stop")
    parser.add_argument("--query-cache", default=None,
                        help="pseudo-query cache folder (default: ~/.cache/flagstone/pseudo_queries)")
    parser.add_argument("--out", default="genir",
                        help="results name: benchmarks/results/NAME.json and .md (default: genir; use another name "
                             "for a trial so the committed results stay untouched)")
    args = parser.parse_args()
    if not args.out.replace("_", "").replace("-", "").isalnum():
        parser.error("--out must be a plain name (letters, digits, _ and -)")
    if args.llm_queries < 1:
        parser.error("--llm-queries must be at least 1")
    import torch

    torch.set_num_threads(args.threads)
    if not Path(args.data).is_dir():
        print(f"SciFact not found at {args.data}", file=sys.stderr)
        return 2
    test = load_beir(args.data, "test")
    train_qrels = load_qrels(Path(args.data) / "qrels" / "train.tsv")
    embedder = Embedder("all-MiniLM-L6-v2", show_progress=False)
    cache = EmbeddingCache()
    config = GenIRModelConfig()
    previous = RESULTS / f"{args.out}.json"
    results = json.loads(previous.read_text()) if previous.is_file() else {}
    results["note"] = (
        "subset_1000 = every document relevant to a test query plus a seeded random draw (seed 0) from the rest of "
        "the corpus up to 1,000 (all test queries' relevant documents are in it). Generative models: randomly "
        "initialised Llama-shaped decoder, trained here on 2 CPU cores (indexing + pseudo-queries + SciFact train "
        "queries; pseudo-queries are first-sentence/random-span cuts unless the row says llm: then "
        f"{args.query_generator} wrote them, generation time in query_generation); no tuning, the test split is "
        "only scored. invalid_docids: decoded docids that name no document (constrained beam search); "
        "unconstrained_invalid_docids in the JSON: the same model decoded without the trie.")
    results["model"] = {**config.__dict__}
    results["command"] = "python benchmarks/genir.py " + " ".join(sys.argv[1:])
    results["threads"] = args.threads
    query_settings = QueryGenerationSettings(queries_per_document=args.llm_queries)
    if args.only_generate:
        for slice_name in args.slices:
            dataset = subset_1000(test) if slice_name == "subset_1000" else test
            generated = generate_pseudo_queries(dataset.doc_texts, args.query_generator, cache_dir=args.query_cache,
                                                settings=query_settings, dtype=args.query_dtype)
            print(json.dumps({slice_name: generated.stats()}))
        return 0
    for slice_name in args.slices:
        dataset = subset_1000(test) if slice_name == "subset_1000" else test
        in_slice = set(dataset.doc_ids)
        pairs = [(test.queries[q], d) for q, judged in train_qrels.items() for d in judged
                 if d in in_slice and q in test.queries]
        epochs = args.epochs if slice_name == "subset_1000" else args.full_epochs
        budget = 60 * args.max_minutes if args.max_minutes else None
        settings = GenIRTrainingSettings(epochs=epochs, max_seconds=budget)
        part = {"documents": len(dataset.doc_ids), "test_queries": len(dataset.qrels), "train_pairs": len(pairs),
                "training": {**settings.__dict__, "span_words": list(settings.span_words)}, "rows": [],
                "command": results["command"], "threads": args.threads}
        results[slice_name] = part
        part["rows"] += baseline_rows(dataset, embedder, cache)
        write(results, args.out)
        generated = None
        if set(args.pseudo_query_source) - {"spans"}:  # once per slice, shared by the docid kinds
            print(f"[{slice_name}] generating {args.llm_queries} pseudo-queries per document", file=sys.stderr)
            generated = generate_pseudo_queries(dataset.doc_texts, args.query_generator, cache_dir=args.query_cache,
                                                settings=query_settings, dtype=args.query_dtype)
            part["query_generation"] = {**generated.stats(), "settings": query_settings.key_fields(),
                                        "dtype": args.query_dtype}
        for kind in args.docids:
            for source in args.pseudo_query_source:
                print(f"[{slice_name}] training genir {kind} with {source} pseudo-queries ({epochs} epochs)",
                      file=sys.stderr)
                if source != "spans":  # llm: the generated queries alone; llm+spans: the default spans as well
                    spans_per_epoch = settings.pseudo_queries if source == "llm+spans" else args.llm_queries
                    row_settings = GenIRTrainingSettings(epochs=epochs, max_seconds=budget, pseudo_query_source=source,
                                                         pseudo_queries=spans_per_epoch)
                    row = genir_row(dataset, kind, pairs, embedder, cache, config, row_settings, generated)
                    row["cost_seconds"] = round(row["train_seconds"] + generated.recorded_seconds, 1)
                else:
                    row = genir_row(dataset, kind, pairs, embedder, cache, config, settings)
                part["rows"].append(row)
                # the headline figures: the semantic-id model with span pseudo-queries
                if source == "spans" and (kind == "semantic" or "ndcg@10" not in part):
                    part.update({key: row[key] for key in ("ndcg@10", "recall@10", "invalid_docids", "ms_per_query",
                                                           "parameters")})
                    part["headline"] = row["system"]
                write(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
