"""Run evaluation tasks on a model and report them like MTEB / C-MTEB: one result file per task in MTEB's
JSON layout, and a markdown table across tasks with averages per task type and overall.

With an output folder, each task's file is written the moment the task finishes, together with the settings
it was computed with (model, embedder settings, retrieval mode and depth, the task's definition). A rerun
into the same folder reuses the files whose settings match and refuses ones that do not, so a suite that
fails half-way (or is killed) loses nothing and never mixes results from two configurations.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flagstone._io import atomic_write
from flagstone.errors import DataError
from flagstone.evaluation import DEFAULT_EVAL_DEPTH, scoring
from flagstone.evaluation.tabular import parse_floats, read_columns
from flagstone.evaluation.tasks import TaskSpec

if TYPE_CHECKING:
    from flagstone.models.cache import EmbeddingCache
    from flagstone.models.embedder import Embedder

MTEB_SCORE_KEYS = ("ndcg", "map", "mrr", "recall", "precision")
# MTEB's retrieval cut-offs; those deeper than the retrieval depth are left out (they would score a cut list)
RETRIEVAL_CUTOFFS = (1, 3, 5, 10, 20, 100, 1000)
SUMMARY_FILE = "summary.json"
TABLE_FILE = "table.md"


@dataclass
class TaskResult:
    task: TaskSpec
    scores: dict[str, object]
    seconds: float
    n_examples: int
    resumed: bool = False  # read back from an earlier run's file instead of computed now

    @property
    def main_score(self) -> float:
        return float(self.scores[self.task.main_score])  # type: ignore[arg-type]

    @property
    def split(self) -> str:
        return _split(self.task)

    def to_mteb(self, model: str, settings: dict[str, object] | None = None) -> dict[str, object]:
        """The layout of an MTEB result file (one split, the ``default`` subset); Flagstone's own fields,
        including the ``settings`` the scores were computed with, go under ``flagstone``."""
        entry = {**self.scores, "main_score": self.main_score, "hf_subset": "default",
                 "languages": [f"{lang}" for lang in self.task.languages]}
        return {"task_name": self.task.name, "model_name": model, "evaluation_time": round(self.seconds, 2),
                "scores": {self.split: [entry]},
                "flagstone": {"type": self.task.type, "main_score": self.task.main_score,
                              "n_examples": self.n_examples, "reference": self.task.reference,
                              "settings": settings or {}, "task": task_definition(self.task)}}


def _split(task: TaskSpec) -> str:
    return "test" if task.type not in ("retrieval", "reranking") else task.split


def task_definition(task: TaskSpec) -> dict[str, object]:
    """What defines a task's data and protocol, as JSON (the free-text ``reference`` is left out)."""
    definition = dataclasses.asdict(task)
    definition.pop("reference")
    return json.loads(json.dumps(definition))  # tuples become lists, as they read back from a file


def suite_settings(embedder: Embedder, retrieval_mode: str, depth: int) -> dict[str, object]:
    """Everything besides the task that a suite's scores depend on; a saved result is reused only when its
    settings equal these."""
    return json.loads(json.dumps({
        "model": embedder.name,
        "model_fingerprint": embedder.fingerprint,  # a retrained folder under the same name differs here
        "embedder": dataclasses.asdict(embedder.settings),
        "retrieval_mode": retrieval_mode,
        "depth": depth,
    }))


