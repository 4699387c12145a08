from __future__ import annotations

import json

import pytest

from flagstone.errors import DataError
from flagstone.training.data import (
    TrainingExample,
    examples_from_qrels,
    load_examples,
    save_examples,
)


def test_round_trip_keeps_every_field(tmp_path):
    rows = [TrainingExample("q1", ["p"], ["n1", "n2"], [1.0], [0.5, 0.25], "Represent: "),
            TrainingExample("q2", ["p2", "p3"])]
    save_examples(rows, tmp_path / "train.jsonl")
    assert load_examples(tmp_path / "train.jsonl") == rows


def test_reads_flagembedding_rows_with_a_single_string_positive(tmp_path):
    path = tmp_path / "fe.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": "only positive", "neg": ["n"]}) + "\n")
    [ex] = load_examples(path)
    assert ex.pos == ["only positive"] and ex.neg == ["n"] and ex.pos_scores is None


@pytest.mark.parametrize("row, message", [
    ({"pos": ["p"]}, "'query' must be a non-empty string"),
    ({"query": "q"}, "missing 'pos'"),
    ({"query": "q", "pos": []}, "'pos' is empty"),
    ({"query": "q", "pos": ["p"], "neg": [3]}, "'neg' must be a list of strings"),
    ({"query": "q", "pos": ["p"], "pos_scores": [1, 2]}, "'pos_scores' has 2 scores for 1 texts"),
    ({"query": "q", "pos": ["p"], "pos_scores": ["x"]}, "'pos_scores' must be a list of numbers"),
    ({"query": "q", "pos": ["p"], "prompt": 5}, "'prompt' must be a string"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"query": "fine", "pos": ["p"]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: {message}"):
        load_examples(path)


def test_broken_json_and_empty_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"query": "q", "pos": ["p"]}\n{"query": \n')
    with pytest.raises(DataError, match="broken.jsonl:2: malformed JSON"):
        load_examples(path)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no training examples"):
        load_examples(tmp_path / "empty.jsonl")


def test_examples_from_qrels_uses_relevant_documents_only():
    ex = examples_from_qrels({"q1": "query one", "q2": "query two"}, {"q1": {"d1": 1, "d2": 0}, "q2": {"dx": 1}},
                             {"d1": "doc one", "d2": "doc two"})
    assert ex == [TrainingExample("query one", ["doc one"])]


def test_empty_passages_load_with_one_warning(tmp_path):
    from flagstone.errors import EmptyDocumentsWarning

    path = tmp_path / "mined.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": [""], "neg": ["a", " "]}) + "\n"
                    + json.dumps({"query": "r", "pos": ["p"], "neg": ["b"]}) + "\n")
    with pytest.warns(EmptyDocumentsWarning, match=r"2 passage\(s\) without text") as caught:
        examples = load_examples(path)
    assert len(caught) == 1 and examples[0].pos == [""] and examples[0].neg == ["a", " "]
