from __future__ import annotations

import json

import pytest

from flagstone.errors import DataError
from flagstone.evaluation.niah import DEFAULT_NEEDLE, build_haystack
from flagstone.evaluation.qa import (
    exact_match,
    load_hotpotqa,
    normalize_answer,
    support_recall,
    token_f1,
)
from flagstone.rag.chunking import Chunk


def test_normalisation_follows_squad():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear") == "apple pear"


def test_exact_match_and_f1():
    assert exact_match("the Beatles", "Beatles") == 1.0
    assert exact_match("Beatles band", ["Rolling Stones", "Beatles"]) == 0.0
    # 2 of 3 predicted tokens match 2 of 2 gold tokens: P=2/3, R=1
    assert token_f1("John Lennon Jr", "John Lennon") == pytest.approx(0.8)
    assert token_f1("Paris", ["London", "paris"]) == 1.0
    assert token_f1("", "Paris") == 0.0


def test_yes_no_answers_get_no_partial_credit():
    assert token_f1("yes", "no") == 0.0
    assert token_f1("no it is not", "no") == 0.0
    assert token_f1("yes", "Yes") == 1.0


def hotpot_record():
    return {"_id": "q1", "question": "Who?", "answer": "Ada", "type": "bridge",
            "supporting_facts": [["B", 1], ["A", 0], ["Missing", 0]],
            "context": [["A", ["Ada was born.", " She wrote notes."]], ["B", ["Bob met Ada.", " Bob left."]]]}


def test_hotpotqa_spans_point_at_the_supporting_sentences(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps([hotpot_record()]))
    (ex,) = load_hotpotqa(path)
    docs = dict(ex.documents)
    assert docs["A"] == "A\nAda was born. She wrote notes."
    assert [docs[t][s:e] for t, s, e in ex.supporting] == [" Bob left.", "Ada was born."]
    assert ex.answers == ["Ada"] and ex.type == "bridge"


def test_hotpotqa_jsonl_dict_format_and_errors(tmp_path):
    rec = hotpot_record()
    rec["context"] = {"title": ["A", "B"], "sentences": [["Ada was born."], ["Bob met Ada."]]}
    rec["supporting_facts"] = {"title": ["A"], "sent_id": [0]}
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    (ex,) = load_hotpotqa(path)
    assert len(ex.supporting) == 1
    path.write_text(json.dumps({"question": "no answer or context"}) + "\n")
    with pytest.raises(DataError, match="record 1"):
        load_hotpotqa(path)


def test_support_recall_needs_half_a_sentence_covered():
    supporting = [("A", 0, 100), ("B", 0, 10)]
    half = Chunk("A#0", "A", 0, 0, "x", 50, 200)
    less = Chunk("A#0", "A", 0, 0, "x", 60, 200)
    other_doc = Chunk("C#0", "C", 2, 0, "x", 0, 500)
    assert support_recall(supporting, [half]) == 0.5
    assert support_recall(supporting, [less, other_doc]) == 0.0
    assert support_recall([], [half]) is None


def test_haystack_length_depth_and_needle():
    essays = ["One sentence here. Another sentence there. " * 40, "Second essay. With more words. " * 40]
    count = lambda text: len(text.split())
    for depth in (0.0, 0.5, 1.0):
        hay = build_haystack(essays, 300, depth, count)
        assert DEFAULT_NEEDLE.fact in hay
        assert 280 <= count(hay) <= 300
        at = hay.index(DEFAULT_NEEDLE.fact) / len(hay)
        assert abs(at - depth) < 0.1
    assert DEFAULT_NEEDLE.is_found("It is amber falcon 4821.")
    assert not DEFAULT_NEEDLE.is_found("I do not know")
    with pytest.raises(ValueError):
        build_haystack(essays, 300, 1.5, count)
