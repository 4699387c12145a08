"""How good is retrieval on SciFact? Dense, BM25 and hybrid nDCG@10 / Recall@100 / MRR@10 on the test split.

The hybrid weight is chosen on SciFact's *train* queries (809, disjoint from the 300 test queries) by a
grid over dense weight w (BM25 weight 1 - w), then applied unchanged to the test split.

    python benchmarks/retrieval_scifact.py [--data ../shared/data/beir/scifact]

Writes benchmarks/results/retrieval_scifact.json (metrics per mode), retrieval_scifact_details.json
(the weight sweep and settings) and retrieval_scifact.md. Document embeddings are cached on disk, so only
the first run encodes the corpus (about 4 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import SHARED_DATA, save_results

from flagstone.evaluation import DEFAULT_EVAL_DEPTH
from flagstone.evaluation.beir import load_beir, load_qrels
from flagstone.evaluation.metrics import evaluate_run
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.retrieval.retriever import HybridConfig, Retriever

GRID = [round(w, 2) for w in np.arange(0.0, 1.01, 0.1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "beir" / "scifact"))
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"SciFact not found at {args.data}", file=sys.stderr)
        return 2

    test = load_beir(args.data, "test")
    train_qrels = load_qrels(Path(args.data) / "qrels" / "train.tsv")
    retriever = Retriever(Embedder(show_progress=True), cache=EmbeddingCache())
    retriever.fit(test.doc_ids, test.doc_texts)

    def score(qrels, mode, hybrid=None):
        qids = list(qrels)
        hits = retriever.search([test.queries[q] for q in qids], mode=mode, k=DEFAULT_EVAL_DEPTH,
                                hybrid=hybrid)
        return evaluate_run(hits.to_run(qids), qrels, (10, 100)).mean

    # choose the fusion weight on train queries only
    sweep = []
    for method in ("weighted", "rrf"):
        for w in GRID:
            cfg = HybridConfig(weights={"dense": w, "bm25": round(1 - w, 2)}, method=method)
            sweep.append({"method": method, "dense_weight": w, "train_ndcg@10": score(train_qrels, "hybrid", cfg)["ndcg@10"]})
    best = max(sweep, key=lambda r: r["train_ndcg@10"])
    chosen = HybridConfig(weights={"dense": best["dense_weight"], "bm25": round(1 - best["dense_weight"], 2)},
                          method=best["method"])

    results: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    for mode, cfg in (("dense", None), ("bm25", None), ("hybrid", chosen)):
        start = time.perf_counter()
        m = score(test.qrels, mode, cfg)
        timings[mode] = time.perf_counter() - start
        results[mode] = {"ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"], "mrr@10": m["mrr@10"]}
    details = {
        "hybrid_config": {"method": chosen.method, "weights": dict(chosen.weights), "normalize": chosen.normalize,
                          "chosen_on": "SciFact train qrels (809 queries)",
                          "train_ndcg@10": best["train_ndcg@10"]},
        "weight_sweep_train": sweep,
        "model": repr(retriever.embedder),
        "bm25": retriever.bm25.config() | {"tokenizer": "lowercase, \\w\\w+, English stop words, Snowball stemmer"},
        "search_seconds_300_queries": timings,
        "depth": DEFAULT_EVAL_DEPTH,
    }
    lines = ["| mode | nDCG@10 | Recall@100 | MRR@10 |", "|---|---|---|---|"]
    for mode, m in results.items():
        lines.append(f"| {mode} | {m['ndcg@10']:.4f} | {m['recall@100']:.4f} | {m['mrr@10']:.4f} |")
    lines.append("")
    lines.append(f"hybrid = {chosen.method} fusion, dense {best['dense_weight']} + BM25 "
                 f"{round(1 - best['dense_weight'], 2)}, min-max normalised; chosen on train "
                 f"(train nDCG@10 {best['train_ndcg@10']:.4f})")
    save_results("retrieval_scifact", "\n".join(lines), retrieval_scifact=results,
                 retrieval_scifact_details=details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
