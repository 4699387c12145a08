"""`--n-probe` / `--target-recall` end to end: build tunes and saves, search reads the saved tuning, eval applies them."""
from __future__ import annotations

import json

import pytest

from flagstone.cli import main
from tests.evaluation.test_beir import make_beir

pytest.importorskip("faiss")
pytest.importorskip("numba")


def test_build_tunes_search_and_eval_use_the_probes(tmp_path, capsys):
    make_beir(tmp_path / "beir")
    out = tmp_path / "idx"
    assert main(["index", "build", str(tmp_path / "beir"), "-o", str(out), "--index", "ivf", "--target-recall", "0.9",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "tuned: n_probe 1 gives recall@10 1.0000 >= 0.9 on 2 sample queries" in printed  # queries.jsonl
    assert main(["index", "describe", str(out)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["tuning"]["target_recall"] == 0.9 and described["tuning"]["sample"] == "queries"
    assert main(["index", "search", str(out), "-q", "zinc and colds", "-k", "1", "--target-recall", "0.9",
                 "--quiet"]) == 0
    assert "d1" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "beir"), "--modes", "dense", "--index", "ivf", "--n-probe", "1", "--k", "1",
                 "--quiet"]) == 0
    assert "dense" in capsys.readouterr().out


def test_search_with_a_target_on_an_untuned_index_is_one_line(tmp_path, capsys):
    make_beir(tmp_path / "beir")
    out = tmp_path / "idx"
    assert main(["index", "build", str(tmp_path / "beir"), "-o", str(out), "--index", "hi2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["index", "search", str(out), "-q", "zinc", "--target-recall", "0.9", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not been tuned" in err[0]
