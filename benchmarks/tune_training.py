"""Choose train_scifact's hyperparameters without the test split: hold out 100 of SciFact's 809 train
queries, train on the other 709 and score the held-out queries (whole corpus, nDCG@10) after every epoch.

    python benchmarks/tune_training.py dense --learning-rates 3e-5,1e-4 --temperatures 0.02,0.05 --epochs 3
    python benchmarks/tune_training.py m3 --learning-rates 3e-5 --temperatures 0.02 --epochs 2
    python benchmarks/tune_training.py cocktail --model benchmarks/models/tune-dense-lr1e-04-t0.05 \\
        --cocktail-temperatures 0.5,1,2,5
    python benchmarks/tune_training.py baselines      # the base model and BM25 on the held-out queries
    python benchmarks/tune_training.py report         # every carved-split dense configuration in one table
    python benchmarks/tune_training.py test           # the grid's best, trained on all train queries, on test once
    python benchmarks/tune_training.py dev-subsets --split-folder benchmarks/data/scifact-dev --precision float32 \\
        --models benchmarks/models/tune-dense-*        # dev scores split into seen_docs / unseen_docs
    python benchmarks/tune_training.py score --precision float32 --models benchmarks/models/tune-m3-*
                                                       # every head of saved models, sparse terms per document
    python benchmarks/tune_training.py m3-test --learning-rates 1e-4 --temperatures 0.05 --precision float32 \\
        --pseudo-queries 1000                          # M3 on all train queries; its sparse head vs BM25 on test once

With ``--split-folder`` the held-out queries are a split carved to disk instead (the tuning grid's protocol):

    flagstone data carve-split ../shared/data/beir/scifact -o benchmarks/data/scifact-dev --count 100 --seed 0
    python benchmarks/tune_training.py dense --split-folder benchmarks/data/scifact-dev \\
        --learning-rates 1e-4 --temperatures 0.05 --group-size 4 --epochs 3

trains on that folder's ``qrels/train.tsv`` and scores its ``qrels/dev.tsv`` (the manifest's file hashes are
checked first and recorded in the run). The test split's judgements are used by the ``test`` stage only: it
trains ``report``'s best configuration (tune_training_grid.json) on all of SciFact's train queries and scores
the test split once, overall and on scifact_subsets' seen_docs / unseen_docs against the base model with a
paired randomization test; it refuses to run a second time for the same configuration and split.

``dense --pseudo-queries N`` adds signal for documents no training query points at (issue 22): the bundled
SmolLM2 writes one greedy pseudo-query for each of N documents drawn from outside the training positives
(_common.pseudo_query_examples: cached on disk, so a second run reuses them), a pseudo-query is kept only
when the base model ranks its document in the top ``--pseudo-keep-top``, and the kept ones train beside the
real queries with hard negatives mined the same way. The grid and the ``test`` stage carry N as a setting.
``m3`` and ``m3-test`` take it too: the sparse head then learns terms for documents no training query points at.

``dense --teacher FOLDER`` distils a cross-encoder trained by rerank_scifact.py: every training group (real
and pseudo queries) gets the teacher's scores, and the group's target becomes the teacher's softmax instead of
the one-hot positive (flagstone.training.embedder's ``distill``). The teacher's settings file lists the queries it
trained on; a teacher that saw any of the scored queries (dev, or test in the ``test`` stage) is refused, since
its scores would carry their judgements.

``dense`` and ``m3`` train one model per (learning rate, temperature) and keep the last one of each in
benchmarks/models/tune-*; ``cocktail`` merges such a model with the base at LM-Cocktail weights from 8
training examples for each temperature. Each run is appended to benchmarks/results/tune_training_<stage>.json
("runs", earlier runs kept) and the .md shows every run's table.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from _common import (
    RESULTS,
    SHARED_DATA,
    append_run,
    compare_on_subsets,
    load_scifact_with_train,
    mine_scifact_examples,
    per_query_ndcg,
    positives_of,
    pseudo_query_examples,
    read_carved_split,
    save_results,
    seen_and_unseen,
    set_result_entry,
    split_test_queries,
)

from flagstone.evaluation.beir import BeirDataset
from flagstone.evaluation.retrieval import evaluate_retrieval
from flagstone.models.cache import EmbeddingCache
from flagstone.models.embedder import Embedder
from flagstone.retrieval.retriever import HybridConfig, Retriever
from flagstone.training.cocktail import cocktail_weights, example_loss, merge_models
from flagstone.training.data import unique_passages
from flagstone.training.embedder import (
    HEAD_WEIGHTS,
    EmbedderTrainingSettings,
    idf_sparse_head,
    train_embedder,
)
from flagstone.training.loop import TrainingConfig
from flagstone.training.validation import RetrievalValidation, split_queries

MODELS = RESULTS.parent / "models"
BASE = "all-MiniLM-L6-v2"
HELD_OUT = 100


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def grid_report() -> int:
    """Every configuration of every dense run scored on a carved split (tune_training_dense.json), one row per
    (learning rate, temperature, group size, epoch), best first; written to tune_training_grid.{md,json} and
    train_scifact.json's ``grid`` entry. Runs on
    different splits are not mixed: the split of the newest run is the one reported."""
    path = RESULTS / "tune_training_dense.json"
    runs = [r for r in json.loads(path.read_text())["runs"] if r.get("split")] if path.is_file() else []
    if not runs:
        print(f"no dense run on a carved split in {path}: run 'tune_training.py dense --split-folder ...' first",
              file=sys.stderr)
        return 2
    split = runs[-1]["split"]
    same = [r for r in runs if r["split"]["files_sha256"] == split["files_sha256"]]
    rows = [{**row, "negatives": row["group_size"] - 1, "pseudo_queries": row.get("pseudo_queries", 0),
             "pseudo_keep_top": run.get("arguments", {}).get("pseudo_keep_top", 3),
             "teacher": row.get("teacher"),
             "precision": run.get("arguments", {}).get("precision", "bfloat16"),
             "run_finished": run["finished"], "commit": run["commit"]} for run in same for row in run["rows"]]
    rows.sort(key=lambda r: -r["dense_ndcg@10"])
    base, bm25 = same[-1]["base_ndcg@10"], same[-1]["bm25_ndcg@10"]
    lines = [f"{len(rows)} configurations from {len(same)} runs, scored on the carved split's "
             f"{split['splits'][split['carved']]['queries']} dev queries (seed {split['seed']}, {split['rule']}); "
             f"trained on its {split['splits']['train']['queries']} other train queries. Test judgements never used.",
             "", "| learning rate | temperature | hard negatives | pseudo-query documents | teacher | epochs | "
             "precision | dev nDCG@10 |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['learning_rate']:g} | {r['temperature']:g} | {r['negatives']} | {r['pseudo_queries']} | "
              f"{Path(r['teacher']).name if r['teacher'] else '-'} | {r['epoch']:g} | {r['precision']} | {r['dense_ndcg@10']:.4f} |" for r in rows]
    lines.append(f"\nbefore training: base model {base:.4f}, BM25 {bm25:.4f} on the same dev queries.")
    out = {"split": split, "base_ndcg@10": base, "bm25_ndcg@10": bm25, "configurations": len(rows),
           "best": rows[0], "rows": rows}
    save_results("tune_training_grid", "\n".join(lines), tune_training_grid=out)
    set_result_entry("train_scifact", "grid", out)
    return 0


def training_table(rows: list[dict], modes: tuple[str, ...], initial: list[tuple[float, float, dict[str, float]]],
                   flops: list[float] | None) -> list[str]:
    """The dense / m3 stage's table: one line per (learning rate, temperature, epoch), nDCG@10 per mode; for m3
    (``flops`` given) also the untrained sparse head (epoch 0, from ``initial``) and the sparse index's active
    terms per document."""
    m3 = flops is not None
    lines = ["| learning rate | temperature | epoch | " + " | ".join(f"{m} nDCG@10" for m in modes)
             + (" | sparse terms / document |" if m3 else " |"), "|---" * (3 + len(modes) + m3) + "|"]
    lines += [f"| {lr:g} | {t:g} | 0 | " + " | ".join(f"{start['sparse_ndcg@10']:.4f}" if m == "sparse" else ""
                                                     for m in modes) + f" | {start['sparse_terms_per_doc']:.1f} |"
              for lr, t, start in initial]
    lines += [f"| {r['learning_rate']:g} | {r['temperature']:g} | {r['epoch']:g} | "
              + " | ".join(f"{r[f'{m}_ndcg@10']:.4f}" for m in modes)
              + (f" | {r['sparse_terms_per_doc']:.1f} |" if m3 else " |") for r in rows]
    if m3 and any(flops):
        lines.append("\nFLOPS regulariser weights (query, passage): {:g}, {:g}".format(*flops))
    return lines


def checked_teacher(teacher: str, scored_queries: list[str]) -> dict:
    """A record of ``teacher`` (a rerank_scifact cross-encoder folder) once it is known not to have trained on any
    of ``scored_queries``; ValueError when it has no settings file to tell or trained on one of them. Cheap:
    called before any mining or generation."""
    from rerank_scifact import settings_path

    folder = Path(teacher)
    record = settings_path(folder)
    if not record.is_file():
        raise ValueError(f"no {record.name} beside {folder}: cannot check which queries the teacher trained on")
    trained_on = set(json.loads(record.read_text())["settings"]["train_queries"])
    leaked = sorted(trained_on & set(scored_queries))
    if leaked:
        raise ValueError(f"the teacher trained on {len(leaked)} of the scored queries (e.g. {leaked[0]}): its "
                         "scores would carry their judgements")
    return {"folder": str(folder), "trained_queries": len(trained_on)}


def teacher_scores(examples: list, teacher: dict, precision: str) -> tuple[list, dict]:
    """``examples`` with the :func:`checked_teacher`'s scores for every positive and negative, and its record
    with the pairs scored and the time taken."""
    from flagstone.models.reranker import CrossEncoderReranker
    from flagstone.training.mining import add_teacher_scores

    started = time.perf_counter()
    reranker = CrossEncoderReranker(teacher["folder"], max_length=192, batch_size=32, dtype=precision)
    scored = add_teacher_scores(examples, reranker)
    return scored, {**teacher, "dtype": precision, "pairs": sum(len(e.pos) + len(e.neg) for e in scored),
                    "seconds": round(time.perf_counter() - started, 1)}


def comparison_table(comparison: dict[str, dict | None], base_name: str, other_name: str) -> list[str]:
    """Markdown table of compare_on_subsets' result on the test split: one row per subset that has queries."""
    lines = [f"| nDCG@10 | queries | {base_name} | {other_name} | delta | p |", "|---|---|---|---|---|---|"]
    return lines + [f"| {name} | {c['queries']} | {c['base']:.4f} | {c['best']:.4f} | {c['delta']:+.4f} | "
                    f"{c['p_value']:.3g} |" for name, c in comparison.items() if c is not None]


