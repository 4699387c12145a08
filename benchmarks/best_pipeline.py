"""The best SciFact pipeline (issue 22): a hybrid first stage of the fine-tuned dense model, BM25 and the M3 model's
sparse + ColBERT heads, then the trained cross-encoder on the top ``--depth``, interpolated with the first stage.
Then the same pipeline, same weights, on every other BEIR-format collection under ../shared/data.

    python benchmarks/train_scifact.py          # trains benchmarks/models/scifact-minilm-{finetuned,m3}
    python benchmarks/train_scifact.py --without-dev-slice   # their tuning copies, *-no-dev (~25 min)
    python benchmarks/rerank_scifact.py         # trains benchmarks/models/scifact-cross-encoder
    python benchmarks/best_pipeline.py          # this benchmark (add --quick for a smoke run on slices)

Protocol:
- first stage: flagstone.retrieval.retriever.search_across over two retrievers on the same documents, one
  holding the fine-tuned dense vectors and BM25, one the M3 model's sparse and ColBERT heads; the fusion is
  Retriever's hybrid (each signal proposes its top ``--candidates``, min-max normalised weighted sum);
- reranking: the cross-encoder scores the first stage's top ``--depth``; the final score is
  flagstone.rerank.interpolate_with_first_stage's (1 - w) x reranker + w x first stage;
- every weight is chosen on the dev slice, 100 SciFact *train* queries (_common.dev_slice: numpy
  default_rng(0)) that no model choosing them trained on: rerank_scifact.py keeps them from the cross-encoder,
  and the dense and M3 models' tuning copies (``--tuning-dense-model``, ``--tuning-m3-model``: trained by
  ``train_scifact.py --without-dev-slice``, same settings, a record beside each listing the held-out queries,
  checked) stand in for the final models, which trained on all 809 train queries. (Choosing with the final
  models on queries they trained on gave dense 0.9 + ColBERT 0.1 and no weight to the cross-encoder: the
  dense scores of training queries are too good.) The fusion weights first: every weighting of the four
  signals in steps of ``--fusion-step`` (0.1: 286) summing to 1, zeros included, each fused as the pipeline's
  search fuses (the dev queries are encoded and searched once, then each weighting re-fuses that pool:
  flagstone.retrieval.retriever.candidate_pool); then w over 0, 0.1, ..., 1. The final models then run with
  those weights unchanged;
- SciFact test (qrels/test.tsv) is used for the reported figures only: all_test (its 300 queries; the figure set
  as ``best_pipeline_ndcg@10``), dedup (without the test queries whose text duplicates a train query) and
  scifact_subsets.py's seen_docs / unseen_docs split of dedup; each stage against the base model / the first
  stage with Fisher's paired randomization test, and ms per query of each stage;
- generalisation: every other folder under ../shared/data with corpus.jsonl, queries.jsonl and qrels/test.tsv
  (CISI, Cranfield), beside BM25 and the base all-MiniLM-L6-v2 dense; nothing is tuned on them.
Document embeddings go through flagstone.models.cache.EmbeddingCache (all heads: the M3 ColBERT vectors take
disk space), and the cross-encoder's pair scores through flagstone.rerank.CachedReranker in the same cache, so a
rerun (or a run resumed after a kill) encodes only queries and scores only new pairs; the reranker's ms per query
is then its time per freshly scored pair times the pairs per query (``reranker_timing`` has the counts).
Writes benchmarks/results/best_pipeline.{json,md} and sets
``best_pipeline_ndcg@10`` in benchmarks/results/train_scifact.json (the rest of that file is kept).
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import (
    RESULTS,
    SHARED_DATA,
    dev_slice,
    held_out_record,
    load_scifact_with_train,
    save_results,
    set_result_entry,
    split_test_queries,
)
from scifact_subsets import compare
from tqdm.auto import tqdm

from flagstone.evaluation.beir import load_beir
from flagstone.evaluation.metrics import evaluate_run
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.models.reranker import CrossEncoderReranker, Reranker
from flagstone.rerank import CachedReranker, ScoringTime, interpolate_with_first_stage, rerank_hits
from flagstone.retrieval.retriever import CandidatePool, Hits, HybridConfig, Retriever, candidate_pool, search_across

MODELS = RESULTS.parent / "models"
BASE = "all-MiniLM-L6-v2"
FIRST_STAGE_SIGNALS = ("dense", "bm25", "sparse", "colbert")
INTERPOLATION_WEIGHTS = [round(w, 1) for w in np.arange(0.0, 1.01, 0.1)]
TRAIN_SCIFACT = "python benchmarks/train_scifact.py"
TRAIN_TUNING_COPIES = "python benchmarks/train_scifact.py --without-dev-slice"
TRAIN_CROSS_ENCODER = "python benchmarks/rerank_scifact.py"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the pipeline (library part, tested on tiny checkpoints) ---------------------------------------------------
@dataclass
class FusedFirstStage:
    """The pipeline's first stage with fixed weights, shaped like a Retriever for the miners
    (flagstone.training.mining.mine_hard_negatives calls ``search(queries, mode=..., k=...)``)."""

    lexical_dense: Retriever
    m3: Retriever
    weights: dict[str, float]
    candidates: int = 100

    def search(self, queries: Sequence[str], *, mode: str = "hybrid", k: int = 100) -> Hits:
        if mode != "hybrid":  # the fused first stage is one hybrid ranking; a signal alone is the Retriever's
            raise ValueError(f"the fused first stage searches only mode='hybrid', not {mode!r}")
        return search_across([self.lexical_dense, self.m3], list(queries), weights=self.weights, k=k,
                             hybrid=HybridConfig(candidates=self.candidates))


@dataclass
class Pipeline:
    """The two first-stage retrievers (fine-tuned dense + BM25; M3 sparse + ColBERT), the cross-encoder and the
    weights. ``fusion`` and ``first_stage_weight`` are set by :func:`choose_weights` (or given)."""

    lexical_dense: Retriever
    m3: Retriever
    reranker: Reranker  # a CachedReranker when build_pipeline is given a cache
    texts: dict[str, str]
    depth: int = 100
    candidates: int = 100
    fusion: dict[str, float] = field(default_factory=dict)
    first_stage_weight: float = 0.0
    reranker_timing: dict[str, float] = field(default_factory=dict)  # set by search()
    show_progress: bool = False  # a bar while the cross-encoder scores

    @property
    def config(self) -> HybridConfig:
        return HybridConfig(candidates=self.candidates)

    def first_stage(self, queries: Sequence[str], weights: Mapping[str, float] | None = None,
                    k: int | None = None) -> Hits:
        fused = FusedFirstStage(self.lexical_dense, self.m3, dict(weights or self.fusion), self.candidates)
        return fused.search(queries, k=k or self.depth)

    def candidate_pool(self, queries: Sequence[str]) -> CandidatePool:
        """Every signal's proposals and scores for ``queries``: ``pool.fuse(weights)`` is ``first_stage(queries,
        weights)`` for any weights, without encoding and searching again."""
        return candidate_pool([self.lexical_dense, self.m3], list(queries), signals=FIRST_STAGE_SIGNALS,
                              k=self.depth, hybrid=self.config)

    def rerank(self, queries: Sequence[str], first: Hits) -> Hits:
        """The cross-encoder's scores of ``first``'s hits, ordered by the reranker alone (weight 0); the first
        stage's scores are kept for :func:`interpolate_with_first_stage`."""
        return rerank_hits(self.reranker, list(queries), first, self.texts, show_progress=self.show_progress)

    def search(self, queries: Sequence[str]) -> tuple[Hits, Hits, dict[str, float]]:
        """(first stage, final) hits and the ms per query of each stage. With cached scores the reranker's ms per
        query is its time per pair it actually scored times the pairs per query (absent if every pair was
        cached); ``reranker_timing`` keeps the counts."""
        cached = self.reranker if isinstance(self.reranker, CachedReranker) else None
        mark = cached.mark() if cached else None
        t0 = time.perf_counter()
        first = self.first_stage(queries)
        t1 = time.perf_counter()
        final = interpolate_with_first_stage(self.rerank(queries, first), self.first_stage_weight)
        t2 = time.perf_counter()
        pairs = sum(len(row) for row in first.ids)
        cost = cached.since(mark) if cached else ScoringTime(pairs, pairs, t2 - t1)
        self.reranker_timing = cost.to_dict()
        ms = {"first_stage": 1000 * (t1 - t0) / max(len(queries), 1)}
        reranker_ms = cost.ms_per_query(len(queries))
        if reranker_ms is not None:
            ms[f"cross_encoder_top{self.depth}"] = reranker_ms
        return first, final, ms


