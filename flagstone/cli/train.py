"""The training commands of the ``flagstone`` CLI: mine, train embedder|reranker|inters, inters-data, merge."""
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
    causal_lm_name,
    check_argument,
    check_with,
    existing_file,
    existing_folder,
    existing_path,
    model_name,
    non_negative_int,
    output_file,
    output_folder,
    positive_float,
    positive_int,
)
from flagstone.errors import FlagstoneError
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
_LORA = LoraSettings()
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
    _add_cache_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    check_with(p, _check_mine)

    p = sub.add_parser("train", help="fine-tune an embedder (dense or BGE-M3 dense+sparse+ColBERT) or a reranker",
                       description="Contrastive fine-tuning on FlagEmbedding-format data with hard negatives "
                                   "(run `flagstone mine` first). Resumable with --checkpoint-dir.", epilog=epilog)
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
        t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=_CONFIG.precision == "bfloat16",
                       help="bfloat16 autocast, about 2x faster on AVX-512 BF16 CPUs; --no-bf16 trains in float32 "
                            f"(default: {'on' if _CONFIG.precision == 'bfloat16' else 'off'})")
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
            t.add_argument("--validate", type=existing_folder, metavar="BEIR_FOLDER", default=None,
                           help="score this BEIR data set (nDCG@10, recall@100) during training; never pass "
                                "the split you report on")
            t.add_argument("--validate-split", default="dev", help="qrels split to validate on (default: dev)")
            t.add_argument("--validate-every", type=positive_int, default=None,
                           help="optimiser steps between validations (default: once per epoch)")

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
    t.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bfloat16 autocast (default: on)")
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
                          precision="bfloat16" if args.bf16 else "float32", show_progress=not args.quiet)


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
    embedder = None if args.mode == "bm25" else Embedder(args.model or "all-MiniLM-L6-v2", show_progress=not args.quiet)
    retriever = mining_retriever(embedder, ids, texts, mode=args.mode, cache=_cache(args),
                                 show_progress=not args.quiet)
    mined = mine_hard_negatives(examples, retriever, dict(zip(ids, texts)), mode=args.mode,
                                rank_range=tuple(args.range), n_negatives=args.negatives, seed=args.seed)
    if args.teacher:
        from flagstone.models.reranker import CrossEncoderReranker

        mined = add_teacher_scores(mined, CrossEncoderReranker(args.teacher), show_progress=not args.quiet)
    save_examples(mined, args.output)
    print(f"{len(mined)} examples with {args.negatives} negatives each -> {args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from flagstone.training.data import load_examples

    if args.train_command is None:
        raise FlagstoneError("choose what to train: flagstone train embedder|reranker|inters (see --help)")
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
            gradient_checkpointing=args.gradient_checkpointing, sparse_init=args.sparse_init)
        base = args.model
        validation = None
        if args.validate:
            from flagstone.evaluation.beir import load_beir
            from flagstone.models.embedder import Embedder
            from flagstone.training.validation import RetrievalValidation

            dataset = load_beir(args.validate, args.validate_split)
            base = Embedder(args.model, show_progress=False)
            every = args.validate_every or max(1, math.ceil(len(examples) / args.batch_size)
                                               // args.gradient_accumulation)
            modes = tuple(args.heads) + (("hybrid",) if len(args.heads) > 1 else ())
            validation = RetrievalValidation(base, dataset, every=every, modes=modes, bfloat16=args.bf16)
        result = train_embedder(base, examples, args.output, settings=settings, config=config,
                                checkpoint_dir=args.checkpoint_dir, on_step=validation, overwrite=args.overwrite)
        if validation is not None and validation.history:
            print(json.dumps({"validation": validation.history}, indent=2))
    first = sum(result.losses[:10]) / max(1, len(result.losses[:10]))
    last = sum(result.losses[-10:]) / max(1, len(result.losses[-10:]))
    print(f"{result.steps} steps in {result.seconds:.0f} s (loss {first:.4f} -> {last:.4f}) -> {args.output}")
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
                            seed=args.seed, precision="bfloat16" if args.bf16 else "float32",
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
