"""benchmarks/_common.pseudo_query_examples: pseudo-queries only for documents outside the training positives,
kept only when the retriever finds their own document near the top, with mined hard negatives."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

DOCS = {f"d{i}": f"document {i} about topic{i} with words shared by all" for i in range(30)}


class OverlapRetriever:
    """Ranks documents by words shared with the query (ties by id): enough to check the filter and the mining."""

    def __init__(self):
        self.modes = []

    def search(self, texts, mode, k):
        self.modes.append(mode)
        ids = []
        for text in texts:
            words = set(text.split())
            ids.append(sorted(DOCS, key=lambda d: (-len(words & set(DOCS[d].split())), d))[:k])
        return SimpleNamespace(ids=ids)


@pytest.fixture()
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    return _common


def test_pseudo_queries_skip_training_positives_and_keep_only_consistent_ones(common):
    seen = []

    def generate(texts):
        seen.extend(texts)
        # a query naming the document's own topic (found at rank 1), a vague one for even-numbered documents,
        # and no usable reply at all for document 15
        return [[] if t.split()[1] == "15" else ["vague words"] if int(t.split()[1]) % 2 == 0
                else [f"topic{t.split()[1]}"] for t in texts]

    positives = {f"d{i}" for i in range(10)}
    examples, summary = common.pseudo_query_examples(list(DOCS), DOCS, positives, OverlapRetriever(), 12, 3,
                                                     generate=generate)
    assert len(seen) == 12 and not {DOCS[d] for d in positives} & set(seen)
    silent = sum(t.split()[1] == "15" for t in seen)
    assert summary["documents"] == 12 and summary["pool"] == 20 and summary["queries_written"] == 12 - silent
    assert summary["documents_without_query"] == silent == 1  # d15 is in the seeded draw
    odd = sum(int(t.split()[1]) % 2 and t.split()[1] != "15" for t in seen)
    assert summary["kept"] == len(examples) == odd  # vague queries rank their document outside the top 3
    for example in examples:
        number = example.query.removeprefix("topic")
        assert example.pos == [DOCS[f"d{number}"]] and len(example.neg) == 15
        assert DOCS[f"d{number}"] not in example.neg


def test_pseudo_queries_are_a_seeded_draw(common):
    def generate(texts):
        return [[f"topic{t.split()[1]}"] for t in texts]

    first = common.pseudo_query_examples(list(DOCS), DOCS, set(), OverlapRetriever(), 5, 3, generate=generate)
    again = common.pseudo_query_examples(list(DOCS), DOCS, set(), OverlapRetriever(), 5, 3, generate=generate)
    other = common.pseudo_query_examples(list(DOCS), DOCS, set(), OverlapRetriever(), 5, 3, seed=1,
                                         generate=generate)
    assert [e.query for e in first[0]] == [e.query for e in again[0]] != [e.query for e in other[0]]


def test_negatives_come_from_the_mode_asked_while_the_filter_stays_dense(common):
    retriever = OverlapRetriever()
    examples, summary = common.pseudo_query_examples(list(DOCS), DOCS, set(), retriever, 6, 3, mine_mode="hybrid",
                                                     generate=lambda texts: [[f"topic{t.split()[1]}"] for t in texts])
    assert retriever.modes == ["dense", "hybrid"] and summary["negatives_from"] == "hybrid"
    assert summary["kept"] == len(examples) == 6
