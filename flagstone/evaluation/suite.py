"""Run evaluation tasks on a model and report them like MTEB / C-MTEB: one result file per task in MTEB's
JSON layout, and a markdown table across tasks with averages per task type and overall."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flagstone._io import atomic_write
from flagstone.errors import DataError
from flagstone.evaluation import scoring
from flagstone.evaluation.tabular import parse_floats, read_columns
from flagstone.evaluation.tasks import TaskSpec

if TYPE_CHECKING:
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.embedder import Embedder

MTEB_SCORE_KEYS = ("ndcg", "map", "mrr", "recall", "precision")


@dataclass
class TaskResult:
    task: TaskSpec
    scores: dict[str, object]
    seconds: float
    n_examples: int

    @property
    def main_score(self) -> float:
        return float(self.scores[self.task.main_score])  # type: ignore[arg-type]

    def to_mteb(self, model: str) -> dict[str, object]:
        """The layout of an MTEB result file (one split, the ``default`` subset)."""
        split = "test" if self.task.type not in ("retrieval", "reranking") else self.task.split
        entry = {**self.scores, "main_score": self.main_score, "hf_subset": "default",
                 "languages": [f"{lang}" for lang in self.task.languages]}
        return {"task_name": self.task.name, "model_name": model, "evaluation_time": round(self.seconds, 2),
                "scores": {split: [entry]}, "flagstone": {"type": self.task.type, "main_score": self.task.main_score,
                                                          "n_examples": self.n_examples,
                                                          "reference": self.task.reference}}


@dataclass
class SuiteReport:
    model: str
    results: list[TaskResult] = field(default_factory=list)

    def averages(self) -> dict[str, float]:
        """Mean main score per task type, and over all tasks (like the C-MTEB table's columns)."""
        by_type: dict[str, list[float]] = {}
        for r in self.results:
            by_type.setdefault(r.task.type, []).append(r.main_score)
        out = {t: float(np.mean(v)) for t, v in by_type.items()}
        if self.results:
            out["all"] = float(np.mean([r.main_score for r in self.results]))
        return out

    def table(self) -> str:
        lines = [f"model: {self.model}", "", "| task | type | main score | value (x100) | examples | seconds |",
                 "|---|---|---|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r.task.name} | {r.task.type} | {r.task.main_score} | {100 * r.main_score:.2f} | "
                         f"{r.n_examples:,} | {r.seconds:.1f} |")
        avg = self.averages()
        if avg:
            lines += ["", "| average | " + " | ".join(k for k in avg) + " |", "|---" * (len(avg) + 1) + "|",
                      "| x100 | " + " | ".join(f"{100 * v:.2f}" for v in avg.values()) + " |"]
        return "\n".join(lines)

    def summary(self) -> dict[str, object]:
        """One entry per task with its main score (MTEB-style), plus the averages."""
        return {"model": self.model,
                "tasks": {r.task.name: {"type": r.task.type, "main_score": r.task.main_score, "value": r.main_score,
                                        "languages": list(r.task.languages), "seconds": round(r.seconds, 2)}
                          for r in self.results},
                "averages": self.averages()}

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``<task>.json`` per task (MTEB layout) and ``summary.json`` + ``table.md`` into ``folder``."""
        out = Path(folder)
        written = []
        for r in self.results:
            path = out / f"{r.task.name}.json"
            with atomic_write(path) as handle:
                json.dump(r.to_mteb(self.model), handle, indent=2)
            written.append(path)
        with atomic_write(out / "summary.json") as handle:
            json.dump(self.summary(), handle, indent=2)
        with atomic_write(out / "table.md") as handle:
            handle.write(self.table() + "\n")
        return written + [out / "summary.json", out / "table.md"]


class _Encoder:
    """Dense embeddings for a task's texts, through the on-disk cache when one is given."""

    def __init__(self, embedder: Embedder, cache: EmbeddingCache | None, show_progress: bool) -> None:
        self.embedder, self.cache, self.show_progress = embedder, cache, show_progress

    def __call__(self, texts: Sequence[str], is_query: bool = False) -> np.ndarray:
        unique = list(dict.fromkeys(texts))  # STS and clustering sets repeat sentences
        if self.cache is not None:
            emb = self.cache.encode(self.embedder, unique, is_query=is_query, show_progress=self.show_progress)
        else:
            emb = self.embedder.encode(unique, is_query=is_query, show_progress=self.show_progress)
        position = {t: i for i, t in enumerate(unique)}
        return emb.dense[[position[t] for t in texts]]


def run_task(
    task: TaskSpec,
    embedder: Embedder,
    *,
    data_root: str | os.PathLike[str] | None = None,
    cache: EmbeddingCache | None = None,
    retrieval_mode: str = "dense",
    show_progress: bool = True,
) -> TaskResult:
    """Load ``task``'s data, embed it with ``embedder`` and score it with the task type's MTEB protocol."""
    encode = _Encoder(embedder, cache, show_progress)
    start = time.perf_counter()
    if task.type in ("sts", "pair_classification"):
        scores, n = _run_pairs(task, encode, data_root)
    elif task.type == "classification":
        train, test = _read_table(task, "train", data_root), _read_table(task, "test", data_root)
        scores = scoring.classification_scores(encode(train["text"]), train["label"], encode(test["text"]),
                                               test["label"])
        n = len(test["text"])
    elif task.type == "clustering":
        test = _read_table(task, "test", data_root)
        scores = scoring.clustering_scores(encode(test["text"]), test["label"])
        n = len(test["text"])
    elif task.type == "reranking":
        scores, n = _run_reranking(task, encode, data_root)
    else:  # retrieval
        scores, n = _run_retrieval(task, embedder, cache, data_root, retrieval_mode, show_progress)
    return TaskResult(task, scores, time.perf_counter() - start, n)


def _read_table(task: TaskSpec, split: str, data_root) -> dict[str, list[str]]:
    path = task.path(split, data_root)
    return read_columns(path, task.columns, header=task.has_header(path))


def _read_pairs(task: TaskSpec, data_root) -> tuple[dict[str, list[str]], list[float]]:
    """The sentence pairs and their gold scores or labels, checked (numbers, range, 0/1) before any encoding."""
    path = task.path("test", data_root)
    header = task.has_header(path)
    cols = read_columns(path, task.columns, header=header)
    if "test_sentence2" in task.files:  # cross-lingual: sentence2 from a line-aligned file in another language
        other_path = task.path("test_sentence2", data_root)
        other = read_columns(other_path, {"sentence2": task.columns["sentence2"]}, header=header)
        if len(other["sentence2"]) != len(cols["sentence1"]):
            raise DataError(f"{other_path} has {len(other['sentence2'])} rows, {path} has "
                            f"{len(cols['sentence1'])}: cross-lingual files must be line-aligned")
        cols["sentence2"] = other["sentence2"]
    if task.type == "sts":
        gold = parse_floats(cols["score"], path, "score")
        lo, hi = task.score_range
        outside = [i for i, g in enumerate(gold) if g < lo or g > hi]
        if outside:
            raise DataError(f"{path}: gold scores outside the declared range {lo}..{hi} (data row {outside[0] + 1}: "
                            f"{gold[outside[0]]:g})")
        return cols, gold
    labels = parse_floats(cols["label"], path, "label")
    if set(labels) - {0.0, 1.0}:
        raise DataError(f"{path}: pair labels must be 0 or 1")
    return cols, labels


def _run_pairs(task: TaskSpec, encode: _Encoder, data_root) -> tuple[dict[str, object], int]:
    cols, values = _read_pairs(task, data_root)
    e1, e2 = encode(cols["sentence1"]), encode(cols["sentence2"])
    if task.type == "sts":
        return scoring.sts_scores(e1, e2, values), len(values)
    return scoring.pair_classification_scores(e1, e2, [int(v) for v in values]), len(values)


def check_task_data(task: TaskSpec, data_root: str | os.PathLike[str] | None = None) -> None:
    """Check ``task``'s data without a model, so a mistake shows before minutes of encoding: tables are read
    (columns, empty cells, STS gold scores as numbers in range, pair labels 0/1); a BEIR folder must hold its
    files (their contents are checked when it is loaded). Raises DataError naming the file and row."""
    if task.type in ("sts", "pair_classification"):
        _read_pairs(task, data_root)
    elif task.type in ("classification", "clustering"):
        for split in ("train", "test") if task.type == "classification" else ("test",):
            _read_table(task, split, data_root)
    else:
        from flagstone.evaluation.beir import check_beir_folder

        check_beir_folder(task.path("beir", data_root), task.split)


def _run_reranking(task: TaskSpec, encode: _Encoder, data_root) -> tuple[dict[str, object], int]:
    """Candidates = BM25 top-N of each judged query plus its judged documents (a fixed, model-independent
    candidate list, as reranking data sets ship them)."""
    from flagstone.evaluation.beir import load_beir
    from flagstone.retrieval.retriever import Retriever

    data = load_beir(task.path("beir", data_root), task.split)
    bm25 = Retriever(None, signals=["bm25"]).fit(data.doc_ids, data.doc_texts, show_progress=False)
    qids = data.query_ids
    hits = bm25.search([data.queries[q] for q in qids], mode="bm25", k=task.candidates)
    text_of = dict(zip(data.doc_ids, data.doc_texts))
    candidates, relevance = [], []
    for qid, ids in zip(qids, hits.ids):
        judged = [d for d in data.qrels[qid] if d in text_of]
        cands = list(dict.fromkeys(list(ids) + judged))
        candidates.append(cands)
        relevance.append([int(data.qrels[qid].get(d, 0)) for d in cands])
    query_emb = encode([data.queries[q] for q in qids], is_query=True)
    all_docs = list(dict.fromkeys(d for c in candidates for d in c))
    doc_emb = encode([text_of[d] for d in all_docs])
    row = {d: i for i, d in enumerate(all_docs)}
    cand_emb = [doc_emb[[row[d] for d in c]] for c in candidates]
    return scoring.reranking_scores(query_emb, cand_emb, relevance), len(qids)


def _run_retrieval(task: TaskSpec, embedder, cache, data_root, mode: str, show_progress: bool):
    from flagstone.evaluation.beir import load_beir
    from flagstone.evaluation.metrics import evaluate_run
    from flagstone.retrieval.retriever import Retriever

    data = load_beir(task.path("beir", data_root), task.split)
    signals = None if mode == "hybrid" else (["bm25"] if mode == "bm25" else [mode])
    retriever = Retriever(embedder if mode != "bm25" else None, signals=signals, cache=cache)
    retriever.fit(data.doc_ids, data.doc_texts, show_progress=show_progress)
    hits = retriever.search(data.query_texts(), mode=mode, k=1000)
    report = evaluate_run(hits.to_run(data.query_ids), data.qrels, (1, 3, 5, 10, 20, 100, 1000))
    scores: dict[str, object] = {k.replace("@", "_at_"): v for k, v in report.mean.items()}
    scores["retrieval_mode"] = mode
    return scores, len(data.qrels)


def run_suite(
    tasks: Sequence[TaskSpec],
    embedder: Embedder,
    *,
    data_root: str | os.PathLike[str] | None = None,
    cache: EmbeddingCache | None = None,
    retrieval_mode: str = "dense",
    show_progress: bool = True,
    on_result=None,
) -> SuiteReport:
    """Run every task in order; ``on_result(TaskResult)`` is called as each finishes (for live output)."""
    report = SuiteReport(model=embedder.name)
    for task in tasks:
        result = run_task(task, embedder, data_root=data_root, cache=cache, retrieval_mode=retrieval_mode,
                          show_progress=show_progress)
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    return report
