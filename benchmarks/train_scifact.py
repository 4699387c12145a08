"""Does training help? From the bundled all-MiniLM-L6-v2, on 2 CPU cores, within 45 minutes:

1. mine hard negatives for SciFact's train queries, fine-tune the dense model, compare test nDCG@10;
2. BGE-M3-style unified training (dense + sparse + ColBERT heads, self-distillation) from the same start:
   test nDCG@10 per head and for all three combined, against BM25;
3. LM-Cocktail: merge the fine-tuned model with the base, weights from 8 train examples, and compare
   SciFact with the general-ability scores STS-B (test Spearman) and Banking77 (accuracy).

    python benchmarks/train_scifact.py
    python benchmarks/train_scifact.py --without-dev-slice   # best_pipeline.py's tuning copies (~25 min)

Only SciFact's train split (qrels/train.tsv) is used for training and choices; test is for reporting. The
defaults (learning rate, temperature, epochs, LM-Cocktail temperature) were chosen by
benchmarks/tune_training.py, which trains on 709 train queries and scores the other 100.
All models are evaluated the same way: bfloat16 inference (about 2x faster here; see the README for its
effect on the base model), max length 256. Writes benchmarks/results/train_scifact.{json,md}.

``--without-dev-slice`` trains only the dense and M3 models, the same way, on the train queries less the 100-query
dev slice (_common.dev_slice, which rerank_scifact.py keeps from the cross-encoder), into
benchmarks/models/scifact-minilm-{finetuned,m3}-no-dev, each with a ``.held-out.json`` record beside it listing
the held-out queries; it reads neither the test judgements nor writes any result. best_pipeline.py chooses its
weights with these copies on the dev slice, which none of its models has then trained on.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from _common import (
    RESULTS,
    SHARED_DATA,
    dev_slice,
    held_out_record,
    load_scifact_with_train,
    mine_scifact_examples,
    per_query_ndcg,
    save_results,
)

from flagstone.evaluation.suite import run_task
from flagstone.evaluation.tasks import REGISTRY
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.retrieval.retriever import Retriever
from flagstone.training.cocktail import cocktail_weights, example_loss, merge_models
from flagstone.training.embedder import (
    HEAD_WEIGHTS,
    EmbedderTrainingSettings,
    train_embedder,
)
from flagstone.training.loop import TrainingConfig

MODELS = RESULTS.parent / "models"
BM25_REFERENCE = "benchmarks/results/retrieval_scifact.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "beir" / "scifact"))
    parser.add_argument("--epochs", type=int, default=3, help="dense fine-tuning epochs")
    parser.add_argument("--m3-epochs", type=int, default=2, help="M3 unified training epochs")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature")
    parser.add_argument("--passage-length", type=int, default=192, help="passage tokens during training")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cocktail-examples", type=int, default=8)
    parser.add_argument("--cocktail-temperature", type=float, default=5.0,
                        help="LM-Cocktail's softmax temperature over the example losses")
    parser.add_argument("--reuse", action="store_true",
                        help="skip training when the model folders exist (finish an interrupted run)")
    parser.add_argument("--without-dev-slice", action="store_true",
                        help="train only the dense and M3 models, without the 100-query dev slice, into "
                             "benchmarks/models/scifact-minilm-{finetuned,m3}-no-dev (best_pipeline.py's tuning "
                             "copies); no evaluation, no results file")
    parser.add_argument("--quick", action="store_true", help="a tiny run to check the script (numbers meaningless)")
    args = parser.parse_args()
    wall = time.perf_counter()
    loaded = load_scifact_with_train(args.data)
    if loaded is None:
        return 2
    test, train_qrels, doc_text = loaded
    cache = EmbeddingCache()
    if args.without_dev_slice:
        return train_without_dev_slice(args, test, train_qrels, doc_text, cache)
    test_ids = list(test.qrels)
    train_ids = list(train_qrels)
    if args.quick:
        train_ids, test_ids = train_ids[:32], test_ids[:20]

    def scifact(model_dir, modes=("dense",), use_cache=True) -> dict[str, float]:
        embedder = Embedder(str(model_dir), dtype="bfloat16", show_progress=True)
        signals = [m for m in modes if m != "all"]
        retriever = Retriever(embedder, signals=signals, cache=cache if use_cache else None)
        retriever.fit(test.doc_ids, test.doc_texts)
        out = {}
        for mode in modes:
            per_query = per_query_ndcg(retriever, test.queries, test_ids, test.qrels, mode)
            # the mean over test_ids in their order, as evaluate_run's report.mean sums it
            out[f"{mode}_ndcg@10"] = sum(per_query.values()) / len(per_query)
            log(f"  {model_dir.name if isinstance(model_dir, Path) else model_dir} {mode}: {out[f'{mode}_ndcg@10']:.4f}")
        return out

    def general(model_dir) -> dict[str, float]:
        embedder = Embedder(str(model_dir), dtype="bfloat16", show_progress=False)
        sts = run_task(REGISTRY["STSBenchmark"], embedder, data_root=SHARED_DATA, cache=cache, show_progress=False)
        bank = run_task(REGISTRY["Banking77Classification"], embedder, data_root=SHARED_DATA, cache=cache,
                        show_progress=False)
        return {"stsb_spearman": sts.main_score, "banking77_accuracy": bank.main_score}

    # 0. the base model
    base = "all-MiniLM-L6-v2"
    log("base model: SciFact")
    results: dict[str, object] = {"base": scifact(base)}

    # 1. hard negatives from the base model's dense retrieval, ranks 5-99
    log("mining hard negatives")
    examples, _ = mine_scifact_examples(test, train_qrels, doc_text, train_ids, cache, base)
    config, common = training_setup(args)

    log("fine-tuning the dense model")
    finetuned = MODELS / "scifact-minilm-finetuned"
    t0 = time.perf_counter()
    dense_run = _train_or_reuse(args.reuse, base, examples, finetuned,
                                EmbedderTrainingSettings(heads=("dense",), **common), config)
    dense_seconds = time.perf_counter() - t0
    results["finetuned"] = scifact(finetuned)

    # 2. M3 unified training
    log("M3 unified training (dense + sparse + ColBERT)")
    m3_dir = MODELS / "scifact-minilm-m3"
    t0 = time.perf_counter()
    m3_config = dataclasses.replace(config, epochs=args.m3_epochs)
    m3_run = _train_or_reuse(args.reuse, base, examples, m3_dir,
                             EmbedderTrainingSettings(heads=("dense", "sparse", "colbert"), **common), m3_config)
    m3_seconds = time.perf_counter() - t0
    results["m3"] = scifact(m3_dir, modes=("dense", "sparse", "colbert", "all"), use_cache=False)

    # 3. LM-Cocktail: weights from a few train examples (not test), merge, and check general ability
    log("LM-Cocktail")
    few = examples[: args.cocktail_examples]
    losses = {"finetuned": example_loss(finetuned, few, "embedder"), "base": example_loss(base, few, "embedder")}
    weights = cocktail_weights([losses["finetuned"], losses["base"]], temperature=args.cocktail_temperature)
    merged = merge_models([finetuned, Embedder(base, show_progress=False).path], weights, MODELS / "scifact-minilm-merged",
                          overwrite=True)
    cocktail = {}
    for name, folder in (("base", base), ("finetuned", finetuned), ("merged", merged)):
        scores = results[name]["dense_ndcg@10"] if name in results else scifact(folder)["dense_ndcg@10"]
        cocktail[name] = {"scifact_ndcg@10": scores, **general(folder)}
        log(f"  {name}: {cocktail[name]}")

    bm25 = None
    reference = Path(__file__).resolve().parents[1] / BM25_REFERENCE
    if reference.is_file():
        import json

        bm25 = json.loads(reference.read_text())["bm25"]["ndcg@10"]
    base_ndcg = results["base"]["dense_ndcg@10"]
    gain = results["finetuned"]["dense_ndcg@10"] - base_ndcg
    kept = (cocktail["merged"]["scifact_ndcg@10"] - base_ndcg) / gain if gain > 0 else float("nan")
    out = {
        "base": results["base"], "finetuned": results["finetuned"], "m3": results["m3"], "bm25_ndcg@10": bm25,
        "cocktail": cocktail,
        "cocktail_weights": {"finetuned": weights[0], "base": weights[1], "example_losses": losses,
                             "examples": len(few), "temperature": args.cocktail_temperature},
        "cocktail_gain_kept": kept,
        "training": {"train_queries": len(examples), "hard_negatives": "dense base model, ranks 5-99, 15 per query",
                     "epochs": args.epochs, "m3_epochs": args.m3_epochs, "learning_rate": args.learning_rate, "group_size": args.group_size,
                     "batch_queries": args.batch_size, "passage_max_length": args.passage_length,
                     "temperature": args.temperature, "precision": "bfloat16 autocast", "dense_steps": dense_run.steps,
                     "dense_seconds": round(dense_seconds), "m3_steps": m3_run.steps, "m3_seconds": round(m3_seconds),
                     "m3_head_weights": HEAD_WEIGHTS,
                     "sparse_init": "idf: fit to 0.1 x sqrt(idf) over the training passages",
                     "chosen_on": "100 held-out train queries (benchmarks/tune_training.py)",
                     "evaluation": "bfloat16 inference, max length 256, exact search"},
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    m3 = results["m3"]
    lines = [
        "| model | SciFact nDCG@10 | STS-B Spearman | Banking77 acc |", "|---|---|---|---|",
        *[f"| {name} | {c['scifact_ndcg@10']:.4f} | {100 * c['stsb_spearman']:.2f} | "
          f"{100 * c['banking77_accuracy']:.2f} |" for name, c in cocktail.items()],
        "",
        "| M3 unified (from MiniLM) | dense | sparse | ColBERT | all three | BM25 |", "|---|---|---|---|---|---|",
        (f"| SciFact nDCG@10 | {m3['dense_ndcg@10']:.4f} | {m3['sparse_ndcg@10']:.4f} | "
         f"{m3['colbert_ndcg@10']:.4f} | {m3['all_ndcg@10']:.4f} | {bm25 if bm25 is None else f'{bm25:.4f}'} |"),
        "",
        (f"merged = {weights[0]:.3f} x fine-tuned + {weights[1]:.3f} x base (weights from {len(few)} train "
         f"examples); keeps {100 * kept:.1f}% of the SciFact gain. Wall time {out['wall_s'] / 60:.1f} min on 2 cores."),
    ]
    if args.quick:
        print("\n".join(lines))
        return 0
    previous = RESULTS / "train_scifact.json"
    if previous.is_file() and "grid" in (saved := json.loads(previous.read_text())):
        out["grid"] = saved["grid"]  # the tuning grid (tune_training.py report) does not depend on this run
    # "subsets" is dropped: it scored the models this run replaces; scifact_subsets.py writes it again
    save_results("train_scifact", "\n".join(lines), train_scifact=out)
    return 0


def training_setup(args: argparse.Namespace) -> tuple[TrainingConfig, dict]:
    """The loop's config (dense epochs) and the settings both models share."""
    config = TrainingConfig(epochs=args.epochs, learning_rate=args.learning_rate, warmup_ratio=0.1,
                            precision="bfloat16", seed=0)
    common = {"group_size": args.group_size, "batch_size": args.batch_size,
              "passage_max_length": args.passage_length, "temperature": args.temperature}
    return config, common


