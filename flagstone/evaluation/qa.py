"""Question-answering metrics: exact match and token F1 after the standard SQuAD / HotpotQA normalisation
(lower case, punctuation and the articles a/an/the removed, whitespace collapsed)."""
from __future__ import annotations

import json
import os
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from flagstone._io import iter_jsonl, require_file
from flagstone.errors import DataError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_SPECIAL = ("yes", "no", "noanswer")  # HotpotQA: these answers get no partial credit


def normalize_answer(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    golds = [gold] if isinstance(gold, str) else list(gold)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1_one(prediction: str, gold: str) -> float:
    pred, truth = normalize_answer(prediction), normalize_answer(gold)
    if (pred in _SPECIAL or truth in _SPECIAL) and pred != truth:
        return 0.0
    pred_tokens, truth_tokens = pred.split(), truth.split()
    common = sum((Counter(pred_tokens) & Counter(truth_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """Token-overlap F1 against the best-matching gold answer."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    return max((_f1_one(prediction, g) for g in golds), default=0.0)


@dataclass(frozen=True)
class QAExample:
    """A question with gold answers and, for multi-document sets, its context and supporting sentences."""

    id: str
    question: str
    answers: list[str]
    documents: list[tuple[str, str]] = field(default_factory=list)  # (title, text)
    # (title, character span in that document's text) of each supporting sentence
    supporting: list[tuple[str, int, int]] = field(default_factory=list)
    type: str = ""


def load_hotpotqa(path: str | os.PathLike, limit: int | None = None) -> list[QAExample]:
    """HotpotQA records (JSON list or JSONL, the distractor or fullwiki format with ``context``).

    Each paragraph becomes a document ``"<title>\\n<sentences joined>"``; supporting facts become character
    spans in those texts, so any chunking can be scored for supporting-fact recall.
    """
    p = require_file(path, "HotpotQA file")
    if p.suffix == ".jsonl":
        records = [obj for _, obj in iter_jsonl(p)]
    else:
        try:
            records = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"{p}: not valid JSON ({exc})") from None
    examples = []
    for n, rec in enumerate(records[:limit] if limit else records, 1):
        try:
            titles, sentences = _context_of(rec)
            spans: dict[tuple[str, int], tuple[int, int]] = {}
            documents = []
            for title, sents in zip(titles, sentences):
                text, at = title + "\n", len(title) + 1
                for i, sent in enumerate(sents):
                    spans[(title, i)] = (at, at + len(sent))
                    text += sent
                    at += len(sent)
                documents.append((title, text))
            facts = rec.get("supporting_facts") or []
            if isinstance(facts, dict):
                facts = list(zip(facts["title"], facts["sent_id"]))
            supporting = [(t, *spans[(t, int(i))]) for t, i in facts if (t, int(i)) in spans]
            answer = rec["answer"]
            examples.append(QAExample(str(rec.get("_id") or rec.get("id") or n), rec["question"],
                                      [answer] if isinstance(answer, str) else list(answer), documents,
                                      supporting, rec.get("type", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{p}: record {n} is not a HotpotQA record ({type(exc).__name__}: {exc})") from None
    return examples


def _context_of(rec: dict) -> tuple[list[str], list[list[str]]]:
    context = rec.get("context") or {}
    if isinstance(context, dict):
        return list(context["title"]), [list(s) for s in context["sentences"]]
    return [c[0] for c in context], [list(c[1]) for c in context]  # the original [[title, sentences], ...]


def support_recall(supporting: Sequence[tuple[str, int, int]], chunks: Sequence) -> float | None:
    """Share of supporting sentences that retrieved chunks cover (at least half of each sentence's characters);
    None when the example has no supporting facts."""
    if not supporting:
        return None
    found = 0
    for title, start, end in supporting:
        need = max(1, (end - start) // 2)
        if any(c.doc_id == title and min(end, c.end) - max(start, c.start) >= need for c in chunks):
            found += 1
    return found / len(supporting)
