"""Task data is read and checked before any encoding, and a header row is taken only when there is one."""
from __future__ import annotations

import json

import numpy as np
import pytest

from flagstone.errors import DataError
from flagstone.evaluation.suite import check_task_data, run_task
from flagstone.evaluation.tasks import TaskSpec, load_task_file
from tests.evaluation.test_beir import make_beir

NUMBERED = {"sentence1": 0, "sentence2": 1, "score": 2}
ROWS = "A cat sits.,A cat is sitting.,4.5\nA man runs.,A dog barks.,0.5\nIt rains.,Rain falls.,3.8\n"


class _Vectors:
    def __init__(self, dense: np.ndarray) -> None:
        self.dense = dense


class HashEmbedder:
    """Stands in for a model: a fixed pseudo-random vector per text, and a count of encode calls."""

    name = "hash"

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, is_query: bool = False, show_progress: bool = False) -> _Vectors:
        self.calls += 1
        return _Vectors(np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(8) for t in texts]))


def _sts(path, **kw) -> TaskSpec:
    return TaskSpec("S", "sts", {"test": str(path)}, NUMBERED, **kw)


def test_numbered_columns_keep_the_first_row_when_it_is_data(tmp_path):
    (tmp_path / "s.csv").write_text(ROWS)
    result = run_task(_sts(tmp_path / "s.csv"), HashEmbedder(), show_progress=False)
    assert result.n_examples == 3  # before: the first pair was taken as a header and lost


def test_numbered_columns_skip_a_header_row(tmp_path):
    (tmp_path / "s.csv").write_text("s1,s2,score\n" + ROWS)
    assert run_task(_sts(tmp_path / "s.csv"), HashEmbedder(), show_progress=False).n_examples == 3


def test_an_explicit_header_setting_wins(tmp_path):
    (tmp_path / "s.csv").write_text(ROWS)
    assert run_task(_sts(tmp_path / "s.csv", header=True), HashEmbedder(), show_progress=False).n_examples == 2
    (tmp_path / "h.csv").write_text("s1,s2,score\n" + ROWS)
    with pytest.raises(DataError, match="'score', not a number"):
        run_task(_sts(tmp_path / "h.csv", header=False), HashEmbedder(), show_progress=False)


def test_pair_labels_detect_the_header_too(tmp_path):
    (tmp_path / "p.tsv").write_text("1\tA cat.\tA cat!\n0\tA dog.\tRain.\n")
    task = TaskSpec("P", "pair_classification", {"test": str(tmp_path / "p.tsv")},
                    {"label": 0, "sentence1": 1, "sentence2": 2})
    assert run_task(task, HashEmbedder(), show_progress=False).n_examples == 2


def test_a_task_file_with_numbered_columns_keeps_its_first_row(tmp_path):
    (tmp_path / "s.csv").write_text(ROWS)
    (tmp_path / "task.json").write_text(json.dumps({"name": "Mine", "type": "sts", "files": {"test": "s.csv"},
                                                    "columns": NUMBERED}))
    [task] = load_task_file(tmp_path / "task.json")
    assert task.header is None
    assert run_task(task, HashEmbedder(), show_progress=False).n_examples == 3


@pytest.mark.parametrize("kind", ["classification", "clustering"])
def test_numbered_text_tables_must_say_whether_they_have_a_header(tmp_path, kind):
    files = {"train": "a.csv", "test": "a.csv"}
    with pytest.raises(DataError, match='"header": true or false'):
        TaskSpec("C", kind, files, {"text": 0, "label": 1})
    TaskSpec("C", kind, files, {"text": 0, "label": 1}, header=False)  # explicit: fine


def test_header_must_be_a_boolean():
    with pytest.raises(DataError, match="header must be true or false"):
        TaskSpec.from_dict({"name": "S", "type": "sts", "files": {"test": "a.csv"}, "columns": NUMBERED,
                            "header": "yes"})


@pytest.mark.parametrize("rows, message", [
    ("a,b,4\nc,d,high\n", "'score' of data row 2 is 'high', not a number"),
    ("a,b,4\nc,d,7.5\n", r"outside the declared range 0.0..5.0 \(data row 2: 7.5\)"),
])
def test_gold_scores_are_checked_before_anything_is_encoded(tmp_path, rows, message):
    (tmp_path / "s.csv").write_text(rows)
    task = _sts(tmp_path / "s.csv", header=False)
    with pytest.raises(DataError, match=message):
        check_task_data(task)
    embedder = HashEmbedder()
    with pytest.raises(DataError, match=message):
        run_task(task, embedder, show_progress=False)
    assert embedder.calls == 0


def test_check_task_data_reads_tables_and_looks_for_beir_files(tmp_path):
    (tmp_path / "c.csv").write_text("text,label\nhello,greet\n,bye\n")
    with pytest.raises(DataError, match=r"c.csv:3: empty 'text'"):
        check_task_data(TaskSpec("C", "clustering", {"test": str(tmp_path / "c.csv")},
                                 {"text": "text", "label": "label"}))
    beir = make_beir(tmp_path / "beir")
    check_task_data(TaskSpec("R", "retrieval", {"beir": str(beir)}))
    with pytest.raises(DataError, match="no qrels for split 'dev'"):
        check_task_data(TaskSpec("R", "retrieval", {"beir": str(beir)}, split="dev"))
