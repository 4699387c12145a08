"""`flagstone eval --depth` and the suite's --output-dir resume / --overwrite."""
from __future__ import annotations

import json

from flagstone.cli import build_parser, main
from flagstone.evaluation import DEFAULT_EVAL_DEPTH
from tests.evaluation.test_beir import make_beir


def test_depth_defaults_to_the_documented_constant_and_is_recorded(tmp_path, capsys):
    mini = make_beir(tmp_path / "mini")
    assert build_parser().parse_args(["eval", str(mini)]).depth == DEFAULT_EVAL_DEPTH
    out = tmp_path / "m.json"
    assert main(["eval", str(mini), "--modes", "bm25", "--k", "10", "--depth", "20", "--output", str(out),
                 "--quiet"]) == 0
    assert "depth 20" in capsys.readouterr().out
    assert json.loads(out.read_text())["settings"]["depth"] == 20
    assert main(["eval", str(mini), "--modes", "bm25", "--k", "10", "1000", "--quiet"]) == 2
    assert "deeper than the retrieval depth 100" in capsys.readouterr().err
    assert main(["eval", str(mini), "--modes", "bm25", "--overwrite", "--quiet"]) == 2
    assert "--overwrite applies to a suite" in capsys.readouterr().err


def _task_file(path, name, gold):
    rows = [("A man plays a guitar.", "A person plays guitar."), ("A man plays a guitar.", "Stocks fell."),
            ("Dogs run in a park.", "Dogs are running."), ("Dogs run in a park.", "The plane landed.")]
    (path.parent / f"{name}.csv").write_text("s1,s2,gold\n" + "".join(f"{a},{b},{g}\n" for (a, b), g in
                                                                     zip(rows, gold)))
    path.write_text(json.dumps({"name": name, "type": "sts", "files": {"test": f"{name}.csv"},
                                "columns": {"sentence1": "s1", "sentence2": "s2", "score": "gold"}}))
    return str(path)


def test_suite_keeps_finished_tasks_when_one_fails_and_resumes(tmp_path, capsys, monkeypatch):
    from flagstone.evaluation import suite
    from flagstone.errors import DataError

    good = _task_file(tmp_path / "good.json", "Good", [4.8, 0.1, 4.1, 0.3])
    bad = _task_file(tmp_path / "bad.json", "Bad", [4.8, 0.1, 4.1, 0.3])
    out = tmp_path / "out"
    args = ["eval", "--task-file", good, "--task-file", bad, "--output-dir", str(out), "--cache-dir",
            str(tmp_path / "cache"), "--quiet"]
    real_run_task = suite.run_task

    def fails_on_bad(task, *a, **kw):  # a failure during the run (bad files are refused before any task starts)
        if task.name == "Bad":
            raise DataError("Bad.csv: the disk went away")
        return real_run_task(task, *a, **kw)

    monkeypatch.setattr(suite, "run_task", fails_on_bad)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the disk went away" in err
    assert f"task Bad failed; the 1 finished task(s) are saved in {out}; rerun the same command" in err
    assert (out / "Good.json").is_file() and json.loads((out / "summary.json").read_text())["failed"]["task"] == "Bad"

    monkeypatch.setattr(suite, "run_task", real_run_task)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "Good" in err and "(saved earlier)" in err
    assert main([*args, "--depth", "50"]) == 2
    assert "depth: 100 in the file, 50 now" in capsys.readouterr().err
    assert main([*args, "--depth", "50", "--overwrite"]) == 0
    assert "(saved earlier)" not in capsys.readouterr().err
    assert json.loads((out / "Good.json").read_text())["flagstone"]["settings"]["depth"] == 50
