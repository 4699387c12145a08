"""Does reranking help on SciFact? Train a cross-encoder from the bundled MiniLM on SciFact train, rerank
the top-100 of the best first stage (hybrid dense + BM25), and compare with the bundled SmolLM2 as a
pointwise, pairwise and listwise LLM reranker; every figure overall and on two subsets, with a paired test.

    python benchmarks/rerank_scifact.py [--data ../shared/data/beir/scifact] [--llm-depth 3] [--llm-queries 100]
                                        [--reuse-cross-encoder] [--reuse-llm] [--quick]
    python benchmarks/rerank_scifact.py --split-folder benchmarks/data/scifact-dev --train-only \\
        --output-model benchmarks/models/scifact-dev-cross-encoder   # a teacher that never saw the dev queries

Protocol (the test split is used for the final numbers only):
- test queries whose text is also a train query's (after lower-casing and collapsing spaces) are dropped
  from every figure and listed in the results; the rest are split into seen_docs (a relevant document is a
  positive of some train query) and unseen_docs (none is), as benchmarks/scifact_subsets.py does;
- first stage: Retriever(MiniLM) hybrid, the configuration benchmarks/retrieval_scifact.py chose on train,
  top ``--depth`` (default 100);
- training data: SciFact train queries minus a dev slice of 100 queries; positives from qrels/train.tsv,
  15 hard negatives per query mined from the first stage's ranks 5-99 (with ``--negatives-from best-first-stage``
  from best_pipeline.py's fused first stage instead: its tuning-copy models, which never saw the dev slice, and
  its chosen fusion weights); with ``--pseudo-queries N`` also the
  pseudo-queries the bundled SmolLM2 writes for N documents that no train query points at (benchmarks/_common.
  pseudo_query_examples: kept when the dense first stage ranks their own document in the top
  ``--pseudo-keep-top``, negatives from the hybrid first stage; saved by default as scifact-cross-encoder-pqN);
- cross-encoder: bundled all-MiniLM-L6-v2 encoder + a new one-logit head, groupwise softmax (1 positive +
  7 negatives; with ``--distill-from CROSS_ENCODER`` mixed with listwise distillation from that teacher's scores
  of the same group, ``--distill-weight`` 0.5, ``--teacher-temperature`` 1), ``--epochs`` 3 at ``--learning-rate`` 1e-4 (the defaults), ``--max-length`` 192 tokens a
  pair, ``--precision`` auto (bf16 autocast and inference where the CPU has native bf16, else float32); the
  interpolation weight with the first stage is chosen on the dev slice. It is saved to ``--output-model`` with a
  settings file beside it; ``--reuse-cross-encoder`` skips training when that
  folder holds a model this script trained with the same settings. Its pair scores go through
  flagstone.rerank.CachedReranker (keyed by the weights), so a rerun scores only new pairs; the ms/query is
  the time per freshly scored pair times the pairs per query (an all-cached run quotes the newest run that
  measured the same model, depth, length and dtype, and says so in ``cross_encoder_timing``);
- LLM reranker: SmolLM2-135M-Instruct (float32) reranks the top ``--llm-depth`` (default 3: the three modes
  then take ~16 min on 2 cores) of a seeded sample of ``--llm-queries`` (default 100) test queries, in each
  of ``--llm-modes``: pointwise (P(Yes) log-odds), pairwise (A/B log-odds, both orders, wins) and listwise
  (one ranking per window of 10; decoding constrained to a ranking unless ``--listwise-decoding free``;
  unparsed replies keep their window's order and are counted). The first stage's hits below
  ``--llm-depth`` stay below the reranked ones. Each mode is compared with the first stage on the same sample.
Every reranked system's gain over the first stage has a two-sided paired randomization p-value
(flagstone.evaluation.significance.paired_test, 10,000 sign flips) on each subset. Results are appended as
a run to benchmarks/results/rerank_scifact.json (the latest run's fields also at its top level) and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    RESULTS,
    SHARED_DATA,
    Output,
    append_run,
    compare_on_subsets,
    dev_slice,
    load_scifact_with_train,
    pseudo_query_examples,
    read_carved_split,
    refused,
    split_test_queries,
)

from flagstone._io import MODEL_LAYOUT
from flagstone.evaluation import DEFAULT_EVAL_DEPTH
from flagstone.evaluation.metrics import evaluate_run
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.models.reranker import LISTWISE_DECODINGS, LLM_RERANK_MODES, CrossEncoderReranker, LLMReranker
from flagstone.rerank import CachedReranker, interpolate_with_first_stage, rerank_hits
from flagstone.retrieval.retriever import Retriever
from flagstone.training.data import examples_from_qrels
from flagstone.training.loop import TrainingConfig
from flagstone.training.mining import add_teacher_scores, mine_hard_negatives
from flagstone.training.reranker import train_cross_encoder

WEIGHTS = [round(w, 1) for w in np.arange(0.0, 1.01, 0.1)]
SUBSETS = ("overall", "seen_docs", "unseen_docs")
NEGATIVE_SOURCES = ("hybrid", "best-first-stage")
MODELS = RESULTS.parent / "models"
QUICK_CORPUS = 300
LLM_MODEL = "SmolLM2-135M-Instruct (bundled GGUF, dequantised)"
# tokens per prompt: a pointwise prompt holds one passage, a pairwise two, a listwise window up to ten
LLM_MAX_LENGTH = {"pointwise": 256, "pairwise": 320, "listwise": 512}
# float32: on CPUs without native bf16 (AVX2 only, like the 2-core benchmark machine) bf16 ran 3x slower
LLM_DTYPE = "float32"
LLM_WINDOW, LLM_STEP = 10, 5
SETTINGS_SUFFIX = ".rerank_scifact-settings.json"
METHOD = "Fisher paired randomization test, two-sided, 10,000 sign flips, seed 0"


def per_query_ndcg(rows: list[list[str]], qids: list[str], qrels: dict) -> dict[str, float]:
    """nDCG@10 of each query's ranking (doc ids best first)."""
    run = {q: {d: float(len(row) - rank) for rank, d in enumerate(row)} for q, row in zip(qids, rows)}
    report = evaluate_run(run, {q: qrels[q] for q in qids}, (10,), ("ndcg",))
    return {q: values["ndcg@10"] for q, values in report.per_query.items()}


