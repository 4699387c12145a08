"""Does reranking help on SciFact? Train a cross-encoder from the bundled MiniLM on SciFact train, rerank
the top-100 of the best first stage (hybrid dense + BM25), and compare with the bundled SmolLM2 as an
INTERS-style yes/no reranker.

    python benchmarks/rerank_scifact.py [--data ../shared/data/beir/scifact] [--llm-depth 20]

Protocol (the test split is used for the final numbers only):
- first stage: Retriever(MiniLM) hybrid, the configuration benchmarks/retrieval_scifact.py chose on train;
- training data: SciFact train queries minus a dev slice of 100 queries; positives from qrels/train.tsv,
  15 hard negatives per query mined from the first stage's ranks 5-99;
- cross-encoder: bundled all-MiniLM-L6-v2 encoder + a new one-logit head, groupwise softmax (1 positive +
  7 negatives), three epochs at learning rate 1e-4 (the defaults; the committed results used them), bf16
  autocast; the interpolation weight with the first stage is chosen on the dev slice;
- LLM reranker: SmolLM2-135M-Instruct, P(Yes) log-odds, reranking each test query's top ``--llm-depth``.
Writes benchmarks/results/rerank_scifact.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import RESULTS, SHARED_DATA, load_scifact_with_train, save_results

from flagstone.evaluation import DEFAULT_EVAL_DEPTH
from flagstone.evaluation.metrics import evaluate_run
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.models.reranker import CrossEncoderReranker, LLMReranker
from flagstone.rerank import interpolate_with_first_stage, rerank_hits
from flagstone.retrieval.retriever import Retriever
from flagstone.training.data import examples_from_qrels
from flagstone.training.loop import TrainingConfig
from flagstone.training.mining import mine_hard_negatives
from flagstone.training.reranker import train_cross_encoder

DEV_QUERIES = 100
WEIGHTS = [round(w, 1) for w in np.arange(0.0, 1.01, 0.1)]


def ndcg10(hits, qids, qrels) -> float:
    return evaluate_run(hits.to_run(qids), {q: qrels[q] for q in qids}, (10,)).mean["ndcg@10"]


def previous_llm_figures(llm_depth: int) -> tuple[float, float, str] | None:
    """The LLM reranker's nDCG@10 and ms/query from the last saved run, if it reranked the same depth."""
    path = RESULTS / "rerank_scifact.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    ms = saved.get("ms_per_query", {}).get(f"llm_reranker_top{llm_depth}")
    if ms is None or "llm_reranker_ndcg@10" not in saved:
        return None
    return saved["llm_reranker_ndcg@10"], ms, "earlier run (benchmarks/results/rerank_scifact.json, --reuse-llm)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "beir" / "scifact"))
    parser.add_argument("--depth", type=int, default=DEFAULT_EVAL_DEPTH,
                        help=f"first-stage hits reranked (default: {DEFAULT_EVAL_DEPTH})")
    parser.add_argument("--llm-depth", type=int, default=20, help="hits the LLM reranks (default: 20)")
    parser.add_argument("--max-length", type=int, default=192, help="cross-encoder tokens per pair")
    parser.add_argument("--epochs", type=int, default=3, help="cross-encoder epochs (default: 3)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="cross-encoder learning rate (default: 1e-4)")
    parser.add_argument("--output-model", default=str(RESULTS.parent / "models" / "scifact-cross-encoder"))
    parser.add_argument("--reuse-llm", action="store_true",
                        help="take the LLM reranker's figures from the last results file instead of rerunning it "
                             "(it does not depend on the cross-encoder; saves ~35 min)")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the script (numbers meaningless)")
    args = parser.parse_args()
    previous_llm = previous_llm_figures(args.llm_depth) if args.reuse_llm else None
    if args.reuse_llm and previous_llm is None:
        print("--reuse-llm: no earlier LLM figures for this --llm-depth in benchmarks/results; run without it",
              file=sys.stderr)
        return 2
    wall = time.perf_counter()
    loaded = load_scifact_with_train(args.data)
    if loaded is None:
        return 2
    test, train_qrels, doc_text = loaded
    retriever = Retriever(Embedder(show_progress=True), cache=EmbeddingCache()).fit(test.doc_ids, test.doc_texts)

    train_ids = list(train_qrels)
    rng = np.random.default_rng(0)
    dev_ids = sorted(rng.choice(train_ids, size=DEV_QUERIES, replace=False).tolist())
    fit_ids = [q for q in train_ids if q not in set(dev_ids)]
    test_ids = list(test.qrels)
    if args.quick:
        fit_ids, dev_ids, test_ids = fit_ids[:24], dev_ids[:10], test_ids[:10]
        args.depth, args.llm_depth = 10, 5

    def first_stage(qids):
        return retriever.search([test.queries[q] for q in qids], mode="hybrid", k=args.depth)

    # 1. mine hard negatives for the training queries from the first stage
    examples = examples_from_qrels(test.queries, train_qrels, doc_text, fit_ids)
    examples = mine_hard_negatives(examples, retriever, doc_text, mode="hybrid", rank_range=(5, 100),
                                   n_negatives=15, seed=0)

    # 2. train the cross-encoder
    config = TrainingConfig(epochs=args.epochs, learning_rate=args.learning_rate, warmup_ratio=0.1,
                            precision="bfloat16", seed=0)
    start = time.perf_counter()
    trained = train_cross_encoder("all-MiniLM-L6-v2", examples, args.output_model, group_size=8, batch_size=4,
                                  max_length=args.max_length, config=config, overwrite=True)
    train_seconds = time.perf_counter() - start
    cross = CrossEncoderReranker(args.output_model, max_length=args.max_length, batch_size=32, dtype="bfloat16")

    # 3. choose the interpolation weight on the dev slice
    dev_first = first_stage(dev_ids)
    dev_texts = {d: doc_text[d] for row in dev_first.ids for d in row}
    dev_reranked = rerank_hits(cross, [test.queries[q] for q in dev_ids], dev_first, dev_texts, show_progress=True)
    sweep = []
    for w in WEIGHTS:
        fused = interpolate_with_first_stage(dev_reranked, w)
        sweep.append({"first_stage_weight": w, "dev_ndcg@10": ndcg10(fused, dev_ids, train_qrels)})
    best = max(sweep, key=lambda r: r["dev_ndcg@10"])

    # 4. test: first stage, cross-encoder alone, cross-encoder + first stage, LLM
    test_queries = [test.queries[q] for q in test_ids]
    t0 = time.perf_counter()
    test_first = first_stage(test_ids)
    first_ms = (time.perf_counter() - t0) * 1000 / len(test_ids)
    texts = {d: doc_text[d] for row in test_first.ids for d in row}
    t0 = time.perf_counter()
    reranked = rerank_hits(cross, test_queries, test_first, texts, show_progress=True)
    cross_ms = (time.perf_counter() - t0) * 1000 / len(test_ids)
    fused = interpolate_with_first_stage(reranked, best["first_stage_weight"])

    if previous_llm is None:
        llm = LLMReranker(max_length=320, batch_size=8, dtype="bfloat16")
        t0 = time.perf_counter()
        llm_hits = rerank_hits(llm, test_queries, test_first, texts, depth=args.llm_depth, show_progress=True)
        llm_ms = (time.perf_counter() - t0) * 1000 / len(test_ids)
        llm_ndcg, llm_source = ndcg10(llm_hits, test_ids, test.qrels), "this run"
    else:
        llm_ndcg, llm_ms, llm_source = previous_llm

    results = {
        "first_stage_ndcg@10": ndcg10(test_first, test_ids, test.qrels),
        "cross_encoder_ndcg@10": ndcg10(fused, test_ids, test.qrels),
        "cross_encoder_alone_ndcg@10": ndcg10(reranked, test_ids, test.qrels),
        "llm_reranker_ndcg@10": llm_ndcg,
        "ms_per_query": {"first_stage": first_ms, f"cross_encoder_top{args.depth}": cross_ms,
                         f"llm_reranker_top{args.llm_depth}": llm_ms},
        "settings": {
            "first_stage": "hybrid dense (all-MiniLM-L6-v2) + BM25, weighted 0.5/0.5 min-max",
            "depth": args.depth, "llm_depth": args.llm_depth, "test_queries": len(test_ids),
            "train_queries": len(fit_ids), "dev_queries": len(dev_ids),
            "cross_encoder": {"base": "all-MiniLM-L6-v2", "group_size": 8, "batch_groups": 4,
                              "max_length": args.max_length, "epochs": args.epochs,
                              "learning_rate": args.learning_rate, "steps": trained.steps,
                              "train_seconds": round(train_seconds, 1), "inference_dtype": "bfloat16",
                              "first_stage_weight": best["first_stage_weight"],
                              "first_stage_weight_chosen_on": f"{len(dev_ids)} held-out train queries",
                              "dev_sweep": sweep, "loss_first_10": float(np.mean(trained.losses[:10])),
                              "loss_last_10": float(np.mean(trained.losses[-10:]))},
            "llm_reranker": {"model": "SmolLM2-135M-Instruct (bundled GGUF, dequantised)", "dtype": "bfloat16",
                             "score": "log P(Yes) - log P(No) after a relevance prompt", "max_length": 320,
                             "figures_from": llm_source},
        },
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    w = best["first_stage_weight"]
    lines = [
        "| system | SciFact test nDCG@10 | ms / query |",
        "|---|---|---|",
        f"| first stage (hybrid dense + BM25), top {args.depth} | {results['first_stage_ndcg@10']:.4f} | "
        f"{first_ms:.1f} |",
        f"| + trained cross-encoder (interpolated, w={w} chosen on dev) | {results['cross_encoder_ndcg@10']:.4f} | "
        f"{cross_ms:.0f} |",
        f"| + trained cross-encoder alone | {results['cross_encoder_alone_ndcg@10']:.4f} | {cross_ms:.0f} |",
        f"| + SmolLM2-135M yes/no reranker, top {args.llm_depth} | {results['llm_reranker_ndcg@10']:.4f} | "
        f"{llm_ms:.0f} |",
        "",
        f"{len(test_ids)} test queries; cross-encoder trained on {len(fit_ids)} train queries "
        f"({trained.steps} steps, {train_seconds / 60:.1f} min, loss {results['settings']['cross_encoder']['loss_first_10']:.3f}"
        f" -> {results['settings']['cross_encoder']['loss_last_10']:.3f}); 2 CPU cores, bf16.",
    ]
    if args.quick:
        print("\n".join(lines))
        return 0
    save_results("rerank_scifact", "\n".join(lines), rerank_scifact=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