def comparison_note(subsets: dict[str, list[str]], against: str, wall_s: float) -> str:
    """What the subsets of :func:`comparison_table` hold, the test behind its p, and the run's minutes."""
    return (f"all_test: every test query; overall / seen_docs / unseen_docs without the "
            f"{len(subsets['duplicates'])} test queries that repeat a train query; paired randomization test "
            f"against {against}. {wall_s / 60:.0f} min.")


def test_best(data: str, batch_size: int, passage_length: int) -> int:
    """Train the grid's best configuration on every train query and score SciFact test once (see the module
    docstring); appended to tune_training_test.json and set as train_scifact.json's ``grid_best_test``."""
    grid_path, test_path = RESULTS / "tune_training_grid.json", RESULTS / "tune_training_test.json"
    if not grid_path.is_file():
        print(f"no grid at {grid_path}: run 'tune_training.py report' first", file=sys.stderr)
        return 2
    grid = json.loads(grid_path.read_text())
    best = grid["best"]
    config_key = {k: best.get(k, 0) for k in ("learning_rate", "temperature", "group_size", "pseudo_queries",
                                               "epoch", "precision")}
    if config_key["pseudo_queries"]:
        config_key["pseudo_keep_top"] = best["pseudo_keep_top"]
    if best.get("teacher"):
        config_key["teacher"] = best["teacher"]
    earlier = json.loads(test_path.read_text())["runs"] if test_path.is_file() else []
    if any({"pseudo_queries": 0, **r["configuration"]} == config_key
           and r["split_sha256"] == grid["split"]["files_sha256"] for r in earlier):
        print(f"the test split was already scored for {config_key} ({test_path}): it is touched once",
              file=sys.stderr)
        return 2
    loaded = load_scifact_with_train(data)
    if loaded is None:
        return 2
    test, train_qrels, doc_text = loaded
    teacher = None
    if config_key.get("teacher"):
        try:
            teacher = checked_teacher(config_key["teacher"], list(test.qrels))
        except ValueError as error:
            print(f"teacher: {error}", file=sys.stderr)
            return 2
    wall, cache, precision = time.perf_counter(), EmbeddingCache(), best["precision"]
    examples, base_retriever = mine_scifact_examples(test, train_qrels, doc_text, sorted(train_qrels), cache, BASE,
                                                     dtype=precision)
    pseudo = None
    if config_key["pseudo_queries"]:  # the same number of documents, drawn from outside all train positives
        positives = positives_of(train_qrels)
        extra, pseudo = pseudo_query_examples(test.doc_ids, doc_text, positives, base_retriever,
                                              config_key["pseudo_queries"], config_key["pseudo_keep_top"])
        examples = examples + extra
    if teacher:
        examples, teacher = teacher_scores(examples, teacher, precision)
    settings = EmbedderTrainingSettings(heads=("dense",), group_size=best["group_size"], batch_size=batch_size,
                                        temperature=best["temperature"], passage_max_length=passage_length)
    config = TrainingConfig(epochs=round(best["epoch"]), learning_rate=best["learning_rate"], warmup_ratio=0.1,
                            precision=precision, seed=0)
    folder = MODELS / "tune-dense-grid-best"
    started = time.perf_counter()
    run = train_embedder(Embedder(BASE, show_progress=False), examples, folder, settings=settings, config=config,
                         overwrite=True)
    train_seconds = time.perf_counter() - started
    tuned = Retriever(Embedder(str(folder), dtype=precision, show_progress=True), signals=["dense"], cache=cache)
    tuned.fit(test.doc_ids, test.doc_texts)
    subsets = split_test_queries(Path(data), test.qrels, train_qrels)
    all_ids = list(test.qrels)
    base_scores = per_query_ndcg(base_retriever, test.queries, all_ids, test.qrels, "dense")
    tuned_scores = per_query_ndcg(tuned, test.queries, all_ids, test.qrels, "dense")
    comparison = compare_on_subsets(base_scores, tuned_scores, {"all_test": all_ids, **subsets})
    out = {"configuration": config_key, "split_sha256": grid["split"]["files_sha256"],
           "dev_ndcg@10": best["dense_ndcg@10"], "configurations_in_grid": grid["configurations"],
           "train_queries": len(examples) - (pseudo["kept"] if pseudo else 0), "pseudo_queries": pseudo,
           "teacher": teacher, "steps": run.steps, "train_seconds": round(train_seconds),
           "test": comparison, "queries": {k: len(v) for k, v in subsets.items()},
           "duplicates_dropped": subsets["duplicates"],
           "wall_s": round(time.perf_counter() - wall, 1)}
    lines = [f"Best of {grid['configurations']} grid configurations (dev nDCG@10 {best['dense_ndcg@10']:.4f}): "
             f"lr {best['learning_rate']:g}, temperature {best['temperature']:g}, {best['group_size'] - 1} hard "
             f"negative{'s' if best['group_size'] != 2 else ''}, {round(best['epoch'])} epochs, {precision}; "
             f"trained on all {out['train_queries']} train queries"
             + (f" and {pseudo['kept']} pseudo-queries (of {pseudo['queries_written']} written for "
                f"{pseudo['documents']} documents)" if pseudo else "")
             + f" ({run.steps} steps, {train_seconds / 60:.0f} min), SciFact test scored once.", "",
             *comparison_table(comparison, "base", "grid best"),
             "\n" + comparison_note(subsets, "the base model", out["wall_s"])]
    append_run("tune_training_test", out, "\n".join(lines))
    set_result_entry("train_scifact", "grid_best_test", out)
    return 0