def mean(scores: dict[str, float], qids: list[str]) -> float | None:
    return float(np.mean([scores[q] for q in qids])) if qids else None


def with_tail(reranked: list[list[str]], first: list[list[str]]) -> list[list[str]]:
    """Each reranked head followed by the first stage's hits it did not include (ranks below the depth)."""
    return [head + [d for d in row if d not in set(head)] for head, row in zip(reranked, first)]


def restrict(subsets: dict[str, list[str]], keep: list[str]) -> dict[str, list[str]]:
    chosen = set(keep)
    return {name: [q for q in ids if q in chosen] if name != "duplicates" else ids for name, ids in subsets.items()}


def settings_path(model: Path) -> Path:
    """The settings file beside (not in: the folder is replaced whole when retrained) the cross-encoder."""
    return model.with_name(model.name + SETTINGS_SUFFIX)


def reusable_cross_encoder(model: Path, settings: dict) -> tuple[dict | None, str]:
    """The saved training record when ``model`` holds a cross-encoder this script trained with ``settings``,
    else None; and why."""
    from flagstone.genir.query_generation import model_fingerprint

    record_file = settings_path(model)
    if not (model / "config.json").is_file():
        return None, f"no model in {model}"
    if not record_file.is_file():
        return None, f"no settings file {record_file.name} beside {model} (not trained by this script)"
    record = json.loads(record_file.read_text())
    if record.get("settings") != settings:
        changed = sorted(k for k in set(settings) | set(record.get("settings", {}))
                         if settings.get(k) != record.get("settings", {}).get(k))
        return None, f"trained with other settings ({', '.join(changed)})"
    if record.get("fingerprint") != model_fingerprint(model):
        return None, f"{model} changed since its settings file was written"
    return record, f"reused {model} (trained {record.get('finished', '?')} with the same settings)"


def previous_llm(settings: dict, modes: list[str]) -> tuple[dict, str] | None:
    """Every mode's figures from the newest saved run whose LLM settings equal ``settings``, if there is one."""
    path = RESULTS / "rerank_scifact.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    for number, run in reversed(list(enumerate(saved.get("runs", []), 1))):
        llm = run.get("llm_reranker", {})
        if llm.get("settings") == settings and all("per_query_ndcg@10" in llm.get("modes", {}).get(m, {})
                                                   for m in modes):
            return llm["modes"], f"run {number} of benchmarks/results/rerank_scifact.json ({run.get('finished')})"
    return None


def previous_cross_ms(model: Path, depth: int, max_length: int, dtype: str) -> tuple[float, str] | None:
    """The cross-encoder's ms/query from the newest saved run of the same model folder, depth, length and dtype:
    what a run whose every pair came from the score cache reports (it measured nothing itself)."""
    path = RESULTS / "rerank_scifact.json"
    if not path.is_file():
        return None
    for number, run in reversed(list(enumerate(json.loads(path.read_text()).get("runs", []), 1))):
        ce = run.get("settings", {}).get("cross_encoder", {})
        ms = run.get("ms_per_query", {}).get(f"cross_encoder_top{depth}")
        if ms is not None and (ce.get("model"), ce.get("max_length"), ce.get("inference_dtype")) == \
                (str(model), max_length, dtype):
            return ms, f"run {number} of benchmarks/results/rerank_scifact.json ({run.get('finished')})"
    return None


