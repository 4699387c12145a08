"""Build INTERS-style instruction-tuning data from the public data sets in Flagstone's shared data folder.

Each task of :data:`flagstone.models.prompts.TASKS` draws its examples from one source (see :data:`SOURCES`);
every example is rendered with one of the task's templates, chosen at random (seeded), few-shot templates
with demonstrations from the same task's training examples. Each task's examples are split into train and
held-out rows (seeded); whole tasks can be held out too (``held_out_tasks``), as INTERS does to measure
generalisation to unseen tasks. Nothing is drawn from SciFact's *test* queries: reranking and expansion use
its train queries only, and summarisation skips documents that a test query judges relevant.

A row: ``{"id", "task", "group", "template", "shots", "source", "prompt", "completion", "answer",
"choices"}`` where ``answer`` is the task's answer kind (``choice``, ``text``, ``permutation``) and
``choices`` lists the allowed completions of a choice task (else null).
"""
from __future__ import annotations

import csv
import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flagstone._io import atomic_folder, atomic_write, iter_jsonl, require_file
from flagstone.errors import DataError
from flagstone.models.prompts import TASKS, TEMPLATES, format_permutation, number_passages

FORMAT = "flagstone-inters-data"
FORMAT_VERSION = 1
TRAIN_FILE, HELD_OUT_FILE, MANIFEST_FILE = "train.jsonl", "held_out.jsonl", "manifest.json"
ROW_FIELDS = ("id", "task", "group", "template", "shots", "source", "prompt", "completion", "answer", "choices")

# task -> where its examples come from (paths under the shared data folder)
SOURCES: dict[str, str] = {
    "query_reformulation": "sts/stsb_multi_mt/stsb-en-train.csv (pairs scored >= 4 of 5)",
    "query_expansion": "beir/scifact train queries -> title of a relevant document",
    "intent_classification": "classification/banking77/train.csv (gold intent + 4 random others)",
    "query_clarification": "qa/nq_open/NQ-open.dev.jsonl (a question cut to its first 2-3 words: Yes; whole: No)",
    "query_suggestion": "qa/hotpotqa distractor sample (a supporting article's title not named in the question)",
    "query_matching": "pair_classification/msrp/msr-para-train.tsv (paraphrase: Yes/No)",
    "summarization": "beir/scifact corpus (abstract -> title; documents judged for test queries skipped)",
    "fact_verification": "qa/hotpotqa distractor sample (question + its answer, or another record's: Yes/No)",
    "reading_comprehension": "qa/hotpotqa distractor sample (supporting paragraphs -> answer)",
    "pointwise_reranking": "beir/scifact train queries (relevant document: Yes; BM25 top-30 non-relevant: No)",
    "pairwise_reranking": "beir/scifact train queries (relevant vs BM25 top-30 non-relevant, order random)",
    "listwise_reranking": "beir/scifact train queries (1 relevant + 2-5 BM25 non-relevant, relevant first)",
}
YES_NO = ["Yes", "No"]


@dataclass
class IntersData:
    """Train and held-out rows with the settings that produced them."""

    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for split, rows in (("train", self.train), ("held_out", self.held_out)):
            for row in rows:
                out.setdefault(row["task"], {"train": 0, "held_out": 0})[split] += 1
        return out


def _words(text: str, limit: int) -> str:
    """At most ``limit`` words of ``text`` (prompts stay short enough to train on two CPU cores)."""
    words = text.split()
    return " ".join(words[:limit]) + (" ..." if len(words) > limit else "")


# -- sources: each returns the task's raw examples as (fields, completion, choices) ---------------------------
Example = tuple[dict[str, str], str, list[str] | None]


def _read_csv(path: Path, header: bool) -> list[list[str]]:
    with require_file(path, "data file").open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t" if path.suffix == ".tsv" else ",", quoting=csv.QUOTE_NONE
                               if path.suffix == ".tsv" else csv.QUOTE_MINIMAL))
    return rows[1:] if header else rows


def _reformulation(root: Path, rng: random.Random) -> list[Example]:
    out = []
    for row in _read_csv(root / "sts/stsb_multi_mt/stsb-en-train.csv", header=False):
        if len(row) == 3 and float(row[2]) >= 4.0 and row[0].strip().lower() != row[1].strip().lower():
            out.append(({"query": row[0]}, row[1], None))
    return out