def train_without_dev_slice(args: argparse.Namespace, test, train_qrels: dict, doc_text: dict[str, str],
                            cache: EmbeddingCache) -> int:
    """The dense and M3 models trained as main() trains them, less the dev slice: best_pipeline.py's tuning copies."""
    import tempfile

    from flagstone._io import atomic_write

    fit_ids, dev_ids = dev_slice(list(train_qrels))
    models = Path(tempfile.mkdtemp(prefix="no-dev-quick-")) if args.quick else MODELS
    if args.quick:
        fit_ids = fit_ids[:32]
    log(f"tuning copies: {len(fit_ids)} train queries, the {len(dev_ids)}-query dev slice held out")
    examples, _ = mine_scifact_examples(test, train_qrels, doc_text, fit_ids, cache, "all-MiniLM-L6-v2")
    config, common = training_setup(args)
    for name, heads, epochs in (("scifact-minilm-finetuned-no-dev", ("dense",), args.epochs),
                                ("scifact-minilm-m3-no-dev", ("dense", "sparse", "colbert"), args.m3_epochs)):
        folder = models / name
        log(f"training {folder}")
        t0 = time.perf_counter()
        settings = EmbedderTrainingSettings(heads=heads, **common)
        run = _train_or_reuse(args.reuse, "all-MiniLM-L6-v2", examples, folder, settings,
                              dataclasses.replace(config, epochs=epochs))
        record = {"held_out": dev_ids, "rule": "_common.dev_slice: numpy default_rng(0), 100 of qrels/train.tsv",
                  "trained_on_queries": len(examples), "heads": list(heads), "epochs": epochs,
                  "learning_rate": args.learning_rate, "temperature": args.temperature,
                  "group_size": args.group_size, "batch_size": args.batch_size,
                  "passage_max_length": args.passage_length, "steps": run.steps,
                  "seconds": round(time.perf_counter() - t0)}
        if run.steps:  # a reused folder keeps the record of the run that trained it
            with atomic_write(held_out_record(folder)) as handle:
                json.dump(record, handle, indent=2)
        log(f"  {run.steps} steps, {record['seconds']} s")
    return 0


def _train_or_reuse(reuse: bool, base, examples, folder: Path, settings, config):
    from flagstone.training.loop import TrainingResult

    if reuse and (folder / "config.json").is_file():
        log(f"  reusing {folder.name} (trained earlier; its steps and time are not re-measured)")
        return TrainingResult(steps=0)
    return train_embedder(base, examples, folder, settings=settings, config=config, overwrite=True)


if __name__ == "__main__":
    sys.exit(main())
