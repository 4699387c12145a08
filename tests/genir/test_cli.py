from __future__ import annotations

import json
from pathlib import Path

import pytest

from flagstone.cli import main
from tests.genir.corpus import corpus


def make_corpus(root: Path, n: int = 10) -> Path:
    """A BEIR folder of ``n`` docstrings; each query is the opening of one document (train: the first half)."""
    ids, texts = corpus(n)
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n"
                                               for i, t in zip(ids, texts)))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{k}", "text": t[:60]}) + "\n"
                                                for k, t in enumerate(texts)))
    header = "query-id\tcorpus-id\tscore\n"
    (root / "qrels" / "train.tsv").write_text(header + "".join(f"q{k}\t{i}\t1\n" for k, i in enumerate(ids[: n // 2])))
    (root / "qrels" / "test.tsv").write_text(header + "".join(f"q{k}\t{i}\t1\n" for k, i in enumerate(ids)
                                                             if k >= n // 2))
    return root


TINY = ["--hidden-size", "64", "--heads", "2", "--layers", "2", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("genir-cli")
    data = make_corpus(root / "mini")
    assert main(["train", "genir", str(data), "-o", str(root / "model"), "--docids", "atomic", "--epochs", "30",
                 "--learning-rate", "3e-3", *TINY]) == 0
    return data, root / "model"


def test_train_then_eval_genir_beside_bm25(trained, tmp_path, capsys):
    data, model = trained
    assert (model / "genir.json").is_file()
    capsys.readouterr()
    out = tmp_path / "metrics.json"
    assert main(["eval", str(data), "--modes", "genir", "bm25", "--genir-model", str(model), "--k", "1", "10",
                 "--depth", "10", "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "0 invalid docids" in printed and "| genir |" in printed and "| bm25 |" in printed
    metrics = json.loads(out.read_text())["modes"]
    assert set(metrics) == {"bm25", "genir"}
    assert 0.0 <= metrics["genir"]["metrics"]["recall@10"] <= 1.0


def test_semantic_ids_train_from_the_bundled_embedder(tmp_path, capsys):
    data = make_corpus(tmp_path / "mini", n=12)
    assert main(["train", "genir", str(data), "-o", str(tmp_path / "model"), "--epochs", "1", "--leaf-size", "3",
                 "--branching", "2", "--cache-dir", str(tmp_path / "cache"), *TINY]) == 0
    assert "semantic ids" in capsys.readouterr().out
    settings = json.loads((tmp_path / "model" / "genir.json").read_text())
    assert settings["docids"] == "semantic" and max(len(c) for c in settings["codes"]) >= 3


@pytest.mark.parametrize("args,message", [
    (["train", "genir", "{data}", "-o", "{model}", "--epochs", "1"], "already exists"),
    (["train", "genir", "{data}", "-o", "{tmp}/new", "--hidden-size", "30", "--heads", "4"], "not divisible"),
    (["train", "genir", "{data}", "-o", "{tmp}/new", "--queries-split", "dev"], "no qrels for split 'dev'"),
    (["eval", "{data}", "--modes", "genir"], "--modes genir needs --genir-model"),
    (["eval", "{data}", "--genir-model", "{model}"], "only with --modes genir"),
    (["eval", "{data}", "--modes", "genir", "--genir-model", "{model}", "--index", "hi2"], "a generative retriever has"),
    (["eval", "{other}", "--modes", "genir", "--genir-model", "{model}"], "train it on this corpus"),
    (["eval", "{data}", "--modes", "genir", "--genir-model", "{data}"], "not a generative retriever"),
])
def test_cli_errors_exit_2_with_one_line(trained, tmp_path, capsys, args, message):
    data, model = trained
    other = make_corpus(tmp_path / "other", n=6) if "{other}" in args else None
    code = main([a.format(data=data, model=model, tmp=tmp_path, other=other) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1, err


def test_a_non_positive_epoch_count_is_refused_by_the_parser(trained, tmp_path, capsys):
    data, _ = trained
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "genir", str(data), "-o", str(tmp_path / "new"), "--epochs", "0"])
    assert exit_info.value.code == 2 and "--epochs" in capsys.readouterr().err
