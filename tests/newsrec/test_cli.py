"""`flagstone train newsrec` and `flagstone eval newsrec`: thin commands, one-line errors, --overwrite."""
from __future__ import annotations

import json

import pytest

from flagstone.cli import main
from flagstone.newsrec.synthetic import SyntheticMindConfig, write_synthetic_mind
from tests.test_cli import run_cli


@pytest.fixture(scope="module")
def mind(tmp_path_factory):
    root = tmp_path_factory.mktemp("mind")
    write_synthetic_mind(root, SyntheticMindConfig(n_users=40, news_per_day=30, history_news=80, train_impressions=120,
                                                   dev_impressions=30, history_length=(3, 10), candidates=(4, 8)))
    return root


def test_train_then_eval(mind, tmp_path, capsys):
    out = tmp_path / "model"
    args = ["train", "newsrec", str(mind / "train"), "-o", str(out), "--kind", "gateformer", "--gate-k", "3",
            "--dim", "32", "--heads", "2", "--layers", "1", "--max-steps", "4", "--quiet"]
    assert main(args) == 0
    assert "gateformer: 4 steps" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model"]["gate_k"] == 3
    metrics = tmp_path / "m.json"
    assert main(["eval", "newsrec", str(mind / "dev"), "--model", str(out), "--output", str(metrics)]) == 0
    printed = capsys.readouterr().out
    assert "| gateformer (" in printed and "30 impressions" in printed
    saved = json.loads(metrics.read_text())
    assert 0.0 <= saved["auc"] <= 1.0 and saved["impressions"] + saved["skipped"] == 30
    assert saved["tokens_encoded"] > 0 and saved["ms_per_impression"] > 0
    # existing outputs need --overwrite
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["eval", "newsrec", str(mind / "dev"), "--model", str(out), "--output", str(metrics)]) == 2
    assert main(["eval", "newsrec", str(mind / "dev"), "--model", str(out), "--output", str(metrics),
                 "--overwrite"]) == 0


def test_baselines(mind, capsys):
    assert main(["eval", "newsrec", str(mind / "dev"), "--baseline", "popularity", "--train", str(mind / "train")]) == 0
    assert "| baseline popularity |" in capsys.readouterr().out
    assert main(["eval", "newsrec", str(mind / "dev"), "--baseline", "popularity"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs --train" in err


def test_user_errors_are_one_line(mind, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "news.tsv").write_text("N1\tsports\n")
    (bad / "behaviors.tsv").write_text("")
    for args, expected in (
        (["eval", "newsrec", str(bad), "--baseline", "random"], "news.tsv:1: expected 8 tab-separated fields"),
        (["train", "newsrec", str(mind / "train"), "-o", str(tmp_path / "o"), "--dim", "30", "--heads", "4"],
         "must be a multiple of --heads"),
        (["eval", "newsrec", str(mind / "dev")], "one of the arguments --model --baseline is required"),
        (["eval", "newsrec", str(mind / "dev"), "--model", str(tmp_path)], "is not a news recommender"),
    ):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_help_explains(mind):
    for args, words in ((["train", "newsrec", "--help"], ["GateFormer", "--gate-k", "--select-k", "msnews.github.io"]),
                        (["eval", "newsrec", "--help"], ["AUC", "nDCG@10", "--baseline", "tokens"]),
                        (["eval", "--help"], ["eval newsrec"])):
        result = run_cli(*args)
        assert result.returncode == 0
        flat = " ".join(result.stdout.split())
        assert all(w in flat for w in words), (args, flat)


def test_a_beir_folder_named_like_nothing_special_still_evaluates(tmp_path):
    """`eval DATA` keeps working beside `eval newsrec` (the nested parser only takes the literal word)."""
    result = run_cli("eval", str(tmp_path / "missing"))
    assert result.returncode == 2 and "folder not found" in result.stderr


def test_the_cli_spells_the_baselines_as_the_library_does():
    from flagstone.cli.evaluate import NEWSREC_BASELINES
    from flagstone.newsrec.baselines import BASELINES

    assert NEWSREC_BASELINES == BASELINES
