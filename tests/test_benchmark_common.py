"""benchmarks/_common.py's shared pieces: results kept run by run (optionally with the latest at the top),
SciFact's test split into subsets without train duplicates, and the paired comparison on each subset."""
from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import REPO


@pytest.fixture()
def common(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("_common", None)
    import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    return _common


def test_append_run_keeps_every_run_and_the_latest_at_the_top(common, tmp_path, capsys):
    # a file from before runs were kept, with the table it was written with
    (tmp_path / "bench.json").write_text(json.dumps({"score": 0.5}))
    (tmp_path / "bench.md").write_text("| old | table |\n")
    assert common.append_run("bench", {"score": 0.6, "arguments": {"quick": False}}, "| new |",
                             latest_at_top=True) == 2
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["score"] == 0.6 and saved["table"] == "| new |" and "commit" in saved
    assert [r["score"] for r in saved["runs"]] == [0.5, 0.6]
    assert saved["runs"][0]["table"] == "| old | table |"
    assert common.append_run("bench", {"score": 0.7}, "| newer |", latest_at_top=True) == 3
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["score"] == 0.7 and [r["score"] for r in saved["runs"]] == [0.5, 0.6, 0.7]
    assert "runs" not in saved["runs"][-1]
    md = (tmp_path / "bench.md").read_text()
    assert md.index("| old | table |") < md.index("| new |") < md.index("| newer |")
    common.append_run("bench", {"score": 0.8}, "| plain |")  # without the option: runs only
    assert set(json.loads((tmp_path / "bench.json").read_text())) == {"runs"}


def test_split_test_queries_drops_train_duplicates(common, tmp_path):
    queries = [{"_id": "t1", "text": "Aspirin  lowers risk"}, {"_id": "t2", "text": "a new claim"},
               {"_id": "t3", "text": "another claim"}, {"_id": "r1", "text": "aspirin lowers RISK"},
               {"_id": "r2", "text": "something else"}]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    test_qrels = {"t1": {"d1": 1}, "t2": {"d2": 1}, "t3": {"d3": 1, "d4": 0}}
    train_qrels = {"r1": {"d1": 1}, "r2": {"d2": 1, "d3": 0}}
    subsets = common.split_test_queries(tmp_path, test_qrels, train_qrels)
    assert subsets == {"overall": ["t2", "t3"], "seen_docs": ["t2"], "unseen_docs": ["t3"], "duplicates": ["t1"]}


def test_compare_on_subsets_tests_each_subset_and_skips_empty_ones(common):
    base = {"a": 0.2, "b": 0.4, "c": 0.5}
    other = {"a": 0.3, "b": 0.6, "c": 0.5}
    out = common.compare_on_subsets(base, other, {"overall": ["a", "b", "c"], "seen_docs": ["a", "b"],
                                                  "unseen_docs": [], "duplicates": ["x"]})
    assert set(out) == {"overall", "seen_docs", "unseen_docs"} and out["unseen_docs"] is None
    assert out["overall"]["delta"] == pytest.approx(0.1) and out["overall"]["queries"] == 3
    assert out["seen_docs"]["delta"] == pytest.approx(0.15) and 0 < out["seen_docs"]["p_value"] <= 1


def test_output_refusal_applies_the_savers_rule_before_any_work(common, tmp_path):
    from flagstone._io import MODEL_LAYOUT, atomic_folder

    def refusal(path, overwrite, default=tmp_path / "models" / "own", **how):
        return common.output_refusal([common.Output("--output", path, default, **how)], overwrite)

    mine = tmp_path / "mine"
    assert refusal(mine, False) is None  # not there yet
    mine.mkdir()
    assert refusal(mine, False) is None  # empty
    (mine / "notes.txt").write_text("mine")
    assert "already exists and is not empty; pass --overwrite" in refusal(mine, False)
    # --overwrite replaces only what Flagstone wrote: a folder of the user's own files stays refused
    assert refusal(mine, True).startswith(f"--output: output {mine} was not written by Flagstone")
    # so is the script's own default folder when someone put files there
    assert "was not written by Flagstone" in refusal(mine, False, default=mine)
    legacy = tmp_path / "old-model"
    legacy.mkdir()
    (legacy / "config.json").write_text("{}")
    assert "pass --overwrite" in refusal(legacy, False, legacy=MODEL_LAYOUT)
    assert refusal(legacy, True, legacy=MODEL_LAYOUT) is None  # a model folder from before output markers
    assert "was not written by Flagstone" in refusal(legacy, True)  # the layout is the saver's to name
    written = tmp_path / "written"
    with atomic_folder(written) as staging:
        (staging / "weights.bin").write_bytes(b"0")
    assert "pass --overwrite" in refusal(written, False)
    assert refusal(written, True) is None
    assert refusal(written, False, default=written) is None  # the script's own folder, rerun
    # a single-file output (a training record): refused when it exists, unless --overwrite or the default
    record = tmp_path / "record.json"
    assert refusal(record, False, file=True) is None
    record.write_text("{}")
    assert refusal(record, False, file=True) == f"--output: {record} exists; pass --overwrite to replace it"
    assert refusal(record, True, file=True) is None
    assert refusal(record, False, default=record, file=True) is None
    # several outputs: the first refused one is reported
    assert common.output_refusal([common.Output("--a", tmp_path / "new", tmp_path / "d"),
                                  common.Output("--b", mine, tmp_path / "d")], False).startswith("--b: ")


@pytest.mark.parametrize("script, arguments", [
    ("beacon.py", ["--output"]),
    ("longctx.py", ["train", "--output"]),
    ("longctx_extensible.py", ["--output"]),
    ("inters.py", ["--output-data"]),
])
def test_benchmarks_refuse_a_user_folder_before_any_work_even_with_overwrite(tmp_path, script, arguments):
    import subprocess

    kept = tmp_path / "users-folder"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    for extra, reason in (([], "already exists and is not empty; pass --overwrite"),
                          (["--overwrite"], "was not written by Flagstone")):
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *arguments, str(kept), *extra],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"{arguments[-1]}: output {kept} ") and reason in line
        assert [p.name for p in kept.iterdir()] == ["notes.txt"]