def build_pipeline(dense_model: str | Path, m3_model: str | Path, cross_encoder: str | Path, doc_ids: list[str],
                   doc_texts: list[str], *, cache: EmbeddingCache | None, dtype: str = "float32",
                   depth: int = 100, candidates: int = 100, show_progress: bool = False) -> Pipeline:
    """Index the documents with the fine-tuned dense model + BM25 and with the M3 model's sparse + ColBERT heads,
    and load the cross-encoder."""
    dense, m3 = build_first_stage(dense_model, m3_model, doc_ids, doc_texts, cache=cache, dtype=dtype,
                                  show_progress=show_progress)
    reranker = CrossEncoderReranker(str(cross_encoder), max_length=192, batch_size=32, dtype=dtype)
    if cache is not None:  # scores on disk: a killed run resumes, a rerun scores nothing twice
        reranker = CachedReranker(reranker, cache)
    return Pipeline(dense, m3, reranker, dict(zip(doc_ids, doc_texts)), depth=depth, candidates=candidates,
                    show_progress=show_progress)


def build_first_stage(dense_model: str | Path, m3_model: str | Path, doc_ids: list[str], doc_texts: list[str], *,
                      cache: EmbeddingCache | None, dtype: str = "float32",
                      show_progress: bool = False) -> tuple[Retriever, Retriever]:
    """The first stage's two retrievers: the fine-tuned dense model + BM25, and the M3 model's sparse + ColBERT."""
    dense = Retriever(Embedder(str(dense_model), dtype=dtype, show_progress=show_progress),
                      signals=["dense", "bm25"], cache=cache).fit(doc_ids, doc_texts)
    m3 = Retriever(Embedder(str(m3_model), dtype=dtype, show_progress=show_progress),
                   signals=["sparse", "colbert"], cache=cache).fit(doc_ids, doc_texts)
    return dense, m3


