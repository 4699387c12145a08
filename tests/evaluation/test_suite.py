from __future__ import annotations

import json

import numpy as np
import pytest

from flagstone.errors import DataError
from flagstone.evaluation import scoring
from flagstone.evaluation.suite import run_suite, run_task
from flagstone.evaluation.tasks import (
    REGISTRY,
    SUITES,
    TaskSpec,
    load_task_file,
    resolve_tasks,
)

STS_ROWS = [
    ("A man is playing a guitar.", "A person plays the guitar.", 4.6),
    ("A man is playing a guitar.", "A woman is slicing onions.", 0.2),
    ("Two dogs run in a field.", "Dogs are running on grass.", 4.0),
    ("Two dogs run in a field.", "The stock market fell today.", 0.0),
    ("A child reads a book.", "A kid is reading.", 4.2),
    ("A child reads a book.", "A plane lands at the airport.", 0.4),
]
INTENTS = {
    "card": ["my card was stolen", "I lost my card", "block my card please", "card missing since yesterday",
             "where is my new card", "card has not arrived"],
    "transfer": ["send money to my friend", "how do I transfer funds", "transfer failed", "wire money abroad",
                 "make a bank transfer", "my transfer is pending"],
    "balance": ["what is my balance", "show my account balance", "how much money do I have", "check balance",
                "balance is wrong", "view current balance"],
}


@pytest.fixture()
def data(tmp_path):
    (tmp_path / "sts.csv").write_text("".join(f'"{a}","{b}",{s}\n' for a, b, s in STS_ROWS))
    (tmp_path / "sts2.csv").write_text("".join(f'"{b.upper()}","{b.upper()}",0\n' for _, b, _ in STS_ROWS))
    pair_rows = ["label\tleft\tright"] + [f"{int(s > 2.5)}\t{a}\t{b}" for a, b, s in STS_ROWS]
    (tmp_path / "pairs.tsv").write_text("\r\n".join(pair_rows) + "\r\n")  # MSRP ships with CRLF
    rows = [(t, label) for label, texts in INTENTS.items() for t in texts]
    (tmp_path / "train.csv").write_text("text,intent\n" + "".join(f"{t},{lab}\n" for t, lab in rows[::2]))
    (tmp_path / "test.csv").write_text("text,intent\n" + "".join(f"{t},{lab}\n" for t, lab in rows[1::2]))
    (tmp_path / "cluster.jsonl").write_text("".join(json.dumps({"sentence": t, "topic": lab}) + "\n"
                                                    for t, lab in rows))
    return tmp_path


def _tasks(root):
    return [
        TaskSpec("ToySTS", "sts", {"test": str(root / "sts.csv")}, {"sentence1": 0, "sentence2": 1, "score": 2},
                 header=False),
        TaskSpec("ToyPairs", "pair_classification", {"test": str(root / "pairs.tsv")},
                 {"sentence1": "left", "sentence2": "right", "label": "label"}),
        TaskSpec("ToyIntent", "classification", {"train": str(root / "train.csv"), "test": str(root / "test.csv")},
                 {"text": "text", "label": "intent"}),
        TaskSpec("ToyClusters", "clustering", {"test": str(root / "cluster.jsonl")},
                 {"text": "sentence", "label": "topic"}),
    ]


def test_suite_scores_equal_the_scoring_functions_on_the_same_embeddings(minilm, data, tmp_path):
    report = run_suite(_tasks(data), minilm, show_progress=False)
    enc = lambda texts: minilm.encode(list(texts), show_progress=False).dense  # noqa: E731
    sts = scoring.sts_scores(enc(r[0] for r in STS_ROWS), enc(r[1] for r in STS_ROWS), [r[2] for r in STS_ROWS])
    by_name = {r.task.name: r for r in report.results}
    assert by_name["ToySTS"].main_score == pytest.approx(sts["cosine_spearman"], abs=1e-6)
    assert by_name["ToySTS"].scores["cosine_pearson"] > 0.9  # a real model separates these obvious pairs
    pairs = scoring.pair_classification_scores(enc(r[0] for r in STS_ROWS), enc(r[1] for r in STS_ROWS),
                                               [int(r[2] > 2.5) for r in STS_ROWS])
    assert by_name["ToyPairs"].main_score == pytest.approx(pairs["max_ap"], abs=1e-6)
    assert by_name["ToyIntent"].main_score > 0.6 and by_name["ToyIntent"].n_examples == 9
    assert 0 < by_name["ToyClusters"].main_score <= 1

    written = report.save(tmp_path / "out")
    mteb_file = json.loads((tmp_path / "out" / "ToySTS.json").read_text())
    entry = mteb_file["scores"]["test"][0]
    assert mteb_file["task_name"] == "ToySTS" and entry["hf_subset"] == "default"
    assert entry["main_score"] == pytest.approx(sts["cosine_spearman"], abs=1e-6)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["averages"]["all"] == pytest.approx(np.mean([r.main_score for r in report.results]))
    assert "| ToyIntent | classification | accuracy |" in report.table()
    assert len(written) == 6


