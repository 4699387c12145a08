"""rerank_scifact.py's options that come before any model work: a carved split is checked first."""
from __future__ import annotations

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