def fusion_grid(step: float = 0.1) -> list[dict[str, float]]:
    """Every weighting of (dense, bm25, sparse, colbert) in multiples of ``step`` summing to 1, zeros included
    (a weight of 0 drops that signal, its proposals too)."""
    units = round(1 / step)
    return [{s: round(n * step, 10) for s, n in zip(FIRST_STAGE_SIGNALS, parts)}
            for parts in itertools.product(range(units + 1), repeat=4) if sum(parts) == units]


def holds_best_pipeline_results(path: Path) -> bool:
    """Whether ``path`` (an existing results file) is one this benchmark wrote, so --results-name may replace it;
    a file that is not JSON is someone else's."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8") or "{}")
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(saved, dict) and "best_pipeline_ndcg@10" in saved


def per_query_ndcg(hits: Hits, qids: Sequence[str], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    report = evaluate_run(hits.to_run(list(qids)), {q: qrels[q] for q in qids}, (10,), ("ndcg",))
    return {q: values["ndcg@10"] for q, values in report.per_query.items()}


def mean(scores: Mapping[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def choose_weights(pipeline: Pipeline, queries: Sequence[str], qids: Sequence[str],
                   qrels: Mapping[str, Mapping[str, int]], grid: list[dict[str, float]] | None = None, *,
                   show_progress: bool = False) -> dict:
    """Choose the fusion weights (best dev nDCG@10 over ``grid``, the first on ties), then the interpolation
    weight (with those fusion weights), on these (train) queries; sets them on ``pipeline``, returns both sweeps."""
    grid = grid or fusion_grid()
    # the queries are encoded and every signal searched once; each point fuses the pool exactly as the pipeline's
    # search with those weights would (candidate_pool's contract, tested), only without searching again
    pool = pipeline.candidate_pool(queries)
    fusion_sweep = [{"weights": w, "dev_ndcg@10": mean(per_query_ndcg(pool.fuse(w), qids, qrels))}
                    for w in tqdm(grid, desc="fusion weights", unit="weighting", disable=not show_progress)]
    best = max(fusion_sweep, key=lambda r: r["dev_ndcg@10"])  # max keeps the first of equal values
    pipeline.fusion = dict(best["weights"])
    reranked = pipeline.rerank(queries, pipeline.first_stage(queries))
    interpolation_sweep = [{"first_stage_weight": w, "dev_ndcg@10": mean(per_query_ndcg(
        interpolate_with_first_stage(reranked, w), qids, qrels))} for w in INTERPOLATION_WEIGHTS]
    pipeline.first_stage_weight = max(interpolation_sweep, key=lambda r: r["dev_ndcg@10"])["first_stage_weight"]
    return {"fusion": pipeline.fusion, "fusion_sweep": sorted(fusion_sweep, key=lambda r: -r["dev_ndcg@10"]),
            "first_stage_weight": pipeline.first_stage_weight, "interpolation_sweep": interpolation_sweep}


def missing_model(folder: Path, files: Sequence[str], command: str, flag: str) -> str | None:
    """The one-line error for a model folder that lacks ``files``, naming the command that trains it."""
    absent = [f for f in files if not (folder / f).is_file()]
    if not absent:
        return None
    return f"{folder}: no trained model here ({', '.join(absent)} missing); train it with `{command}` or pass {flag}"


def tuning_copy_problem(folder: Path, dev_ids: Sequence[str]) -> str | None:
    """The one-line error for a tuning copy that may have trained on the dev slice: its ``.held-out.json`` record
    (train_scifact.py --without-dev-slice writes it) must list every dev query as held out."""
    record = held_out_record(folder)
    if not record.is_file():
        return f"{folder}: no {record.name} beside it, so nothing says it never trained on the dev slice; " \
               f"train it with `{TRAIN_TUNING_COPIES}`"
    held = set(json.loads(record.read_text()).get("held_out", []))
    missing = [q for q in dev_ids if q not in held]
    if missing:
        return f"{folder}: trained on {len(missing)} of the dev queries (e.g. {missing[0]}); retrain it with " \
               f"`{TRAIN_TUNING_COPIES}`"
    return None


def beir_collections(root: Path, exclude: Path) -> list[Path]:
    """Every folder under ``root`` in BEIR format with a test split, ``exclude`` (SciFact) left out."""
    found = sorted(p.parent for p in root.rglob("corpus.jsonl")
                   if (p.parent / "queries.jsonl").is_file() and (p.parent / "qrels" / "test.tsv").is_file())
    return [p for p in found if p.resolve() != exclude.resolve()]


def sliced(doc_ids: list[str], doc_texts: list[str], qrels_list: Sequence[Mapping[str, Mapping[str, int]]],
           qids: Sequence[str], first: int) -> tuple[list[str], list[str]]:
    """--quick's corpus: the documents judged for ``qids`` plus the first ``first`` documents, in file order."""
    keep = {d for qrels in qrels_list for q in qids if q in qrels for d in qrels[q]} | set(doc_ids[:first])
    pairs = [(d, t) for d, t in zip(doc_ids, doc_texts) if d in keep]
    return [d for d, _ in pairs], [t for _, t in pairs]