def m3_test(args: argparse.Namespace) -> int:
    """Train M3 (dense + sparse + ColBERT, IDF-started sparse head) on every train query, with ``--pseudo-queries``
    when given, and score SciFact test once: the sparse head against BM25 per query, overall and on
    scifact_subsets' seen_docs / unseen_docs (paired randomization test). One configuration per call (the first
    learning rate and temperature); a configuration already scored is refused. Appended to
    tune_training_m3_test.json."""
    config_key = {"learning_rate": args.learning_rates[0], "temperature": args.temperatures[0],
                  "epochs": args.epochs, "group_size": args.group_size, "precision": args.precision,
                  "flops": list(args.flops), "sparse_init": args.sparse_init, "pseudo_queries": args.pseudo_queries,
                  "pseudo_keep_top": args.pseudo_keep_top if args.pseudo_queries else None}
    test_path = RESULTS / "tune_training_m3_test.json"
    earlier = json.loads(test_path.read_text())["runs"] if test_path.is_file() else []
    if any(r["configuration"] == config_key for r in earlier):
        print(f"the test split was already scored for {config_key} ({test_path}): it is touched once",
              file=sys.stderr)
        return 2
    loaded = load_scifact_with_train(args.data)
    if loaded is None:
        return 2
    test, train_qrels, doc_text = loaded
    wall, cache = time.perf_counter(), EmbeddingCache()
    examples, base_retriever = mine_scifact_examples(test, train_qrels, doc_text, sorted(train_qrels), cache, BASE,
                                                     dtype=args.precision)
    pseudo = None
    if args.pseudo_queries:  # drawn from outside all train positives, as the dense test stage draws them
        extra, pseudo = pseudo_query_examples(test.doc_ids, doc_text, positives_of(train_qrels), base_retriever,
                                              args.pseudo_queries, args.pseudo_keep_top)
        examples = examples + extra
        print(f"pseudo-queries: {pseudo}", flush=True)
    settings = EmbedderTrainingSettings(heads=("dense", "sparse", "colbert"), group_size=args.group_size,
                                        batch_size=args.batch_size, temperature=config_key["temperature"],
                                        passage_max_length=args.passage_length, sparse_init=args.sparse_init,
                                        flops_weights=tuple(args.flops))
    config = TrainingConfig(epochs=args.epochs, learning_rate=config_key["learning_rate"], warmup_ratio=0.1,
                            precision=args.precision, seed=0)
    folder = MODELS / (f"tune-m3-test-e{args.epochs}" + (f"-pq{args.pseudo_queries}" if args.pseudo_queries else "")
                       + ("-flops{:g}-{:g}".format(*args.flops) if any(args.flops) else ""))
    started = time.perf_counter()
    run = train_embedder(Embedder(BASE, show_progress=False), examples, folder, settings=settings, config=config,
                         overwrite=True)
    train_seconds = time.perf_counter() - started
    print(f"trained {folder.name}: {run.steps} steps, {train_seconds / 60:.1f} min", flush=True)
    subsets = split_test_queries(Path(args.data), test.qrels, train_qrels)
    all_ids = list(test.qrels)
    bm25 = Retriever(None, signals=["bm25"])
    bm25.fit(test.doc_ids, test.doc_texts)
    bm25_scores = per_query_ndcg(bm25, test.queries, all_ids, test.qrels, "bm25")
    m3 = Retriever(Embedder(str(folder), dtype=args.precision, show_progress=True),
                   signals=["dense", "sparse", "colbert"])
    m3.fit(test.doc_ids, test.doc_texts)
    heads = {mode: per_query_ndcg(m3, test.queries, all_ids, test.qrels, mode)
             for mode in ("sparse", "dense", "colbert", "all")}
    comparison = compare_on_subsets(bm25_scores, heads["sparse"], {"all_test": all_ids, **subsets})
    out = {"configuration": config_key, "train_queries": len(train_qrels), "pseudo_queries": pseudo,
           "steps": run.steps, "train_seconds": round(train_seconds),
           "sparse_vs_bm25": comparison,
           "all_test_ndcg@10": {mode: sum(s.values()) / len(s) for mode, s in heads.items()},
           "bm25_ndcg@10": sum(bm25_scores.values()) / len(bm25_scores),
           "queries": {k: len(v) for k, v in subsets.items()}, "duplicates_dropped": subsets["duplicates"],
           "wall_s": round(time.perf_counter() - wall, 1)}
    lines = [f"M3 (dense + sparse + ColBERT, {args.sparse_init}-started sparse head) trained on all "
             f"{len(train_qrels)} train queries"
             + (f" and {pseudo['kept']} pseudo-queries (of {pseudo['queries_written']} written for "
                f"{pseudo['documents']} documents)" if pseudo else "")
             + f": lr {config_key['learning_rate']:g}, temperature {config_key['temperature']:g}, "
             f"{args.group_size - 1} hard negatives, {args.epochs} epochs, {args.precision}, FLOPS weights "
             f"{args.flops[0]:g} / {args.flops[1]:g} ({run.steps} steps, {train_seconds / 60:.0f} min); SciFact test "
             "scored once.", "",
             *comparison_table(comparison, "BM25", "M3 sparse"),
             "\nall_test, the model's other heads: " + ", ".join(
                 f"{mode} {score:.4f}" for mode, score in out["all_test_ndcg@10"].items())
             + " (all: the hybrid of the three at M3's head weights).",
             comparison_note(subsets, "BM25", out["wall_s"])]
    number = append_run("tune_training_m3_test", out, "\n".join(lines))
    print(f"run {number} appended to {test_path} (earlier runs kept)")
    return 0