def _banking(root: Path, rng: random.Random) -> list[Example]:
    rows = _read_csv(root / "classification/banking77/train.csv", header=True)
    labels = sorted({r[1] for r in rows})
    out = []
    for text, label in rows:
        options = rng.sample([x for x in labels if x != label], 4) + [label]
        rng.shuffle(options)
        names = [o.replace("_", " ") for o in options]
        out.append(({"query": text, "options": "; ".join(names)}, label.replace("_", " "), names))
    return out


def _clarification(root: Path, rng: random.Random) -> list[Example]:
    out = []
    for _, row in iter_jsonl(root / "qa/nq_open/NQ-open.dev.jsonl"):
        words = row["question"].split()
        if len(words) < 6:
            continue
        if rng.random() < 0.5:
            out.append(({"query": " ".join(words[: rng.choice((2, 3))])}, "Yes", YES_NO))
        else:
            out.append(({"query": row["question"]}, "No", YES_NO))
    return out


def _msrp(root: Path, rng: random.Random) -> list[Example]:
    out = []
    for row in _read_csv(root / "pair_classification/msrp/msr-para-train.tsv", header=True):
        if len(row) == 5 and row[0] in ("0", "1"):
            out.append(({"query": row[3], "other": row[4]}, "Yes" if row[0] == "1" else "No", YES_NO))
    return out


def _hotpot(root: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(root / "qa/hotpotqa/hotpot_dev_distractor_sample100.jsonl")]


def _supporting_text(rec: dict, limit: int = 110) -> str:
    titles = rec["context"]["title"]
    wanted = list(dict.fromkeys(rec["supporting_facts"]["title"]))
    paragraphs = [f"{t}: {''.join(rec['context']['sentences'][titles.index(t)])}" for t in wanted if t in titles]
    return _words(" ".join(paragraphs), limit)


def _suggestion(root: Path, rng: random.Random) -> list[Example]:
    out = []
    for rec in _hotpot(root):
        unnamed = [t for t in dict.fromkeys(rec["supporting_facts"]["title"]) if t.lower() not in rec["question"].lower()]
        if unnamed:
            out.append(({"query": rec["question"]}, unnamed[0], None))
    return out


def _verification(root: Path, rng: random.Random) -> list[Example]:
    records = _hotpot(root)
    out = []
    for rec in records:
        answer = rec["answer"]
        if rng.random() < 0.5:
            label = "Yes"
        else:  # another record's answer of the same kind (yes/no answers swap with each other)
            others = [r["answer"] for r in records if r["type"] == rec["type"] and r["answer"].lower() != answer.lower()]
            if answer.lower() in ("yes", "no"):
                others = ["no" if answer.lower() == "yes" else "yes"]
            answer, label = rng.choice(others), "No"
        claim = f"The answer to \"{rec['question']}\" is {answer}."
        out.append(({"claim": claim, "passage": _supporting_text(rec)}, label, YES_NO))
    return out


def _reading(root: Path, rng: random.Random) -> list[Example]:
    return [({"question": rec["question"], "passage": _supporting_text(rec)}, rec["answer"], None)
            for rec in _hotpot(root)]


@dataclass
class _SciFact:
    """SciFact train queries with BM25 candidates, loaded once for the tasks that use it."""

    doc_title: dict[str, str]
    doc_body: dict[str, str]
    queries: dict[str, str]
    train_qrels: dict[str, dict[str, int]]
    test_docs: set[str]
    candidates: dict[str, list[str]]  # train query -> BM25 top-30 doc ids


def _load_scifact(root: Path) -> _SciFact:
    from flagstone.evaluation.beir import load_qrels, load_queries
    from flagstone.retrieval.retriever import Retriever

    folder = root / "beir/scifact"
    titles, bodies = {}, {}
    for _, row in iter_jsonl(folder / "corpus.jsonl"):
        titles[str(row["_id"])] = row.get("title") or ""
        bodies[str(row["_id"])] = row.get("text") or ""
    queries = load_queries(folder / "queries.jsonl")
    train = load_qrels(folder / "qrels/train.tsv")
    test = load_qrels(folder / "qrels/test.tsv")
    ids = list(titles)
    retriever = Retriever(None, signals=["bm25"]).fit(ids, [f"{titles[d]} {bodies[d]}".strip() for d in ids],
                                                      show_progress=False)
    qids = sorted(train)
    hits = retriever.search([queries[q] for q in qids], mode="bm25", k=30)
    return _SciFact(titles, bodies, queries, train, {d for rel in test.values() for d in rel},
                    dict(zip(qids, hits.ids)))