@dataclass
class SuiteReport:
    model: str
    results: list[TaskResult] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)
    failed: dict[str, str] | None = None  # {"task", "error"} when a task raised and the suite stopped

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
        if self.failed is not None:
            lines += ["", f"incomplete: task {self.failed['task']} failed ({self.failed['error']})"]
        return "\n".join(lines)

    def summary(self) -> dict[str, object]:
        """One entry per task with its main score (MTEB-style), plus the averages and the settings."""
        out: dict[str, object] = {
            "model": self.model,
            "settings": self.settings,
            "tasks": {r.task.name: {"type": r.task.type, "main_score": r.task.main_score, "value": r.main_score,
                                    "languages": list(r.task.languages), "seconds": round(r.seconds, 2)}
                      for r in self.results},
            "averages": self.averages()}
        if self.failed is not None:
            out["failed"] = self.failed
        return out

    def save_task(self, folder: str | os.PathLike[str], result: TaskResult) -> Path:
        """Write ``<task>.json`` (MTEB layout) into ``folder``, atomically."""
        path = Path(folder) / f"{result.task.name}.json"
        with atomic_write(path) as handle:
            json.dump(result.to_mteb(self.model, self.settings), handle, indent=2)
        return path

    def save_summary(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``summary.json`` and ``table.md`` for the tasks in this report into ``folder``."""
        out = Path(folder)
        with atomic_write(out / SUMMARY_FILE) as handle:
            json.dump(self.summary(), handle, indent=2)
        with atomic_write(out / TABLE_FILE) as handle:
            handle.write(self.table() + "\n")
        return [out / SUMMARY_FILE, out / TABLE_FILE]

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write ``<task>.json`` per task (MTEB layout) and ``summary.json`` + ``table.md`` into ``folder``."""
        written = [self.save_task(folder, r) for r in self.results]
        return written + self.save_summary(folder)


def load_task_result(path: str | os.PathLike[str], task: TaskSpec, settings: dict[str, object]) -> TaskResult:
    """Read back a result file written by a suite run with the same ``settings`` and task definition.

    A file that is not such a result, or was computed differently, is an error: reusing it would mix two
    configurations in one report.
    """
    p = Path(path)
    advice = "choose another output folder, or pass overwrite=True (--overwrite) to recompute every task"
    try:
        saved = json.loads(p.read_text(encoding="utf-8"))
        extra = saved["flagstone"]
        saved_settings, saved_task = extra["settings"], extra["task"]
        entry = dict(saved["scores"][_split(task)][0])
        seconds, n_examples = float(saved["evaluation_time"]), int(extra["n_examples"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{p} is not a result file of a Flagstone suite run with settings "
                        f"({type(exc).__name__}: {exc}): {advice}") from None
    differ = _differences(saved_settings, settings) + _differences(saved_task, task_definition(task), "task.")
    if differ:
        raise DataError(f"{p} was computed with other settings ({'; '.join(differ)}): {advice}")
    for key in ("main_score", "hf_subset", "languages"):
        entry.pop(key, None)
    if task.main_score not in entry:
        raise DataError(f"{p} has no {task.main_score}: {advice}")
    return TaskResult(task, entry, seconds, n_examples, resumed=True)


def _differences(saved: object, current: dict[str, object], prefix: str = "") -> list[str]:
    if not isinstance(saved, dict):
        return [f"{prefix or 'settings'}: {saved!r} in the file"]
    keys = list(dict.fromkeys([*current, *saved]))
    return [f"{prefix}{k}: {saved.get(k)!r} in the file, {current.get(k)!r} now"
            for k in keys if saved.get(k) != current.get(k)]


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
    depth: int = DEFAULT_EVAL_DEPTH,
    show_progress: bool = True,
) -> TaskResult:
    """Load ``task``'s data, embed it with ``embedder`` and score it with the task type's MTEB protocol;
    retrieval tasks score the top ``depth`` hits per query in ``retrieval_mode``."""
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
        scores, n = _run_retrieval(task, embedder, cache, data_root, retrieval_mode, depth, show_progress)
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


def _retrieval_cutoffs(depth: int) -> tuple[int, ...]:
    if depth < 10:
        raise ValueError(f"depth must be at least 10 for retrieval tasks (their main score is nDCG@10), got {depth}")
    return tuple(sorted({k for k in RETRIEVAL_CUTOFFS if k <= depth} | {depth}))


def _run_retrieval(task: TaskSpec, embedder, cache, data_root, mode: str, depth: int, show_progress: bool):
    from flagstone.evaluation.beir import load_beir
    from flagstone.evaluation.metrics import evaluate_run
    from flagstone.retrieval.retriever import Retriever

    cutoffs = _retrieval_cutoffs(depth)
    data = load_beir(task.path("beir", data_root), task.split)
    signals = None if mode == "hybrid" else (["bm25"] if mode == "bm25" else [mode])
    retriever = Retriever(embedder if mode != "bm25" else None, signals=signals, cache=cache)
    retriever.fit(data.doc_ids, data.doc_texts, show_progress=show_progress)
    hits = retriever.search(data.query_texts(), mode=mode, k=depth)
    report = evaluate_run(hits.to_run(data.query_ids), data.qrels, cutoffs)
    scores: dict[str, object] = {k.replace("@", "_at_"): v for k, v in report.mean.items()}
    scores["retrieval_mode"] = mode
    scores["retrieval_depth"] = depth
    return scores, len(data.qrels)


def run_suite(
    tasks: Sequence[TaskSpec],
    embedder: Embedder,
    *,
    data_root: str | os.PathLike[str] | None = None,
    cache: EmbeddingCache | None = None,
    retrieval_mode: str = "dense",
    depth: int = DEFAULT_EVAL_DEPTH,
    output_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    on_start: Callable[[TaskSpec], None] | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
) -> SuiteReport:
    """Run every task in order; ``on_start(task)`` is called before a task is computed and
    ``on_result(TaskResult)`` once its result is there, computed or read back (for live output).

    With ``output_dir``, each task's MTEB-layout file is written as soon as the task finishes, and tasks whose
    file is already there from a run with the same settings are read back instead of recomputed
    (``result.resumed``); a file from other settings is a :class:`DataError` unless ``overwrite``, which
    recomputes every task and replaces the files. ``summary.json`` and ``table.md`` are written at the end,
    and also when a task raises: then they cover the tasks finished so far and name the failed one, and the
    task's exception is re-raised.
    """
    names = [t.name for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"task names must be unique in a suite (their files would collide): {', '.join(repeated)}")
    if any(t.type == "retrieval" for t in tasks):
        _retrieval_cutoffs(depth)  # a bad depth fails now, not after the tasks before the first retrieval one
    report = SuiteReport(model=embedder.name, settings=suite_settings(embedder, retrieval_mode, depth))
    saved: dict[str, TaskResult] = {}
    if output_dir is not None and not overwrite:
        saved = _saved_results(Path(output_dir), tasks, report.settings)
    for task in tasks:
        if task.name in saved:
            result = saved[task.name]
        else:
            if on_start is not None:
                on_start(task)
            try:
                result = run_task(task, embedder, data_root=data_root, cache=cache, retrieval_mode=retrieval_mode,
                                  depth=depth, show_progress=show_progress)
            except BaseException as exc:  # Ctrl-C too: the summary still records how far the suite got
                report.failed = {"task": task.name, "error": f"{type(exc).__name__}: {exc}"}
                if output_dir is not None:
                    report.save_summary(output_dir)
                    exc.add_note(f"suite task {task.name} failed; the {len(report.results)} finished task(s) are "
                                 f"in {output_dir}, and a rerun with the same settings resumes from them")
                raise
            if output_dir is not None:
                report.save_task(output_dir, result)
        report.results.append(result)
        if on_result is not None:
            on_result(result)
    if output_dir is not None:
        report.save_summary(output_dir)
    return report


def _saved_results(folder: Path, tasks: Sequence[TaskSpec], settings: dict[str, object]) -> dict[str, TaskResult]:
    """The results already in ``folder`` for these tasks, all checked before any task runs."""
    summary = folder / SUMMARY_FILE
    if summary.is_file():
        # the summary is rewritten at the end: it must come from the same settings too, or this run would
        # silently replace another configuration's summary
        advice = "choose another output folder, or pass overwrite=True (--overwrite) to recompute every task"
        try:
            saved_settings = json.loads(summary.read_text(encoding="utf-8"))["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{summary} is not the summary of a Flagstone suite run with settings: {advice}") \
                from None
        differ = _differences(saved_settings, settings)
        if differ:
            raise DataError(f"{summary} comes from a run with other settings ({'; '.join(differ)}): {advice}")
    return {t.name: load_task_result(folder / f"{t.name}.json", t, settings)
            for t in tasks if (folder / f"{t.name}.json").exists()}