def best_first_stage_settings(args: argparse.Namespace, dev_ids: list[str]) -> dict | str:
    """The models and fusion weights of best_pipeline.py's first stage for mining, or the one-line error: the
    weights must be in benchmarks/results/best_pipeline.json and each model must be a tuning copy that never saw
    the dev slice (the cross-encoder's interpolation weight is chosen there)."""
    from best_pipeline import TRAIN_TUNING_COPIES, missing_model, tuning_copy_problem

    saved = RESULTS / "best_pipeline.json"
    try:
        weights = json.loads(saved.read_text())["weights"]["fusion"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"--negatives-from best-first-stage: no fusion weights in {saved}; run benchmarks/best_pipeline.py first"
    dense, m3 = Path(args.mining_dense_model), Path(args.mining_m3_model)
    for problem in (missing_model(dense, ["config.json"], TRAIN_TUNING_COPIES, "--mining-dense-model"),
                    missing_model(m3, ["config.json", "sparse_linear.pt", "colbert_linear.pt"], TRAIN_TUNING_COPIES,
                                  "--mining-m3-model"),
                    tuning_copy_problem(dense, dev_ids), tuning_copy_problem(m3, dev_ids)):
        if problem:
            return problem
    weights = {k: float(v) for k, v in weights.items()}
    description = (f"weights {', '.join(f'{k} {v:g}' for k, v in weights.items())} from {saved.name}; "
                   f"dense {dense.name}, M3 {m3.name}")
    return {"weights": weights, "dense": dense, "m3": m3, "description": description}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "beir" / "scifact"))
    parser.add_argument("--depth", type=int, default=DEFAULT_EVAL_DEPTH,
                        help=f"first-stage hits the cross-encoder reranks (default: {DEFAULT_EVAL_DEPTH})")
    # 3: the three modes on 100 queries take ~16 min on 2 cores (measured at depth 5: pointwise 0.8 s a pair,
    # pairwise 0.85 s a prompt, d(d-1) prompts, listwise ~3 s a window); depth 5 would take ~40 min, 10 ~2.5 h
    parser.add_argument("--llm-depth", type=int, default=3, help="first-stage hits the LLM reranks (default: 3)")
    parser.add_argument("--llm-queries", type=int, default=100,
                        help="test queries in the LLM's seeded sample (default: 100)")
    parser.add_argument("--llm-seed", type=int, default=0, help="seed of the LLM's query sample (default: 0)")
    parser.add_argument("--llm-modes", default=",".join(LLM_RERANK_MODES),
                        help=f"comma-separated LLM reranking modes (default: {','.join(LLM_RERANK_MODES)})")
    parser.add_argument("--listwise-decoding", choices=LISTWISE_DECODINGS, default="constrained",
                        help="listwise replies: constrained to a ranking, or free text (default: constrained)")
    parser.add_argument("--max-length", type=int, default=192, help="cross-encoder tokens per pair (default: 192)")
    parser.add_argument("--epochs", type=int, default=3, help="cross-encoder epochs (default: 3)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="cross-encoder learning rate (default: 1e-4)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="cross-encoder training autocast and inference dtype (default: auto, bfloat16 where the "
                             "CPU computes it natively, else float32: emulated bf16 was ~5x slower)")
    parser.add_argument("--output-model", default=None,
                        help="where the cross-encoder is saved (default: benchmarks/models/scifact-cross-encoder, "
                             "with --quick scifact-cross-encoder-quick)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train over an existing --output-model you named (the default folder is this script's "
                             "to replace; with --reuse-cross-encoder a matching model is reused, not overwritten)")
    parser.add_argument("--reuse-cross-encoder", action="store_true",
                        help="skip training when --output-model holds a cross-encoder this script trained with the "
                             "same settings (saves ~50 min)")
    parser.add_argument("--reuse-llm", action="store_true",
                        help="take the LLM modes' per-query figures from the newest saved run with the same LLM "
                             "settings instead of rerunning them (they do not depend on the cross-encoder)")
    parser.add_argument("--pseudo-queries", type=int, default=0, metavar="N",
                        help="also train the cross-encoder on pseudo-queries the bundled SmolLM2 writes for N "
                             "documents no train query points at (cached; kept when the dense first stage ranks "
                             "their document in the top --pseudo-keep-top; negatives from the hybrid first stage). "
                             "Default 0: none")
    parser.add_argument("--pseudo-keep-top", type=int, default=3, metavar="K",
                        help="consistency filter for --pseudo-queries (default: 3)")
    parser.add_argument("--negatives-from", choices=NEGATIVE_SOURCES, default="hybrid",
                        help="where the hard negatives (ranks 5-99) come from: this script's MiniLM hybrid first "
                             "stage, or best_pipeline.py's fused first stage (fine-tuned dense + BM25 + M3 heads "
                             "with the fusion weights in benchmarks/results/best_pipeline.json), built from "
                             "--mining-dense-model and --mining-m3-model; saved by default with a -bfs suffix "
                             "(default: hybrid)")
    parser.add_argument("--mining-dense-model", default=str(MODELS / "scifact-minilm-finetuned-no-dev"),
                        help="with --negatives-from best-first-stage: the fine-tuned dense model (default: the tuning "
                             "copy `python benchmarks/train_scifact.py --without-dev-slice` trains, which never saw "
                             "the dev slice)")
    parser.add_argument("--mining-m3-model", default=str(MODELS / "scifact-minilm-m3-no-dev"),
                        help="with --negatives-from best-first-stage: the M3 model (default: its tuning copy)")
    parser.add_argument("--distill-from", default=None, metavar="CROSS_ENCODER",
                        help="listwise distillation: a trained cross-encoder folder whose scores of every training "
                             "example's positive and negatives (cached on disk) become a soft target over each "
                             "group, mixed into the loss with --distill-weight (default: none, labels only)")
    parser.add_argument("--distill-weight", type=float, default=0.5,
                        help="with --distill-from: loss = (1 - w) x label loss + w x listwise distillation "
                             "(default: 0.5)")
    parser.add_argument("--teacher-temperature", type=float, default=1.0,
                        help="with --distill-from: the teacher's scores are divided by this before the softmax "
                             "(default: 1.0)")
    parser.add_argument("--split-folder", default=None,
                        help="a split 'flagstone data carve-split' wrote from --data's train split: train the "
                             "cross-encoder on its train queries and choose the interpolation weight on its carved "
                             "ones (default: 100 train queries drawn with numpy default_rng(0) as the dev slice)")
    parser.add_argument("--train-only", action="store_true",
                        help="stop once the cross-encoder is trained and saved with its settings file (e.g. as a "
                             "distillation teacher for tune_training.py dense --teacher); no test figures")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run to check the script: 24 train queries for 1 epoch, 10 test queries, a "
                             "corpus of their judged documents and 300 others, LLM on 5 queries at depth 5 "
                             "(numbers meaningless; prints, saves nothing but the model)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.llm_modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in LLM_RERANK_MODES]
    if bad or not modes or len(set(modes)) != len(modes):
        print(f"--llm-modes: give distinct modes from {', '.join(LLM_RERANK_MODES)}; got {args.llm_modes!r}",
              file=sys.stderr)
        return 2
    for name in ("depth", "llm_depth", "llm_queries", "epochs", "pseudo_keep_top"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.pseudo_queries < 0:
        print("--pseudo-queries must be 0 or more", file=sys.stderr)
        return 2
    if not 0 < args.distill_weight <= 1 or args.teacher_temperature <= 0:
        print("--distill-weight must be in (0, 1] and --teacher-temperature positive", file=sys.stderr)
        return 2
    if args.distill_from and not (Path(args.distill_from) / "config.json").is_file():
        print(f"--distill-from: {args.distill_from} holds no cross-encoder (config.json missing)", file=sys.stderr)
        return 2
    if args.quick:
        args.depth, args.llm_depth, args.llm_queries, args.epochs = 10, 5, min(args.llm_queries, 5), 1
        args.pseudo_queries = min(args.pseudo_queries, 8)
    default_path = MODELS / (
        ("scifact-cross-encoder-quick" if args.quick else "scifact-cross-encoder")
        + (f"-pq{args.pseudo_queries}" if args.pseudo_queries else "")
        + ("-bfs" if args.negatives_from == "best-first-stage" else "")
        + ("-distil" if args.distill_from else ""))
    output_model = Path(args.output_model or default_path)
    args.output_model = str(output_model)  # recorded with the run's arguments
    if args.llm_depth > args.depth:
        print(f"--llm-depth {args.llm_depth} is deeper than --depth {args.depth}", file=sys.stderr)
        return 2
    wall = time.perf_counter()
    loaded = load_scifact_with_train(args.data)
    if loaded is None:
        return 2
    test, train_qrels, doc_text = loaded
    subsets = split_test_queries(Path(args.data), test.qrels, train_qrels)

    if args.split_folder:
        try:
            fit_ids, dev_ids, _ = read_carved_split(args.split_folder, args.data, train_qrels)
        except ValueError as error:
            print(f"--split-folder: {error}", file=sys.stderr)
            return 2
    else:
        fit_ids, dev_ids = dev_slice(list(train_qrels))
    mining = None
    if args.negatives_from == "best-first-stage":
        mining = best_first_stage_settings(args, dev_ids)
        if isinstance(mining, str):
            print(mining, file=sys.stderr)
            return 2
    test_ids = subsets["overall"]
    if args.quick:
        fit_ids, dev_ids, test_ids = fit_ids[:24], dev_ids[:10], test_ids[:10]
        subsets = restrict(subsets, test_ids)
    sample = sorted(np.random.default_rng(args.llm_seed).choice(
        test_ids, size=min(args.llm_queries, len(test_ids)), replace=False).tolist())
    sample_subsets = restrict(subsets, sample)
    llm_settings = {"model": LLM_MODEL, "dtype": LLM_DTYPE, "depth": args.llm_depth, "seed": args.llm_seed,
                    "queries": sample, "max_length": {m: LLM_MAX_LENGTH[m] for m in modes},
                    "pairwise_both_orders": True, "listwise_window": LLM_WINDOW, "listwise_step": LLM_STEP,
                    "listwise_decoding": args.listwise_decoding, "first_stage_depth": args.depth}
    reused_llm = previous_llm(llm_settings, modes) if args.reuse_llm else None
    if args.reuse_llm and reused_llm is None:
        print("--reuse-llm: no saved run has LLM figures with these settings (depth, sample, modes, decoding); "
              "run without it", file=sys.stderr)
        return 2
    print(f"{len(test_ids)} test queries ({len(subsets['duplicates'])} duplicated in train dropped): "
          f"{len(subsets['seen_docs'])} seen_docs, {len(subsets['unseen_docs'])} unseen_docs; "
          f"LLM sample {len(sample)}", flush=True)

    # the cross-encoder's settings, and whether a model trained the same way is there to reuse (decided before the
    # heavy work, so a refused output folder costs nothing)
    from flagstone.genir.query_generation import model_fingerprint
    from flagstone.models._hf import resolve_precision

    precision = resolve_precision(args.precision)
    config = TrainingConfig(epochs=args.epochs, learning_rate=args.learning_rate, warmup_ratio=0.1,
                            precision=precision, seed=0)
    ce_settings = {"script": "benchmarks/rerank_scifact.py", "base": "all-MiniLM-L6-v2", "group_size": 8,
                   "batch_groups": 4, "max_length": args.max_length, "epochs": args.epochs,
                   "learning_rate": args.learning_rate, "warmup_ratio": 0.1, "precision": precision, "seed": 0,
                   "negatives": "15 from the hybrid first stage's ranks 5-99, seed 0" if mining is None else
                   f"15 from best_pipeline's fused first stage's ranks 5-99 ({mining['description']}), seed 0",
                   "train_queries": fit_ids, "data": str(Path(args.data).resolve()),
                   "corpus": f"--quick: judged documents + the first {QUICK_CORPUS}" if args.quick else "all"}
    if args.pseudo_queries:  # absent otherwise, so models trained before the option existed still match
        ce_settings.update(pseudo_queries=args.pseudo_queries, pseudo_keep_top=args.pseudo_keep_top)
    if args.distill_from:  # absent otherwise, as above
        ce_settings.update(distill_from=str(Path(args.distill_from).resolve()),
                           distill_teacher_fingerprint=model_fingerprint(args.distill_from),
                           distill_weight=args.distill_weight, teacher_temperature=args.teacher_temperature)
    record, reuse_note = (reusable_cross_encoder(output_model, ce_settings) if args.reuse_cross_encoder
                          else (None, "trained (--reuse-cross-encoder not given)"))
    # about to train: refuse a folder that may not be replaced before the first stage's encoding
    if record is None and refused([Output("--output-model", output_model, default_path, MODEL_LAYOUT)],
                                  args.overwrite):
        return 2

    corpus_ids, corpus_texts = test.doc_ids, test.doc_texts
    if args.quick:  # the judged documents of the queries used and the corpus's first 300: minutes, not an hour
        judged = {d for qrels, ids in ((train_qrels, fit_ids + dev_ids), (test.qrels, test_ids))
                  for q in ids for d in qrels[q]}
        corpus_ids = [d for i, d in enumerate(test.doc_ids) if i < QUICK_CORPUS or d in judged]
        corpus_texts = [doc_text[d] for d in corpus_ids]
    cache = EmbeddingCache()
    retriever = Retriever(Embedder(show_progress=True), cache=cache).fit(corpus_ids, corpus_texts)

    def first_stage(qids):
        return retriever.search([test.queries[q] for q in qids], mode="hybrid", k=args.depth)

    # 1-2. mine hard negatives for the training queries from the first stage and train the cross-encoder
    if record is None:
        if args.reuse_cross_encoder:
            print(f"--reuse-cross-encoder: training anyway: {reuse_note}", flush=True)
            reuse_note = f"trained: {reuse_note}"
        import datetime

        miner = retriever
        if mining is not None:
            from best_pipeline import FusedFirstStage, build_first_stage

            print("mining from best_pipeline's fused first stage: " + mining["description"], flush=True)
            miner = FusedFirstStage(*build_first_stage(mining["dense"], mining["m3"], corpus_ids, corpus_texts,
                                                       cache=cache, show_progress=True), mining["weights"])
        examples = examples_from_qrels(test.queries, train_qrels, doc_text, fit_ids)
        examples = mine_hard_negatives(examples, miner, doc_text, mode="hybrid", rank_range=(5, 100),
                                       n_negatives=15, seed=0)
        pseudo = None
        if args.pseudo_queries:  # documents no train or dev query points at: the unseen documents' signal
            positives = {d for q in train_qrels for d in train_qrels[q]}
            extra, pseudo = pseudo_query_examples(corpus_ids, doc_text, positives, retriever, args.pseudo_queries,
                                                  args.pseudo_keep_top, mine_mode="hybrid", miner=miner)
            print(f"pseudo-queries: {pseudo['kept']} kept of {pseudo['queries_written']} written for "
                  f"{pseudo['documents']} documents", flush=True)
            examples = examples + extra
        distill_weight = 0.0
        if args.distill_from:  # the teacher scores each example's positives and all 15 negatives (cached pairs)
            teacher = CachedReranker(CrossEncoderReranker(args.distill_from, max_length=args.max_length,
                                                          batch_size=32, dtype=precision), cache)
            examples = add_teacher_scores(examples, teacher)
            distill_weight = args.distill_weight
        start = time.perf_counter()
        trained = train_cross_encoder("all-MiniLM-L6-v2", examples, output_model, group_size=8, batch_size=4,
                                      max_length=args.max_length, config=config, overwrite=True,
                                      distill_weight=distill_weight, teacher_temperature=args.teacher_temperature)
        record = {"settings": ce_settings, "fingerprint": model_fingerprint(output_model),
                  "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "training": {"steps": trained.steps, "train_seconds": round(time.perf_counter() - start, 1),
                               "loss_first_10": float(np.mean(trained.losses[:10])),
                               "loss_last_10": float(np.mean(trained.losses[-10:])),
                               "examples": len(examples), "pseudo_queries": pseudo}}
        staging = settings_path(output_model).with_suffix(".tmp")
        staging.write_text(json.dumps(record, indent=1) + "\n")
        staging.replace(settings_path(output_model))
    else:
        print(reuse_note, flush=True)
    if args.train_only:
        print(f"--train-only: cross-encoder at {output_model}, settings in {settings_path(output_model)} "
              f"({len(fit_ids)} training queries)", flush=True)
        return 0
    training = record["training"]
    # pair scores on disk (keyed by the weights): a rerun with --reuse-cross-encoder, or best_pipeline.py with the
    # same model, scores only pairs not seen before; the ms/query below counts only freshly scored pairs
    cross = CachedReranker(CrossEncoderReranker(output_model, max_length=args.max_length, batch_size=32,
                                                dtype=precision), cache)

    # 3. choose the interpolation weight on the dev slice
    dev_first = first_stage(dev_ids)
    dev_texts = {d: doc_text[d] for row in dev_first.ids for d in row}
    dev_reranked = rerank_hits(cross, [test.queries[q] for q in dev_ids], dev_first, dev_texts, show_progress=True)
    sweep = []
    for w in WEIGHTS:
        fused = interpolate_with_first_stage(dev_reranked, w)
        sweep.append({"first_stage_weight": w, "dev_ndcg@10": float(np.mean(list(
            per_query_ndcg(fused.ids, dev_ids, train_qrels).values())))})
    best = max(sweep, key=lambda r: r["dev_ndcg@10"])

    # 4. test: first stage, cross-encoder + first stage, cross-encoder alone
    test_queries = [test.queries[q] for q in test_ids]
    t0 = time.perf_counter()
    test_first = first_stage(test_ids)
    first_ms = (time.perf_counter() - t0) * 1000 / len(test_ids)
    texts = {d: doc_text[d] for row in test_first.ids for d in row}
    mark = cross.mark()
    reranked = rerank_hits(cross, test_queries, test_first, texts, show_progress=True)
    cost = cross.since(mark)
    cross_ms, cross_timing = cost.ms_per_query(len(test_ids)), cost.to_dict()
    if cross_ms is None:  # every pair came from the cache: keep the timing of the run that scored them, if any
        earlier = previous_cross_ms(output_model, args.depth, args.max_length, precision)
        cross_ms = earlier[0] if earlier else None
        cross_timing["ms_per_query_from"] = earlier[1] if earlier else "not measured: every pair was cached"
    fused = interpolate_with_first_stage(reranked, best["first_stage_weight"])
    first_rows = dict(zip(test_ids, test_first.ids))
    scores = {"first_stage": per_query_ndcg(test_first.ids, test_ids, test.qrels),
              "cross_encoder": per_query_ndcg(fused.ids, test_ids, test.qrels),
              "cross_encoder_alone": per_query_ndcg(reranked.ids, test_ids, test.qrels)}
    comparisons = {name: compare_on_subsets(scores["first_stage"], scores[name], subsets)
                   for name in ("cross_encoder", "cross_encoder_alone")}

    # 5. the LLM in each mode on the seeded sample, its first stage's top --llm-depth
    llm_modes: dict[str, dict] = {}
    if reused_llm is not None:
        llm_modes, llm_source = {m: reused_llm[0][m] for m in modes}, reused_llm[1]
    else:
        llm_source = "this run"
        sample_first = first_stage(sample)
        for mode in modes:
            llm = LLMReranker(mode=mode, max_length=LLM_MAX_LENGTH[mode], batch_size=8, dtype=LLM_DTYPE,
                              window=LLM_WINDOW, step=LLM_STEP, on_unparsed="keep",
                              listwise_decoding=args.listwise_decoding)
            t0 = time.perf_counter()
            llm_hits = rerank_hits(llm, [test.queries[q] for q in sample], sample_first, texts,
                                   depth=args.llm_depth, show_progress=True)
            ms = (time.perf_counter() - t0) * 1000 / len(sample)
            rows = with_tail(llm_hits.ids, [first_rows[q] for q in sample])
            listwise = mode == "listwise"  # pointwise and pairwise read logits: there is no reply to parse
            llm_modes[mode] = {"ms_per_query": ms, "per_query_ndcg@10": per_query_ndcg(rows, sample, test.qrels),
                               "replies": len(llm.listwise_log) if listwise else None,
                               "unparsed_replies": llm.listwise_unparsed if listwise else None}
            if mode == "listwise":
                llm_modes[mode]["unparsed_examples"] = [r.reply[:120] for r in llm.listwise_log if not r.parsed][:5]
            print(f"LLM {mode}: {ms / 1000:.1f} s/query, unparsed {llm_modes[mode]['unparsed_replies']}", flush=True)
    for mode, entry in llm_modes.items():
        entry["comparison"] = compare_on_subsets(scores["first_stage"], entry["per_query_ndcg@10"], sample_subsets)

    # 6. results: every system on every subset against the first stage
    def system_entry(comparison: dict | None, ndcg: float | None) -> dict:
        if comparison is None:
            return {"ndcg@10": ndcg, "gain": None, "p_value": None, "queries": 0}
        return {"ndcg@10": comparison["best"], "first_stage_ndcg@10": comparison["base"],
                "gain": comparison["delta"], "p_value": comparison["p_value"], "queries": comparison["queries"]}

    by_subset = {}
    for subset in SUBSETS:
        systems = {"first_stage": {"ndcg@10": mean(scores["first_stage"], subsets[subset]),
                                   "queries": len(subsets[subset])}}
        for name, comparison in comparisons.items():
            systems[name] = system_entry(comparison[subset], None)
        for mode, entry in llm_modes.items():
            systems[f"llm_{mode}"] = system_entry(entry["comparison"][subset], None)
            systems[f"llm_{mode}"]["sample"] = True
        by_subset[subset] = {"queries": len(subsets[subset]), "llm_sample_queries": len(sample_subsets[subset]),
                             "systems": systems}
    headline = comparisons["cross_encoder"]["overall"]
    w = best["first_stage_weight"]
    results = {
        "arguments": {k: v for k, v in vars(args).items()},
        "first_stage_ndcg@10": headline["base"],
        "cross_encoder_ndcg@10": headline["best"],
        "cross_encoder_alone_ndcg@10": comparisons["cross_encoder_alone"]["overall"]["best"],
        "best_system": "cross_encoder (interpolated with the first stage)",
        "gain_over_best_first_stage": headline["delta"],
        "p_value": headline["p_value"],
        "llm_reranker": {"settings": llm_settings, "figures_from": llm_source,
                         "modes": {m: {k: v for k, v in e.items() if k != "comparison"} for m, e in llm_modes.items()}},
        "subsets": {"method": METHOD, "baseline": "first_stage",
                    "definition": "seen_docs: a relevant document of the test query is a positive of some train "
                                  "query; LLM modes are scored on a seeded sample of the test queries and compared "
                                  "with the first stage on the same sample",
                    "queries": {name: len(ids) for name, ids in subsets.items()},
                    "duplicates_dropped": subsets["duplicates"], "llm_sample": sample, **by_subset},
        "ms_per_query": {"first_stage": first_ms, f"cross_encoder_top{args.depth}": cross_ms,
                         **{f"llm_{m}_top{args.llm_depth}": e["ms_per_query"] for m, e in llm_modes.items()}},
        "cross_encoder_timing": cross_timing,
        "settings": {
            "first_stage": "hybrid dense (all-MiniLM-L6-v2) + BM25, weighted 0.5/0.5 min-max",
            "depth": args.depth, "llm_depth": args.llm_depth, "test_queries": len(test_ids),
            "train_queries": len(fit_ids), "dev_queries": len(dev_ids),
            "cross_encoder": {"base": "all-MiniLM-L6-v2", "group_size": 8, "batch_groups": 4,
                              "max_length": args.max_length, "epochs": args.epochs,
                              "learning_rate": args.learning_rate, "steps": training["steps"],
                              "train_seconds": training["train_seconds"], "model": str(output_model),
                              "training": reuse_note, "precision": precision, "inference_dtype": precision,
                              "first_stage_weight": w,
                              "first_stage_weight_chosen_on": f"{len(dev_ids)} held-out train queries",
                              "dev_sweep": sweep, "loss_first_10": training["loss_first_10"],
                              "loss_last_10": training["loss_last_10"],
                              "pseudo_queries": training.get("pseudo_queries")},
        },
        "wall_s": round(time.perf_counter() - wall, 1),
    }

    def cell(entry: dict) -> str:
        if entry.get("gain") is None:
            return "-" if entry["ndcg@10"] is None else f"{entry['ndcg@10']:.4f}"
        return f"{entry['ndcg@10']:.4f} ({entry['gain']:+.4f}, p={entry['p_value']:.3g})"

    def row(label: str, key: str, ms: str, unparsed: str = "") -> str:
        return f"| {label} | " + " | ".join(cell(by_subset[s]["systems"][key]) for s in SUBSETS) + \
            f" | {ms} | {unparsed} |"

    ce_ms = "-" if cross_ms is None else f"{cross_ms:.0f}" + ("" if cross_timing["pairs_scored"] else " (earlier run)")
    pq = training.get("pseudo_queries")
    pseudo_note = (f" and {pq['kept']} pseudo-queries (of {pq['queries_written']} SmolLM2 wrote for {pq['documents']} "
                   f"documents no train query points at; kept when the dense first stage ranks their document in "
                   f"the top {pq['keep_top']})" if pq else "")
    n = {s: len(subsets[s]) for s in SUBSETS}
    m = {s: len(sample_subsets[s]) for s in SUBSETS}
    lines = [
        f"SciFact test nDCG@10 on {n['overall']} queries ({len(subsets['duplicates'])} that duplicate a train query "
        f"dropped: {', '.join(subsets['duplicates']) or 'none'}); seen_docs {n['seen_docs']}, unseen_docs "
        f"{n['unseen_docs']}. In brackets: gain over the first stage on the same queries, two-sided paired "
        "randomization p.",
        "",
        "| system | overall | seen_docs | unseen_docs | ms / query | unparsed replies |",
        "|---|---|---|---|---|---|",
        row(f"first stage (hybrid dense + BM25), top {args.depth}", "first_stage", f"{first_ms:.1f}"),
        row(f"+ trained cross-encoder (interpolated, w={w} chosen on dev)", "cross_encoder", ce_ms),
        row("+ trained cross-encoder alone", "cross_encoder_alone", ce_ms),
    ]
    if llm_modes:
        lines.append(f"| first stage on the LLM sample ({m['overall']} / {m['seen_docs']} / {m['unseen_docs']} "
                     "queries) | " + " | ".join(
                         f"{mean(scores['first_stage'], sample_subsets[s]):.4f}" if sample_subsets[s] else "-"
                         for s in SUBSETS) + " | | |")
    for mode, entry in llm_modes.items():
        label = {"pointwise": "yes/no log-odds", "pairwise": "A/B, both orders, wins",
                 "listwise": f"ranking per window of {LLM_WINDOW}, {args.listwise_decoding} decoding"}[mode]
        unparsed = "" if entry["replies"] is None else f"{entry['unparsed_replies']} of {entry['replies']}"
        lines.append(row(f"+ SmolLM2-135M {mode} ({label}), top {args.llm_depth}", f"llm_{mode}",
                         f"{entry['ms_per_query']:.0f}", unparsed))
    lines += [
        "",
        f"Cross-encoder trained on {len(fit_ids)} train queries{pseudo_note} ({training['steps']} steps, "
        f"{training['train_seconds'] / 60:.1f} min, loss {training['loss_first_10']:.3f} -> "
        f"{training['loss_last_10']:.3f}; {reuse_note}). LLM rows: a seed-{args.llm_seed} sample of {len(sample)} "
        f"test queries, the first stage's hits below the top {args.llm_depth} kept in place (figures from "
        f"{llm_source}). 2 CPU cores; cross-encoder {precision}, LLM float32. Wall time {results['wall_s'] / 60:.1f} min.",
    ]
    table = "\n".join(lines)
    if args.quick:
        print(table)
        return 0
    append_run("rerank_scifact", results, table, latest_at_top=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