# -- the benchmark -------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA / "beir" / "scifact"), help="SciFact in BEIR format")
    parser.add_argument("--shared-data", default=str(SHARED_DATA),
                        help="searched for the other BEIR-format collections (default: ../shared/data)")
    parser.add_argument("--dense-model", default=str(MODELS / "scifact-minilm-finetuned"),
                        help=f"fine-tuned dense model (default: train_scifact.py's; `{TRAIN_SCIFACT}`)")
    parser.add_argument("--m3-model", default=str(MODELS / "scifact-minilm-m3"),
                        help="M3 model with sparse + ColBERT heads (default: train_scifact.py's)")
    parser.add_argument("--tuning-dense-model", default=str(MODELS / "scifact-minilm-finetuned-no-dev"),
                        help="the dense model trained without the dev slice, used only to choose the weights "
                             f"(default: `{TRAIN_TUNING_COPIES}`'s)")
    parser.add_argument("--tuning-m3-model", default=str(MODELS / "scifact-minilm-m3-no-dev"),
                        help="the M3 model trained without the dev slice, used only to choose the weights")
    parser.add_argument("--cross-encoder", default=str(MODELS / "scifact-cross-encoder"),
                        help="trained cross-encoder (default: rerank_scifact.py's --output-model)")
    parser.add_argument("--base-model", default=BASE, help="the untuned dense baseline (default: bundled MiniLM)")
    parser.add_argument("--depth", type=int, default=100,
                        help="first-stage hits the cross-encoder reranks (default: 100)")
    parser.add_argument("--candidates", type=int, default=100,
                        help="documents each first-stage signal proposes (default: 100)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="inference dtype of every model (default float32: bf16 is ~5x slower on CPUs "
                             "without native bf16)")
    parser.add_argument("--fusion-step", type=float, default=0.1,
                        help="grid step of the fusion weights (default 0.1: 286 weightings, each one dev search; "
                             "--quick uses 0.5)")
    parser.add_argument("--skip-generalisation", action="store_true", help="SciFact only")
    parser.add_argument("--results-name", default="best_pipeline",
                        help="results are written to benchmarks/results/<name>.{json,md} (default: best_pipeline, "
                             "which also sets best_pipeline_ndcg@10 in train_scifact.json; another name keeps a "
                             "variant, e.g. another --cross-encoder, beside it and touches nothing else)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run on slices (10 test + 10 dev queries, 5 per other collection, small "
                             "corpora, depth 10); prints the tables, writes nothing; numbers meaningless")
    args = parser.parse_args(argv)
    for error in (missing_model(Path(args.dense_model), ["config.json"], TRAIN_SCIFACT, "--dense-model"),
                  missing_model(Path(args.m3_model), ["config.json", "sparse_linear.pt", "colbert_linear.pt"],
                                TRAIN_SCIFACT, "--m3-model"),
                  missing_model(Path(args.cross_encoder), ["config.json"], TRAIN_CROSS_ENCODER, "--cross-encoder"),
                  missing_model(Path(args.tuning_dense_model), ["config.json"], TRAIN_TUNING_COPIES,
                                "--tuning-dense-model"),
                  missing_model(Path(args.tuning_m3_model), ["config.json", "sparse_linear.pt", "colbert_linear.pt"],
                                TRAIN_TUNING_COPIES, "--tuning-m3-model")):
        if error:
            print(error, file=sys.stderr)
            return 2
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.results_name) or args.results_name.endswith(".json"):
        print(f"--results-name: a file stem of letters, digits, '.', '_' and '-', got {args.results_name!r}",
              file=sys.stderr)
        return 2
    earlier = RESULTS / f"{args.results_name}.json"
    if earlier.is_file() and not holds_best_pipeline_results(earlier):
        print(f"--results-name: {earlier} holds another benchmark's results; choose another name", file=sys.stderr)
        return 2
    if args.depth < 1 or args.candidates < 1 or not 0 < args.fusion_step <= 1 \
            or abs(round(1 / args.fusion_step) * args.fusion_step - 1) > 1e-9:
        print("--depth and --candidates must be at least 1, --fusion-step 1/n for a whole n", file=sys.stderr)
        return 2
    wall = time.perf_counter()
    loaded = load_scifact_with_train(args.data)
    if loaded is None:
        return 2
    test, train_qrels, _ = loaded
    if args.quick:
        args.depth, args.candidates, args.fusion_step = 10, 10, 0.5
    cache = EmbeddingCache()
    test_ids, dev_ids = list(test.qrels), dev_slice(list(train_qrels))[1]
    for folder in (args.tuning_dense_model, args.tuning_m3_model):
        problem = tuning_copy_problem(Path(folder), dev_ids)
        if problem:
            print(problem, file=sys.stderr)
            return 2
    doc_ids, doc_texts = test.doc_ids, test.doc_texts
    if args.quick:
        test_ids, dev_ids = test_ids[:10], dev_ids[:10]
        doc_ids, doc_texts = sliced(doc_ids, doc_texts, [test.qrels, train_qrels], test_ids + dev_ids, 150)

    log(f"indexing {len(doc_ids)} SciFact documents (fine-tuned dense + BM25, M3 sparse + ColBERT)")
    pipeline = build_pipeline(args.dense_model, args.m3_model, args.cross_encoder, doc_ids, doc_texts, cache=cache,
                              dtype=args.dtype, depth=args.depth, candidates=args.candidates, show_progress=True)
    base = Retriever(Embedder(args.base_model, dtype=args.dtype, show_progress=True), signals=["dense"],
                     cache=cache).fit(doc_ids, doc_texts)

    log(f"choosing the weights on {len(dev_ids)} held-out train queries, with the models' tuning copies")
    tuning = build_pipeline(args.tuning_dense_model, args.tuning_m3_model, args.cross_encoder, doc_ids, doc_texts,
                            cache=cache, dtype=args.dtype, depth=args.depth, candidates=args.candidates,
                            show_progress=True)
    chosen = choose_weights(tuning, [test.queries[q] for q in dev_ids], dev_ids, train_qrels,
                            fusion_grid(args.fusion_step), show_progress=True)
    pipeline.fusion, pipeline.first_stage_weight = tuning.fusion, tuning.first_stage_weight
    log(f"  fusion {chosen['fusion']}, first-stage weight {chosen['first_stage_weight']}")

    log(f"SciFact test: {len(test_ids)} queries")
    queries = [test.queries[q] for q in test_ids]
    systems, ms = score_baselines(pipeline, base, queries, test_ids, test.qrels)
    first, final, stage_ms = pipeline.search(queries)
    ms.update(stage_ms)
    systems["first stage (hybrid)"] = per_query_ndcg(first, test_ids, test.qrels)
    systems["best pipeline (+ cross-encoder)"] = per_query_ndcg(final, test_ids, test.qrels)
    reranker_alone = interpolate_with_first_stage(final, 0.0)
    systems["cross-encoder alone (same top)"] = per_query_ndcg(reranker_alone, test_ids, test.qrels)

    split = split_test_queries(Path(args.data), {q: test.qrels[q] for q in test_ids}, train_qrels)
    # all_test: every test query (the figure train_scifact.json's other nDCGs are on); dedup and its two parts,
    # seen_docs / unseen_docs: scifact_subsets.py's, without the test queries that duplicate a train query
    subsets = {"all_test": test_ids, "dedup": split["overall"], "seen_docs": split["seen_docs"],
               "unseen_docs": split["unseen_docs"]}
    empty = sorted(k for k, v in subsets.items() if not v)
    subsets = {k: v for k, v in subsets.items() if v}  # a paired test needs queries (an empty one only in --quick)
    base_scores = systems["base (MiniLM dense)"]
    comparisons = {
        "first_stage_vs_base": compare(base_scores, systems["first stage (hybrid)"], subsets),
        "best_vs_first_stage": compare(systems["first stage (hybrid)"], systems["best pipeline (+ cross-encoder)"],
                                       subsets),
        "best_vs_base": compare(base_scores, systems["best pipeline (+ cross-encoder)"], subsets),
        "finetuned_dense_vs_base": compare(base_scores, systems["fine-tuned dense"], subsets),
    }
    table = {name: {s: mean({q: scores[q] for q in ids}) for s, ids in subsets.items()}
             for name, scores in systems.items()}

    generalisation = {}
    if not args.skip_generalisation:
        for folder in beir_collections(Path(args.shared_data), Path(args.data)):
            generalisation[folder.name] = generalise(folder, pipeline, args, cache)

    best = table["best pipeline (+ cross-encoder)"]["all_test"]
    out = {
        "best_pipeline_ndcg@10": best,
        "scifact_test": {"queries": {k: len(v) for k, v in subsets.items()}, "empty_subsets": empty,
                         "duplicates_dropped": split["duplicates"], "ndcg@10": table, "comparisons": comparisons,
                         "ms_per_query": ms, "reranker_timing": pipeline.reranker_timing,
                         "comparison_method": "Fisher paired randomization test, two-sided, 10,000 sign flips, seed 0"},
        "weights": {**chosen, "chosen_on": f"{len(dev_ids)} held-out SciFact train queries (the dev slice, numpy "
                                          "default_rng(0)); never test",
                    "chosen_with": {"dense": args.tuning_dense_model, "m3": args.tuning_m3_model,
                                    "cross_encoder": args.cross_encoder},
                    "caveat": "the weights were chosen with tuning copies of the dense and M3 models trained "
                              "without the dev slice (as the cross-encoder was), then used unchanged with the "
                              "models trained on all train queries"},
        "generalisation": generalisation,
        "settings": {"dense_model": args.dense_model, "m3_model": args.m3_model, "cross_encoder": args.cross_encoder,
                     "tuning_dense_model": args.tuning_dense_model, "tuning_m3_model": args.tuning_m3_model,
                     "base_model": args.base_model, "depth": args.depth, "candidates": args.candidates,
                     "dtype": args.dtype, "fusion": "min-max weighted sum (flagstone hybrid), search_across",
                     "cross_encoder_max_length": 192, "documents": len(doc_ids), "quick": args.quick},
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    text = report(out)
    if args.quick:
        print(text)
        return 0
    save_results(args.results_name, text, **{args.results_name: out})
    if args.results_name == "best_pipeline":
        set_result_entry("train_scifact", "best_pipeline_ndcg@10", best)
    return 0


def score_baselines(pipeline: Pipeline, base: Retriever, queries: list[str], qids: list[str],
                    qrels: Mapping) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-query nDCG@10 and ms per query of the base dense model, BM25 and the fine-tuned dense model alone."""
    systems, ms = {}, {}
    for name, retriever, mode in (("base (MiniLM dense)", base, "dense"), ("BM25", pipeline.lexical_dense, "bm25"),
                                  ("fine-tuned dense", pipeline.lexical_dense, "dense")):
        t0 = time.perf_counter()
        hits = retriever.search(queries, mode=mode, k=pipeline.depth)
        ms[name] = 1000 * (time.perf_counter() - t0) / max(len(queries), 1)
        systems[name] = per_query_ndcg(hits, qids, qrels)
    return systems, ms


def generalise(folder: Path, scifact: Pipeline, args: argparse.Namespace, cache: EmbeddingCache) -> dict:
    """The SciFact pipeline with SciFact's weights on another collection, beside BM25 and the base model."""
    data = load_beir(folder, "test")
    qids = list(data.qrels)
    doc_ids, doc_texts = data.doc_ids, data.doc_texts
    if args.quick:
        qids = qids[:5]
        doc_ids, doc_texts = sliced(doc_ids, doc_texts, [data.qrels], qids, 60)
    log(f"{folder.name}: {len(doc_ids)} documents, {len(qids)} judged queries (weights from SciFact, none tuned here)")
    pipeline = build_pipeline(args.dense_model, args.m3_model, args.cross_encoder, doc_ids, doc_texts, cache=cache,
                              dtype=args.dtype, depth=scifact.depth, candidates=scifact.candidates, show_progress=True)
    pipeline.fusion, pipeline.first_stage_weight = scifact.fusion, scifact.first_stage_weight
    base = Retriever(Embedder(args.base_model, dtype=args.dtype, show_progress=True), signals=["dense"],
                     cache=cache).fit(doc_ids, doc_texts)
    queries = [data.queries[q] for q in qids]
    systems, ms = score_baselines(pipeline, base, queries, qids, data.qrels)
    first, final, stage_ms = pipeline.search(queries)
    systems["first stage (hybrid)"] = per_query_ndcg(first, qids, data.qrels)
    systems["best pipeline (+ cross-encoder)"] = per_query_ndcg(final, qids, data.qrels)
    return {"folder": str(folder), "documents": len(doc_ids), "queries": len(qids),
            "ndcg@10": {name: mean(scores) for name, scores in systems.items()},
            "best_vs_base": compare(systems["base (MiniLM dense)"], systems["best pipeline (+ cross-encoder)"],
                                    {"all": qids})["all"],
            "ms_per_query": {**ms, **stage_ms}, "reranker_timing": pipeline.reranker_timing,
            "tuned_here": "nothing: fusion and interpolation weights are SciFact's, chosen on SciFact train queries"}


def report(out: dict) -> str:
    sci = out["scifact_test"]
    subsets = list(sci["queries"])
    lines = ["## SciFact test (nDCG@10; gain and two-sided paired randomization p against the row named)", "",
             "| system | " + " | ".join(f"{s} ({sci['queries'][s]})" for s in subsets) + " | ms / query |",
             "|---|" + "---|" * (len(subsets) + 1)]
    against = {"first stage (hybrid)": ("first_stage_vs_base", "base"),
               "best pipeline (+ cross-encoder)": ("best_vs_first_stage", "first stage"),
               "fine-tuned dense": ("finetuned_dense_vs_base", "base")}
    ms = sci["ms_per_query"]
    for name, row in sci["ndcg@10"].items():
        key, label = against.get(name, (None, None))
        cells = []
        for s in subsets:
            cell = f"{row[s]:.4f}"
            if key:
                c = sci["comparisons"][key][s]
                cell += f" ({c['delta']:+.4f} vs {label}, p={c['p_value']:.3g})"
            cells.append(cell)
        stage = {"first stage (hybrid)": "first_stage",
                 "best pipeline (+ cross-encoder)": next((k for k in ms if k.startswith("cross_encoder")), "")}
        key = stage.get(name, name)
        timing = (f"{ms[key]:.1f}" if key in ms else "-") + (" + first stage" if name.startswith("best") else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {timing} |")
    b = sci["comparisons"]["best_vs_base"]["all_test"]
    w = out["weights"]
    lines += ["", f"Best pipeline against the base model, all test queries: {b['delta']:+.4f} (p={b['p_value']:.3g}).",
              f"Fusion weights {w['fusion']} and first-stage weight {w['first_stage_weight']} chosen on "
              f"{w['chosen_on']}. Caveat: {w['caveat']}."]
    if sci["empty_subsets"]:
        lines.append(f"Empty subsets (not tested): {', '.join(sci['empty_subsets'])}.")
    if out["generalisation"]:
        lines += ["", "## Other collections: the same pipeline and weights, nothing tuned on them (nDCG@10)", "",
                  "| collection | docs | queries | BM25 | base MiniLM dense | fine-tuned dense | first stage | "
                  "best pipeline | best vs base (p) |", "|---|---|---|---|---|---|---|---|---|"]
        for name, g in out["generalisation"].items():
            n = g["ndcg@10"]
            lines.append(f"| {name} | {g['documents']} | {g['queries']} | {n['BM25']:.4f} | "
                         f"{n['base (MiniLM dense)']:.4f} | {n['fine-tuned dense']:.4f} | "
                         f"{n['first stage (hybrid)']:.4f} | {n['best pipeline (+ cross-encoder)']:.4f} | "
                         f"{g['best_vs_base']['delta']:+.4f} ({g['best_vs_base']['p_value']:.3g}) |")
        lines.append("Nothing was tuned on any of these collections: every weight is SciFact's.")
    s = out["settings"]
    lines += ["", f"Depth {s['depth']}, {s['candidates']} candidates per signal, {s['dtype']} inference, "
              f"{s['documents']} SciFact documents; wall time {out['wall_s'] / 60:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