def _doc(sf: _SciFact, doc_id: str, limit: int) -> str:
    title = sf.doc_title[doc_id].strip()
    joined = f"{title} {sf.doc_body[doc_id]}" if not title or title.endswith((".", "?", "!")) else \
        f"{title}. {sf.doc_body[doc_id]}"
    return _words(joined, limit)


def _relevant_and_negatives(sf: _SciFact) -> list[tuple[str, str, list[str]]]:
    """(query id, one relevant doc, BM25 non-relevant docs) for every train query."""
    out = []
    for qid in sorted(sf.train_qrels):
        relevant = [d for d, r in sf.train_qrels[qid].items() if r > 0 and d in sf.doc_title]
        negatives = [d for d in sf.candidates[qid] if d not in sf.train_qrels[qid]]
        if relevant and negatives:
            out.append((qid, relevant[0], negatives))
    return out


def _expansion(sf: _SciFact, rng: random.Random) -> list[Example]:
    return [({"query": sf.queries[q]}, sf.doc_title[d], None) for q, d, _ in _relevant_and_negatives(sf)
            if sf.doc_title[d]]


def _summaries(sf: _SciFact, rng: random.Random) -> list[Example]:
    return [({"passage": _words(sf.doc_body[d], 100)}, sf.doc_title[d], None) for d in sf.doc_title
            if d not in sf.test_docs and sf.doc_title[d] and len(sf.doc_body[d].split()) > 30]


def _pointwise(sf: _SciFact, rng: random.Random) -> list[Example]:
    out = []
    for q, pos, negs in _relevant_and_negatives(sf):
        relevant = rng.random() < 0.5
        doc = pos if relevant else rng.choice(negs)
        out.append(({"query": sf.queries[q], "passage": _doc(sf, doc, 120)}, "Yes" if relevant else "No", YES_NO))
    return out


def _pairwise(sf: _SciFact, rng: random.Random) -> list[Example]:
    out = []
    for q, pos, negs in _relevant_and_negatives(sf):
        first = rng.random() < 0.5
        a, b = (pos, rng.choice(negs)) if first else (rng.choice(negs), pos)
        out.append(({"query": sf.queries[q], "passage_a": _doc(sf, a, 70), "passage_b": _doc(sf, b, 70)},
                    "A" if first else "B", ["A", "B"]))
    return out


def _listwise(sf: _SciFact, rng: random.Random) -> list[Example]:
    out = []
    for q, pos, negs in _relevant_and_negatives(sf):
        shown = [pos] + negs[: rng.randint(2, 5)]  # the target: the relevant one, then BM25's order
        shuffled = list(range(len(shown)))
        rng.shuffle(shuffled)
        target = [shuffled.index(k) for k in range(len(shown))]
        out.append(({"query": sf.queries[q], "passages": number_passages([_doc(sf, shown[k], 40) for k in shuffled])},
                    format_permutation(target), None))
    return out


_PLAIN: dict[str, Callable[[Path, random.Random], list[Example]]] = {
    "query_reformulation": _reformulation, "intent_classification": _banking, "query_clarification": _clarification,
    "query_suggestion": _suggestion, "query_matching": _msrp, "fact_verification": _verification,
    "reading_comprehension": _reading,
}
_SCIFACT: dict[str, Callable[[_SciFact, random.Random], list[Example]]] = {
    "query_expansion": _expansion, "summarization": _summaries, "pointwise_reranking": _pointwise,
    "pairwise_reranking": _pairwise, "listwise_reranking": _listwise,
}


