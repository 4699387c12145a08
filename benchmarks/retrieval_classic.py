"""Retrieval on the classic test collections CISI and Cranfield, as they are (empty documents, unjudged
queries, graded relevance): dense, BM25 and hybrid with every dense index kind.

    python benchmarks/retrieval_classic.py [--data ../shared/data/beir]

Neither collection has a train split, so nothing is tuned on it: the hybrid uses the weights chosen on
SciFact's train queries (weighted, dense 0.5 + BM25 0.5, min-max; benchmarks/retrieval_scifact.py), and
IVF / HI² use their size-derived defaults. Depth 100 (DEFAULT_EVAL_DEPTH); binary metrics count judgements
>= 1, nDCG uses Cranfield's grades 1-4 as gains. Writes benchmarks/results/retrieval_classic.{json,md}.
Document embeddings are cached, so only the first run encodes (about 3 minutes per collection on 2 cores).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from _common import SHARED_DATA, save_results

from flagstone.errors import EmptyDocumentsWarning
from flagstone.evaluation.beir import load_beir
from flagstone.evaluation.retrieval import evaluate_retrieval
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.retrieval.retriever import HybridConfig, Retriever

COLLECTIONS = ("cisi", "cranfield")
KINDS = ("flat", "ivf", "hi2")
HYBRID = HybridConfig(weights={"dense": 0.5, "bm25": 0.5}, method="weighted", normalize="minmax")
METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "beir"), help="folder holding cisi/ and cranfield/")
    args = parser.parse_args()
    missing = [c for c in COLLECTIONS if not (Path(args.data) / c).is_dir()]
    if missing:
        print(f"not found under {args.data}: {', '.join(missing)}", file=sys.stderr)
        return 2
    embedder, cache = Embedder(show_progress=True), EmbeddingCache()
    rows, described = [], {}
    for name in COLLECTIONS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EmptyDocumentsWarning)
            data = load_beir(Path(args.data) / name)
        described[name] = {"documents": len(data.doc_ids), "empty_documents": data.empty_documents,
                           "judged_queries": len(data.qrels), "unjudged_queries": data.unjudged_queries,
                           "grades": sorted({g for judged in data.qrels.values() for g in judged.values()}),
                           "warnings": [str(w.message) for w in caught]}
        for kind in KINDS:
            modes = ("dense", "bm25", "hybrid") if kind == "flat" else ("dense", "hybrid")
            retriever = Retriever(embedder, cache=cache, dense_index=kind, hybrid=HYBRID)
            start = time.perf_counter()
            report = evaluate_retrieval(retriever, data, modes=modes, k_values=(10, 100))
            print(f"{name} {kind}: {time.perf_counter() - start:.0f} s (index and search)", flush=True)
            for mode, result in report.results.items():
                rows.append({"collection": name, "mode": mode, "index": "-" if mode == "bm25" else kind,
                             **{m: result.metrics.mean[m] for m in METRICS},
                             "search_seconds": round(result.seconds, 2)})
    lines = ["| collection | mode | dense index | nDCG@10 | Recall@100 | MRR@10 | MAP@100 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['collection']} | {r['mode']} | {r['index']} | " +
                     " | ".join(f"{r[m]:.4f}" for m in METRICS) + " |")
    notes = [f"{n}: {d['documents']:,} documents ({d['empty_documents']} empty), {d['judged_queries']} judged "
             f"queries ({d['unjudged_queries']} without judgements skipped), grades {d['grades']}"
             for n, d in described.items()]
    table = "\n".join(lines) + "\n\n" + "\n".join(notes) + (
        "\n\nhybrid = weighted, dense 0.5 + BM25 0.5 (chosen on SciFact train; nothing tuned on these "
        "collections); depth 100; model all-MiniLM-L6-v2")
    save_results("retrieval_classic", table, retrieval_classic={
        "collections": described, "hybrid": {"weights": HYBRID.weights, "method": HYBRID.method,
                                             "normalize": HYBRID.normalize},
        "depth": 100, "model": embedder.name, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