def test_cross_lingual_sts_reads_sentence2_from_the_aligned_file(minilm, data):
    task = TaskSpec("ToyX", "sts", {"test": str(data / "sts.csv"), "test_sentence2": str(data / "sts2.csv")},
                    {"sentence1": 0, "sentence2": 1, "score": 2}, header=False)
    result = run_task(task, minilm, show_progress=False)
    enc = lambda texts: minilm.encode(list(texts), show_progress=False).dense  # noqa: E731
    expected = scoring.sts_scores(enc(r[0] for r in STS_ROWS), enc(r[1].upper() for r in STS_ROWS),
                                  [r[2] for r in STS_ROWS])
    assert result.main_score == pytest.approx(expected["cosine_spearman"], abs=1e-6)
    (data / "short.csv").write_text('"a","b",1\n')
    bad = TaskSpec("ToyX", "sts", {"test": str(data / "sts.csv"), "test_sentence2": str(data / "short.csv")},
                   {"sentence1": 0, "sentence2": 1, "score": 2}, header=False)
    with pytest.raises(DataError, match="line-aligned"):
        run_task(bad, minilm, show_progress=False)


@pytest.mark.parametrize("content, columns, message", [
    ("text,intent\nhello,a\n", {"text": "text", "label": "label"}, "no column 'label'"),
    ("text,intent\nhello\n", {"text": "text", "label": "intent"}, r"train.csv:2: row has 1 columns"),
    ("text,intent\n,a\n", {"text": "text", "label": "intent"}, r"train.csv:2: empty 'text'"),
    ("", {"text": "text", "label": "intent"}, "empty"),
])
def test_bad_tables_are_reported_with_file_and_line(minilm, tmp_path, content, columns, message):
    (tmp_path / "train.csv").write_text(content)
    (tmp_path / "test.csv").write_text("text,intent\nhello,a\n")
    task = TaskSpec("Bad", "classification", {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")},
                    columns)
    with pytest.raises(DataError, match=message):
        run_task(task, minilm, show_progress=False)


def test_sts_scores_outside_the_range_and_non_numbers_are_rejected(minilm, tmp_path):
    spec = {"sentence1": 0, "sentence2": 1, "score": 2}
    (tmp_path / "a.csv").write_text('"x","y",7\n"u","v",1\n')
    with pytest.raises(DataError, match="outside the declared range"):
        run_task(TaskSpec("S", "sts", {"test": str(tmp_path / "a.csv")}, spec, header=False), minilm,
                 show_progress=False)
    (tmp_path / "b.csv").write_text('"x","y",high\n')
    with pytest.raises(DataError, match="'high', not a number"):
        run_task(TaskSpec("S", "sts", {"test": str(tmp_path / "b.csv")}, spec, header=False), minilm,
                 show_progress=False)


def test_task_files_and_registry(tmp_path, data):
    spec = {"name": "Mine", "type": "sts", "files": {"test": "sts.csv"}, "header": False,
            "columns": {"sentence1": 0, "sentence2": 1, "score": 2}, "score_range": [0, 5]}
    (data / "task.json").write_text(json.dumps([spec]))
    [task] = load_task_file(data / "task.json")
    assert task.path("test", None) == data / "sts.csv"  # relative to the task file
    (data / "bad.json").write_text(json.dumps({**spec, "colums": {}}))
    with pytest.raises(DataError, match="unknown field"):
        load_task_file(data / "bad.json")
    (data / "bad2.json").write_text(json.dumps({**spec, "type": "summarization"}))
    with pytest.raises(DataError, match="not one of"):
        load_task_file(data / "bad2.json")
    (data / "bad3.json").write_text(json.dumps({**spec, "columns": {"sentence1": 0}}))
    with pytest.raises(DataError, match="columns needs sentence2, score"):
        load_task_file(data / "bad3.json")
    assert [t.name for t in resolve_tasks(["MSRP"], suite="quick")][:2] == ["STSBenchmark", "MSRP"]
    with pytest.raises(DataError, match="did you mean STSBenchmark"):
        resolve_tasks(["stsbenchmark"])
    with pytest.raises(DataError, match="unknown suite"):
        resolve_tasks(suite="everything")
    assert set(SUITES["all"]) == set(REGISTRY)


@pytest.mark.slow
def test_stsb_english_matches_the_published_minilm_score(minilm, shared_data):
    result = run_task(REGISTRY["STSBenchmark"], minilm, data_root=shared_data, show_progress=False)
    assert result.n_examples == 1379
    assert result.main_score == pytest.approx(0.820, abs=0.005)  # MTEB: 82.03