def build_inters_data(
    data_root: str | os.PathLike,
    *,
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    held_out_per_task: int = 40,
    max_train_per_task: int = 300,
    held_out_tasks: Sequence[str] = (),
) -> IntersData:
    """Instruction rows for ``tasks`` (default: all) from the shared data folder ``data_root``.

    Per task the examples are shuffled with ``seed``; the first ``held_out_per_task`` are held out and up to
    ``max_train_per_task`` of the rest are for training. A task in ``held_out_tasks`` puts no rows in train
    (its held-out rows are drawn the same way). The same arguments give the same rows.
    """
    root = Path(data_root)
    names = list(TASKS) if tasks is None else list(tasks)
    unknown = [t for t in list(names) + list(held_out_tasks) if t not in TASKS]
    if unknown:
        raise DataError(f"unknown task(s) {unknown}; tasks: {', '.join(TASKS)}")
    if held_out_per_task < 1 or max_train_per_task < 0:
        raise DataError("held_out_per_task must be at least 1 and max_train_per_task at least 0")
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    scifact = _load_scifact(root) if any(t in _SCIFACT for t in names) else None
    train: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []
    for task in names:
        rng = random.Random(f"{seed}:{task}")  # a string seed is hashed the same way in every run
        examples = _SCIFACT[task](scifact, rng) if task in _SCIFACT else _PLAIN[task](root, rng)
        if len(examples) < held_out_per_task + 3:
            raise DataError(f"task {task}: only {len(examples)} examples under {root}; fewer than the "
                            f"{held_out_per_task} held out plus a few to demonstrate")
        rng.shuffle(examples)
        held_part = examples[:held_out_per_task]
        train_part = [] if task in held_out_tasks else examples[held_out_per_task: held_out_per_task + max_train_per_task]
        # demonstrations come from the task's training examples (a held-out task shows other held-out ones)
        demo_pool = examples[held_out_per_task:] or held_part
        for split, part, rows in (("train", train_part, train), ("held_out", held_part, held)):
            for n, example in enumerate(part):
                rows.append(_render(task, f"{task}-{split}-{n:05d}", example, demo_pool, rng))
    settings = {"seed": seed, "tasks": names, "held_out_per_task": held_out_per_task,
                "max_train_per_task": max_train_per_task, "held_out_tasks": list(held_out_tasks),
                "data_root": str(root), "sources": {t: SOURCES[t] for t in names}}
    return IntersData(train, held, settings)


def _render(task: str, row_id: str, example: Example, demo_pool: Sequence[Example], rng: random.Random) -> dict:
    fields, completion, choices = example
    template = rng.choice(TEMPLATES[task])
    candidates = [d for d in demo_pool if d is not example]
    demos = [(_short(d[0]), d[1]) for d in rng.sample(candidates, template.shots)]
    return {"id": row_id, "task": task, "group": TASKS[task].group, "template": template.name,
            "shots": template.shots, "source": SOURCES[task], "prompt": template.render(fields, demos),
            "completion": completion, "answer": TASKS[task].answer, "choices": choices}


def _short(fields: dict[str, str]) -> dict[str, str]:
    """A demonstration's fields cut shorter than the example's own, so few-shot prompts stay trainable."""
    return {k: "\n".join(_words(line, 15) for line in v.split("\n")) if k == "passages" else _words(v, 40)
            for k, v in fields.items()}


def save_inters_data(data: IntersData, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``train.jsonl``, ``held_out.jsonl`` and ``manifest.json`` (settings, seed, counts) to ``folder``."""
    with atomic_folder(folder, overwrite=overwrite) as staging:
        for name, rows in ((TRAIN_FILE, data.train), (HELD_OUT_FILE, data.held_out)):
            with atomic_write(staging / name) as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, **data.settings, "counts": data.counts()}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return Path(folder)


def load_inters_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``train.jsonl`` / ``held_out.jsonl`` file, checked: every field present, prompt and
    completion non-empty strings, a known task."""
    rows = []
    for line_no, row in iter_jsonl(path):
        missing = [f for f in ROW_FIELDS if f not in row]
        if missing:
            raise DataError(f"{path}:{line_no}: missing field(s) {missing}; expected an INTERS row "
                            f"({', '.join(ROW_FIELDS)})")
        if not (isinstance(row["prompt"], str) and row["prompt"].strip() and isinstance(row["completion"], str)
                and row["completion"].strip()):
            raise DataError(f"{path}:{line_no}: prompt and completion must be non-empty strings")
        if row["task"] not in TASKS:
            raise DataError(f"{path}:{line_no}: unknown task {row['task']!r}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


