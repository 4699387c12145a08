"""rerank_scifact.py's options that come before any model work: a carved split is checked first."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_a_split_folder_that_is_no_carve_of_the_data_is_refused_before_any_work(monkeypatch, tmp_path, capsys):
    from flagstone.evaluation.splits import carve_split
    from tests.evaluation.test_splits import make_beir

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import rerank_scifact

    data = make_beir(tmp_path / "data")
    other = make_beir(tmp_path / "other", train_queries=12)  # more train queries than data has
    carve_split(other, tmp_path / "carved", seed=0, count=3)
    monkeypatch.setattr(sys, "argv", ["rerank_scifact.py", "--data", str(data), "--split-folder",
                                      str(tmp_path / "carved"), "--train-only"])
    assert rerank_scifact.main() == 2
    assert "--split-folder" in capsys.readouterr().err


def carved_without_first_stage(monkeypatch, tmp_path, before: str):
    """rerank_scifact with a Retriever that fails the test if built, and a tiny BEIR folder with a carved split
    at tmp_path / "carved"."""
    from flagstone.evaluation.splits import carve_split
    from tests.evaluation.test_splits import make_beir

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import rerank_scifact

    def no_first_stage(*args, **kwargs):
        raise AssertionError(f"the first stage was built before {before}")

    monkeypatch.setattr(rerank_scifact, "Retriever", no_first_stage)
    data = make_beir(tmp_path / "data")
    carve_split(data, tmp_path / "carved", seed=0, count=3)
    return rerank_scifact, data


def test_an_existing_output_model_the_user_named_is_refused_before_the_first_stage(monkeypatch, tmp_path, capsys):
    rerank_scifact, data = carved_without_first_stage(monkeypatch, tmp_path, "the output folder was checked")
    kept = tmp_path / "my-cross-encoder"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    monkeypatch.setattr(sys, "argv", ["rerank_scifact.py", "--data", str(data), "--split-folder",
                                      str(tmp_path / "carved"), "--train-only", "--output-model", str(kept)])
    assert rerank_scifact.main() == 2
    assert capsys.readouterr().err.strip().startswith(f"--output-model: output {kept} already exists and is not empty")
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
    # with --reuse-cross-encoder a folder that holds no matching model is still not trained over
    monkeypatch.setattr(sys, "argv", sys.argv + ["--reuse-cross-encoder"])
    assert rerank_scifact.main() == 2
    assert "pass --overwrite" in capsys.readouterr().err
    # and --overwrite does not make a folder of the user's own files the script's to replace
    monkeypatch.setattr(sys, "argv", sys.argv + ["--overwrite"])
    assert rerank_scifact.main() == 2
    assert "was not written by Flagstone" in capsys.readouterr().err
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("flag, value", [("--pseudo-queries", "-1"), ("--pseudo-keep-top", "0"),
                                         ("--distill-weight", "0"), ("--distill-weight", "1.5"),
                                         ("--teacher-temperature", "0"), ("--distill-from", "no-such-teacher")])
def test_a_negative_pseudo_query_count_is_refused_before_any_work(monkeypatch, tmp_path, capsys, flag, value):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import rerank_scifact

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the options were checked")

    monkeypatch.setattr(rerank_scifact, "load_scifact_with_train", no_data)
    monkeypatch.setattr(sys, "argv", ["rerank_scifact.py", "--data", str(tmp_path), flag, value])
    assert rerank_scifact.main() == 2
    assert flag in capsys.readouterr().err


def test_a_fully_cached_run_takes_the_cross_encoder_timing_of_the_newest_matching_run(monkeypatch, tmp_path):
    import json

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import rerank_scifact

    def run(model: str, ms: float | None, dtype: str = "float32", finished: str = "t") -> dict:
        return {"finished": finished, "ms_per_query": {"cross_encoder_top100": ms},
                "settings": {"cross_encoder": {"model": model, "max_length": 192, "inference_dtype": dtype}}}

    monkeypatch.setattr(rerank_scifact, "RESULTS", tmp_path)
    assert rerank_scifact.previous_cross_ms(Path("m"), 100, 192, "float32") is None  # no results file yet
    runs = [run("m", 3000.0, finished="first"), run("other", 10.0), run("m", 2500.0, finished="second"),
            run("m", 99.0, dtype="bfloat16"), run("m", None)]
    (tmp_path / "rerank_scifact.json").write_text(json.dumps({"runs": runs}))
    ms, source = rerank_scifact.previous_cross_ms(Path("m"), 100, 192, "float32")
    assert ms == 2500.0 and "run 3" in source and "second" in source
    assert rerank_scifact.previous_cross_ms(Path("m"), 30, 192, "float32") is None  # another depth
    assert rerank_scifact.previous_cross_ms(Path("m"), 100, 256, "float32") is None  # another length


@pytest.mark.parametrize("problem", ["absent", "no-record"])
def test_mining_from_the_best_first_stage_needs_tuning_copies_that_held_out_the_dev_slice(monkeypatch, tmp_path,
                                                                                         capsys, problem):
    rerank_scifact, data = carved_without_first_stage(monkeypatch, tmp_path, "the mining models were checked")
    results = tmp_path / "results"  # the fusion weights best_pipeline.py would have chosen
    results.mkdir()
    (results / "best_pipeline.json").write_text(json.dumps({"weights": {"fusion": {"dense": 0.6, "bm25": 0.4}}}))
    monkeypatch.setattr(rerank_scifact, "RESULTS", results)
    dense, m3 = tmp_path / "dense-copy", tmp_path / "m3-copy"
    if problem == "no-record":  # model folders, but nothing says the dense one never trained on the carved queries
        for folder, files in ((dense, ["config.json"]), (m3, ["config.json", "sparse_linear.pt", "colbert_linear.pt"])):
            folder.mkdir()
            for name in files:
                (folder / name).write_text("{}")
    monkeypatch.setattr(sys, "argv", ["rerank_scifact.py", "--data", str(data), "--split-folder",
                                      str(tmp_path / "carved"), "--train-only", "--negatives-from",
                                      "best-first-stage", "--mining-dense-model", str(dense), "--mining-m3-model",
                                      str(m3),
                                      "--output-model", str(tmp_path / "out")])
    assert rerank_scifact.main() == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(dense) in err and "--without-dev-slice" in err
    assert ("no trained model here" in err) == (problem == "absent")
    assert not (tmp_path / "out").exists()
