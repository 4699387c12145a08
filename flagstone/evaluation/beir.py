"""Loading BEIR-format data sets: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""
from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

from flagstone._io import iter_jsonl, require_file
from flagstone.errors import DataError, EmptyDocumentsWarning


@dataclass
class BeirDataset:
    """A retrieval data set; ``qrels`` maps query id -> {doc id: relevance} (graded or binary).

    Only judged queries are evaluated; ``queries`` may hold more (``unjudged_queries`` counts them).
    Documents without text are kept as the empty text (``empty_documents`` counts them).
    """

    name: str
    doc_ids: list[str]
    doc_texts: list[str]  # "title text" as BEIR and MTEB join them
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def empty_documents(self) -> int:
        return sum(1 for text in self.doc_texts if not text)

    @property
    def unjudged_queries(self) -> int:
        """Queries in queries.jsonl with no judgement in this split: skipped by every metric."""
        return sum(1 for q in self.queries if q not in self.qrels)

    def describe(self) -> str:
        """One line: documents (empty ones), judged queries and queries skipped for lack of judgements."""
        empty = f" ({self.empty_documents} empty)" if self.empty_documents else ""
        skipped = f", {self.unjudged_queries} without judgements skipped" if self.unjudged_queries else ""
        return f"{len(self.doc_ids):,} documents{empty}, {len(self.qrels):,} judged queries{skipped}"

    @property
    def query_ids(self) -> list[str]:
        """The judged queries, in qrels order."""
        return list(self.qrels)

    def query_texts(self) -> list[str]:
        return [self.queries[q] for q in self.qrels]

    def head(self, n_queries: int) -> BeirDataset:
        """The first ``n_queries`` judged queries, with the whole corpus (for quick runs)."""
        keep = list(self.qrels)[:n_queries]
        return BeirDataset(self.name, self.doc_ids, self.doc_texts, {q: self.queries[q] for q in keep},
                           {q: self.qrels[q] for q in keep})


def load_corpus(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a BEIR corpus.jsonl (``_id``, ``title``, ``text``) into ids and joined texts.

    A document without title and text is kept as the empty text, as BEIR and Lucene-based toolkits index it
    (real collections have them: Cranfield's 471 and 995); one :class:`EmptyDocumentsWarning` counts them.
    """
    ids: list[str] = []
    texts: list[str] = []
    seen: set[str] = set()
    empty: list[str] = []
    for line_no, row in iter_jsonl(path):
        doc_id = row.get("_id", row.get("id"))
        if doc_id is None:
            raise DataError(f"{path}:{line_no}: document has no '_id'")
        doc_id = str(doc_id)
        if doc_id in seen:
            raise DataError(f"{path}:{line_no}: duplicate document id {doc_id!r}")
        text = row.get("text")
        title = row.get("title") or ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise DataError(f"{path}:{line_no}: 'text' and 'title' must be strings")
        joined = f"{title} {text}".strip()
        if not joined:
            empty.append(doc_id)
        seen.add(doc_id)
        ids.append(doc_id)
        texts.append(joined)
    if not ids:
        raise DataError(f"{path}: the corpus is empty")
    warn_empty_documents(empty, path)
    return ids, texts


def warn_empty_documents(empty_ids: list[str], source: str | Path) -> None:
    """One warning line for a corpus's documents without text (indexed as the empty text)."""
    if empty_ids:
        shown = ", ".join(repr(d) for d in empty_ids[:3]) + (", ..." if len(empty_ids) > 3 else "")
        warnings.warn(EmptyDocumentsWarning(
            f"{source}: {len(empty_ids)} document(s) without text ({shown}), indexed as the empty text"),
            stacklevel=3)


def load_queries(path: str | Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for line_no, row in iter_jsonl(path):
        qid, text = row.get("_id", row.get("id")), row.get("text")
        if qid is None or not isinstance(text, str):
            raise DataError(f"{path}:{line_no}: a query needs '_id' and a string 'text'")
        if not text.strip():
            raise DataError(f"{path}:{line_no}: query {qid!r} is empty")
        queries[str(qid)] = text
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read qrels as BEIR TSV (``query-id corpus-id score`` with a header) or TREC (``qid 0 docid rel``)."""
    p = require_file(path, "qrels file")
    qrels: dict[str, dict[str, int]] = {}
    with p.open(encoding="utf-8", newline="") as handle:
        for line_no, fields in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if len(fields) == 1:
                fields = fields[0].split()
            if not fields or not "".join(fields).strip():
                continue
            if len(fields) == 3:
                qid, did, rel = fields
            elif len(fields) == 4:
                qid, _, did, rel = fields
            else:
                raise DataError(f"{p}:{line_no}: expected 3 (BEIR) or 4 (TREC) columns, got {len(fields)}")
            try:
                score = int(float(rel))
            except ValueError:
                if line_no == 1:
                    continue  # header row
                raise DataError(f"{p}:{line_no}: relevance {rel!r} is not a number") from None
            qrels.setdefault(qid.strip(), {})[did.strip()] = score
    if not qrels:
        raise DataError(f"{p}: no judgements found")
    return qrels


def check_beir_folder(folder: str | Path, split: str = "test") -> Path:
    """Without reading them: the folder has corpus.jsonl, queries.jsonl and qrels/<split>.tsv. Returns the
    qrels file. A quick check to run before a model loads; :func:`load_beir` checks the contents."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data set folder not found: {root}")
    require_file(root / "corpus.jsonl", "JSONL file")
    require_file(root / "queries.jsonl", "JSONL file")
    qrels_file = root / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        splits = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise DataError(f"no qrels for split {split!r} in {root / 'qrels'} (found: {', '.join(splits) or 'none'})")
    return qrels_file


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Load a BEIR folder; every query and document that the qrels name must exist."""
    root = Path(folder)
    qrels_file = check_beir_folder(root, split)
    doc_ids, doc_texts = load_corpus(root / "corpus.jsonl")
    queries = load_queries(root / "queries.jsonl")
    qrels = load_qrels(qrels_file)
    unknown_q = [q for q in qrels if q not in queries]
    if unknown_q:
        raise DataError(f"{qrels_file}: {len(unknown_q)} query ids are not in queries.jsonl, e.g. {unknown_q[:3]}")
    known_docs = set(doc_ids)
    unknown_d = sorted({d for judged in qrels.values() for d in judged if d not in known_docs})
    if unknown_d:
        raise DataError(f"{qrels_file}: {len(unknown_d)} document ids are not in corpus.jsonl, e.g. {unknown_d[:3]}")
    return BeirDataset(root.name, doc_ids, doc_texts, queries, qrels)
