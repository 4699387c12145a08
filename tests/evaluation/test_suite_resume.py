"""The suite writes each task's result as it finishes and resumes from them; the retrieval depth is one
documented default, settable and recorded."""
from __future__ import annotations

import json

import pytest

from flagstone.errors import DataError
from flagstone.evaluation import DEFAULT_EVAL_DEPTH, suite
from flagstone.evaluation.beir import load_beir
from flagstone.evaluation.retrieval import evaluate_retrieval
from flagstone.evaluation.suite import run_suite
from flagstone.evaluation.tasks import TaskSpec
from flagstone.retrieval.retriever import Retriever
from tests.evaluation.test_beir import make_beir

STS = [("A man plays a guitar.", "A person plays guitar.", 4.8), ("A man plays a guitar.", "Stocks fell.", 0.1),
       ("Dogs run in a park.", "Dogs are running.", 4.1), ("Dogs run in a park.", "The plane landed.", 0.3)]
COLUMNS = {"sentence1": 0, "sentence2": 1, "score": 2}


def _sts(path, rows=STS):
    path.write_text("".join(f'"{a}","{b}",{s}\n' for a, b, s in rows))
    return path


def _tasks(tmp_path):
    first = TaskSpec("First", "sts", {"test": str(_sts(tmp_path / "first.csv"))}, COLUMNS, header=False)
    # gold scores outside 0..5: the second task raises a DataError until its file is fixed
    bad = [(a, b, 9.0) for a, b, _ in STS]
    second = TaskSpec("Second", "sts", {"test": str(_sts(tmp_path / "second.csv", bad))}, COLUMNS, header=False)
    return [first, second]


@pytest.fixture
def counted(monkeypatch):
    """Count the tasks the suite computes (rather than reads back)."""
    calls: list[str] = []
    real = suite.run_task

    def run_task(task, *args, **kwargs):
        calls.append(task.name)
        return real(task, *args, **kwargs)

    monkeypatch.setattr(suite, "run_task", run_task)
    return calls


def test_a_failing_task_keeps_the_finished_ones_and_a_rerun_resumes(minilm, tmp_path, counted):
    out = tmp_path / "out"
    tasks = _tasks(tmp_path)
    with pytest.raises(DataError, match="outside the declared range") as caught:
        run_suite(tasks, minilm, output_dir=out, show_progress=False)
    assert counted == ["First", "Second"]
    assert "suite task Second failed" in " ".join(caught.value.__notes__)
    first = json.loads((out / "First.json").read_text())
    assert first["flagstone"]["settings"]["model"] == minilm.name
    assert first["flagstone"]["settings"]["depth"] == DEFAULT_EVAL_DEPTH
    assert not (out / "Second.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["tasks"]) == ["First"] and summary["failed"]["task"] == "Second"
    assert "DataError" in summary["failed"]["error"]
    assert "incomplete: task Second failed" in (out / "table.md").read_text()

    _sts(tmp_path / "second.csv")  # fix the data and run again into the same folder
    counted.clear()
    seen = []
    report = run_suite(tasks, minilm, output_dir=out, show_progress=False, on_result=seen.append)
    assert counted == ["Second"]  # First was read back, not recomputed
    assert [(r.task.name, r.resumed) for r in seen] == [("First", True), ("Second", False)]
    assert report.results[0].main_score == pytest.approx(first["scores"]["test"][0]["main_score"])
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["tasks"]) == ["First", "Second"] and "failed" not in summary

    counted.clear()
    run_suite(tasks, minilm, output_dir=out, show_progress=False)
    assert counted == []  # everything saved: nothing to compute


def test_saved_results_from_other_settings_are_refused_not_mixed(minilm, tmp_path, counted):
    out = tmp_path / "out"
    tasks = _tasks(tmp_path)[:1]
    run_suite(tasks, minilm, output_dir=out, show_progress=False)
    with pytest.raises(DataError, match=r"depth: 100 in the file, 1000 now.*--overwrite"):
        run_suite(tasks, minilm, output_dir=out, depth=1000, show_progress=False)
    with pytest.raises(DataError, match="retrieval_mode: 'dense' in the file, 'bm25' now"):
        run_suite(tasks, minilm, output_dir=out, retrieval_mode="bm25", show_progress=False)
    changed = [TaskSpec("First", "sts", {"test": str(tmp_path / "first.csv")}, COLUMNS, header=False,
                        score_range=(0.0, 10.0))]
    with pytest.raises(DataError, match="task.score_range"):
        run_suite(changed, minilm, output_dir=out, show_progress=False)
    assert counted == ["First"]
    report = run_suite(tasks, minilm, output_dir=out, depth=1000, overwrite=True, show_progress=False)
    assert counted == ["First", "First"] and not report.results[0].resumed
    assert json.loads((out / "summary.json").read_text())["settings"]["depth"] == 1000

    (out / "First.json").write_text("{}")
    with pytest.raises(DataError, match="First.json is not a result file"):
        run_suite(tasks, minilm, output_dir=out, depth=1000, show_progress=False)
    (out / "summary.json").write_text('{"model": "x"}')  # e.g. from an older version, without settings
    with pytest.raises(DataError, match="summary.json is not the summary"):
        run_suite(tasks, minilm, output_dir=out, depth=1000, show_progress=False)


def test_task_names_must_be_unique(minilm, tmp_path):
    first = _tasks(tmp_path)[0]
    with pytest.raises(DataError, match="unique in a suite.*First"):
        run_suite([first, first], minilm, show_progress=False)


def test_retrieval_tasks_score_the_given_depth_and_record_it(minilm, tmp_path):
    task = TaskSpec("Mini", "retrieval", {"beir": str(make_beir(tmp_path / "mini"))})
    report = run_suite([task], minilm, retrieval_mode="bm25", depth=20, show_progress=False)
    scores = report.results[0].scores
    assert scores["retrieval_depth"] == 20 and report.settings["depth"] == 20
    assert "ndcg_at_20" in scores and "ndcg_at_100" not in scores  # no cut-off deeper than the depth
    assert scores["ndcg_at_10"] == 1.0
    with pytest.raises(ValueError, match="at least 10"):
        run_suite([task], minilm, retrieval_mode="bm25", depth=5, show_progress=False)


def test_evaluate_retrieval_uses_one_default_depth_and_records_it(tmp_path):
    data = load_beir(make_beir(tmp_path / "mini"))
    report = evaluate_retrieval(Retriever(None), data, modes=["bm25"], k_values=(1, 10))
    assert report.settings["depth"] == DEFAULT_EVAL_DEPTH == 100
    assert json.loads(json.dumps(report.to_dict()))["settings"]["depth"] == 100
    shallow = evaluate_retrieval(Retriever(None), data, modes=["bm25"], k_values=(1,), depth=1)
    assert all(len(docs) == 1 for docs in shallow.results["bm25"].run.values())
    with pytest.raises(ValueError, match=r"cut-off 1000 is deeper than the retrieval depth 100.*--depth 1000"):
        evaluate_retrieval(Retriever(None), data, modes=["bm25"], k_values=(10, 1000))