def carved_or_default_split(split_folder: str | None, data: str, train_qrels: dict):
    """(training query ids, held-out query ids, split record): the carved split on disk when ``split_folder``
    is given (its manifest's hashes checked; ValueError when it is not a carve of ``data``'s train split),
    otherwise 100 train queries held out by split_queries with seed 0 (split record None)."""
    if not split_folder:
        fit_ids, held_out_ids = split_queries(sorted(train_qrels), HELD_OUT, seed=0)
        return fit_ids, held_out_ids, None
    return read_carved_split(split_folder, data, train_qrels)


def subsets_table(rows: list[dict], subsets: dict[str, list[str]]) -> list[str]:
    """Markdown rows: the base model, then each model's score (delta) and p on every subset; "-" for a subset
    without queries (compare_on_subsets gives None there)."""
    lines = ["| model | " + " | ".join(f"{name} ({len(ids)}) | p" for name, ids in subsets.items()) + " |",
             "|---" * (1 + 2 * len(subsets)) + "|"]
    first = rows[0]["dev"]
    lines.append("| base | " + " | ".join(f"{first[name]['base']:.4f} | " if first[name] else "- | "
                                          for name in subsets) + " |")
    for row in rows:
        lines.append(f"| {Path(row['model']).name} | " + " | ".join(
            f"{c['best']:.4f} ({c['delta']:+.4f}) | {c['p_value']:.3g}" if (c := row["dev"][name]) else "- | -"
            for name in subsets) + " |")
    return lines


