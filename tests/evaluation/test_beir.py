from __future__ import annotations

import json
from pathlib import Path

import pytest

from flagstone.errors import DataError
from flagstone.evaluation.beir import load_beir, load_qrels


def make_beir(root: Path, *, corpus=None, queries=None, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t2\n"):
    root.mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else [
        {"_id": "d1", "title": "Zinc", "text": "Zinc lozenges shorten colds."},
        {"_id": "d2", "title": "", "text": "Bees dance to show where flowers are."},
        {"_id": "d3", "title": "Stars", "text": "Neutron stars are collapsed cores."},
    ]
    queries = queries if queries is not None else [{"_id": "q1", "text": "zinc and colds"},
                                                   {"_id": "q2", "text": "what are neutron stars"}]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


def test_loads_a_beir_folder(tmp_path):
    ds = load_beir(make_beir(tmp_path / "mini"))
    assert ds.name == "mini" and ds.doc_ids == ["d1", "d2", "d3"]
    assert ds.doc_texts[0] == "Zinc Zinc lozenges shorten colds." and ds.doc_texts[1].startswith("Bees")
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}
    assert ds.query_texts() == ["zinc and colds", "what are neutron stars"]


def test_trec_qrels(tmp_path):
    path = tmp_path / "qrels.txt"
    path.write_text("q1 0 d1 1\nq1 0 d2 0\n")
    assert load_qrels(path) == {"q1": {"d1": 1, "d2": 0}}


@pytest.mark.parametrize("change,message", [
    (lambda r: (r / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n'),
     r"corpus.jsonl:2: malformed JSON"),
    (lambda r: (r / "corpus.jsonl").write_text(""), "the corpus is empty"),
    (lambda r: (r / "corpus.jsonl").write_text('{"text": "no id"}\n'), r"corpus.jsonl:1: document has no '_id'"),
    (lambda r: (r / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n'),
     "duplicate document id 'a'"),
    (lambda r: (r / "corpus.jsonl").unlink(), "JSONL file not found"),
    (lambda r: (r / "queries.jsonl").write_text('[1, 2]\n'), r"queries.jsonl:1: expected a JSON object"),
    (lambda r: (r / "qrels" / "test.tsv").write_text("q1\td9\t1\n"), "1 document ids are not in corpus.jsonl"),
    (lambda r: (r / "qrels" / "test.tsv").write_text("q7\td1\t1\n"), "1 query ids are not in queries.jsonl"),
    (lambda r: (r / "qrels" / "test.tsv").write_text("q1\td1\n"), r"test.tsv:1: expected 3 \(BEIR\) or 4"),
    (lambda r: (r / "qrels" / "test.tsv").write_text("h\th\th\nq1\td1\thigh\n"), r"test.tsv:2: relevance 'high'"),
    (lambda r: (r / "qrels" / "test.tsv").unlink(), "no qrels for split 'test'"),
])
def test_mistakes_name_the_file_and_line(tmp_path, change, message):
    root = make_beir(tmp_path / "bad")
    change(root)
    with pytest.raises(DataError, match=message):
        load_beir(root)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="data set folder not found"):
        load_beir(tmp_path / "nowhere")
