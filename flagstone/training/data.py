"""Training data in FlagEmbedding's JSONL format: one query per line with positives and negatives.

``{"query": str, "pos": [str, ...], "neg": [str, ...], "pos_scores": [float, ...], "neg_scores": [...],
"prompt": str}`` — ``pos_scores`` / ``neg_scores`` (teacher scores for distillation) and ``prompt``
(a query instruction) are optional.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flagstone._io import atomic_write, iter_jsonl
from flagstone.errors import DataError, EmptyDocumentsWarning


@dataclass
class TrainingExample:
    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    prompt: str | None = None

    def to_dict(self) -> dict[str, object]:
        row: dict[str, object] = {"query": self.query, "pos": self.pos, "neg": self.neg}
        if self.pos_scores is not None:
            row["pos_scores"] = self.pos_scores
        if self.neg_scores is not None:
            row["neg_scores"] = self.neg_scores
        if self.prompt is not None:
            row["prompt"] = self.prompt
        return row


def _text_list(row: dict, key: str, where: str, required: bool) -> list[str]:
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: missing {key!r}")
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {key!r} must be a list of strings")
    if required and not value:
        raise DataError(f"{where}: {key!r} is empty")
    return value


def _score_list(row: dict, key: str, n: int, where: str) -> list[float] | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DataError(f"{where}: {key!r} must be a list of numbers")
    if len(value) != n:
        raise DataError(f"{where}: {key!r} has {len(value)} scores for {n} texts")
    return [float(v) for v in value]


def parse_example(row: dict, where: str) -> TrainingExample:
    """One JSONL row as a :class:`TrainingExample`; ``where`` (file:line) prefixes every error."""
    query = row.get("query")
    if not isinstance(query, str) or not query.strip():
        raise DataError(f"{where}: 'query' must be a non-empty string")
    pos = _text_list(row, "pos", where, required=True)
    neg = _text_list(row, "neg", where, required=False)
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise DataError(f"{where}: 'prompt' must be a string")
    return TrainingExample(query, pos, neg, _score_list(row, "pos_scores", len(pos), where),
                           _score_list(row, "neg_scores", len(neg), where), prompt)


def load_examples(path: str | os.PathLike[str]) -> list[TrainingExample]:
    """Read a FlagEmbedding-format JSONL file; malformed rows raise :class:`DataError` with file:line.

    A passage may be empty (a corpus's empty document mined as a negative, or judged relevant as Cranfield's
    995 is); one :class:`EmptyDocumentsWarning` counts them. An empty query is an error.
    """
    examples = [parse_example(row, f"{path}:{line_no}") for line_no, row in iter_jsonl(path)]
    if not examples:
        raise DataError(f"{path}: no training examples")
    empty = sum(1 for ex in examples for t in (*ex.pos, *ex.neg) if not t.strip())
    if empty:
        warnings.warn(EmptyDocumentsWarning(f"{path}: {empty} passage(s) without text, trained on as the empty "
                                            f"text"), stacklevel=2)
    return examples


def save_examples(examples: Iterable[TrainingExample], path: str | os.PathLike[str]) -> None:
    with atomic_write(path) as handle:
        for ex in examples:
            handle.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")


def unique_passages(examples: Iterable[TrainingExample]) -> list[str]:
    """Every positive and negative passage of ``examples`` once, in first-seen order."""
    return list(dict.fromkeys(t for ex in examples for t in (*ex.pos, *ex.neg)))


def examples_from_qrels(
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    doc_text: dict[str, str],
    query_ids: Sequence[str] | None = None,
) -> list[TrainingExample]:
    """One example per judged query: its relevant documents as positives (negatives are mined later)."""
    out = []
    for qid in query_ids if query_ids is not None else list(qrels):
        pos = [doc_text[d] for d, rel in qrels[qid].items() if rel > 0 and d in doc_text]
        if pos and qid in queries:
            out.append(TrainingExample(queries[qid], pos))
    return out