def models_and_split(data: str, split_folder: str | None, models: list[str]):
    """What the scoring stages read before any model work: (test dataset, train qrels, training ids, scored ids,
    split record), or None after a one-line error when a model folder, the data or the split is wrong."""
    missing = [m for m in models if not (Path(m) / "config.json").is_file()]
    if missing:
        print(f"--models: not a model folder: {', '.join(missing)}", file=sys.stderr)
        return None
    loaded = load_scifact_with_train(data)
    if loaded is None:
        return None
    test, train_qrels, _ = loaded
    try:
        fit_ids, scored_ids, split = carved_or_default_split(split_folder, data, train_qrels)
    except ValueError as error:
        print(f"--split-folder: {error}", file=sys.stderr)
        return None
    return test, train_qrels, fit_ids, scored_ids, split


def dev_subsets(data: str, split_folder: str, models: list[str], precision: str) -> int:
    """Score the base model and each of ``models`` on the carved split's dev queries, overall and on the dev
    queries whose relevant documents are / are never a positive of the training queries (seen_docs /
    unseen_docs, as the test tables split), with a paired randomization test against the base model. The grid
    keeps only each run's last model, so this scores final epochs. Appended to tune_training_dev_subsets.json."""
    scoring = models_and_split(data, split_folder, models)
    if scoring is None:
        return 2
    test, train_qrels, fit_ids, dev_ids, split = scoring
    wall, cache = time.perf_counter(), EmbeddingCache()
    seen, unseen = seen_and_unseen(dev_ids, train_qrels, positives_of(train_qrels, fit_ids))
    subsets = {"overall": dev_ids, "seen_docs": seen, "unseen_docs": unseen}

    def scores(model: str) -> dict[str, float]:
        retriever = Retriever(Embedder(model, dtype=precision, show_progress=True), signals=["dense"], cache=cache)
        retriever.fit(test.doc_ids, test.doc_texts)
        return per_query_ndcg(retriever, test.queries, dev_ids, train_qrels, "dense")

    base = scores(BASE)
    rows = [{"model": model, "dev": compare_on_subsets(base, scores(model), subsets)} for model in models]
    lines = [f"Dev queries of {split_folder} split by whether a relevant document is a positive of the "
             f"{len(fit_ids)} training queries; dense nDCG@10 ({precision}) against the base model, paired "
             "randomization test.", "", *subsets_table(rows, subsets)]
    out = {"split": split, "precision": precision, "queries": {k: len(v) for k, v in subsets.items()},
           "rows": rows, "wall_s": round(time.perf_counter() - wall, 1)}
    number = append_run("tune_training_dev_subsets", out, "\n".join(lines))
    print("\n".join(lines))
    print(f"run {number} appended to benchmarks/results/tune_training_dev_subsets.json (earlier runs kept)")
    return 0


