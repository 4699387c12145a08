"""The tuning grid's report (benchmarks/tune_training.py report): every configuration of every carved-split run
is kept and ranked, runs on another split are left out, and train_scifact.json keeps its other entries."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def tune(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common
    import tune_training

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    monkeypatch.setattr(tune_training, "RESULTS", tmp_path)
    return tune_training, tmp_path


def split(hash_: str) -> dict:
    return {"folder": "dev", "seed": 0, "rule": "sha256", "carved": "dev", "files_sha256": {"qrels/dev.tsv": hash_},
            "splits": {"dev": {"queries": 100}, "train": {"queries": 709}}}


def run(split_: dict | None, rows: list[tuple[float, float, int, int, float]]) -> dict:
    return {"split": split_, "finished": "2026-12-04T10:00:00+00:00", "commit": "abc", "base_ndcg@10": 0.65,
            "bm25_ndcg@10": 0.70,
            "rows": [{"learning_rate": lr, "temperature": t, "group_size": g, "epoch": e, "dense_ndcg@10": s}
                     for lr, t, g, e, s in rows]}


def test_report_keeps_every_configuration_of_the_newest_split(tune, capsys):
    module, results = tune
    runs = [run(None, [(3e-5, 0.02, 4, 1, 0.99)]),                      # held out by split_queries: not the grid
            run(split("old"), [(1e-4, 0.05, 4, 1, 0.98)]),              # another carved split: not mixed in
            run(split("new"), [(1e-4, 0.05, 4, 1, 0.75), (1e-4, 0.05, 4, 2, 0.81)]),
            run(split("new"), [(2e-4, 0.05, 8, 1, 0.79), (2e-4, 0.05, 8, 2, 0.77)])]
    (results / "tune_training_dense.json").write_text(json.dumps({"runs": runs}))
    (results / "train_scifact.json").write_text(json.dumps({"subsets": {"kept": True}}))
    assert module.grid_report() == 0
    grid = json.loads((results / "tune_training_grid.json").read_text())
    assert grid["configurations"] == 4
    assert [r["dense_ndcg@10"] for r in grid["rows"]] == [0.81, 0.79, 0.77, 0.75]
    assert grid["best"]["epoch"] == 2 and grid["best"]["negatives"] == 3
    assert grid["rows"][1]["negatives"] == 7
    saved = json.loads((results / "train_scifact.json").read_text())
    assert saved["subsets"] == {"kept": True} and saved["grid"] == grid
    assert "| 0.0001 | 0.05 | 3 | 0 | - | 2 | bfloat16 | 0.8100 |" in (results / "tune_training_grid.md").read_text()


def test_report_without_a_carved_run_is_a_user_mistake(tune, capsys):
    module, results = tune
    (results / "tune_training_dense.json").write_text(json.dumps({"runs": [run(None, [(1e-4, 0.05, 4, 1, 0.7)])]}))
    assert module.grid_report() == 2
    assert "--split-folder" in capsys.readouterr().err
    assert not (results / "tune_training_grid.json").exists()


def test_test_stage_needs_the_grid_report_first(tune, capsys):
    module, results = tune
    assert module.test_best("unused", 16, 192) == 2
    assert "tune_training.py report" in capsys.readouterr().err


def test_test_stage_touches_the_test_split_once_per_configuration(tune, capsys):
    module, results = tune
    best = {"learning_rate": 1e-4, "temperature": 0.05, "group_size": 4, "epoch": 3.0, "precision": "float32",
            "dense_ndcg@10": 0.81}
    (results / "tune_training_grid.json").write_text(json.dumps(
        {"best": best, "configurations": 12, "split": split("new")}))
    configuration = {k: best[k] for k in ("learning_rate", "temperature", "group_size", "epoch", "precision")}
    earlier = {"configuration": configuration, "split_sha256": split("new")["files_sha256"]}
    (results / "tune_training_test.json").write_text(json.dumps({"runs": [earlier]}))
    assert module.test_best("no-such-folder", 16, 192) == 2
    assert "touched once" in capsys.readouterr().err
    # another split's best is a new configuration: it goes on to load the data (missing here: a user mistake)
    (results / "tune_training_grid.json").write_text(json.dumps(
        {"best": best, "configurations": 12, "split": split("other")}))
    assert module.test_best("no-such-folder", 16, 192) == 2
    assert "SciFact not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["cocktail", "--pseudo-queries", "10"], "only the dense and m3 stages"),
    (["m3-test", "--split-folder", "s"], "--split-folder does not apply"),
    (["m3-test", "--learning-rates", "1e-4,3e-5"], "one learning rate and one temperature"),
    (["dense", "--pseudo-queries", "-1"], "at least 0"),
    (["dense", "--pseudo-keep-top", "0"], "at least 1"),
    (["dev-subsets", "--models", "m"], "needs --split-folder and --models"),
    (["dev-subsets", "--split-folder", "s"], "needs --split-folder and --models"),
    (["m3", "--teacher", "."], "only the dense stage distils"),
    (["dense", "--teacher", "no-such-folder"], "not a model folder")])
def test_options_are_checked_before_any_work(tune, monkeypatch, capsys, argv, message):
    module, _ = tune
    monkeypatch.setattr(sys, "argv", ["tune_training.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_dev_subsets_refuses_a_folder_that_is_no_model(tune, tmp_path, capsys):
    module, _ = tune
    (tmp_path / "empty").mkdir()
    assert module.dev_subsets("unused", "unused", [str(tmp_path / "empty")], "float32") == 2
    assert "not a model folder" in capsys.readouterr().err


def test_carved_split_is_read_back_and_checked(tune, tmp_path, monkeypatch):
    from flagstone.evaluation.beir import load_qrels
    from flagstone.evaluation.splits import carve_split
    from tests.evaluation.test_splits import make_beir

    module, _ = tune
    source = make_beir(tmp_path / "src")
    carve_split(source, tmp_path / "carved", seed=3, count=4)
    train = load_qrels(source / "qrels" / "train.tsv")
    fit, dev, record = module.carved_or_default_split(str(tmp_path / "carved"), str(source), train)
    assert len(dev) == 4 and len(fit) == 6 and not set(fit) & set(dev) and set(fit) | set(dev) == set(train)
    assert record["seed"] == 3 and record["carved"] == "dev"
    # a split carved from other queries is refused, and so is a file changed after carving
    with pytest.raises(ValueError, match="not carved from"):
        module.carved_or_default_split(str(tmp_path / "carved"), str(source), {q: train[q] for q in fit})
    with (tmp_path / "carved" / "qrels" / "dev.tsv").open("a") as handle:
        handle.write("q1\td5\t1\n")
    with pytest.raises(ValueError):
        module.carved_or_default_split(str(tmp_path / "carved"), str(source), train)
    # without a folder: HELD_OUT queries held out by split_queries, seed 0
    monkeypatch.setattr(module, "HELD_OUT", 3)
    fit, dev, record = module.carved_or_default_split(None, str(source), train)
    assert record is None and len(dev) == 3 and sorted(fit + dev) == sorted(train)


def test_teacher_that_saw_a_scored_query_is_refused_and_a_clean_one_scores_every_pair(tune, tmp_path):
    import shutil

    from flagstone.training.data import TrainingExample
    from tests.helpers import build_tiny_cross_encoder

    module, _ = tune
    teacher = build_tiny_cross_encoder(tmp_path / "teacher")
    examples = [TrainingExample(query="q one", pos=["a positive"], neg=["n1", "n2"]),
                TrainingExample(query="q two", pos=["another"], neg=["n3"])]
    with pytest.raises(ValueError, match="cannot check"):
        module.checked_teacher(str(teacher), ["7"])
    record = tmp_path / "teacher.rerank_scifact-settings.json"
    record.write_text(json.dumps({"settings": {"train_queries": ["1", "2", "3"]}}))
    with pytest.raises(ValueError, match="trained on 1 of the scored queries"):
        module.checked_teacher(str(teacher), ["3", "9"])
    scored, info = module.teacher_scores(examples, module.checked_teacher(str(teacher), ["8", "9"]), "float32")
    assert [len(e.pos_scores) + len(e.neg_scores) for e in scored] == [3, 2] and info["pairs"] == 5
    assert info["trained_queries"] == 3
    # the scores are the teacher's own, pair by pair
    from flagstone.models.reranker import CrossEncoderReranker

    direct = CrossEncoderReranker(str(teacher), max_length=192, batch_size=32).score_pairs([("q one", "n2")])
    assert scored[0].neg_scores[1] == pytest.approx(float(direct[0]), abs=1e-5)
    shutil.rmtree(teacher)


def test_subsets_table_marks_an_empty_subset(tune):
    module, _ = tune
    cell = {"base": 0.6, "best": 0.7, "delta": 0.1, "p_value": 0.01}
    rows = [{"model": "models/tune-a", "dev": {"overall": cell, "unseen_docs": None}}]
    lines = module.subsets_table(rows, {"overall": ["1", "2"], "unseen_docs": []})
    assert lines[0] == "| model | overall (2) | p | unseen_docs (0) | p |"
    assert lines[2] == "| base | 0.6000 |  | - |  |"
    assert lines[3] == "| tune-a | 0.7000 (+0.1000) | 0.01 | - | - |"


def test_the_m3_table_shows_the_untrained_head_and_active_terms_per_document(tune):
    tune_training, _ = tune
    modes = ("dense", "sparse", "colbert", "hybrid")
    scores = {f"{m}_ndcg@10": 0.1 * (i + 5) for i, m in enumerate(modes)}
    rows = [{"learning_rate": 1e-4, "temperature": 0.05, "epoch": 1.0, **scores, "sparse_terms_per_doc": 95.25}]
    initial = [(1e-4, 0.05, {"sparse_ndcg@10": 0.5769, "sparse_terms_per_doc": 120.0})]
    lines = tune_training.training_table(rows, modes, initial, [0.0, 0.01])
    assert lines[0] == ("| learning rate | temperature | epoch | dense nDCG@10 | sparse nDCG@10 | colbert nDCG@10 | "
                        "hybrid nDCG@10 | sparse terms / document |")
    assert all(line.count("|") == 9 for line in lines[:4])  # every row as wide as the header
    assert lines[2] == "| 0.0001 | 0.05 | 0 |  | 0.5769 |  |  | 120.0 |"
    assert lines[3] == "| 0.0001 | 0.05 | 1 | 0.5000 | 0.6000 | 0.7000 | 0.8000 | 95.2 |"
    assert lines[4] == "\nFLOPS regulariser weights (query, passage): 0, 0.01"
    dense = tune_training.training_table([{k: v for k, v in rows[0].items() if k != "sparse_terms_per_doc"}],
                                         ("dense",), [], None)
    assert dense == ["| learning rate | temperature | epoch | dense nDCG@10 |", "|---|---|---|---|",
                     "| 0.0001 | 0.05 | 1 | 0.5000 |"]


def test_score_reports_every_head_and_sparse_terms_of_saved_models(tune, tiny_m3_dir, tmp_path, capsys):
    from flagstone.evaluation.splits import carve_split
    from tests.evaluation.test_splits import make_beir

    tune_training, results = tune
    data = make_beir(tmp_path / "data")
    carve_split(data, tmp_path / "carved", seed=0, count=3)
    assert tune_training.score_models(str(data), str(tmp_path / "carved"), [str(tmp_path / "none")], "float32") == 2
    assert "not a model folder" in capsys.readouterr().err
    assert tune_training.score_models(str(data), str(tmp_path / "carved"), [str(tiny_m3_dir)], "float32") == 0
    [row] = json.loads((results / "tune_training_score.json").read_text())["runs"][-1]["rows"]
    assert {"dense_ndcg@10", "sparse_ndcg@10", "colbert_ndcg@10", "hybrid_ndcg@10"} <= set(row)
    assert 0 < row["sparse_terms_per_doc"] and all(0 <= row[k] <= 1 for k in row if k.endswith("ndcg@10"))
    table = (results / "tune_training_score.md").read_text()
    assert f"| {tiny_m3_dir.name} | {row['dense_ndcg@10']:.4f} |" in table and "sparse_terms_per_doc" in table


def test_m3_test_scores_the_sparse_head_against_bm25_once_per_configuration(tune, tiny_m3_dir, tmp_path, monkeypatch,
                                                                           capsys):
    from flagstone.models.cache import EmbeddingCache
    from tests.evaluation.test_splits import make_beir

    tune_training, results = tune
    monkeypatch.setattr(tune_training, "BASE", str(tiny_m3_dir))
    monkeypatch.setattr(tune_training, "MODELS", tmp_path / "models")
    monkeypatch.setattr(tune_training, "EmbeddingCache", lambda: EmbeddingCache(tmp_path / "cache"))
    data = make_beir(tmp_path / "data")
    argv = ["tune_training.py", "m3-test", "--data", str(data), "--learning-rates", "1e-4", "--temperatures", "0.05",
            "--epochs", "1", "--batch-size", "4", "--precision", "float32"]
    monkeypatch.setattr(sys, "argv", argv)
    assert tune_training.main() == 0
    [run_] = json.loads((results / "tune_training_m3_test.json").read_text())["runs"]
    assert run_["configuration"]["learning_rate"] == 1e-4 and run_["configuration"]["pseudo_queries"] == 0
    assert run_["train_queries"] == 10 and run_["steps"] == 3  # ceil(10 / 4), one epoch
    comparison = run_["sparse_vs_bm25"]
    assert comparison["all_test"]["queries"] == 3 and comparison["all_test"]["base"] == run_["bm25_ndcg@10"]
    assert comparison["all_test"]["best"] == run_["all_test_ndcg@10"]["sparse"]
    assert set(run_["all_test_ndcg@10"]) == {"sparse", "dense", "colbert", "all"}
    assert (tmp_path / "models" / "tune-m3-test-e1" / "config.json").is_file()
    assert "| all_test | 3 |" in (results / "tune_training_m3_test.md").read_text()
    assert tune_training.main() == 2  # the same configuration again: the test split is touched once
    assert "touched once" in capsys.readouterr().err
