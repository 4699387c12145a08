"""The training commands of the ``flagstone`` CLI: mine, train embedder|reranker|long-context|genir|newsrec|inters,
inters-data, merge."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from flagstone._io import MODEL_LAYOUT, check_output_folder
from flagstone.cli._common import (
    EPILOG,
    _add_cache_options,
    _cache,
    _check_output_file,
    _read_texts,
    add_backend_options,
    causal_lm_name,
    check_argument,
    check_with,
    existing_file,
    existing_folder,
    existing_path,
    model_name,
    non_negative_float,
    non_negative_int,
    output_file,
    output_folder,
    positive_float,
    positive_int,
)
from flagstone.errors import FlagstoneError
from flagstone.models.causal_lm import DEFAULT_LLM
from flagstone.newsrec.settings import KINDS as NEWSREC_KINDS
from flagstone.newsrec.settings import NewsRecConfig, NewsRecTraining
from flagstone.inters.settings import LoraSettings
from flagstone.training.settings import (
    M3_EPOCHS,
    RERANKER_BATCH_SIZE,
    RERANKER_GROUP_SIZE,
    RERANKER_MAX_LENGTH,
    EmbedderTrainingSettings,
    TrainingConfig,
    default_epochs,
)

# the library's defaults (the tuned settings the README reports) are the options' defaults
_CONFIG, _EMBEDDER = TrainingConfig(), EmbedderTrainingSettings()
_NEWSREC, _NEWSREC_TRAINING = NewsRecConfig(), NewsRecTraining()
_LORA = LoraSettings()
BF16_HELP = ("bfloat16 autocast; --no-bf16 trains in float32 (default: on where the CPU computes bfloat16 "
             "natively, AVX512-BF16 or AMX, and off elsewhere: emulated, bfloat16 was ~5x slower than float32)")


def training_precision(args: argparse.Namespace) -> str:
    """TrainingConfig.precision from --bf16 / --no-bf16, "auto" (the CPU decides) when neither is given."""
    return "auto" if args.bf16 is None else "bfloat16" if args.bf16 else "float32"


# the task names, spelled out so that building the parser stays light (a test keeps them equal to the registry)
_INTERS_TASKS = ("query_reformulation", "query_expansion", "intent_classification", "query_clarification",
                 "query_suggestion", "query_matching", "summarization", "fact_verification", "reading_comprehension",
                 "pointwise_reranking", "pairwise_reranking", "listwise_reranking")


def add_parsers(sub, epilog: str = EPILOG) -> None:
    p = sub.add_parser("mine", help="add hard negatives (and optional teacher scores) to training data",
                       description="Read FlagEmbedding-format training data (JSONL: query, pos, neg, ...), retrieve "
                                   "for each query from a corpus, and replace its negatives with documents sampled "
                                   "from a rank range (positives excluded). Optionally add pos_scores/neg_scores "
                                   "from a teacher reranker for distillation.", epilog=epilog)
    p.add_argument("data", type=existing_file, help="training data .jsonl (query and pos are required)")
    p.add_argument("-o", "--output", type=output_file, required=True, help="output .jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("--corpus", type=existing_path, default=None,
                   help="texts to mine from: a BEIR folder, .jsonl or .txt (default: every pos/neg text in the data)")
    p.add_argument("--model", type=model_name, default=None,
                   help="retrieval model (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--mode", default="dense", choices=("dense", "bm25", "hybrid"),
                   help="retrieval mode (default: dense)")
    p.add_argument("--range", nargs=2, type=non_negative_int, default=[10, 100], metavar=("START", "END"),
                   help="0-based rank range to sample negatives from (default: 10 100)")
    p.add_argument("--negatives", type=positive_int, default=15, help="negatives per query (default: 15)")
    p.add_argument("--teacher", type=model_name, default=None, help="a cross-encoder to score pos/neg for distillation")
    p.add_argument("--seed", type=int, default=0)
    add_backend_options(p)  # the retrieval model's and the teacher's
    _add_cache_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    check_with(p, _check_mine)

    p = sub.add_parser("train", help="fine-tune an embedder (dense or BGE-M3 dense+sparse+ColBERT) or a reranker, "
                                     "extend a causal LM's context, train a generative retriever or a news recommender",
                       description="embedder / reranker: contrastive fine-tuning on FlagEmbedding-format data with "
                                   "hard negatives (run `flagstone mine` first), resumable with --checkpoint-dir. "
                                   "long-context: RoPE base + LoRA context extension. genir: a generative retriever "
                                   "trained on a BEIR folder. newsrec: a news recommender on MIND-format data.",
                       epilog=epilog)
    tsub = p.add_subparsers(dest="train_command", metavar="KIND")
    for kind, help_text in (("embedder", "InfoNCE with in-batch and hard negatives; --heads dense sparse colbert "
                                         "trains BGE-M3's three heads with self-distillation"),
                            ("reranker", "a cross-encoder with groupwise softmax (one logit per pair)")):
        t = tsub.add_parser(kind, help=help_text, description=help_text, epilog=epilog)
        t.add_argument("data", type=existing_file, help="training data .jsonl with negatives")
        t.add_argument("-o", "--output", type=output_folder, required=True, help="folder to save the trained model in")
        t.add_argument("--overwrite", action="store_true",
                       help="replace the output folder if Flagstone wrote it (a folder holding anything else is "
                            "never replaced)")
        t.add_argument("--model", type=model_name, default="all-MiniLM-L6-v2", help="base model (default: all-MiniLM-L6-v2)")
        is_embedder = kind == "embedder"
        epochs_help = (f"(default: {_CONFIG.epochs}; {M3_EPOCHS} when training a sparse or ColBERT head)"
                       if is_embedder else f"(default: {_CONFIG.epochs})")
        t.add_argument("--epochs", type=positive_int, default=None, help=epochs_help)
        t.add_argument("--learning-rate", type=positive_float, default=_CONFIG.learning_rate,
                       help=f"(default: {_CONFIG.learning_rate:g})")
        batch_size = _EMBEDDER.batch_size if is_embedder else RERANKER_BATCH_SIZE
        t.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"queries per step (default: {batch_size})")
        group_size = _EMBEDDER.group_size if is_embedder else RERANKER_GROUP_SIZE
        t.add_argument("--group-size", type=positive_int, default=group_size,
                       help=f"1 positive + N-1 negatives (default: {group_size})")
        t.add_argument("--gradient-accumulation", type=positive_int, default=_CONFIG.gradient_accumulation)
        t.add_argument("--max-steps", type=positive_int, default=None)
        max_length = _EMBEDDER.passage_max_length if is_embedder else RERANKER_MAX_LENGTH
        t.add_argument("--max-length", type=positive_int, default=max_length,
                       help=f"{'passage' if is_embedder else 'pair'} tokens (default: {max_length})")
        t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help=BF16_HELP)
        t.add_argument("--checkpoint-dir", type=output_folder, default=None, help="save resumable state here; rerun to resume")
        t.add_argument("--checkpoint-every", type=positive_int, default=50, help="steps between checkpoints (default: 50)")
        t.add_argument("--seed", type=int, default=_CONFIG.seed)
        t.add_argument("--quiet", action="store_true", help="no progress bars")
        if kind == "embedder":
            t.add_argument("--heads", nargs="+", default=list(_EMBEDDER.heads), choices=("dense", "sparse", "colbert"),
                           help=f"heads to train (default: {' '.join(_EMBEDDER.heads)})")
            t.add_argument("--temperature", type=positive_float, default=_EMBEDDER.temperature,
                           help=f"InfoNCE temperature (default: {_EMBEDDER.temperature:g})")
            t.add_argument("--no-in-batch", action="store_true", help="only the query's own group as negatives")
            t.add_argument("--freeze-encoder", action="store_true", help="train only the sparse/ColBERT heads")
            t.add_argument("--lora-rank", type=positive_int, default=None,
                           help="train LoRA adapters of this rank (needs peft)")
            t.add_argument("--gradient-checkpointing", action="store_true")
            t.add_argument("--sparse-init", choices=("idf", "uniform"), default=_EMBEDDER.sparse_init,
                           help="how a new sparse head starts: IDF-weighted (default) or uniform term overlap")
            t.add_argument("--flops", nargs=2, type=non_negative_float, metavar=("QUERY", "PASSAGE"),
                           default=list(_EMBEDDER.flops_weights),
                           help="SPLADE's FLOPS regulariser weights on the sparse head's query and passage "
                                "weights (default: 0 0, off; SPLADE used about 3e-4 1e-4)")
            t.add_argument("--validate", type=existing_folder, metavar="BEIR_FOLDER", default=None,
                           help="score this BEIR data set (nDCG@10, recall@100) during training; never pass "
                                "the split you report on")
            t.add_argument("--validate-split", default="dev", help="qrels split to validate on (default: dev)")
            t.add_argument("--validate-every", type=positive_int, default=None,
                           help="optimiser steps between validations (default: once per epoch)")

    _add_long_context_parser(tsub, epilog)
    _add_genir_parser(tsub, epilog)
    _add_newsrec_parser(tsub, epilog)
    t = tsub.add_parser(
        "inters", help="instruction-tune a causal LM with LoRA on INTERS search-task data (flagstone inters-data)",
        description="Instruction-tune a causal LM (default: the bundled SmolLM2-135M-Instruct) with LoRA adapters on "
                    "INTERS-style rows (prompt -> completion, from `flagstone inters-data`). The loss covers the "
                    "answers only. The output folder is a LoRA adapter that every command taking a causal LM "
                    "accepts (e.g. `flagstone search --reranker llm:FOLDER`).", epilog=epilog)
    t.add_argument("data", type=existing_path, help="a folder written by `flagstone inters-data` (its train.jsonl "
                                                   "is used) or a .jsonl of INTERS rows")
    t.add_argument("-o", "--output", type=output_folder, required=True, help="folder to save the adapter in")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if Flagstone wrote it (a folder holding anything else is never "
                        "replaced)")
    t.add_argument("--model", type=causal_lm_name, default="smollm2-135m-instruct",
                   help="base causal LM (default: smollm2-135m-instruct)")
    t.add_argument("--rank", type=positive_int, default=_LORA.rank, help=f"LoRA rank (default: {_LORA.rank})")
    t.add_argument("--alpha", type=positive_int, default=_LORA.alpha, help=f"LoRA scale (default: {_LORA.alpha})")
    t.add_argument("--epochs", type=positive_int, default=1, help="(default: 1)")
    t.add_argument("--learning-rate", type=positive_float, default=2e-4, help="(default: 0.0002)")
    t.add_argument("--batch-size", type=positive_int, default=_LORA.batch_size,
                   help=f"rows per step (default: {_LORA.batch_size})")
    t.add_argument("--max-length", type=positive_int, default=_LORA.max_length,
                   help=f"tokens per row; longer rows are left out and counted (default: {_LORA.max_length})")
    t.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps")
    t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help=BF16_HELP)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("inters-data", help="build INTERS-style instruction data for search tasks",
                       description="Turn the public data sets of the shared data folder (SciFact train queries, "
                                   "HotpotQA, NQ-open, STS-B, MSRP, Banking77) into instruction-tuning rows for 12 "
                                   "search tasks (query understanding, document understanding, query-document "
                                   "reranking), each rendered with one of its zero- or few-shot templates. Writes "
                                   "train.jsonl, held_out.jsonl and manifest.json (seed, counts, sources).",
                       epilog="SciFact test queries are never used.")
    p.add_argument("-o", "--output", type=output_folder, required=True, help="folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace the output folder if Flagstone wrote it")
    p.add_argument("--data-root", type=existing_folder, default="../shared/data",
                   help="the shared data folder (default: ../shared/data)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help=f"tasks to build (default: all: "
                   f"{' '.join(_INTERS_TASKS)})")
    p.add_argument("--held-out-tasks", nargs="+", default=[], metavar="TASK",
                   help="tasks kept out of train entirely (only held-out rows)")
    p.add_argument("--held-out-per-task", type=positive_int, default=40, help="held-out rows per task (default: 40)")
    p.add_argument("--max-train-per-task", type=non_negative_int, default=300,
                   help="training rows per task at most (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="shuffling, split and template choice (default: 0)")
    check_with(p, _check_inters_data)

    p = sub.add_parser("merge", help="LM-Cocktail: merge same-architecture models by weighted averaging",
                       description="Average two or more checkpoints (embedders, rerankers or causal LMs) with given "
                                   "weights, or with weights computed from a few target-task examples: "
                                   "softmax(-loss / temperature).", epilog=epilog)
    p.add_argument("models", nargs="+", help="model folders (same architecture)")
    p.add_argument("-o", "--output", type=output_folder, required=True, help="folder for the merged model")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if Flagstone wrote it (a folder holding anything else is never "
                        "replaced)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--weights", nargs="+", type=float, help="one weight per model (not negative, not all zero)")
    g.add_argument("--examples", type=existing_file,
                   help="a .jsonl of examples (training-data rows; causal LMs: input/output)")
    p.add_argument("--kind", choices=("embedder", "reranker", "causal_lm"), default="embedder")
    p.add_argument("--temperature", type=positive_float, default=5.0, help="softmax temperature for example weights")
    check_with(p, _check_merge)


def _add_long_context_parser(tsub, epilog: str) -> None:
    help_text = "extend a causal LM's context: raise its RoPE base and train LoRA adapters on long samples"
    t = tsub.add_parser(
        "long-context", help=help_text, epilog=epilog,
        description="Context extension after the Llama-3-8B-Instruct-80K recipe. The RoPE base is raised (by "
                    "default with the recipe's own scaling: it moved 500K to 200M for 8K to 80K, i.e. theta x "
                    "factor^2.6) and LoRA adapters are trained on synthetic long-context samples built from a data "
                    "folder: HotpotQA questions with the answering paragraph hidden in a long haystack, passkey "
                    "needles in essays, and concatenated SciFact abstracts whose reference summary is their "
                    "titles. The output is an adapter folder (or, with --merge, a full model) that every command "
                    "taking a causal LM loads.")
    t.add_argument("-o", "--output", type=output_folder, required=True, help="folder for the adapter (or merged model)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if Flagstone wrote it (a folder holding anything else is never "
                        "replaced)")
    t.add_argument("--model", type=causal_lm_name, default=DEFAULT_LLM,
                   help=f"the causal LM to extend: {DEFAULT_LLM} (bundled), a model folder, a .gguf file or org/name "
                        f"(default: {DEFAULT_LLM})")
    t.add_argument("--data", type=existing_folder, required=True,
                   help="data folder holding longctx/paulgraham_essays/*.txt, qa/hotpotqa/"
                        "hotpot_dev_distractor_sample100.jsonl and beir/scifact/corpus.jsonl (the project's "
                        "../shared/data)")
    t.add_argument("--held-out-essays", type=non_negative_int, default=9,
                   help="the last N essays (name order) never enter training, for evaluation (default: 9)")
    t.add_argument("--trained-length", type=positive_int, default=None,
                   help="the context the model was trained for (default: its config's max_position_embeddings)")
    t.add_argument("--target-length", type=positive_int, default=None,
                   help="the context to extend to (default: 4x --trained-length)")
    t.add_argument("--rope-theta", type=positive_float, default=None,
                   help="the new RoPE base (default: the recipe's scaling, theta x (target/trained)^2.6)")
    t.add_argument("--samples", type=positive_int, default=60, help="synthetic samples to build (default: 60)")
    t.add_argument("--sample-lengths", type=positive_int, nargs="+", default=None, metavar="TOKENS",
                   help="haystack lengths to draw from (default: half the target length and the target length)")
    t.add_argument("--lora-rank", type=positive_int, default=16, help="(default: 16)")
    t.add_argument("--lora-alpha", type=positive_int, default=32, help="(default: 32)")
    t.add_argument("--epochs", type=positive_int, default=1, help="(default: 1)")
    t.add_argument("--learning-rate", type=positive_float, default=2e-4, help="(default: 2e-4)")
    t.add_argument("--gradient-accumulation", type=positive_int, default=1)
    t.add_argument("--max-steps", type=positive_int, default=None)
    t.add_argument("--time-budget", type=positive_float, default=None, metavar="MINUTES",
                   help="stop after this many minutes of training and save what was learnt")
    t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help=BF16_HELP)
    t.add_argument("--merge", action="store_true", help="save the model with the adapter merged in, not the adapter")
    t.add_argument("--checkpoint-dir", type=output_folder, default=None, help="save resumable state here; rerun to resume")
    t.add_argument("--checkpoint-every", type=positive_int, default=10, help="steps between checkpoints (default: 10)")
    t.add_argument("--seed", type=int, default=_CONFIG.seed)
    t.add_argument("--quiet", action="store_true", help="no progress bar")

def _add_genir_parser(tsub, epilog: str) -> None:
    from flagstone.genir.settings import PSEUDO_QUERY_SOURCES, GenIRModelConfig, GenIRTrainingSettings

    model, settings = GenIRModelConfig(), GenIRTrainingSettings()
    t = tsub.add_parser("genir", help="a generative retriever (DSI / NCI style) that maps queries to docids",
                        description="Train a small, randomly initialised decoder (Llama-shaped, the bundled MiniLM's "
                                    "WordPiece vocabulary plus one token per docid symbol) to generate document ids. "
                                    "Each epoch shows it every document's opening tokens (indexing), "
                                    f"{settings.pseudo_queries} pseudo-queries per document (by default cheap ones: its "
                                    "first sentence and random word spans; --pseudo-query-source llm has a chat LM "
                                    "write them) and the judged queries of --queries-split (retrieval). "
                                    "Docids are atomic (one token per document) or semantic (hierarchical k-means "
                                    "over the documents' embeddings). Search with `flagstone eval DATA --modes genir "
                                    "--genir-model FOLDER`; decoding is constrained to valid docids.", epilog=epilog)
    t.add_argument("data", type=existing_folder, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    t.add_argument("-o", "--output", type=output_folder, required=True, help="folder to save the trained model in")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if Flagstone wrote it (a folder holding anything else is never "
                        "replaced)")
    t.add_argument("--docids", choices=("semantic", "atomic"), default="semantic",
                   help="semantic: hierarchical k-means codes of the documents' embeddings; atomic: one token per "
                        "document (default: semantic)")
    t.add_argument("--branching", type=positive_int, default=10, help="clusters per split, semantic ids (default: 10)")
    t.add_argument("--leaf-size", type=positive_int, default=100,
                   help="largest cluster left unsplit, semantic ids (default: 100)")
    t.add_argument("--embedding-model", type=model_name, default="all-MiniLM-L6-v2",
                   help="embedder whose document vectors are clustered, semantic ids (default: all-MiniLM-L6-v2)")
    add_backend_options(t)  # the --embedding-model's
    _add_cache_options(t)
    g = t.add_mutually_exclusive_group()
    g.add_argument("--queries-split", default="train",
                   help="qrels split whose queries train retrieval (default: train); never the split you report on")
    g.add_argument("--no-queries", action="store_true", help="train on the documents and pseudo-queries only")
    t.add_argument("--epochs", type=positive_int, default=settings.epochs, help=f"(default: {settings.epochs})")
    t.add_argument("--batch-size", type=positive_int, default=settings.batch_size,
                   help=f"examples per step (default: {settings.batch_size})")
    t.add_argument("--learning-rate", type=positive_float, default=settings.learning_rate,
                   help=f"AdamW peak rate, linear warm-up and decay (default: {settings.learning_rate:g})")
    t.add_argument("--pseudo-queries", type=non_negative_int, default=settings.pseudo_queries,
                   help=f"per document: drawn afresh every epoch with --pseudo-query-source spans, generated once "
                        f"with llm (default: {settings.pseudo_queries})")
    t.add_argument("--pseudo-query-source", choices=PSEUDO_QUERY_SOURCES, default=settings.pseudo_query_source,
                   help="spans: the document's first sentence and random 8-20 word spans, new ones every epoch "
                        "(free); llm: queries written once by --query-generator from each document's opening "
                        "tokens (doc2query / DSI-QG style: greedy for 1 per document, top-k sampling with --seed "
                        "for more), cached on disk and resumed after an interruption; replies with no letter or "
                        "digit are counted and left out; llm+spans: both (--pseudo-queries spans per epoch and as many "
                        f"generated) (default: {settings.pseudo_query_source})")
    t.add_argument("--query-generator", type=causal_lm_name, default=DEFAULT_LLM, metavar="MODEL",
                   help=f"chat LM writing the llm pseudo-queries: {DEFAULT_LLM} (bundled), a model folder, a .gguf "
                        f"file or org/name (default: {DEFAULT_LLM})")
    t.add_argument("--query-cache", type=output_folder, default=None, metavar="FOLDER",
                   help="where generated pseudo-queries are cached (default: $FLAGSTONE_CACHE/pseudo_queries or "
                        "~/.cache/flagstone/pseudo_queries)")
    t.add_argument("--hidden-size", type=positive_int, default=model.hidden_size, help=f"(default: {model.hidden_size})")
    t.add_argument("--layers", type=positive_int, default=model.layers, help=f"(default: {model.layers})")
    t.add_argument("--heads", type=positive_int, default=model.heads,
                   help=f"attention heads; must divide --hidden-size (default: {model.heads})")
    t.add_argument("--max-text-tokens", type=positive_int, default=model.max_text_tokens,
                   help=f"a document, pseudo-query or query is cut to this many tokens (default: {model.max_text_tokens})")
    t.add_argument("--seed", type=int, default=settings.seed)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    check_with(t, _check_genir)

def _add_newsrec_parser(tsub, epilog: str) -> None:
    help_text = "a news recommender (base, GateFormer or SFI) on MIND-format data"
    t = tsub.add_parser(
        "newsrec", help=help_text, epilog=epilog,
        description="Train a news recommender on a MIND folder (news.tsv + behaviors.tsv: MIND-small/large from "
                    "https://msnews.github.io, or synthetic data from flagstone.newsrec.synthetic). A small "
                    "transformer encodes titles (its vocabulary: the training titles' words), additive attention over "
                    "the clicked history makes the user vector, and every click is trained as a softmax against "
                    "--negatives unclicked items of its impression. GateFormer (--kind gateformer) keeps only the "
                    "--gate-k tokens a cheap gate scores highest in each clicked title before the transformer runs; "
                    "SFI (--kind sfi) selects, per candidate, the --select-k history items a cheap selector finds most similar "
                    "and encodes and matches (token by token) only those. Score the result with "
                    "`flagstone eval newsrec`.")
    t.add_argument("data", type=existing_folder, help="MIND training folder holding news.tsv and behaviors.tsv")
    t.add_argument("-o", "--output", type=output_folder, required=True, help="folder to save the trained model in")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the output folder if Flagstone wrote it (a folder holding anything else is never "
                        "replaced)")
    t.add_argument("--kind", choices=NEWSREC_KINDS, default=_NEWSREC.kind,
                   help=f"base (no gate, no selection), gateformer or sfi (default: {_NEWSREC.kind})")
    t.add_argument("--gate-k", type=positive_int, default=_NEWSREC.gate_k,
                   help=f"gateformer: tokens kept per clicked title (default: {_NEWSREC.gate_k})")
    t.add_argument("--select-k", type=positive_int, default=_NEWSREC.select_k,
                   help=f"sfi: history items selected per candidate (default: {_NEWSREC.select_k})")
    t.add_argument("--dim", type=positive_int, default=_NEWSREC.dim, help=f"model width (default: {_NEWSREC.dim})")
    t.add_argument("--layers", type=positive_int, default=_NEWSREC.layers,
                   help=f"transformer layers of the news encoder (default: {_NEWSREC.layers})")
    t.add_argument("--heads", type=positive_int, default=_NEWSREC.heads,
                   help=f"attention heads, dividing --dim (default: {_NEWSREC.heads})")
    t.add_argument("--title-length", type=positive_int, default=_NEWSREC.title_length,
                   help=f"title tokens read (default: {_NEWSREC.title_length})")
    t.add_argument("--max-history", type=positive_int, default=_NEWSREC.max_history,
                   help=f"most recent clicks read per user (default: {_NEWSREC.max_history})")
    t.add_argument("--negatives", type=positive_int, default=_NEWSREC_TRAINING.negatives,
                   help=f"unclicked items per click in the softmax (default: {_NEWSREC_TRAINING.negatives})")
    t.add_argument("--epochs", type=positive_int, default=_NEWSREC_TRAINING.epochs,
                   help=f"(default: {_NEWSREC_TRAINING.epochs})")
    t.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimiser steps")
    t.add_argument("--batch-size", type=positive_int, default=_NEWSREC_TRAINING.batch_size,
                   help=f"clicks per step (default: {_NEWSREC_TRAINING.batch_size})")
    t.add_argument("--learning-rate", type=positive_float, default=_NEWSREC_TRAINING.learning_rate,
                   help=f"(default: {_NEWSREC_TRAINING.learning_rate:g})")
    t.add_argument("--word-vectors", type=model_name, default=None, metavar="MODEL",
                   help="start the word embeddings from this embedding model's vector of every vocabulary word "
                        "(principal components), e.g. all-MiniLM-L6-v2 (bundled); default: random")
    t.add_argument("--max-impressions", type=positive_int, default=None,
                   help="train on the first N impressions only")
    t.add_argument("--seed", type=int, default=_NEWSREC_TRAINING.seed)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    check_with(t, _check_newsrec)


def _check_genir(args: argparse.Namespace) -> None:
    from flagstone.evaluation.beir import check_beir_folder

    check_output_folder(args.output, overwrite=args.overwrite)
    if args.hidden_size % args.heads:
        raise FlagstoneError(f"--hidden-size {args.hidden_size} is not divisible by --heads {args.heads}")
    if args.docids == "semantic" and args.branching < 2:
        raise FlagstoneError("--branching must be at least 2")
    if args.pseudo_query_source != "spans" and args.pseudo_queries < 1:
        raise FlagstoneError(f"--pseudo-query-source {args.pseudo_query_source} needs --pseudo-queries of at least 1")
    if not args.no_queries:
        check_beir_folder(args.data, args.queries_split)


def _check_newsrec(args: argparse.Namespace) -> None:
    if args.dim % args.heads:
        raise FlagstoneError(f"--dim {args.dim} must be a multiple of --heads {args.heads}")
    check_output_folder(args.output, overwrite=args.overwrite)


def _train_newsrec(args: argparse.Namespace) -> int:
    from flagstone.newsrec.mind import load_mind
    from flagstone.newsrec.recommender import NewsRecommender

    train = load_mind(args.data)
    if args.max_impressions:
        train = train.head(args.max_impressions)
    config = NewsRecConfig(kind=args.kind, dim=args.dim, heads=args.heads, layers=args.layers,
                           title_length=args.title_length, max_history=args.max_history, gate_k=args.gate_k,
                           select_k=args.select_k)
    settings = NewsRecTraining(negatives=args.negatives, batch_size=args.batch_size, epochs=args.epochs,
                               learning_rate=args.learning_rate, max_steps=args.max_steps, seed=args.seed,
                               show_progress=not args.quiet)
    print(f"{args.data}: {train.describe()}", file=sys.stderr)
    word_embedder = None
    if args.word_vectors:
        from flagstone.models.embedder import Embedder

        word_embedder = Embedder(args.word_vectors, show_progress=False)
    recommender = NewsRecommender.create(train, config, seed=args.seed, word_embedder=word_embedder)
    result = recommender.fit(train, settings)
    recommender.save(args.output, overwrite=args.overwrite)
    first = sum(result.losses[:10]) / max(1, len(result.losses[:10]))
    last = sum(result.losses[-10:]) / max(1, len(result.losses[-10:]))
    print(f"{args.kind}: {result.steps} steps over {result.samples} clicks in {result.seconds:.0f} s "
          f"(loss {first:.4f} -> {last:.4f}) -> {args.output}")
    return 0


def _check_mine(args: argparse.Namespace) -> None:
    _check_output_file(args.output, overwrite=args.overwrite, example="mined.jsonl")
    start, end = args.range
    if start >= end:
        raise FlagstoneError(f"--range {start} {end}: START must be below END")


def _check_inters_data(args: argparse.Namespace) -> None:
    unknown = [t for t in (args.tasks or []) + args.held_out_tasks if t not in _INTERS_TASKS]
    if unknown:
        raise FlagstoneError(f"unknown task(s) {' '.join(unknown)}; tasks: {' '.join(_INTERS_TASKS)}")
    check_output_folder(args.output, overwrite=args.overwrite)


def _check_merge(args: argparse.Namespace) -> None:
    if len(args.models) < 2:
        raise FlagstoneError("merging needs at least two models")
    check = causal_lm_name if args.kind == "causal_lm" else model_name
    for model in args.models:
        check_argument("models", model, check)
    if args.weights is not None:
        if len(args.weights) != len(args.models):
            raise FlagstoneError(f"--weights: {len(args.weights)} given for {len(args.models)} models; give one "
                                 "weight per model")
        if any(not math.isfinite(w) or w < 0 for w in args.weights) or not any(w > 0 for w in args.weights):
            raise FlagstoneError("--weights must be finite and not negative, and not all zero")


def _training_config(args: argparse.Namespace) -> TrainingConfig:
    epochs = args.epochs
    if epochs is None:  # the tuned default, which for embedders depends on the heads
        epochs = default_epochs(args.heads) if args.train_command == "embedder" else _CONFIG.epochs
    return TrainingConfig(epochs=epochs, learning_rate=args.learning_rate,
                          gradient_accumulation=args.gradient_accumulation, max_steps=args.max_steps,
                          checkpoint_every=args.checkpoint_every if args.checkpoint_dir else None, seed=args.seed,
                          precision=training_precision(args), show_progress=not args.quiet)


def cmd_mine(args: argparse.Namespace) -> int:
    from flagstone.models.embedder import Embedder
    from flagstone.training.data import load_examples, save_examples
    from flagstone.training.mining import add_teacher_scores, mine_hard_negatives, mining_retriever

    examples = load_examples(args.data)
    if args.corpus:
        ids, texts = _read_texts(args.corpus)
    else:
        texts = list(dict.fromkeys(t for ex in examples for t in ex.pos + ex.neg))
        ids = [str(i) for i in range(len(texts))]
    embedder = None if args.mode == "bm25" else Embedder(args.model or "all-MiniLM-L6-v2", backend=args.backend,
                                                         precision=args.precision, show_progress=not args.quiet)
    retriever = mining_retriever(embedder, ids, texts, mode=args.mode, cache=_cache(args),
                                 show_progress=not args.quiet)
    mined = mine_hard_negatives(examples, retriever, dict(zip(ids, texts)), mode=args.mode,
                                rank_range=tuple(args.range), n_negatives=args.negatives, seed=args.seed)
    if args.teacher:
        from flagstone.models.reranker import CrossEncoderReranker

        teacher = CrossEncoderReranker(args.teacher, backend=args.backend, precision=args.precision)
        mined = add_teacher_scores(mined, teacher, show_progress=not args.quiet)
    save_examples(mined, args.output)
    print(f"{len(mined)} examples with {args.negatives} negatives each -> {args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from flagstone.training.data import load_examples

    if args.train_command is None:
        raise FlagstoneError("choose what to train: flagstone train "
                             "embedder|reranker|long-context|genir|newsrec|inters (see --help)")
    if args.train_command == "long-context":
        return _train_long_context(args)
    if args.train_command == "genir":
        return _train_genir(args)
    if args.train_command == "newsrec":
        return _train_newsrec(args)
    if args.train_command == "inters":
        return _train_inters(args)
    check_output_folder(args.output, overwrite=args.overwrite, legacy=MODEL_LAYOUT)  # before any work
    examples = load_examples(args.data)
    config = _training_config(args)
    if args.train_command == "reranker":
        from flagstone.training.reranker import train_cross_encoder

        result = train_cross_encoder(args.model, examples, args.output, group_size=args.group_size,
                                     batch_size=args.batch_size, max_length=args.max_length, config=config,
                                     checkpoint_dir=args.checkpoint_dir, overwrite=args.overwrite)
    else:
        from flagstone.training.embedder import EmbedderTrainingSettings, train_embedder

        settings = EmbedderTrainingSettings(
            heads=tuple(args.heads), temperature=args.temperature, group_size=args.group_size,
            batch_size=args.batch_size, in_batch_negatives=not args.no_in_batch, passage_max_length=args.max_length,
            freeze_encoder=args.freeze_encoder, lora_rank=args.lora_rank,
            gradient_checkpointing=args.gradient_checkpointing, sparse_init=args.sparse_init,
            flops_weights=tuple(args.flops))
        base = args.model
        validation = None
        if args.validate:
            from flagstone.evaluation.beir import load_beir
            from flagstone.models._hf import resolve_precision
            from flagstone.models.embedder import Embedder
            from flagstone.training.validation import RetrievalValidation

            dataset = load_beir(args.validate, args.validate_split)
            base = Embedder(args.model, show_progress=False)
            every = args.validate_every or max(1, math.ceil(len(examples) / args.batch_size)
                                               // args.gradient_accumulation)
            modes = tuple(args.heads) + (("hybrid",) if len(args.heads) > 1 else ())
            validation = RetrievalValidation(base, dataset, every=every, modes=modes,
                                             bfloat16=resolve_precision(training_precision(args)) == "bfloat16")
        result = train_embedder(base, examples, args.output, settings=settings, config=config,
                                checkpoint_dir=args.checkpoint_dir, on_step=validation, overwrite=args.overwrite)
        if validation is not None and validation.history:
            print(json.dumps({"validation": validation.history}, indent=2))
    first = sum(result.losses[:10]) / max(1, len(result.losses[:10]))
    last = sum(result.losses[-10:]) / max(1, len(result.losses[-10:]))
    print(f"{result.steps} steps in {result.seconds:.0f} s (loss {first:.4f} -> {last:.4f}) -> {args.output}")
    return 0


def _train_long_context(args: argparse.Namespace) -> int:
    import time

    from flagstone.evaluation.niah import load_essays
    from flagstone.longctx.extension import (
        ADAPTER_LAYOUT,
        LongContextSettings,
        SyntheticLongContext,
        load_hotpot_records,
        recipe_rope_theta,
        rope_theta_of,
        train_long_context,
    )
    from flagstone.models.causal_lm import load_causal_lm

    check_output_folder(args.output, overwrite=args.overwrite, legacy=MODEL_LAYOUT if args.merge else ADAPTER_LAYOUT)
    data = Path(args.data)
    essays_dir, hotpot = data / "longctx" / "paulgraham_essays", data / "qa" / "hotpotqa" / "hotpot_dev_distractor_sample100.jsonl"
    scifact = data / "beir" / "scifact" / "corpus.jsonl"
    missing = [str(p) for p in (essays_dir, hotpot, scifact) if not p.exists()]
    if missing:
        raise FlagstoneError(f"--data {args.data}: missing {', '.join(missing)}")
    lm = load_causal_lm(args.model)
    theta = rope_theta_of(lm.model.config)
    if theta is None:
        raise FlagstoneError(f"{args.model} has no RoPE base to raise")
    trained = args.trained_length or int(lm.model.config.max_position_embeddings)
    target = args.target_length or 4 * trained
    if target <= trained:
        raise FlagstoneError(f"--target-length {target} must exceed the trained length {trained}")
    new_theta = args.rope_theta or recipe_rope_theta(theta, target / trained)
    lengths = args.sample_lengths or [target // 2, target]
    if max(lengths) > target:
        raise FlagstoneError(f"--sample-lengths {max(lengths)} exceeds --target-length {target}")
    essays = load_essays(essays_dir)
    train_essays = essays[: len(essays) - args.held_out_essays]
    if not train_essays:
        raise FlagstoneError(f"--held-out-essays {args.held_out_essays} leaves no essay to train on")
    titles, abstracts = _scifact_documents(scifact)

    def count(text: str) -> int:
        return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    builder = SyntheticLongContext(train_essays + abstracts[:2000], count, qa_records=load_hotpot_records(hotpot),
                                   documents=list(zip(titles, abstracts)), seed=args.seed)
    # the chat turn around the haystack adds tokens: keep every sample inside the target length
    examples = builder.mixture(args.samples, [max(64, n - 96) for n in lengths])
    config = TrainingConfig(epochs=args.epochs, learning_rate=args.learning_rate,
                            gradient_accumulation=args.gradient_accumulation, max_steps=args.max_steps,
                            checkpoint_every=args.checkpoint_every if args.checkpoint_dir else None, seed=args.seed,
                            precision=training_precision(args), show_progress=not args.quiet,
                            warmup_ratio=0.05)
    settings = LongContextSettings(rope_theta=new_theta, max_positions=max(target, trained),
                                   lora_rank=args.lora_rank, lora_alpha=args.lora_alpha)
    deadline = None if args.time_budget is None else time.perf_counter() + 60 * args.time_budget

    def stop_at_budget(step: int, loss: float) -> None:
        if deadline is not None and time.perf_counter() > deadline:
            raise _BudgetSpent

    record = {"rope_theta_before": theta, "trained_length": trained, "target_length": target,
              "sample_lengths": lengths, "kinds": {k: sum(e.kind == k for e in examples)
                                                   for k in ("qa", "needle", "summary")},
              "held_out_essays": args.held_out_essays, "time_budget_minutes": args.time_budget}
    result = train_long_context(lm, args.model, examples, args.output, settings, config, merge=args.merge,
                                overwrite=args.overwrite, record=record, checkpoint_dir=args.checkpoint_dir,
                                on_step=stop_at_budget, stop=_BudgetSpent)
    first = sum(result.losses[:5]) / max(1, len(result.losses[:5]))
    last = sum(result.losses[-5:]) / max(1, len(result.losses[-5:]))
    print(f"RoPE base {theta:g} -> {new_theta:g}; {result.steps} steps in {result.seconds:.0f} s "
          f"(loss {first:.3f} -> {last:.3f}) -> {args.output}")
    return 0


class _BudgetSpent(Exception):
    """Raised from the step hook when --time-budget is spent; training stops and the adapter is saved."""


def _scifact_documents(corpus: Path) -> tuple[list[str], list[str]]:
    """(titles, abstracts) kept apart: a title is the reference summary of its abstract."""
    from flagstone._io import iter_jsonl

    titles, texts = [], []
    for _, row in iter_jsonl(corpus):
        titles.append(str(row.get("title") or ""))
        texts.append(str(row.get("text") or ""))
    return titles, texts


def _train_genir(args: argparse.Namespace) -> int:
    from flagstone.genir.data import load_training_corpus
    from flagstone.genir.docids import atomic_docids, semantic_docids
    from flagstone.genir.settings import GenIRModelConfig, GenIRTrainingSettings
    from flagstone.genir.training import train_generative_retriever

    doc_ids, doc_texts, pairs = load_training_corpus(args.data, None if args.no_queries else args.queries_split)
    if args.docids == "atomic":
        docids = atomic_docids(doc_ids)
    else:
        from flagstone.models.embedder import Embedder

        embedder = Embedder(args.embedding_model, backend=args.backend, precision=args.precision,
                            show_progress=not args.quiet)
        cache = _cache(args)
        vectors = (cache.encode(embedder, doc_texts) if cache else embedder.encode_documents(doc_texts)).dense
        docids = semantic_docids(doc_ids, vectors, branching=args.branching, leaf_size=args.leaf_size, seed=args.seed)
    config = GenIRModelConfig(hidden_size=args.hidden_size, layers=args.layers, heads=args.heads,
                              intermediate_size=3 * args.hidden_size, max_text_tokens=args.max_text_tokens)
    settings = GenIRTrainingSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                     pseudo_queries=args.pseudo_queries, pseudo_query_source=args.pseudo_query_source,
                                     seed=args.seed, show_progress=not args.quiet)
    generated = None
    if args.pseudo_query_source != "spans":
        from flagstone.genir.query_generation import QueryGenerationSettings, generate_pseudo_queries

        generated = generate_pseudo_queries(
            doc_texts, args.query_generator, cache_dir=args.query_cache, show_progress=not args.quiet,
            settings=QueryGenerationSettings(queries_per_document=args.pseudo_queries, seed=args.seed))
        rate = generated.documents_per_second
        print(f"pseudo-queries by {generated.generator}: {generated.replies:,} replies, {generated.unusable:,} "
              f"unusable (left out), {generated.documents_without_query:,} documents without one; "
              f"{generated.generated_documents:,} documents generated now"
              + (f" in {generated.seconds:.0f} s ({rate:.2f} docs/s)" if rate else "")
              + f", the rest from {generated.cache_file}", file=sys.stderr)
    result = train_generative_retriever(doc_texts, docids, queries=pairs, config=config, settings=settings,
                                        generated_queries=None if generated is None else generated.queries)
    if generated is not None:
        result.retriever.training["query_generation"] = generated.stats()
    result.retriever.save(args.output, overwrite=args.overwrite)
    first = sum(result.losses[:10]) / max(1, len(result.losses[:10]))
    last = sum(result.losses[-10:]) / max(1, len(result.losses[-10:]))
    print(f"{len(doc_ids):,} documents ({args.docids} ids, {docids.depth} tokens deep), {len(pairs):,} training "
          f"query-document pairs; {result.steps} steps in {result.seconds:.0f} s (loss {first:.4f} -> {last:.4f}) "
          f"-> {args.output}")
    return 0


def _train_inters(args: argparse.Namespace) -> int:
    from flagstone.inters.data import TRAIN_FILE, load_inters_rows
    from flagstone.inters.tuning import tune_lora

    check_output_folder(args.output, overwrite=args.overwrite)  # before any work
    source = Path(args.data)
    if source.is_dir():
        if not (source / TRAIN_FILE).is_file():
            raise FlagstoneError(f"{source} has no {TRAIN_FILE}: give a folder written by `flagstone inters-data` "
                                 "or a .jsonl file")
        source = source / TRAIN_FILE
    rows = load_inters_rows(source)
    lora = LoraSettings(rank=args.rank, alpha=args.alpha, max_length=args.max_length, batch_size=args.batch_size)
    config = TrainingConfig(epochs=args.epochs, learning_rate=args.learning_rate, max_steps=args.max_steps,
                            seed=args.seed, precision=training_precision(args),
                            show_progress=not args.quiet)
    result = tune_lora(args.model, rows, args.output, lora=lora, config=config, overwrite=args.overwrite)
    losses = result.training.losses
    print(f"{result.training.steps} steps on {result.rows_used} rows ({result.rows_too_long} longer than "
          f"--max-length left out) in {result.training.seconds:.0f} s (loss {losses[0]:.4f} -> {losses[-1]:.4f}) "
          f"-> {args.output}")
    return 0


def cmd_inters_data(args: argparse.Namespace) -> int:
    from flagstone.inters.data import build_inters_data, save_inters_data

    data = build_inters_data(args.data_root, seed=args.seed, tasks=args.tasks,
                             held_out_per_task=args.held_out_per_task, max_train_per_task=args.max_train_per_task,
                             held_out_tasks=args.held_out_tasks)
    save_inters_data(data, args.output, overwrite=args.overwrite)
    print(f"{len(data.train)} train and {len(data.held_out)} held-out rows over {len(data.counts())} tasks "
          f"(seed {args.seed}) -> {args.output}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from flagstone._io import iter_jsonl
    from flagstone.training.cocktail import mix_models
    from flagstone.training.data import load_examples

    check_output_folder(args.output, overwrite=args.overwrite, legacy=MODEL_LAYOUT)  # before any work
    examples = None
    if args.examples:
        if args.kind == "causal_lm":
            examples = [row for _, row in iter_jsonl(args.examples)]
            bad = [i for i, row in enumerate(examples) if not isinstance(row.get("input"), str)
                   or not isinstance(row.get("output"), str)]
            if bad:
                raise FlagstoneError(f"{args.examples}: example #{bad[0]} needs string fields 'input' and 'output'")
        else:
            examples = load_examples(args.examples)
    out, weights = mix_models(args.models, args.output, examples=examples, weights=args.weights, kind=args.kind,
                              temperature=args.temperature, overwrite=args.overwrite)
    print(json.dumps({"output": str(Path(out)), "weights": dict(zip(args.models, weights))}, indent=2))
    return 0


COMMANDS = {"mine": cmd_mine, "train": cmd_train, "merge": cmd_merge, "inters-data": cmd_inters_data}

if __name__ == "__main__":  # pragma: no cover - run through flagstone.cli
    sys.exit("use: flagstone mine|train|merge")