def score_models(data: str, split_folder: str | None, models: list[str], precision: str) -> int:
    """Score saved models on the held-out queries the training stages score (every head each has, and their
    combination), with the sparse index's active terms per document: for a model trained before a column
    existed, or to compare models trained in different runs on equal terms. Appended to tune_training_score.json."""
    scoring = models_and_split(data, split_folder, models)
    if scoring is None:
        return 2
    test, train_qrels, _, held_out_ids, split = scoring
    held_out = BeirDataset("scifact-train-held-out", test.doc_ids, test.doc_texts, test.queries,
                           {q: train_qrels[q] for q in held_out_ids})
    wall, rows = time.perf_counter(), []
    for model in models:
        embedder = Embedder(model, dtype=precision, show_progress=True)
        heads = tuple(embedder.available_outputs)
        modes = heads + (("hybrid",) if len(heads) > 1 else ())
        row = RetrievalValidation(embedder, held_out, every=1, modes=modes, bfloat16=precision == "bfloat16",
                                  hybrid=HybridConfig(weights=HEAD_WEIGHTS)).evaluate(0)
        rows.append({"model": model, **{k: v for k, v in row.items() if k != "step"}})
    columns = [k for k in dict.fromkeys(k for r in rows for k in r) if k.endswith("ndcg@10") or k.endswith("per_doc")]
    lines = [f"{len(held_out_ids)} held-out train queries ({split['folder'] if split else 'the default draw, seed 0'}), "
             f"whole corpus, {precision}.", "", "| model | " + " | ".join(columns) + " |",
             "|---" * (1 + len(columns)) + "|"]
    lines += [f"| {Path(r['model']).name} | " + " | ".join(f"{r[c]:.4f}" if c.endswith("ndcg@10") else
                                                            f"{r[c]:.1f}" if c in r else "" for c in columns) + " |"
              for r in rows]
    out = {"split": split, "precision": precision, "held_out_queries": len(held_out_ids), "rows": rows,
           "wall_s": round(time.perf_counter() - wall, 1)}
    number = append_run("tune_training_score", out, "\n".join(lines))
    print("\n".join(lines))
    print(f"run {number} appended to benchmarks/results/tune_training_score.json (earlier runs kept)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("dense", "m3", "cocktail", "baselines", "report", "test", "dev-subsets",
                                          "score", "m3-test"),
                        help="baselines: only score the base model and BM25 on the held-out queries; report: "
                             "gather every dense run on a carved split into tune_training_grid.{md,json}; test: "
                             "train the grid's best on all train queries and score the test split once; "
                             "dev-subsets: score --models on the dev queries split into seen_docs / unseen_docs; "
                             "score: every head of --models on the held-out queries, with sparse terms per "
                             "document; m3-test: train M3 on all train queries (one learning rate and temperature) "
                             "and score its sparse head against BM25 on the test split once")
    parser.add_argument("--data", default=str(SHARED_DATA / "beir" / "scifact"))
    parser.add_argument("--split-folder", default=None,
                        help="a folder 'flagstone data carve-split' wrote from --data's train split: train on its "
                             "qrels/train.tsv, score its carved split (default: hold out 100 train queries with "
                             "split_queries, seed 0)")
    parser.add_argument("--learning-rates", type=floats, default=[3e-5])
    parser.add_argument("--temperatures", type=floats, default=[0.02], help="InfoNCE temperatures")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--passage-length", type=int, default=192)
    parser.add_argument("--precision", choices=("bfloat16", "float32"), default="bfloat16",
                        help="training autocast and inference dtype (default: bfloat16, train_scifact's; use "
                             "float32 on CPUs without native bf16 (no avx512_bf16 / AMX), where bf16 is ~5x slower)")
    parser.add_argument("--flops", nargs=2, type=float, default=[0.0, 0.0], metavar=("QUERY", "PASSAGE"),
                        help="m3: SPLADE FLOPS regulariser weights on the sparse head (default: 0 0, off)")
    parser.add_argument("--sparse-init", choices=("idf", "uniform"), default="idf")
    parser.add_argument("--pseudo-queries", type=int, default=0, metavar="N",
                        help="dense, m3, m3-test: also train on pseudo-queries the bundled SmolLM2 writes for N "
                             "documents that are no training query's positive (seeded draw; cached; default: 0, none)")
    parser.add_argument("--pseudo-keep-top", type=int, default=3, metavar="K",
                        help="keep a pseudo-query only when the base model ranks its document in the top K "
                             "(consistency filtering; default: 3)")
    parser.add_argument("--teacher", default=None, metavar="FOLDER",
                        help="dense: distil this cross-encoder (trained by rerank_scifact.py, which writes the settings "
                             "file listing its training queries) on every training group; refused when it trained "
                             "on a scored query")
    parser.add_argument("--model", help="cocktail: the fine-tuned folder to merge with the base")
    parser.add_argument("--models", nargs="+", default=[], metavar="FOLDER",
                        help="dev-subsets, score: trained model folders to score (e.g. benchmarks/models/tune-dense-*)")
    parser.add_argument("--cocktail-temperatures", type=floats, default=[0.5, 1.0, 2.0, 5.0])
    parser.add_argument("--cocktail-examples", type=int, default=8)
    args = parser.parse_args()
    if args.stage == "report":
        return grid_report()
    if args.stage == "test":
        return test_best(args.data, args.batch_size, args.passage_length)
    if args.stage == "dev-subsets":
        if not args.split_folder or not args.models:
            parser.error("dev-subsets needs --split-folder and --models")
        return dev_subsets(args.data, args.split_folder, args.models, args.precision)
    if args.stage == "score":
        if not args.models:
            parser.error("score needs --models")
        return score_models(args.data, args.split_folder, args.models, args.precision)
    if any(args.flops) and args.stage not in ("m3", "m3-test"):
        parser.error("--flops regularises the sparse head: only the m3 stages train one")
    if args.teacher and args.stage != "dense":
        parser.error("--teacher: only the dense stage distils")
    if args.teacher and not Path(args.teacher, "config.json").is_file():
        parser.error(f"--teacher: {args.teacher} is not a model folder")
    if args.pseudo_queries and args.stage not in ("dense", "m3", "m3-test"):
        parser.error("--pseudo-queries: only the dense and m3 stages train on them")
    if args.pseudo_queries < 0 or args.pseudo_keep_top < 1:
        parser.error("--pseudo-queries must be at least 0 and --pseudo-keep-top at least 1")
    if args.stage == "m3-test":
        if args.split_folder:
            parser.error("m3-test trains on every train query: --split-folder does not apply")
        if len(args.learning_rates) != 1 or len(args.temperatures) != 1:
            parser.error("m3-test scores the test split once: give one learning rate and one temperature")
        return m3_test(args)
    loaded = load_scifact_with_train(args.data)
    if loaded is None:
        return 2
    test, train_qrels, doc_text = loaded
    try:
        fit_ids, held_out_ids, split = carved_or_default_split(args.split_folder, args.data, train_qrels)
    except ValueError as error:
        print(f"--split-folder: {error}", file=sys.stderr)
        return 2
    teacher = None
    if args.teacher:
        try:
            teacher = checked_teacher(args.teacher, held_out_ids)
        except ValueError as error:
            print(f"--teacher: {error}", file=sys.stderr)
            return 2
    held_out = BeirDataset("scifact-train-held-out", test.doc_ids, test.doc_texts, test.queries,
                           {q: train_qrels[q] for q in held_out_ids})
    cache = EmbeddingCache()
    bf16 = args.precision == "bfloat16"
    wall = time.perf_counter()
    examples, retriever = mine_scifact_examples(test, train_qrels, doc_text, fit_ids, cache, BASE,
                                                 dtype=args.precision)
    pseudo = None
    if args.pseudo_queries:
        positives = positives_of(train_qrels, fit_ids)
        extra, pseudo = pseudo_query_examples(test.doc_ids, doc_text, positives, retriever, args.pseudo_queries,
                                              args.pseudo_keep_top)
        examples = examples + extra
        print(f"pseudo-queries: {pseudo}", flush=True)
    if teacher:
        examples, teacher = teacher_scores(examples, teacher, args.precision)
        print(f"teacher: {teacher}", flush=True)
    rows: list[dict[str, object]] = []
    # m3: held-out sparse nDCG@10 of each IDF-initialised head before training; cocktail: the chosen temperature
    summary: dict[str, float] = {}
    initial: list[tuple[float, float, dict[str, float]]] = []  # m3: (lr, temperature, the untrained head's scores)
    # depth 10: what these baselines were computed at before evaluate_retrieval had a depth of its own
    base_score = evaluate_retrieval(retriever, held_out, modes=("dense",), k_values=(10,), metrics=("ndcg",),
                                    fit=False, depth=10).results["dense"].metrics.mean["ndcg@10"]
    bm25 = evaluate_retrieval(Retriever(None, signals=["bm25"]), held_out, modes=("bm25",), k_values=(10,),
                              metrics=("ndcg",), depth=10)
    bm25_score = bm25.results["bm25"].metrics.mean["ndcg@10"]
    print(f"held-out nDCG@10: base model (dense) {base_score:.4f}, BM25 {bm25_score:.4f}", flush=True)
    lines: list[str] = []
    if args.stage == "cocktail":
        if not args.model:
            parser.error("cocktail needs --model (a folder trained by the dense stage)")
        base_path = Embedder(BASE, show_progress=False).path
        few = examples[: args.cocktail_examples]
        losses = [example_loss(args.model, few, "embedder"), example_loss(base_path, few, "embedder")]
        rows.append({"model": "base", "held_out_ndcg@10": base_score})
        score = RetrievalValidation(Embedder(args.model, show_progress=False), held_out, every=1,
                                    bfloat16=bf16).evaluate()
        rows.append({"model": "finetuned", "held_out_ndcg@10": score["dense_ndcg@10"]})
        for temperature in args.cocktail_temperatures:
            weights = cocktail_weights(losses, temperature=temperature)
            merged = merge_models([args.model, base_path], weights, MODELS / "tune-merged", overwrite=True)
            score = RetrievalValidation(Embedder(str(merged), show_progress=False), held_out, every=1,
                                        bfloat16=bf16).evaluate()
            rows.append({"model": f"merged T={temperature:g}", "finetuned_weight": weights[0],
                         "held_out_ndcg@10": score["dense_ndcg@10"]})
        tuned_score = rows[1]["held_out_ndcg@10"]
        for row in rows[2:]:
            row["gain_kept"] = (row["held_out_ndcg@10"] - base_score) / (tuned_score - base_score)
        lines = ["| model | fine-tuned weight | held-out nDCG@10 | gain kept |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r.get('finetuned_weight', float('nan')):.3f} | {r['held_out_ndcg@10']:.4f} | "
                  f"{100 * r['gain_kept']:.0f}% |" if "gain_kept" in r else
                  f"| {r['model']} | | {r['held_out_ndcg@10']:.4f} | |" for r in rows]
        lines.append(f"\nexample losses: fine-tuned {losses[0]:.4f}, base {losses[1]:.4f} "
                     f"({len(few)} training examples)")
        # the most conservative merge (most base weight) that keeps 80% of the held-out gain
        keeping = [t for t, r in zip(args.cocktail_temperatures, rows[2:]) if r["gain_kept"] >= 0.8]
        summary["chosen_temperature"] = max(keeping) if keeping else min(args.cocktail_temperatures)
        lines.append(f"chosen: temperature {summary['chosen_temperature']:g} (the largest that keeps 80% of the "
                     "held-out gain)")
    elif args.stage in ("dense", "m3"):
        heads = ("dense",) if args.stage == "dense" else ("dense", "sparse", "colbert")
        modes = ("dense",) if args.stage == "dense" else ("dense", "sparse", "colbert", "hybrid")
        for lr in args.learning_rates:
            for temperature in args.temperatures:
                name = f"tune-{args.stage}-lr{lr:.0e}-t{temperature:g}" + (
                    f"-g{args.group_size}" if args.group_size != 4 else "") + (
                    f"-pq{args.pseudo_queries}" if args.pseudo_queries else "") + (
                    f"-kd-{Path(args.teacher).name}" if args.teacher else "") + (
                    "-flops{:g}-{:g}".format(*args.flops) if any(args.flops) else "")
                embedder = Embedder(BASE, show_progress=False)
                settings = EmbedderTrainingSettings(heads=heads, group_size=args.group_size,
                                                    batch_size=args.batch_size, temperature=temperature,
                                                    passage_max_length=args.passage_length,
                                                    sparse_init=args.sparse_init,
                                                    flops_weights=tuple(args.flops))
                config = TrainingConfig(epochs=args.epochs, learning_rate=lr, warmup_ratio=0.1,
                                        precision=args.precision, seed=0)
                steps_per_epoch = math.ceil(len(examples) / args.batch_size)
                check = RetrievalValidation(embedder, held_out, every=steps_per_epoch, modes=modes, bfloat16=bf16,
                                            hybrid=HybridConfig(weights=HEAD_WEIGHTS))
                if args.stage == "m3" and args.sparse_init == "idf":  # where the new sparse head starts
                    embedder.sparse_head = idf_sparse_head(embedder, unique_passages(examples),
                                                           max_length=args.passage_length)
                    start = RetrievalValidation(embedder, held_out, every=1, modes=("sparse",),
                                                bfloat16=bf16).evaluate(0)
                    summary[f"{name} initial sparse_ndcg@10"] = start["sparse_ndcg@10"]
                    summary[f"{name} initial sparse_terms_per_doc"] = start["sparse_terms_per_doc"]
                    initial.append((lr, temperature, start))
                started = time.perf_counter()
                train_embedder(embedder, examples, MODELS / name, settings=settings, config=config,
                               on_step=check, overwrite=True)
                print(f"{name}: {time.perf_counter() - started:.0f} s with evaluation", flush=True)
                for row in check.history:
                    rows.append({"learning_rate": lr, "temperature": temperature, "group_size": args.group_size,
                                 "pseudo_queries": args.pseudo_queries, "teacher": args.teacher,
                                 "epoch": row["step"] / steps_per_epoch,
                                 **{f"{m}_ndcg@10": row[f"{m}_ndcg@10"] for m in modes},
                                 **({"flops": list(args.flops), "sparse_terms_per_doc": row["sparse_terms_per_doc"]}
                                    if args.stage == "m3" else {})})
        lines = training_table(rows, modes, initial, args.flops if args.stage == "m3" else None)
    lines.append(f"\nheld-out nDCG@10 before training: base model ({args.precision}, dense) {base_score:.4f}, "
                 f"BM25 {bm25_score:.4f}")
    lines.append(f"{len(fit_ids)} train queries"
                 + (f" and {pseudo['kept']} pseudo-queries ({pseudo['documents']} documents)" if pseudo else "")
                 + (f", distilled from {Path(args.teacher).name}" if args.teacher else "")
                 + f" for training, {len(held_out_ids)} held out for scoring "
                 f"(whole corpus). Wall time {(time.perf_counter() - wall) / 60:.1f} min on 2 cores.")
    out = {"stage": args.stage, "arguments": {k: v for k, v in vars(args).items() if k != "data"},
           "train_queries": len(fit_ids), "held_out_queries": len(held_out_ids), "split": split,
           "base_ndcg@10": base_score,
           "bm25_ndcg@10": bm25_score,
           "summary": summary, "pseudo_queries": pseudo, "teacher": teacher, "rows": rows}
    number = append_run(f"tune_training_{args.stage}", out, "\n".join(lines))
    print(f"run {number} appended to benchmarks/results/tune_training_{args.stage}.json (earlier runs kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
